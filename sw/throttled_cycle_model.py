"""The exact cycle model of :class:`sparsemac.hw.core.SparseMACCore` fed at a limited rate.

With every input stream valid in every cycle the schedule is closed-form
(:func:`sparsemac.sw.cycle_model.job_cycles`). When the streams follow the credit scheme of
:mod:`sparsemac.sw.memory` instead, which beat is offered when depends on when the core took
the previous one, so this module replays the core's handshakes cycle by cycle, register for
register:

* the activation buffer takes a ``fill`` beat while its load bank is empty, and frees a bank
  when the last chunk of a block is accepted;
* the CSR streamer fetches a column and value word together whenever its ring holds at most
  2K entries, takes the next row end pointer when its one-row look-ahead register is empty
  (or being consumed), and emits a chunk when the row's entries are in the ring and its output
  register is free (with ``span_rows``, a row's last chunk also takes the head of the next row
  when the streamer decides so, as :class:`~sparsemac.hw.csr_streamer.CSRWeightStreamer`
  does);
* a chunk is accepted while the bank of its block is full; the last chunk's sums are accepted
  :func:`~sparsemac.sw.cycle_model.pipeline_latency` cycles later, and that cycle, counting the
  job's acceptance as cycle 0, is what the hardware counter reports;
* with ``ArrayConfig.registered`` each input passes a two-beat skid buffer: the buffer takes
  what the stream offers whenever it holds at most one beat, and the core takes from the buffer
  from the cycle after.

Cycles in which no handshake can happen (every blocked stream waiting for credit) are skipped in
one step, so a slow link costs no more replay time than a fast one. The replay is compiled with
Numba (a 128-token MiniLM FFN layer, sparse and dense: 0.4 s instead of 29 s). A replay depends
only on the job's shape, its row lengths and the streams' rates, so it is kept
(:data:`REPLAY_CACHE` jobs): a model's layers of one shape share their dense jobs, and a sweep
replays each of them once.
"""

import functools
from dataclasses import dataclass

import numba
import numpy as np

from ..hw.config import ArrayConfig
from ..hw.formats import ColumnIndex, Mode
from .cache import cache_dir
from .cycle_model import (DUAL_FIRST_BEAT, dual_job_cycles, dual_row_beats, dual_row_lengths,
                          job_cycles, job_tiles, pipeline_latency, token_blocks)
from .memory import (RATE_ONE, JobStreams, MemoryModel, dual_job_streams, job_streams,
                     stream_rates)
from .packing import tile_row_lengths

__all__ = ["ScheduleCounts", "CycleBounds", "ThrottledCycles", "LayerCycles", "DualLayerCycles",
           "throttled_job_cycles", "throttled_dual_job_cycles", "layer_cycles",
           "dual_layer_cycles",
           "replay_schedule", "REPLAY_CACHE"]

#: Replays kept, least recently used first out (each a few hundred bytes).
REPLAY_CACHE = 4096


@dataclass(frozen=True)
class ScheduleCounts:
    """What the core did in one job, counted from its exact schedule."""
    #: The hardware cycle count.
    cycles: int
    #: Chunks accepted by the activation buffer (each one operand beat of the MAC array).
    chunks: int
    #: Activation columns written into the buffer.
    fill_beats: int
    #: Weight words (K values, and K columns in sparse mode) fetched into the ring.
    words: int
    #: Row end pointers taken.
    row_pointers: int


