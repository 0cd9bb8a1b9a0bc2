"""Wire formats of the sparse MAC core: the one definition the host packs from.

Every stream payload of :class:`~sparsemac.hw.core.SparseMACCore` is defined here as an Amaranth
layout. The host side (``sparsemac.sw.packing``) derives its byte layouts from these objects, so
changing a width here changes both sides at once.
"""

from amaranth.hdl import Mux, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from .config import check_config

__all__ = ["Mode", "ColumnIndex", "Sparsity", "DeltaCode", "CoreFormats", "CoreStreams"]


class Mode(enum.Enum, shape=1):
    """How a job's weights arrive."""
    #: CSR: row end pointers, column indices and values.
    SPARSE = 0
    #: Every weight, row by row; no indices, no row pointers.
    DENSE = 1


class ColumnIndex(enum.Enum, shape=1):
    """How a sparse job sends its column indices (a job field only of an array with the delta
    decoder, ``ArrayConfig.delta_bits != 0``)."""
    #: 16-bit column indices and 32-bit row end pointers.
    CSR = 0
    #: :class:`DeltaCode` deltas of ``delta_bits`` bits and 16-bit row lengths.
    DELTA = 1


class Sparsity(enum.Enum, shape=1):
    """Which zeros a job skips (a job field only of a dual-sparse array,
    ``ArrayConfig.dual_sparse``)."""
    #: Zero weights: the weights stream as CSR (or densely) and the activation buffer looks up
    #: their columns' activations.
    WEIGHTS = 0
    #: Zero weights and, per token, zero activations: each token's (weight, activation) pairs
    #: arrive on the ``pairs`` stream; the activation buffer and the weight streams idle.
    DUAL = 1


class _BuiltFrom:
    """Equality, hash and repr by the one argument an immutable object is built from, the
    attribute a subclass names in ``_built_from``: objects built from equal arguments are equal
    (and interchangeable, as their layouts are)."""

    def __eq__(self, other):
        return type(other) is type(self) and other._argument == self._argument

    def __hash__(self):
        return hash((type(self), self._argument))

    def __repr__(self):
        return f"{type(self).__name__}({self._argument!r})"

    @property
    def _argument(self):
        return getattr(self, self._built_from)


class DeltaCode(_BuiltFrom):
    """The compressed column index: each entry's column as a short step from the one before.

    An entry of a row is a value byte and a ``bits``-wide code. A code below :attr:`escape`
    is a weight ``code`` columns after the previous entry's column plus one (the first entry of
    a row counts from column -1), as EIE's 4-bit relative indices do. The code :attr:`escape`
    is an escape entry: it multiplies as a zero weight and moves the column on by
    :attr:`escape` plus its value byte read unsigned, so a gap of up to
    :attr:`longest_escape` columns costs one extra entry, and longer gaps a chain of them.
    Rows are sent as their entry counts (:attr:`row_length`), escapes included.

    Parameters
    ----------
    bits : int
        3 to 8.

    Attributes
    ----------
    bits : int
    escape : int
        ``2 ** bits - 1``.
    longest_escape : int
        The most columns an escape entry moves on: ``escape + 255``.
    row_length : unsigned
        The row-length beat of a delta job (a row of ``cols <= 32768`` columns has at most
        ``cols`` entries).
    """

    row_length = unsigned(16)
    _built_from = "bits"

    def __init__(self, bits):
        if not isinstance(bits, int) or not 3 <= bits <= 8:
            raise ValueError(f"a delta code has 3 to 8 bits, not {bits!r}")
        self.bits = bits
        self.escape = (1 << bits) - 1
        self.longest_escape = self.escape + 255

    def step(self, code, value):
        """The columns an entry moves on, as an Amaranth value: ``code + 1``, or for an
        escape ``escape`` plus the 8-bit ``value`` read unsigned. (The host encodes and decodes
        with the same attributes, in ``sparsemac.sw.delta_index``.)"""
        return Mux(code == self.escape, self.escape + value.as_unsigned(), code + 1)


