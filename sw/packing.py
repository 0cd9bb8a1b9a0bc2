"""Packs a job into the core's stream beats, from the layouts in :mod:`sparsemac.hw.formats`.

Each stream becomes a ``uint8`` array of shape ``[beats, bytes per beat]``: the little-endian
bytes of the payload bit vector, exactly what a bus or the Verilator harness carries. The
element types and counts come from the hardware layouts, so the host never restates them.
"""

import functools
from dataclasses import dataclass, field

import numpy as np
import torch
from amaranth.hdl import Shape
from amaranth.lib import data

from ..hw.config import ArrayConfig
from ..hw.formats import ColumnIndex, CoreFormats, DeltaCode, Mode, Sparsity
from ..hw.link_formats import layout_bytes
from .csr import CSRMatrix
from .cycle_model import dual_row_beats, token_blocks
from .delta_index import DeltaMatrix
from .memory import job_streams

__all__ = ["PackedJob", "pack_job", "unpack_sums", "beats_to_ints", "weight_stream_bytes",
           "check_index", "check_sparsity", "coded_weights", "streamed_row_lengths",
           "tile_row_lengths", "pairs_stream_bytes"]


@functools.lru_cache(maxsize=None)
def _formats(config):
    return CoreFormats(config)


def check_index(config, index):
    """Raises a clear error unless ``config`` can run sparse jobs of ``index``.

    Raises
    ------
    ValueError
        If ``index`` is DELTA and ``config`` has no delta decoder.
    """
    if ColumnIndex(index) == ColumnIndex.DELTA and not config.delta_bits:
        raise ValueError(f"the {config.key()} array has no delta decoder, so its jobs cannot "
                         f"use the delta index: use a config with delta bits, e.g. "
                         f"{config.key()}d5")


def check_sparsity(config, sparsity, mode=Mode.SPARSE, index=ColumnIndex.CSR):
    """Raises a clear error unless ``config`` can run jobs of ``sparsity`` in ``mode`` with
    ``index``.

    Raises
    ------
    ValueError
        If ``sparsity`` is DUAL and ``config`` is not dual-sparse, or the job is dense or uses
        the delta index (a DUAL job sends its weights as pairs, with neither).
    """
    if Sparsity(sparsity) != Sparsity.DUAL:
        return
    if not config.dual_sparse:
        raise ValueError(f"the {config.key()} array has no dual-sparse mode, so its jobs cannot "
                         f"skip zero activations: use a dual-sparse config, e.g. "
                         f"{config.key()}a1")
    if Mode(mode) == Mode.DENSE or ColumnIndex(index) == ColumnIndex.DELTA:
        raise ValueError("a dual-sparse job sends its weights as pairs: it is neither dense nor "
                         "delta-indexed (use Mode.SPARSE and ColumnIndex.CSR)")


def coded_weights(config, weights, index=ColumnIndex.CSR):
    """``weights`` as a sparse job of ``index`` sends them.

    Parameters
    ----------
    config : ArrayConfig
    weights : CSRMatrix or DeltaMatrix
        A :class:`DeltaMatrix` (a delta job built by hand) only with ``index`` DELTA.
    index : ColumnIndex

    Returns
    -------
    CSRMatrix or DeltaMatrix
        ``weights`` itself for CSR; its :class:`DeltaMatrix` for DELTA.

    Raises
    ------
    ValueError
        If ``index`` is DELTA and ``config`` has no delta decoder, or a :class:`DeltaMatrix`
        uses another code than ``config``'s.
    TypeError
        If ``weights`` is of the wrong type for ``index``.
    """
    if ColumnIndex(index) == ColumnIndex.CSR:
        if not isinstance(weights, CSRMatrix):
            raise TypeError(f"weights must be a CSRMatrix, not {type(weights).__name__}")
        return weights
    check_index(config, index)
    code = DeltaCode(config.delta_bits)
    if isinstance(weights, DeltaMatrix):
        if weights.code != code:
            raise ValueError(f"the job is coded in {weights.code.bits}-bit deltas but the "
                             f"{config.key()} array decodes {code.bits}-bit ones")
        return weights
    if not isinstance(weights, CSRMatrix):
        raise TypeError(f"weights must be a CSRMatrix or DeltaMatrix, not "
                        f"{type(weights).__name__}")
    return DeltaMatrix.from_csr(weights, code)


