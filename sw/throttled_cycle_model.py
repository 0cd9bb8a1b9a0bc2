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
  register is free;
* a chunk is accepted while the bank of its block is full; the last chunk's sums are accepted
  :data:`~sparsemac.sw.cycle_model.PIPELINE_LATENCY` cycles later, and that cycle, counting the
  job's acceptance as cycle 0, is what the hardware counter reports.

Cycles in which no handshake can happen (every blocked stream waiting for credit) are skipped in
one step, so a slow link costs no more replay time than a fast one.
"""

from dataclasses import dataclass

import numpy as np

from ..hw.config import ArrayConfig
from ..hw.formats import Mode
from .cycle_model import PIPELINE_LATENCY, job_cycles, job_tiles, token_blocks
from .memory import RATE_ONE, JobStreams, MemoryModel, job_streams, stream_rates

__all__ = ["ScheduleCounts", "CycleBounds", "ThrottledCycles", "LayerCycles",
           "throttled_job_cycles", "layer_cycles", "replay_schedule"]


@dataclass(frozen=True)
class ScheduleCounts:
    """What the core did in one job, counted from its exact schedule.

    Attributes
    ----------
    cycles : int
        The hardware cycle count.
    chunks : int
        Chunks accepted by the activation buffer (each one operand beat of the MAC array).
    fill_beats : int
        Activation columns written into the buffer.
    words : int
        Weight words (K values, and K columns in sparse mode) fetched into the ring.
    row_pointers : int
        Row end pointers taken.
    """
    cycles: int
    chunks: int
    fill_beats: int
    words: int
    row_pointers: int


@dataclass(frozen=True)
class CycleBounds:
    """Cycles under a memory model, next to the bounds that explain them.

    Attributes
    ----------
    cycles : int
        What the hardware counter reports with the streams throttled.
    compute_cycles : int
        The same work with ideal streams (:func:`~sparsemac.sw.cycle_model.job_cycles`).
    weight_transfer_cycles, activation_transfer_cycles : int
        Cycles the weight and the activation path need for their bytes alone (0 when the path
        is unthrottled): lower bounds of ``cycles``.
    weight_bytes, activation_bytes, output_bytes : int
        Bytes streamed in (padding included) and out.
    """
    cycles: int
    compute_cycles: int
    weight_transfer_cycles: int
    activation_transfer_cycles: int
    weight_bytes: int
    activation_bytes: int
    output_bytes: int

    @property
    def bound(self):
        """What limits: ``compute``, ``weights`` or ``activations``, the largest bound."""
        bounds = {"compute": self.compute_cycles, "weights": self.weight_transfer_cycles,
                  "activations": self.activation_transfer_cycles}
        return max(bounds, key=bounds.get)


@dataclass(frozen=True)
class ThrottledCycles(CycleBounds):
    """One job's :class:`CycleBounds` and its schedule.

    Attributes
    ----------
    schedule : ScheduleCounts
    """
    schedule: ScheduleCounts


@dataclass(frozen=True)
class LayerCycles(CycleBounds):
    """A whole layer's jobs: the sums of their :class:`ThrottledCycles`.

    Attributes
    ----------
    jobs : int
    chunks, fill_beats, words, row_pointers : int
        Summed :class:`ScheduleCounts`.
    """
    jobs: int
    chunks: int
    fill_beats: int
    words: int
    row_pointers: int


def layer_cycles(weights, tokens, config, mode=Mode.SPARSE, memory=None):
    """Cycles and schedule counts of a whole layer, split into jobs as the driver splits it.

    Parameters
    ----------
    weights : CSRMatrix
    tokens : int
    config : ArrayConfig
    mode : Mode
    memory : MemoryModel or None

    Returns
    -------
    LayerCycles
    """
    jobs = [throttled_job_cycles(tile.row_lengths(weights), tile.cols, tile.tokens, config, mode,
                                 memory)
            for tile in job_tiles(weights.rows, weights.cols, tokens, config)]
    totals = {name: sum(getattr(job, name) for job in jobs)
              for name in ("cycles", "compute_cycles", "weight_transfer_cycles",
                           "activation_transfer_cycles", "weight_bytes", "activation_bytes",
                           "output_bytes")}
    counts = {name: sum(getattr(job.schedule, name) for job in jobs)
              for name in ("chunks", "fill_beats", "words", "row_pointers")}
    return LayerCycles(jobs=len(jobs), **totals, **counts)


def _transfer_cycles(streams):
    """Cycles to move every byte of ``streams`` at their rates (0 if any is unthrottled)."""
    cycles = 0
    for stream in streams:
        if stream.beats and stream.rate == 0:
            return 0
        if stream.beats:
            cycles = max(cycles, -(-stream.total_bytes * RATE_ONE // stream.rate))
    return cycles


def throttled_job_cycles(row_lengths, cols, tokens, config, mode=Mode.SPARSE, memory=None):
    """Predicts the hardware cycle count of one job fed by ``memory``.

    Parameters
    ----------
    row_lengths : array of int
        Nonzeros per output row; in dense mode only its length matters.
    cols : int
    tokens : int
    config : ArrayConfig
    mode : Mode
    memory : MemoryModel or None
        None or an ideal model gives the ideal-stream count.

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
    streams = job_streams(config, mode, len(row_lengths), cols, nnz, blocks)
    if memory is not None:
        if not isinstance(memory, MemoryModel):
            raise TypeError(f"memory must be a MemoryModel, not {memory!r}")
        streams = stream_rates(memory, streams)
    if memory is None or memory.ideal:
        # The closed form gives the same counts (tests check the replay against it), faster.
        schedule = ScheduleCounts(
            cycles=compute.total, chunks=compute.issue, fill_beats=streams.activations.beats,
            words=streams.values.beats, row_pointers=streams.row_pointers.beats)
    else:
        schedule = replay_schedule(row_lengths, cols, tokens, config, mode, streams)
    return ThrottledCycles(
        cycles=schedule.cycles, compute_cycles=compute.total,
        weight_transfer_cycles=_transfer_cycles(
            [streams.row_pointers, streams.columns, streams.values]),
        activation_transfer_cycles=_transfer_cycles([streams.activations]),
        weight_bytes=streams.weight_bytes, activation_bytes=streams.activation_bytes,
        output_bytes=blocks * len(row_lengths) * config.token_lanes * config.SUM_WIDTH // 8,
        schedule=schedule)


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
    """
    if not isinstance(config, ArrayConfig):
        raise TypeError(f"config must be an ArrayConfig, not {config!r}")
    if not isinstance(streams, JobStreams):
        raise TypeError(f"streams must be a JobStreams, not {streams!r}")
    sparse = Mode(mode) == Mode.SPARSE
    lanes = config.lanes
    lengths = [int(n) for n in row_lengths] if sparse else []
    rows = len(row_lengths)
    blocks = token_blocks(tokens, config)
    nnz = sum(lengths) if sparse else rows * cols

    # Each stream's bucket: beats left, credits held, credits per beat, credits per cycle. An
    # unthrottled stream gains a whole beat per cycle, so it is never short of credit.
    (a_left, p_left, c_left, v_left) = (stream.beats for stream in streams)
    (a_beat, p_beat, c_beat, v_beat) = (stream.bytes * RATE_ONE for stream in streams)
    (a_rate, p_rate, c_rate, v_rate) = (stream.rate or stream.bytes * RATE_ONE
                                        for stream in streams)
    # The edge of cycle 0, in which the job is accepted, refills the empty buckets once.
    a_level, p_level, c_level, v_level = (min(a_rate, a_beat), min(p_rate, p_beat),
                                          min(c_rate, c_beat), min(v_rate, v_beat))

    # Registers after that edge (the RTL's start assignments).
    busy, blocks_to_emit, row_index, in_row = True, blocks, 0, False
    occupancy, fetch_left, blocks_to_fetch = 0, nnz, blocks - 1
    next_valid, next_length, next_take = not sparse, cols, min(lanes, cols)
    pointer_row, pointer_blocks = 0, blocks if sparse else 0
    row_left = row_take = 0
    chunk_valid = chunk_block_last = False
    full = [False, False]
    blocks_to_load, load_bank, load_column, read_bank = blocks, 0, 0, 0
    blocks_accepted = chunks = fill_beats = words = pointers_taken = 0
    ring_limit = 2 * lanes

    cycle = 1
    while True:
        # Combinational: which handshakes the edge at the end of this cycle takes.
        fill = (blocks_to_load and not full[load_bank] and a_left and a_level >= a_beat)
        chunk_ready = full[read_bank]
        accept = chunk_valid and chunk_ready
        fetch = (fetch_left and occupancy <= ring_limit and v_left and v_level >= v_beat
                 and (not sparse or (c_left and c_level >= c_beat)))
        if in_row:
            take, length = row_take, row_left
        else:
            take, length = next_take, next_length
        emit = (busy and (not chunk_valid or chunk_ready) and (in_row or next_valid)
                and occupancy >= take)
        next_consumed = emit and not in_row and sparse
        pointer = (pointer_blocks and (not next_valid or next_consumed)
                   and p_left and p_level >= p_beat)

        if not (fill or accept or fetch or emit or pointer):
            # Nothing moves until a stream short of credit has a beat: jump there.
            edges = _edges_until_credit(((a_left, a_level, a_beat, a_rate),
                                         (p_left, p_level, p_beat, p_rate),
                                         (c_left, c_level, c_beat, c_rate),
                                         (v_left, v_level, v_beat, v_rate)), cycle)
            a_level, p_level = min(a_level + edges * a_rate, a_beat), min(
                p_level + edges * p_rate, p_beat)
            c_level, v_level = min(c_level + edges * c_rate, c_beat), min(
                v_level + edges * v_rate, v_beat)
            cycle += edges
            continue

        if fill:
            a_left -= 1
            a_level -= a_beat
            fill_beats += 1
            if load_column == cols - 1:
                load_column = 0
                full[load_bank] = True
                load_bank ^= 1
                blocks_to_load -= 1
            else:
                load_column += 1
        if accept:
            chunks += 1
            if chunk_block_last:
                full[read_bank] = False
                read_bank ^= 1
                blocks_accepted += 1
                if blocks_accepted == blocks:
                    return ScheduleCounts(cycles=cycle + PIPELINE_LATENCY, chunks=chunks,
                                          fill_beats=fill_beats, words=words,
                                          row_pointers=pointers_taken)
        if fetch:
            v_left -= 1
            v_level -= v_beat
            if sparse:
                c_left -= 1
                c_level -= c_beat
            words += 1
            occupancy += lanes if fetch_left > lanes else fetch_left
            if fetch_left > lanes:
                fetch_left -= lanes
            elif blocks_to_fetch:
                fetch_left = nnz
                blocks_to_fetch -= 1
            else:
                fetch_left = 0
        if pointer:
            p_left -= 1
            p_level -= p_beat
            pointers_taken += 1
            next_valid = True
            next_length = lengths[pointer_row]
            next_take = lanes if next_length > lanes else next_length
            if pointer_row == rows - 1:
                pointer_row = 0
                pointer_blocks -= 1
            else:
                pointer_row += 1
        elif next_consumed:
            next_valid = False
        if emit:
            occupancy -= take
            rest = length - take
            chunk_valid = True
            chunk_block_last = rest == 0 and row_index == rows - 1
            in_row = rest != 0
            row_left, row_take = rest, (lanes if rest > lanes else rest)
            if chunk_block_last:
                row_index = 0
                blocks_to_emit -= 1
                busy = blocks_to_emit != 0
            elif rest == 0:
                row_index += 1
        elif accept:
            chunk_valid = False

        # The clock edge of the credit scheme: gain the rate, hold at most one beat.
        # (Conditional expressions rather than min(): this loop is the model's hot spot.)
        a_level = a_level + a_rate if a_level + a_rate < a_beat else a_beat
        p_level = p_level + p_rate if p_level + p_rate < p_beat else p_beat
        c_level = c_level + c_rate if c_level + c_rate < c_beat else c_beat
        v_level = v_level + v_rate if v_level + v_rate < v_beat else v_beat
        cycle += 1


def _edges_until_credit(buckets, cycle):
    """Clock edges from this idle cycle until a stream short of credit can offer a beat.

    ``buckets`` holds ``(beats left, credits, credits per beat, credits per cycle)`` of every
    stream; returns at least 1.

    Raises
    ------
    RuntimeError
        If no stream waits for credit: the replay would never move again.
    """
    waits = [-(-(beat - level) // rate) for left, level, beat, rate in buckets
             if left and level < beat]
    if not waits:
        raise RuntimeError(f"the cycle model's replay is stuck in cycle {cycle}: no stream can "
                           "move and none is waiting for credit")
    return min(waits)