class CoreFormats:
    """The payload layouts of one array configuration.

    Parameters
    ----------
    config : ArrayConfig

    Attributes
    ----------
    job : StructLayout
        ``mode``, ``rows`` (output features), ``cols`` (input features), ``token_blocks``
        (blocks of T tokens) and ``nnz`` (weights streamed per token block: the CSR nonzero
        count, the entries of a delta job, or rows x cols in dense mode); with the delta
        decoder, then ``index`` (:class:`ColumnIndex`); in a dual-sparse array, then
        ``sparsity`` (:class:`Sparsity`).
    activation_column : ArrayLayout
        One input column of a token block: T signed 8-bit activations, token lane 0 first.
    row_pointer : unsigned
        One CSR row end pointer (``indptr[r + 1]``; the leading zero is not sent).
    column_word : ArrayLayout
        K column indices, 16 bits each.
    delta : DeltaCode or None
        The compressed index of an array with the delta decoder.
    delta_word : ArrayLayout or None
        K delta codes: what a delta job sends on the ``columns`` stream, in the low bits of the
        beat (the host sends only its own bytes).
    value_word : ArrayLayout
        K signed 8-bit weights.
    sums : ArrayLayout
        One output row for a token block: T signed 32-bit sums.
    cycles : unsigned
        The hardware cycle counter reported when a job is done.
    chunk : StructLayout
        Internal: up to K (column, value) pairs of one row, unused lanes hold value 0. With
        ``span_rows`` also ``split``: on a ``row_last`` chunk, lanes below ``split`` close the
        row and lanes from ``split`` on begin the next one; ``split`` is K on every chunk that
        does not span rows.
    coded_chunk : StructLayout
        Internal: a chunk as the streamer emits it; with the delta decoder its ``columns`` are
        wide enough for a column or a delta code, for :class:`~sparsemac.hw.delta_decoder.
        DeltaDecoder` to turn into columns.
    operands : StructLayout
        Internal: K weights with the T activations of their columns (and the chunk's ``split``
        with ``span_rows``).
    pairs : StructLayout or None
        In a dual-sparse array, one beat of a DUAL job: per token lane ``t`` and lane ``k``,
        ``weights[t][k]`` and ``activations[t][k]``, a pair to multiply (unused pairs hold
        weight 0), and ``row_last``, set on the row's last beat.
    array_operands : StructLayout
        Internal, what the MAC array multiplies: :attr:`operands`, except in a dual-sparse
        array, whose ``weights`` are K x T (lane ``k``, token ``t``), one per multiplier.
    """

    def __init__(self, config):
        self.config = check_config(config)
        lanes, token_lanes = config.lanes, config.token_lanes
        value = signed(config.VALUE_WIDTH)

        job = {
            "mode": Mode,
            "rows": unsigned(16),
            "cols": unsigned(16),
            "token_blocks": unsigned(16),
            "nnz": unsigned(32),
        }
        self.delta = DeltaCode(config.delta_bits) if config.delta_bits else None
        if self.delta is not None:
            job["index"] = ColumnIndex
        if config.dual_sparse:
            job["sparsity"] = Sparsity
        self.job = data.StructLayout(job)
        self.activation_column = data.ArrayLayout(value, token_lanes)
        self.row_pointer = unsigned(config.ROW_POINTER_WIDTH)
        self.column_word = data.ArrayLayout(unsigned(config.COLUMN_WIDTH), lanes)
        self.delta_word = (None if self.delta is None
                           else data.ArrayLayout(unsigned(self.delta.bits), lanes))
        self.value_word = data.ArrayLayout(value, lanes)
        self.sums = data.ArrayLayout(signed(config.SUM_WIDTH), token_lanes)
        self.cycles = unsigned(config.CYCLE_COUNTER_WIDTH)

        address = unsigned(config.column_address_width)
        # Only an array that spans rows has the field, so the others' designs are unchanged.
        split = {"split": range(lanes + 1)} if config.span_rows else {}
        self.chunk = data.StructLayout({
            "columns": data.ArrayLayout(address, lanes),
            "values": data.ArrayLayout(value, lanes),
            "row_last": 1,
            "block_last": 1,
            **split,
        })
        if self.delta is None:
            self.coded_chunk = self.chunk
        else:
            coded = unsigned(max(config.column_address_width, self.delta.bits))
            self.coded_chunk = data.StructLayout({
                **self.chunk.members, "columns": data.ArrayLayout(coded, lanes)})
        self.operands = data.StructLayout({
            "weights": data.ArrayLayout(value, lanes),
            "activations": data.ArrayLayout(self.activation_column, lanes),
            "row_last": 1,
            **split,
        })
        self.pairs, self.array_operands = None, self.operands
        if config.dual_sparse:
            token_pairs = data.ArrayLayout(data.ArrayLayout(value, lanes), token_lanes)
            self.pairs = data.StructLayout({
                "weights": token_pairs, "activations": token_pairs, "row_last": 1})
            self.array_operands = data.StructLayout({
                **self.operands.members,
                "weights": data.ArrayLayout(data.ArrayLayout(value, token_lanes), lanes)})


class CoreStreams(_BuiltFrom, wiring.Signature):
    """The seven streams of :class:`~sparsemac.hw.core.SparseMACCore` (eight in a dual-sparse
    array), as the core sees them.

    The one list of the core's stream names: the host link exposes the flipped bundle, the
    board top joins the two with one ``wiring.connect``, and the testbenches, simulators and
    the C++ harnesses read the names from here. Ports generated from it are named
    ``<stream>__payload``, ``<stream>__valid`` and ``<stream>__ready``.

    Parameters
    ----------
    config : ArrayConfig

    Members
    -------
    job : In(stream.Signature(formats.job))
    done : Out(stream.Signature(formats.cycles))
    activations : In(stream.Signature(formats.activation_column))
    row_pointers : In(stream.Signature(formats.row_pointer))
    columns : In(stream.Signature(formats.column_word))
    values : In(stream.Signature(formats.value_word))
    sums : Out(stream.Signature(formats.sums))
    pairs : In(stream.Signature(formats.pairs))
        Only in a dual-sparse array (``ArrayConfig.dual_sparse``), last.
    """

    _built_from = "config"

    def __init__(self, config):
        self._formats = formats = CoreFormats(config)
        # Only a dual-sparse array has the pairs stream, so the others' designs are unchanged.
        pairs = ({"pairs": In(stream.Signature(formats.pairs))} if formats.pairs is not None
                 else {})
        super().__init__({
            "job": In(stream.Signature(formats.job)),
            "done": Out(stream.Signature(formats.cycles)),
            "activations": In(stream.Signature(formats.activation_column)),
            "row_pointers": In(stream.Signature(formats.row_pointer)),
            "columns": In(stream.Signature(formats.column_word)),
            "values": In(stream.Signature(formats.value_word)),
            "sums": Out(stream.Signature(formats.sums)),
            **pairs,
        })

    @property
    def config(self):
        return self._formats.config

    @property
    def formats(self):
        return self._formats

    @property
    def data_inputs(self):
        """The input streams that carry a job's data (every input but ``job``), in order."""
        return tuple(name for name, member in self.members.items()
                     if member.flow == In and name != "job")