def streamed_row_lengths(config, weights, index=ColumnIndex.CSR):
    """Entries each row streams in a sparse job of ``index``: what the cycle models count.

    Parameters and errors as :func:`coded_weights`.
    """
    coded = coded_weights(config, weights, index)
    return coded.row_lengths() if isinstance(coded, CSRMatrix) else coded.row_lengths


def tile_row_lengths(tile, weights, config, index=ColumnIndex.CSR):
    """Entries each row of column tile ``tile`` (a :class:`~sparsemac.sw.cycle_model.JobTile`)
    of the layer ``weights`` streams in a sparse job of ``index``: what the cycle models count
    for that job. A delta job's steps count from the tile's first column."""
    if ColumnIndex(index) == ColumnIndex.CSR:
        return tile.row_lengths(weights)    # no copy of the tile's weights needed
    return streamed_row_lengths(config, tile.weights(weights), index)


def weight_stream_bytes(config, weights, mode=Mode.SPARSE, index=ColumnIndex.CSR):
    """Bytes of one pass of ``weights`` to the core, counted from the stream layouts.

    Sparse mode: one row pointer per row, then ``ceil(nnz / K)`` column words and as many value
    words; with the delta index, one 16-bit row length per row and ``ceil(entries / K)`` delta
    words and value words. Dense mode: every weight, row after row, in
    ``ceil(rows * cols / K)`` value words. The weights are streamed again for every token
    block; this is one pass.

    Parameters
    ----------
    config : ArrayConfig
    weights : CSRMatrix
        In dense mode only its shape matters.
    mode : Mode
    index : ColumnIndex
        Of a sparse job.

    Returns
    -------
    int
        Whole stream words, each counted at its wire width rounded up to whole bytes.

    Raises
    ------
    TypeError
        If ``config`` is not an ArrayConfig or ``weights`` not a CSRMatrix.
    ValueError
        As :func:`coded_weights`.
    """
    if not isinstance(config, ArrayConfig):
        raise TypeError(f"config must be an ArrayConfig, not {config!r}")
    if not isinstance(weights, CSRMatrix):
        raise TypeError(f"weights must be a CSRMatrix, not {type(weights).__name__}")
    if Mode(mode) == Mode.DENSE:  # a dense job sends no indices, whatever ``index`` says
        return -(-weights.rows * weights.cols // config.lanes) * layout_bytes(
            _formats(config).value_word)
    index = ColumnIndex(index)
    coded = coded_weights(config, weights, index)
    entries = coded.nnz if isinstance(coded, CSRMatrix) else coded.entries
    streams = job_streams(config, Mode.SPARSE, weights.rows, weights.cols, entries, 1, index)
    return streams.weight_bytes


def pairs_stream_bytes(config, weights, activations):
    """Bytes of the ``pairs`` stream of a DUAL job of ``weights`` against ``activations``
    (the whole job: every token block).

    Raises
    ------
    ValueError
        As :func:`check_sparsity`.
    """
    check_sparsity(config, Sparsity.DUAL)
    beats = int(dual_row_beats(weights, activations, config).sum())
    return beats * layout_bytes(_formats(config).pairs)


def _element_dtype(layout):
    """The numpy dtype and count of the elements of an array payload (or a plain shape)."""
    if isinstance(layout, data.ArrayLayout):
        shape, count = Shape.cast(layout.elem_shape), layout.length
    else:
        shape, count = Shape.cast(layout), 1
    if shape.width not in (8, 16, 32, 64):
        raise ValueError(f"cannot pack elements of {shape!r}: only whole 8/16/32/64-bit elements")
    kind = "i" if shape.signed else "u"
    return np.dtype(f"<{kind}{shape.width // 8}"), count


def _pack_elements(layout, elements):
    dtype, count = _element_dtype(layout)
    elements = np.asarray(elements)
    info = np.iinfo(dtype)
    if elements.size and (elements.min() < info.min or elements.max() > info.max):
        raise ValueError(f"values from {elements.min()} to {elements.max()} do not fit {dtype}")
    beats = elements.astype(dtype).reshape(-1, count)
    return beats.view(np.uint8).reshape(len(beats), count * dtype.itemsize)


