"""Wire formats of the sparse MAC core: the one definition the host packs from.

Every stream payload of :class:`~sparsemac.hw.core.SparseMACCore` is defined here as an Amaranth
layout. The host side (``sparsemac.sw.packing``) derives its byte layouts from these objects, so
changing a width here changes both sides at once.
"""

from amaranth.hdl import unsigned, signed
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from .config import check_config

__all__ = ["Mode", "CoreFormats", "CoreStreams"]


class Mode(enum.Enum, shape=1):
    """How a job's weights arrive."""
    #: CSR: row end pointers, column indices and values.
    SPARSE = 0
    #: Every weight, row by row; no indices, no row pointers.
    DENSE = 1


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
        count, or rows x cols in dense mode).
    activation_column : ArrayLayout
        One input column of a token block: T signed 8-bit activations, token lane 0 first.
    row_pointer : unsigned
        One CSR row end pointer (``indptr[r + 1]``; the leading zero is not sent).
    column_word : ArrayLayout
        K column indices, 16 bits each.
    value_word : ArrayLayout
        K signed 8-bit weights.
    sums : ArrayLayout
        One output row for a token block: T signed 32-bit sums.
    cycles : unsigned
        The hardware cycle counter reported when a job is done.
    chunk : StructLayout
        Internal: up to K (column, value) pairs of one row, unused lanes hold value 0.
    operands : StructLayout
        Internal: K weights with the T activations of their columns.
    """

    def __init__(self, config):
        self.config = check_config(config)
        lanes, token_lanes = config.lanes, config.token_lanes
        value = signed(config.VALUE_WIDTH)

        self.job = data.StructLayout({
            "mode": Mode,
            "rows": unsigned(16),
            "cols": unsigned(16),
            "token_blocks": unsigned(16),
            "nnz": unsigned(32),
        })
        self.activation_column = data.ArrayLayout(value, token_lanes)
        self.row_pointer = unsigned(config.ROW_POINTER_WIDTH)
        self.column_word = data.ArrayLayout(unsigned(config.COLUMN_WIDTH), lanes)
        self.value_word = data.ArrayLayout(value, lanes)
        self.sums = data.ArrayLayout(signed(config.SUM_WIDTH), token_lanes)
        self.cycles = unsigned(config.CYCLE_COUNTER_WIDTH)

        address = unsigned(config.column_address_width)
        self.chunk = data.StructLayout({
            "columns": data.ArrayLayout(address, lanes),
            "values": data.ArrayLayout(value, lanes),
            "row_last": 1,
            "block_last": 1,
        })
        self.operands = data.StructLayout({
            "weights": data.ArrayLayout(value, lanes),
            "activations": data.ArrayLayout(self.activation_column, lanes),
            "row_last": 1,
        })


class CoreStreams(wiring.Signature):
    """The seven streams of :class:`~sparsemac.hw.core.SparseMACCore`, as the core sees them.

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
    """

    def __init__(self, config):
        self._formats = formats = CoreFormats(config)
        super().__init__({
            "job": In(stream.Signature(formats.job)),
            "done": Out(stream.Signature(formats.cycles)),
            "activations": In(stream.Signature(formats.activation_column)),
            "row_pointers": In(stream.Signature(formats.row_pointer)),
            "columns": In(stream.Signature(formats.column_word)),
            "values": In(stream.Signature(formats.value_word)),
            "sums": Out(stream.Signature(formats.sums)),
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

    def __eq__(self, other):
        return type(other) is CoreStreams and other.config == self.config

    def __hash__(self):
        return hash((CoreStreams, self.config))

    def __repr__(self):
        return f"CoreStreams({self.config!r})"
