"""Reference models of what each DUT must emit for a :class:`~.cases.Case`.

The numbers come from the project's pure reference functions: sums from
:func:`sparsemac.sw.golden.golden_matmul`, cycle counts from
:func:`sparsemac.sw.cycle_model.job_cycles` (:func:`~sparsemac.sw.cycle_model.dual_job_cycles`
for a DUAL job), input beats from
:func:`sparsemac.sw.packing.pack_job`. Payload integers are built with the layouts of
:class:`sparsemac.hw.formats.CoreFormats` (``layout.const(...)``), never with shifts.
"""

from dataclasses import dataclass

import torch
from amaranth.hdl import Shape

from ...hw.formats import ColumnIndex, CoreFormats, CoreStreams, Mode, Sparsity
from ...sw.cycle_model import (dual_job_cycles, dual_row_beats, job_cycles, pass_chunks,
                               token_blocks)
from ...sw.golden import golden_matmul
from ...sw.packing import beats_to_ints, coded_weights, pack_job, streamed_row_lengths
from .scoreboard import Expected

__all__ = ["Chunk", "row_chunks", "CoreExpectation", "core_expectation", "chunk_expectation",
           "mac_array_stimulus", "block_sums", "input_beats"]


def _bits(layout, value):
    return layout.const(value).as_value().value


def _block_label(config, block):
    first = block * config.token_lanes
    return f"block {block} (tokens {first}-{first + config.token_lanes - 1})"


def block_sums(config, case):
    """The golden sums, zero-padded to whole blocks: int32 ``[blocks * T, rows]``.

    Padding tokens have zero activations, so their sums are zero, as the hardware's are.
    """
    blocks = token_blocks(case.tokens, config)
    padded = torch.zeros(blocks * config.token_lanes, case.weights.cols, dtype=torch.int8)
    padded[:case.tokens] = case.activations
    return golden_matmul(case.weights, padded)


@dataclass(frozen=True)
class CoreExpectation:
    """What the core must do for one case."""
    #: The input beats.
    packed: object
    #: One beat per row per token block, block-major.
    sums: list[Expected]
    #: The cycle model's count with ideal streams.
    cycles: int


def core_expectation(config, case):
    """The inputs, expected ``sums`` beats and ideal cycle count of ``case`` on the core."""
    formats = CoreFormats(config)
    packed = pack_job(config, case.weights, case.activations, case.mode, case.index,
                      case.sparsity)
    sums = block_sums(config, case)
    token_lanes = config.token_lanes
    expected = []
    for block in range(packed.token_blocks):
        lanes = sums[block * token_lanes:(block + 1) * token_lanes]
        for row in range(case.weights.rows):
            expected.append(Expected(_bits(formats.sums, lanes[:, row].tolist()),
                                     f"{_block_label(config, block)}, row {row}"))
    if case.sparsity == Sparsity.DUAL:
        cycles = dual_job_cycles(int(dual_row_beats(case.weights, case.activations,
                                                    config).sum()), config).total
    else:
        lengths = streamed_row_lengths(config, case.weights, case.index)
        cycles = job_cycles(lengths, case.weights.cols, case.tokens, config, case.mode).total
    return CoreExpectation(packed=packed, sums=expected, cycles=cycles)


@dataclass(frozen=True)
class Chunk:
    """Up to K (column, value) pairs as the streamer hands them to the array: of ``row``, and
    with ``span_rows`` from lane ``split`` on of the next row."""
    #: The row of the chunk's first lane.
    row: int
    #: The column of each lane.
    columns: tuple
    #: The int8 weight of each lane.
    values: tuple
    #: The chunk closes `row`.
    row_last: bool
    #: The chunk is the last of its pass (token block).
    block_last: bool
    #: The first lane of the next row in a chunk that spans rows; K on every other chunk.
    split: int


def row_chunks(config, case, streamed=False):
    """The chunks of one pass over the weights: ``max(1, ceil(n / K))`` per row of ``n``, or
    with ``span_rows`` the schedule of :func:`~sparsemac.sw.cycle_model.pass_chunks`.

    In dense mode every row has ``cols`` entries, zeros included, at columns ``0..cols-1``. A
    delta job's chunks hold its entries, escapes included: with ``streamed``, as the streamer
    emits them (codes and value bytes), otherwise as the decoder hands them to the buffer
    (columns, and weight 0 for an escape).
    """
    lanes, weights = config.lanes, case.weights
    if case.mode == Mode.DENSE:
        dense = weights.to_dense()
        chunks = []
        for row in range(weights.rows):
            values = dense[row].tolist()
            for offset in range(0, weights.cols, lanes):
                last = offset + lanes >= weights.cols
                chunks.append(Chunk(row, tuple(range(offset, min(offset + lanes, weights.cols))),
                                    tuple(values[offset:offset + lanes]), last,
                                    last and row == weights.rows - 1, lanes))
        return chunks
    if case.index == ColumnIndex.DELTA:
        coded = coded_weights(config, weights, case.index)
        lengths = coded.row_lengths
        columns, values = (coded.codes, coded.values) if streamed else coded.decoded()
    else:
        lengths, columns, values = weights.row_lengths(), weights.indices, weights.data
    columns, values = columns.tolist(), values.tolist()
    return [Chunk(chunk.row, tuple(columns[chunk.start:chunk.stop]),
                  tuple(values[chunk.start:chunk.stop]), chunk.row_last,
                  chunk.row_last and chunk.row == weights.rows - 1, chunk.split)
            for chunk in pass_chunks(lengths, lanes, bool(config.span_rows))]