@dataclass(frozen=True)
class CycleBounds:
    """Cycles under a memory model, next to the bounds that explain them."""
    #: What the hardware counter reports with the streams throttled.
    cycles: int
    #: The same work with ideal streams (:func:`~sparsemac.sw.cycle_model.job_cycles`).
    compute_cycles: int
    #: Cycles the weight path needs for its bytes alone (0 when it is unthrottled): a lower bound of
    #: ``cycles``.
    weight_transfer_cycles: int
    #: Cycles the activation path needs for its bytes alone, likewise.
    activation_transfer_cycles: int
    #: Weight bytes streamed in, padding included.
    weight_bytes: int
    #: Activation bytes streamed in.
    activation_bytes: int
    #: Sum bytes streamed out.
    output_bytes: int

    @property
    def bound(self):
        """What limits: ``compute``, ``weights`` or ``activations``, the largest bound."""
        bounds = {"compute": self.compute_cycles, "weights": self.weight_transfer_cycles,
                  "activations": self.activation_transfer_cycles}
        return max(bounds, key=bounds.get)


@dataclass(frozen=True)
class ThrottledCycles(CycleBounds):
    """One job's :class:`CycleBounds` and its schedule."""
    #: What the core did in the job.
    schedule: ScheduleCounts


@dataclass(frozen=True)
class LayerCycles(CycleBounds):
    """A whole layer's jobs: the sums of their :class:`ThrottledCycles`."""
    #: Jobs of the layer.
    jobs: int
    #: Chunks over all jobs (:attr:`ScheduleCounts.chunks` summed).
    chunks: int
    #: Activation columns written over all jobs.
    fill_beats: int
    #: Weight words fetched over all jobs.
    words: int
    #: Row end pointers taken over all jobs.
    row_pointers: int


@dataclass(frozen=True)
class DualLayerCycles(LayerCycles):
    """A whole layer's DUAL jobs (``chunks`` are their pairs beats)."""
    #: The pairs issued: nonzero weights by nonzero activations.
    pairs: int


def layer_cycles(weights, tokens, config, mode=Mode.SPARSE, memory=None, index=ColumnIndex.CSR):
    """Cycles and schedule counts of a whole layer, split into jobs as the driver splits it.

    Parameters
    ----------
    weights : CSRMatrix
    tokens : int
    config : ArrayConfig
    mode : Mode
    memory : MemoryModel or None
    index : ColumnIndex
        Of the sparse jobs.

    Returns
    -------
    LayerCycles
    """
    if Mode(mode) == Mode.DENSE:
        index = ColumnIndex.CSR
    jobs = [throttled_job_cycles(tile_row_lengths(tile, weights, config, index), tile.cols,
                                 tile.tokens, config, mode, memory, index)
            for tile in job_tiles(weights.rows, weights.cols, tokens, config)]
    return _layer_of(jobs)


def _layer_of(jobs, kind=LayerCycles, **fields):
    """The ``kind`` of :class:`LayerCycles` of ``jobs`` (:class:`ThrottledCycles`), with
    ``fields``."""
    totals = {name: sum(getattr(job, name) for job in jobs)
              for name in ("cycles", "compute_cycles", "weight_transfer_cycles",
                           "activation_transfer_cycles", "weight_bytes", "activation_bytes",
                           "output_bytes")}
    counts = {name: sum(getattr(job.schedule, name) for job in jobs)
              for name in ("chunks", "fill_beats", "words", "row_pointers")}
    return kind(jobs=len(jobs), **totals, **counts, **fields)


def dual_layer_cycles(weights, activations, config, memory=None):
    """Cycles and schedule counts of a whole layer run as DUAL jobs, split as the driver splits
    it.

    Parameters
    ----------
    weights : CSRMatrix
    activations : torch.Tensor or numpy.ndarray of int8, [tokens, cols]
    config : ArrayConfig
        Dual-sparse.
    memory : MemoryModel or None

    Returns
    -------
    DualLayerCycles
    """
    activations = np.asarray(activations)
    jobs, pairs = [], 0
    for tile in job_tiles(weights.rows, weights.cols, len(activations), config):
        matrix = tile.weights(weights)
        block = activations[tile.token_start:tile.token_stop, tile.col_start:tile.col_stop]
        beats = int(dual_row_beats(matrix, block, config).sum())
        jobs.append(throttled_dual_job_cycles(beats, matrix.rows, tile.tokens, config, memory))
        pairs += int(dual_row_lengths(matrix, block, config).sum())
    return _layer_of(jobs, DualLayerCycles, pairs=pairs)


