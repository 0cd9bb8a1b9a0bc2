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
    sums are accepted four cycles later (seven with ``registered``).

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


@numba.njit(cache=True, inline="always")
def _offers(left, level, beat, held, registered):
    """``(ready, intake)`` of one input stream in a cycle: whether the core may take a beat (from
    the bucket, or with ``registered`` from the skid buffer), and whether the skid buffer takes
    one from the bucket (it does while it holds at most one)."""
    offered = left != 0 and level >= beat
    if registered:
        return held != 0, offered and held < 2
    return offered, False


@numba.njit(cache=True, inline="always")
def _moved(left, level, beat, held, registered, intake, taken):
    """``(left, level, held)`` of one input stream after the edge: the skid buffer's ``intake``
    and the core's take (``taken``), from the skid buffer or straight from the bucket."""
    if intake:
        left, level, held = left - 1, level - beat, held + 1
    if taken and registered:
        held -= 1
    elif taken:
        left, level = left - 1, level - beat
    return left, level, held


@numba.njit(cache=True, inline="always")
def _early(left, offers_early, registered):
    """Beats of one input stream in its skid buffer when the job starts: the one an unthrottled
    stream offers in cycle 0, with ``registered``."""
    return 1 if registered and offers_early != 0 and left != 0 else 0


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
    a_beat, p_beat, c_beat, v_beat = buckets[0, 1], buckets[1, 1], buckets[2, 1], buckets[3, 1]
    a_rate, p_rate, c_rate, v_rate = buckets[0, 2], buckets[1, 2], buckets[2, 2], buckets[3, 2]
    a_held = _early(buckets[0, 0], buckets[0, 3], registered)
    p_held = _early(buckets[1, 0], buckets[1, 3], registered)
    c_held = _early(buckets[2, 0], buckets[2, 3], registered)
    v_held = _early(buckets[3, 0], buckets[3, 3], registered)
    a_left, p_left = buckets[0, 0] - a_held, buckets[1, 0] - p_held
    c_left, v_left = buckets[2, 0] - c_held, buckets[3, 0] - v_held
    # The edge of cycle 0, in which the job is accepted, refills the empty buckets once.
    a_level, p_level = min(a_rate, a_beat), min(p_rate, p_beat)
    c_level, v_level = min(c_rate, c_beat), min(v_rate, v_beat)

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
        # Combinational: which handshakes the edge at the end of this cycle takes.
        a_ready, a_in = _offers(a_left, a_level, a_beat, a_held, registered)
        p_ready, p_in = _offers(p_left, p_level, p_beat, p_held, registered)
        c_ready, c_in = _offers(c_left, c_level, c_beat, c_held, registered)
        v_ready, v_in = _offers(v_left, v_level, v_beat, v_held, registered)
        load_full = full1 if load_bank else full0
        fill = blocks_to_load != 0 and not load_full and a_ready
        chunk_ready = full1 if read_bank else full0
        accept = chunk_valid and chunk_ready
        fetch = (fetch_left != 0 and occupancy <= ring_limit and v_ready
                 and (not sparse or c_ready))
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
        pointer = (pointer_blocks != 0 and (not next_valid or next_consumed) and p_ready)

        if not (fill or accept or fetch or emit or pointer or primed
                or a_in or p_in or c_in or v_in):
            # Nothing moves until a stream short of credit has a beat: jump there.
            edges = -1
            for left, level, beat, rate in ((a_left, a_level, a_beat, a_rate),
                                            (p_left, p_level, p_beat, p_rate),
                                            (c_left, c_level, c_beat, c_rate),
                                            (v_left, v_level, v_beat, v_rate)):
                if left != 0 and level < beat:
                    wait = -(-(beat - level) // rate)
                    if edges < 0 or wait < edges:
                        edges = wait
            if edges < 0:
                return (-cycle, 0, 0, 0, 0)
            a_level = min(a_level + edges * a_rate, a_beat)
            p_level = min(p_level + edges * p_rate, p_beat)
            c_level = min(c_level + edges * c_rate, c_beat)
            v_level = min(v_level + edges * v_rate, v_beat)
            cycle += edges
            continue

        a_left, a_level, a_held = _moved(a_left, a_level, a_beat, a_held, registered, a_in,
                                         fill)
        p_left, p_level, p_held = _moved(p_left, p_level, p_beat, p_held, registered, p_in,
                                         pointer)
        c_left, c_level, c_held = _moved(c_left, c_level, c_beat, c_held, registered, c_in,
                                         fetch and sparse)
        v_left, v_level, v_held = _moved(v_left, v_level, v_beat, v_held, registered, v_in,
                                         fetch)
        if fill:
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
        a_level = min(a_level + a_rate, a_beat)
        p_level = min(p_level + p_rate, p_beat)
        c_level = min(c_level + c_rate, c_beat)
        v_level = min(v_level + v_rate, v_beat)
        cycle += 1