def _split_field(config):
    """A function of a :class:`Chunk` giving the ``split`` member of a payload (with ``mask``,
    that value's bits instead): ``{}`` for an array without ``span_rows``, whose layouts lack
    the field."""
    if not config.span_rows:
        return lambda chunk, mask=None: {}
    all_bits = (1 << Shape.cast(range(config.lanes + 1)).width) - 1
    return lambda chunk, mask=None: {"split": chunk.split if mask is None else mask & all_bits}


def chunk_expectation(config, case):
    """The streamer's expected ``chunks`` beats for every pass of ``case``.

    Unused lanes must carry value 0; their columns are don't-care (masked out).
    """
    formats = CoreFormats(config)
    layout, lanes = formats.coded_chunk, config.lanes
    all_columns = (1 << layout.members["columns"].elem_shape.width) - 1
    blocks = token_blocks(case.tokens, config)
    chunks_of_pass = row_chunks(config, case, streamed=True)
    split = _split_field(config)
    expected = []
    for block in range(blocks):
        for index, chunk in enumerate(chunks_of_pass):
            used = len(chunk.values)
            value = _bits(layout, {
                "columns": list(chunk.columns) + [0] * (lanes - used),
                "values": list(chunk.values) + [0] * (lanes - used),
                "row_last": chunk.row_last, "block_last": chunk.block_last, **split(chunk)})
            mask = _bits(layout, {
                "columns": [all_columns] * used + [0] * (lanes - used),
                "values": [-1] * lanes, "row_last": 1, "block_last": 1,
                **split(chunk, mask=-1)})
            expected.append(Expected(value, f"block {block}, row {chunk.row}, chunk {index}",
                                     mask))
    return expected


def mac_array_stimulus(config, case):
    """``operands`` beats feeding ``case`` to the MAC array, and the ``sums`` it must return.

    Each chunk of :func:`row_chunks` becomes one beat: its weights and the T activations of
    each of its columns (unused lanes: weight 0, activations of column 0), as the activation
    buffer would deliver them (a dual-sparse array's ``array_operands``: each weight for every
    token, as the operand select broadcasts it).

    Returns
    -------
    operands : list of int
    expected : list of Expected
    """
    formats = CoreFormats(config)
    lanes, token_lanes = config.lanes, config.token_lanes
    sums = block_sums(config, case)
    padded_rows = sums.shape[0]
    activations = torch.zeros(padded_rows, case.weights.cols, dtype=torch.int8)
    activations[:case.tokens] = case.activations
    chunks_of_pass = row_chunks(config, case)
    split = _split_field(config)
    operands, expected = [], []
    for block in range(padded_rows // token_lanes):
        columns_of_block = activations[block * token_lanes:(block + 1) * token_lanes].T
        for chunk in chunks_of_pass:
            used = len(chunk.values)
            columns = list(chunk.columns) + [0] * (lanes - used)
            weights = list(chunk.values) + [0] * (lanes - used)
            if config.dual_sparse:
                weights = [[weight] * token_lanes for weight in weights]
            operands.append(_bits(formats.array_operands, {
                "weights": weights,
                "activations": [columns_of_block[column].tolist() for column in columns],
                "row_last": chunk.row_last, **split(chunk)}))
            if chunk.row_last:
                lanes_of_row = sums[block * token_lanes:(block + 1) * token_lanes, chunk.row]
                expected.append(Expected(_bits(formats.sums, lanes_of_row.tolist()),
                                         f"{_block_label(config, block)}, row {chunk.row}"))
    return operands, expected


def input_beats(config, packed):
    """The input beats of a :class:`~sparsemac.sw.packing.PackedJob` of ``config`` as integers,
    per core data input stream (``CoreStreams.data_inputs``)."""
    return {name: beats_to_ints(getattr(packed, name))
            for name in CoreStreams(config).data_inputs}