def _transfer_cycles(streams):
    """Cycles to move every byte of ``streams`` at their rates (0 if any is unthrottled)."""
    cycles = 0
    for stream in streams:
        if stream.beats and stream.rate == 0:
            return 0
        if stream.beats:
            cycles = max(cycles, -(-stream.total_bytes * RATE_ONE // stream.rate))
    return cycles


def throttled_job_cycles(row_lengths, cols, tokens, config, mode=Mode.SPARSE, memory=None,
                         index=ColumnIndex.CSR):
    """Predicts the hardware cycle count of one job fed by ``memory``.

    Parameters
    ----------
    row_lengths : array of int
        Entries streamed per output row (nonzeros, or a delta job's entries with its escapes:
        :func:`~sparsemac.sw.packing.streamed_row_lengths`); in dense mode only its length
        matters.
    cols : int
    tokens : int
    config : ArrayConfig
    mode : Mode
    memory : MemoryModel or None
        None or an ideal model gives the ideal-stream count.
    index : ColumnIndex
        Of a sparse job: sets the bytes of its row and column beats.

    Returns
    -------
    ThrottledCycles

    Raises
    ------
    ValueError
        If the job is outside what one job of ``config`` can hold.
    """
    mode = Mode(mode)
    row_lengths = np.asarray(row_lengths, dtype=np.int64)
    compute = job_cycles(row_lengths, cols, tokens, config, mode)
    nnz = int(row_lengths.sum()) if mode == Mode.SPARSE else len(row_lengths) * cols
    blocks = token_blocks(tokens, config)
    streams = job_streams(config, mode, len(row_lengths), cols, nnz, blocks, index)
    streams = _throttled(streams, memory)
    if memory is None or memory.ideal:
        # The closed form gives the same counts (tests check the replay against it), faster.
        schedule = ScheduleCounts(
            cycles=compute.total, chunks=compute.issue, fill_beats=streams.activations.beats,
            words=streams.values.beats, row_pointers=streams.row_pointers.beats)
    else:
        # A dense job's row lengths do not matter, only how many rows it has.
        lengths = row_lengths.tobytes() if mode == Mode.SPARSE else len(row_lengths)
        schedule = _cached_replay(lengths, cols, tokens, config, mode, streams)
    return ThrottledCycles(
        cycles=schedule.cycles, compute_cycles=compute.total,
        weight_transfer_cycles=_transfer_cycles(
            [streams.row_pointers, streams.columns, streams.values]),
        activation_transfer_cycles=_transfer_cycles([streams.activations]),
        weight_bytes=streams.weight_bytes, activation_bytes=streams.activation_bytes,
        output_bytes=blocks * len(row_lengths) * config.token_lanes * config.SUM_WIDTH // 8,
        schedule=schedule)


def _throttled(streams, memory):
    """``streams`` at ``memory``'s rates (unthrottled for None)."""
    if memory is None:
        return streams
    if not isinstance(memory, MemoryModel):
        raise TypeError(f"memory must be a MemoryModel, not {memory!r}")
    return stream_rates(memory, streams)


def throttled_dual_job_cycles(beats, rows, tokens, config, memory=None):
    """The cycles of a DUAL job of ``beats`` pairs beats with the pairs at ``memory``'s rate.

    The pairs are the whole job: the core takes a beat in every cycle from cycle 1 on in which
    one is offered, and a bucket that starts empty and holds at most one beat offers one every
    ``w = max(1, ceil(beat / rate))`` cycles, so the last beat is taken in cycle ``beats * w``
    (one later through the skid buffer of a registered array, ``ArrayConfig.registered``) and its
    sums are accepted four cycles later (six with ``registered``).

    Parameters
    ----------
    beats : int
        The sum of :func:`~sparsemac.sw.cycle_model.dual_row_beats`.
    rows, tokens : int
        The job's shape (for the bytes of its sums).
    config : ArrayConfig
        Dual-sparse.
    memory : MemoryModel or None

    Returns
    -------
    ThrottledCycles
    """
    compute = dual_job_cycles(beats, config)
    streams = _throttled(dual_job_streams(config, beats), memory)
    pairs = streams.pairs
    wait = max(DUAL_FIRST_BEAT, -(-pairs.bytes * RATE_ONE // pairs.rate) if pairs.rate else 0)
    # A throttled beat passes the skid buffer of a registered array: the core takes it a cycle
    # after the bucket offers it. Unthrottled beats are on offer from cycle 0 and wait there.
    skid = 1 if config.registered and pairs.rate else 0
    schedule = ScheduleCounts(cycles=beats * wait + skid + pipeline_latency(config, dual=True),
                              chunks=beats, fill_beats=0, words=0, row_pointers=0)
    return ThrottledCycles(
        cycles=schedule.cycles, compute_cycles=compute.total,
        weight_transfer_cycles=_transfer_cycles([pairs]), activation_transfer_cycles=0,
        weight_bytes=streams.weight_bytes, activation_bytes=0,
        output_bytes=token_blocks(tokens, config) * rows * config.token_lanes
        * config.SUM_WIDTH // 8,
        schedule=schedule)


@functools.lru_cache(maxsize=REPLAY_CACHE)
def _cached_replay(lengths, cols, tokens, config, mode, streams):
    """:func:`replay_schedule` of a job named by hashable values: ``lengths`` is the bytes of
    the int64 row lengths, or the row count of a dense job."""
    if isinstance(lengths, int):
        row_lengths = np.full(lengths, cols, dtype=np.int64)
    else:
        row_lengths = np.frombuffer(lengths, dtype=np.int64)
    return replay_schedule(row_lengths, cols, tokens, config, mode, streams)


def replay_schedule(row_lengths, cols, tokens, config, mode, streams):
    """Replays one job handshake by handshake with each input stream at its credit rate.

    Parameters
    ----------
    row_lengths : array of int
    cols, tokens : int
    config : ArrayConfig
    mode : Mode
    streams : JobStreams
        Beats, bytes per beat and rates, from :func:`~sparsemac.sw.memory.stream_rates`.

    Returns
    -------
    ScheduleCounts

    Raises
    ------
    RuntimeError
        If the replay reaches a cycle in which nothing can ever move again.
    """
    if not isinstance(config, ArrayConfig):
        raise TypeError(f"config must be an ArrayConfig, not {config!r}")
    if not isinstance(streams, JobStreams):
        raise TypeError(f"streams must be a JobStreams, not {streams!r}")
    sparse = Mode(mode) == Mode.SPARSE
    lengths = np.ascontiguousarray(row_lengths if sparse else np.zeros(0), dtype=np.int64)
    rows = len(row_lengths)
    blocks = token_blocks(tokens, config)
    nnz = int(lengths.sum()) if sparse else rows * cols
    buckets = np.array([[stream.beats, stream.bytes * RATE_ONE,
                         # An unthrottled stream gains a whole beat per cycle: never short. Its
                         # beats are on offer from cycle 0 (the Amaranth bench's stream_put_all).
                         stream.rate or stream.bytes * RATE_ONE, stream.rate == 0]
                        for stream in streams], dtype=np.int64)
    counts = _replay(lengths, rows, cols, blocks, nnz, config.lanes, sparse,
                     bool(config.span_rows), buckets, pipeline_latency(config),
                     bool(config.registered))
    if counts[0] < 0:
        raise RuntimeError(f"the cycle model's replay is stuck in cycle {-counts[0]}: no stream "
                           "can move and none is waiting for credit")
    return ScheduleCounts(*(int(count) for count in counts))


# Compiled once per machine: Numba keeps the machine code in the build cache, not in the source
# tree (it reads the folder when a cached function is declared).
numba.config.CACHE_DIR = str(cache_dir("numba"))


#: The rows of the replay's stream arrays (the order of ``JobStreams``).
_ACTIVATIONS, _POINTERS, _COLUMNS, _VALUES = 0, 1, 2, 3


@numba.njit(cache=True)
def _take(stream, left, level, beat, held, registered):
    """The core takes a beat of ``stream``: from its skid buffer with ``registered``, else
    straight from its bucket."""
    if registered:
        held[stream] -= 1
    else:
        left[stream] -= 1
        level[stream] -= beat[stream]


@numba.njit(cache=True)
def _replay(lengths, rows, cols, blocks, nnz, lanes, sparse, span, buckets, latency,
            registered):
    """The replay itself, compiled: ``(cycles, chunks, fill_beats, words, row_pointers)``, or a
    negative cycle count (the cycle, negated) if nothing can move any more.

    ``buckets`` holds a row per stream (activations, row pointers, columns, values, and the
    pairs of a DUAL job, which is not replayed here: :func:`throttled_dual_job_cycles`): beats,
    credits per beat, credits per cycle, and whether the stream offers a beat in cycle 0 (an
    unthrottled one does). With ``registered`` each stream passes a two-beat skid buffer that
    takes a beat whenever it holds at most one and offers it from the next cycle on.
    """
    left = buckets[:4, 0].copy()
    beat = buckets[:4, 1].copy()
    rate = buckets[:4, 2].copy()
    held = np.zeros(4, dtype=np.int64)
    if registered:
        # A skid buffer takes the beat a stream offers in cycle 0, before the job starts.
        for stream in range(4):
            if buckets[stream, 3] != 0 and left[stream] != 0:
                held[stream] = 1
                left[stream] -= 1
    # The edge of cycle 0, in which the job is accepted, refills the empty buckets once.
    level = np.minimum(rate, beat)
    offered = np.zeros(4, dtype=np.bool_)
    ready = np.zeros(4, dtype=np.bool_)
    intake = np.zeros(4, dtype=np.bool_)

    # Registers after that edge (the RTL's start assignments).
    busy, blocks_to_emit, row_index, in_row = True, blocks, 0, False
    occupancy, fetch_left, blocks_to_fetch = 0, nnz, blocks - 1
    next_valid, next_length, next_take = not sparse, cols, min(lanes, cols)
    next_head = 0
    pointer_row, pointer_blocks = 0, blocks if sparse else 0
    row_left = row_take = 0
    chunk_valid = chunk_block_last = False
    full0 = full1 = False
    blocks_to_load, load_bank, load_column, read_bank = blocks, 0, 0, 0
    blocks_accepted = chunks = fill_beats = words = pointers_taken = 0
    ring_limit = 2 * lanes

    cycle = 1
    while True:
        # Combinational: which handshakes the edge at the end of this cycle takes. A stream is
        # ready for the core when its bucket offers a beat, or with ``registered`` when its
        # skid buffer holds one (and the buffer takes what the bucket offers).
        for stream in range(4):
            offered[stream] = left[stream] != 0 and level[stream] >= beat[stream]
            intake[stream] = registered and offered[stream] and held[stream] < 2
            ready[stream] = held[stream] != 0 if registered else offered[stream]
        load_full = full1 if load_bank else full0
        fill = blocks_to_load != 0 and not load_full and ready[_ACTIVATIONS]
        chunk_ready = full1 if read_bank else full0
        accept = chunk_valid and chunk_ready
        fetch = (fetch_left != 0 and occupancy <= ring_limit and ready[_VALUES]
                 and (not sparse or ready[_COLUMNS]))
        if in_row:
            row_part, length = row_take, row_left
        else:
            row_part, length = next_take, next_length
        # Spanning sparse rows: every row is emitted from the row registers (the first one is
        # primed there), and a row's last chunk waits for the next row's length unless no
        # row follows in the job.
        spans = span and sparse
        primed = spans and busy and not in_row and next_valid
        spanning = (spans and in_row and 0 < row_take < lanes and row_index != rows - 1
                    and next_valid and next_head != 0)
        extra = min(lanes - row_take, next_head) if spanning else 0
        head_left = next_length - extra
        had_next = next_valid
        take = row_part + extra
        if spans:
            row_ready = in_row and (row_left > lanes or next_valid or pointer_blocks == 0)
        else:
            row_ready = in_row or next_valid
        emit = (busy and (not chunk_valid or chunk_ready) and row_ready and occupancy >= take)
        if spans:
            next_consumed = primed or (emit and row_left <= lanes and next_valid)
        else:
            next_consumed = emit and not in_row and sparse
        pointer = (pointer_blocks != 0 and (not next_valid or next_consumed)
                   and ready[_POINTERS])

        if not (fill or accept or fetch or emit or pointer or primed or intake.any()):
            # Nothing moves until a stream short of credit has a beat: jump there.
            edges = -1
            for stream in range(4):
                if left[stream] != 0 and level[stream] < beat[stream]:
                    wait = -(-(beat[stream] - level[stream]) // rate[stream])
                    if edges < 0 or wait < edges:
                        edges = wait
            if edges < 0:
                return (-cycle, 0, 0, 0, 0)
            level = np.minimum(level + edges * rate, beat)
            cycle += edges
            continue

        for stream in range(4):
            if intake[stream]:
                left[stream] -= 1
                level[stream] -= beat[stream]
                held[stream] += 1
        if fill:
            _take(_ACTIVATIONS, left, level, beat, held, registered)
            fill_beats += 1
            if load_column == cols - 1:
                load_column = 0
                if load_bank:
                    full1 = True
                else:
                    full0 = True
                load_bank ^= 1
                blocks_to_load -= 1
            else:
                load_column += 1
        if accept:
            chunks += 1
            if chunk_block_last:
                if read_bank:
                    full1 = False
                else:
                    full0 = False
                read_bank ^= 1
                blocks_accepted += 1
                if blocks_accepted == blocks:
                    return (cycle + latency, chunks, fill_beats, words, pointers_taken)
        if fetch:
            _take(_VALUES, left, level, beat, held, registered)
            if sparse:
                _take(_COLUMNS, left, level, beat, held, registered)
            words += 1
            occupancy += lanes if fetch_left > lanes else fetch_left
            if fetch_left > lanes:
                fetch_left -= lanes
            elif blocks_to_fetch != 0:
                fetch_left = nnz
                blocks_to_fetch -= 1
            else:
                fetch_left = 0
        if pointer:
            _take(_POINTERS, left, level, beat, held, registered)
            pointers_taken += 1
            next_valid = True
            next_length = lengths[pointer_row]
            next_take = lanes if next_length > lanes else next_length
            next_head = lanes - 1 if next_length >= lanes else max(next_length - 1, 0)
            if pointer_row == rows - 1:
                pointer_row = 0
                pointer_blocks -= 1
            else:
                pointer_row += 1
        elif next_consumed:
            next_valid = False
        if emit:
            occupancy -= take
            rest = length - row_part
            chunk_valid = True
            chunk_block_last = rest == 0 and row_index == rows - 1
            in_row = rest != 0
            row_left, row_take = rest, (lanes if rest > lanes else rest)
            if spans and rest == 0:
                # The next row follows at once, its head already sent if the chunk spans.
                in_row = had_next
                row_left, row_take = head_left, (lanes if head_left > lanes else head_left)
            if chunk_block_last:
                row_index = 0
                blocks_to_emit -= 1
                busy = blocks_to_emit != 0
            elif rest == 0:
                row_index += 1
        elif accept:
            chunk_valid = False
        if primed:
            in_row = True
            row_left, row_take = head_left, (lanes if head_left > lanes else head_left)

        # The clock edge of the credit scheme: gain the rate, hold at most one beat.
        level = np.minimum(level + rate, beat)
        cycle += 1