def _pack_bit_array(layout, elements):
    """Beats of an ArrayLayout of narrow unsigned elements (at most 64 bits a beat), laid out
    as the layout places them: element i at bit ``i * width``."""
    width, count = Shape.cast(layout.elem_shape).width, layout.length
    if count * width > 64:
        raise ValueError(f"cannot pack {layout!r}: more than 64 bits a beat")
    elements = np.asarray(elements, dtype=np.uint64).reshape(-1, count)
    if elements.size and int(elements.max()) >> width:
        raise ValueError(f"an element of {int(elements.max())} does not fit {width} bits")
    shifts = np.arange(count, dtype=np.uint64) * np.uint64(width)
    beats = np.bitwise_or.reduce(elements << shifts, axis=1).astype("<u8")
    return beats.view(np.uint8).reshape(len(beats), 8)[:, :layout_bytes(layout)].copy()


def _flat_array(layout):
    """A nested ArrayLayout as the flat ArrayLayout of its innermost elements, which it is bit
    for bit (element ``[i][j]`` of an ``n x m`` array at bit ``(i * m + j) * width``)."""
    count = 1
    while isinstance(layout.elem_shape, data.ArrayLayout):
        count *= layout.length
        layout = layout.elem_shape
    return data.ArrayLayout(layout.elem_shape, count * layout.length)


def _pack_struct(layout, beats, arrays, flags):
    """Beats of a StructLayout: ``arrays`` maps each array field (at a whole byte) to its
    elements, ``[beats, ...]``; ``flags`` each other field to a boolean per beat, set as the
    layout places the field's value 1."""
    packed = np.zeros((beats, layout_bytes(layout)), dtype=np.uint8)
    for name, elements in arrays.items():
        member = layout[name]
        if member.offset % 8:
            raise ValueError(f"cannot pack {name!r} at bit {member.offset}: not a whole byte")
        start = member.offset // 8
        member_bytes = _pack_elements(_flat_array(member.shape), elements)
        packed[:, start:start + member_bytes.shape[1]] = member_bytes
    for name, values in flags.items():
        mask = layout.const({name: 1}).as_value().value.to_bytes(packed.shape[1], "little")
        packed[np.asarray(values, dtype=bool)] |= np.frombuffer(mask, dtype=np.uint8)
    return packed


def _pack_pairs(config, weights, activations):
    """The ``pairs`` beats of a DUAL job: per token block and row, ``max(1, max_t
    ceil(n_t / K))`` beats, token ``t``'s pairs in the row's column order, unused pairs 0."""
    lanes, token_lanes = config.lanes, config.token_lanes
    values = activations.numpy() if isinstance(activations, torch.Tensor) else activations
    beats = dual_row_beats(weights, values, config)            # [blocks, rows]
    first = np.concatenate(([0], np.cumsum(beats)))[:-1].reshape(beats.shape)
    # Every live (token, entry): its position among the row's live entries of that token.
    live = values[:, weights.indices] != 0                     # [tokens, nnz]
    before = np.zeros((len(values), weights.nnz + 1), dtype=np.int64)
    np.cumsum(live, axis=1, out=before[:, 1:])
    token, entry = np.nonzero(live)
    row = np.repeat(np.arange(weights.rows), weights.row_lengths())[entry]
    position = before[token, entry] - before[token, weights.indptr[row]]
    beat = first[token // token_lanes, row] + position // lanes
    pair_weights = np.zeros((int(beats.sum()), token_lanes, lanes), dtype=np.int8)
    pair_activations = np.zeros_like(pair_weights)
    slot = (beat, token % token_lanes, position % lanes)
    pair_weights[slot] = weights.data[entry]
    pair_activations[slot] = values[token, weights.indices[entry]]
    row_last = np.zeros(len(pair_weights), dtype=bool)
    row_last[(first + beats - 1).reshape(-1)] = True
    return _pack_struct(_formats(config).pairs, len(pair_weights),
                        {"weights": pair_weights, "activations": pair_activations},
                        {"row_last": row_last})


def _words(elements, lanes):
    """``elements`` padded with zeros to whole words of ``lanes``: a pass's padding."""
    padded = np.zeros(-(-len(elements) // lanes) * lanes, dtype=elements.dtype)
    padded[:len(elements)] = elements
    return padded


@dataclass
class PackedJob:
    """The beats of every input stream of one job."""
    mode: Mode
    #: How a sparse job sends its columns.
    index: ColumnIndex
    rows: int
    cols: int
    tokens: int
    token_blocks: int
    #: Weights streamed per pass: nonzeros, a delta job's entries, or ``rows * cols``.
    nnz: int
    #: The ``job`` payload as an integer.
    job: int
    #: Empty (zero beats) where the mode sends nothing. uint8, ``[beats, bytes]``.
    activations: np.ndarray
    #: uint8, ``[beats, bytes]``.
    row_pointers: np.ndarray
    #: uint8, ``[beats, bytes]``.
    columns: np.ndarray
    #: uint8, ``[beats, bytes]``.
    values: np.ndarray
    #: Which zeros the job skips; a DUAL job sends only ``pairs``.
    sparsity: Sparsity = Sparsity.WEIGHTS
    #: uint8, ``[beats, bytes]``; empty but in a DUAL job.
    pairs: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.uint8))

    @property
    def weight_bytes(self):
        """Bytes of weight traffic over the whole job (every pass; a DUAL job's pairs)."""
        return self.row_pointers.size + self.columns.size + self.values.size + self.pairs.size


def pack_job(config, weights, activations, mode=Mode.SPARSE, index=ColumnIndex.CSR,
             sparsity=Sparsity.WEIGHTS):
    """Packs one job: ``weights`` (rows x cols) against ``activations`` (tokens x cols).

    Parameters
    ----------
    config : ArrayConfig
    weights : CSRMatrix or DeltaMatrix
        In dense mode its dense form is streamed, zeros included. A :class:`DeltaMatrix` is a
        delta job's entries as given (``index`` DELTA).
    activations : torch.Tensor of int8, [tokens, cols]
    mode : Mode
    index : ColumnIndex
        How a sparse job sends its column indices; DELTA needs a config with the delta decoder.
    sparsity : Sparsity
        DUAL (a dual-sparse config, a sparse CSR job) sends the pairs of nonzero weights and
        nonzero activations of each token instead of the activations and the weights.

    Returns
    -------
    PackedJob

    Raises
    ------
    TypeError, ValueError
        If the job does not fit one job of ``config`` or the operands disagree.
    """
    if not isinstance(config, ArrayConfig):
        raise TypeError(f"config must be an ArrayConfig, not {config!r}")
    mode, index, sparsity = Mode(mode), ColumnIndex(index), Sparsity(sparsity)
    if mode == Mode.DENSE and index == ColumnIndex.DELTA:
        raise ValueError("the delta index is for sparse jobs; a dense job sends no indices")
    check_sparsity(config, sparsity, mode, index)
    coded = coded_weights(config, weights, index)
    check_job_fits(config, coded, activations)
    if sparsity == Sparsity.DUAL:
        return _pack_dual_job(config, weights, activations)
    formats = CoreFormats(config)
    lanes, token_lanes = config.lanes, config.token_lanes
    rows, cols = weights.shape
    tokens = activations.shape[0]
    blocks = token_blocks(tokens, config)

    padded = np.zeros((blocks * token_lanes, cols), dtype=np.int8)
    padded[:tokens] = activations.numpy()
    # One beat per column of a block: block-major, then column, then token lane.
    columns_of_blocks = padded.reshape(blocks, token_lanes, cols).transpose(0, 2, 1)
    activation_beats = _pack_elements(formats.activation_column, columns_of_blocks.reshape(-1))

    # Pack one pass, then repeat its bytes for every token block: the weights are re-streamed
    # per block, and repeating 8-bit bytes rather than 64-bit integers keeps big layers cheap.
    empty = np.zeros((0, 0), dtype=np.uint8)
    if index == ColumnIndex.DELTA:
        nnz = coded.entries
        row_pointers = _pack_elements(DeltaCode.row_length, coded.row_lengths)
        columns = _pack_bit_array(formats.delta_word, _words(coded.codes, lanes))
        values = _pack_elements(formats.value_word, _words(coded.values, lanes))
    elif mode == Mode.SPARSE:
        nnz = weights.nnz
        row_pointers = _pack_elements(formats.row_pointer, weights.indptr[1:])
        columns = _pack_elements(formats.column_word, _words(weights.indices, lanes))
        values = _pack_elements(formats.value_word, _words(weights.data, lanes))
    else:
        nnz = rows * cols
        dense = weights.to_dense().numpy().reshape(-1)
        row_pointers, columns = empty, empty
        values = _pack_elements(formats.value_word, _words(dense, lanes))
    row_pointers, columns, values = (np.tile(stream, (blocks, 1)) if stream.size else stream
                                     for stream in (row_pointers, columns, values))

    job = _job_payload(config, mode, index, Sparsity.WEIGHTS, rows, cols, blocks, nnz)
    return PackedJob(mode=mode, index=index, rows=rows, cols=cols, tokens=tokens,
                     token_blocks=blocks,
                     nnz=nnz, job=job, activations=activation_beats, row_pointers=row_pointers,
                     columns=columns, values=values)


def _job_payload(config, mode, index, sparsity, rows, cols, blocks, nnz):
    """The ``job`` beat as an integer; the optional fields only where the config has them."""
    formats = _formats(config)
    fields = {"mode": mode, "rows": rows, "cols": cols, "token_blocks": blocks, "nnz": nnz}
    if formats.delta is not None:
        fields["index"] = index
    if config.dual_sparse:
        fields["sparsity"] = sparsity
    return formats.job.const(fields).as_value().value


def _pack_dual_job(config, weights, activations):
    """A DUAL job: the job beat and the pairs, no activations or weight streams."""
    rows, cols = weights.shape
    tokens = activations.shape[0]
    blocks = token_blocks(tokens, config)
    empty = np.zeros((0, 0), dtype=np.uint8)
    job = _job_payload(config, Mode.SPARSE, ColumnIndex.CSR, Sparsity.DUAL, rows, cols, blocks,
                       weights.nnz)
    return PackedJob(mode=Mode.SPARSE, index=ColumnIndex.CSR, rows=rows, cols=cols,
                     tokens=tokens, token_blocks=blocks, nnz=weights.nnz, job=job,
                     activations=empty, row_pointers=empty, columns=empty, values=empty,
                     sparsity=Sparsity.DUAL, pairs=_pack_pairs(config, weights, activations))


def check_operands(weights, activations):
    """Raises a clear error unless ``activations`` are int8 ``[tokens, in_features]`` with at
    least one token and the input features of ``weights``."""
    if not isinstance(activations, torch.Tensor) or activations.dtype != torch.int8:
        raise TypeError("activations must be an int8 torch.Tensor, not "
                        f"{getattr(activations, 'dtype', type(activations).__name__)}")
    if activations.dim() != 2 or activations.shape[0] < 1:
        raise ValueError("activations must be 2-D [tokens, in_features] with at least one "
                         f"token, not {tuple(activations.shape)}")
    if activations.shape[1] != weights.shape[1]:
        raise ValueError(f"activations have {activations.shape[1]} features but the weights "
                         f"have {weights.shape[1]} input features")


def check_job_fits(config, weights, activations):
    """Raises a clear error unless ``weights`` and ``activations`` make one job of ``config``."""
    check_operands(weights, activations)
    rows, cols = weights.shape
    tokens = activations.shape[0]
    if not 1 <= cols <= config.max_in_features:
        raise ValueError(f"the layer has {cols} input features but this array holds at most "
                         f"{config.max_in_features}: use a config with max_in_features >= {cols}")
    if not 1 <= rows <= config.max_out_features:
        raise ValueError(f"one job takes 1 to {config.max_out_features} rows, not {rows}: "
                         "split the rows (the driver does this)")
    if not 1 <= tokens <= config.max_tokens:
        raise ValueError(f"one job takes 1 to {config.max_tokens} tokens, not {tokens}: "
                         "split the tokens (the driver does this)")


def unpack_sums(config, beats, rows, tokens):
    """Turns the ``sums`` beats of a job back into an int32 tensor [tokens, rows].

    Parameters
    ----------
    config : ArrayConfig
    beats : numpy.ndarray of uint8, [token_blocks * rows, bytes per beat]
    rows, tokens : int

    Returns
    -------
    torch.Tensor of int32
    """
    formats = CoreFormats(config)
    dtype, count = _element_dtype(formats.sums)
    blocks = token_blocks(tokens, config)
    beats = np.ascontiguousarray(beats, dtype=np.uint8)
    expected = (blocks * rows, count * dtype.itemsize)
    if beats.shape != expected:
        raise ValueError(f"expected {expected[0]} sums beats of {expected[1]} bytes, "
                         f"got an array of shape {beats.shape}")
    sums = beats.view(dtype).reshape(blocks, rows, count).transpose(0, 2, 1)
    return torch.from_numpy(sums.reshape(blocks * count, rows)[:tokens].astype(np.int32).copy())


def beats_to_ints(beats):
    """Each beat of a ``[beats, bytes]`` array as a Python integer (little-endian)."""
    return [int.from_bytes(beat.tobytes(), "little") for beat in beats]
