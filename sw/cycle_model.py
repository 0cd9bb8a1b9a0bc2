"""The exact cycle model of :class:`sparsemac.hw.core.SparseMACCore`.

It replays the core's schedule with every input stream valid and every output ready, and
predicts the number its hardware cycle counter reports, cycle for cycle. The schedule:

* cycle 0 accepts the job; from cycle 1 the activation buffer takes one column per cycle, so
  block 0 is loaded after ``cols`` cycles and its bank can be read from cycle ``cols + 1``;
* the streamer fetches its first word and its first row pointer in cycle 1 and hands over its
  first chunk in cycle 3;
* one chunk is issued per cycle from then on, ``max(1, ceil(n / K))`` per row of ``n``
  nonzeros, as long as the bank of the block is loaded; block ``j`` is loaded into bank
  ``j % 2`` once block ``j - 1`` is loaded and block ``j - 2`` has issued its last chunk;
* the last chunk's sums leave five cycles after it is issued (read, register the read data,
  multiply, add, accumulate).
"""

from dataclasses import dataclass

import numpy as np

from ..hw.config import ArrayConfig
from ..hw.formats import Mode

__all__ = ["CycleBreakdown", "JobTile", "job_cycles", "job_tiles", "issue_cycles_per_block",
           "token_blocks"]

#: Cycles from the issue of a chunk to the acceptance of the sums it completes.
PIPELINE_LATENCY = 5

#: The cycle in which the streamer's first chunk is ready, counting the job's acceptance as 0.
FIRST_CHUNK = 3


def token_blocks(tokens, config):
    """Blocks of ``config.token_lanes`` tokens needed for ``tokens`` tokens."""
    return -(-tokens // config.token_lanes)


@dataclass(frozen=True)
class JobTile:
    """One job of a layer: tokens ``token_start:token_stop`` against rows
    ``row_start:row_stop``."""
    token_start: int
    token_stop: int
    row_start: int
    row_stop: int


def job_tiles(rows, tokens, config):
    """The jobs a layer of ``rows`` output rows and ``tokens`` tokens is split into, in order.

    Token blocks of ``config.max_tokens`` tokens, each against row tiles of
    ``config.max_out_features`` rows: how :meth:`Device.matmul
    <sparsemac.sw.device.Device.matmul>` runs a layer and how the cycle model counts it.

    Yields
    ------
    JobTile
    """
    for token_start in range(0, tokens, config.max_tokens):
        token_stop = min(tokens, token_start + config.max_tokens)
        for row_start in range(0, rows, config.max_out_features):
            yield JobTile(token_start, token_stop, row_start,
                          min(rows, row_start + config.max_out_features))


def issue_cycles_per_block(row_lengths, cols, config, mode=Mode.SPARSE):
    """Cycles the array spends issuing one pass over the weights.

    Parameters
    ----------
    row_lengths : array of int
        Nonzeros per row (ignored in dense mode except for its length).
    cols : int
        Input features.
    config : ArrayConfig
    mode : Mode

    Returns
    -------
    int
        ``sum over rows of max(1, ceil(n / K))``, with ``n = cols`` for every row in dense mode.
    """
    lanes = config.lanes
    row_lengths = np.asarray(row_lengths, dtype=np.int64)
    if mode == Mode.DENSE:
        return len(row_lengths) * max(1, -(-cols // lanes))
    return int(np.maximum(1, -(-row_lengths // lanes)).sum())


@dataclass(frozen=True)
class CycleBreakdown:
    """Where the cycles of one job go.

    Attributes
    ----------
    total : int
        What the hardware cycle counter reports.
    issue : int
        Cycles issuing chunks (``token_blocks x issue_cycles_per_block``).
    load_stall : int
        Cycles the array waited for activations: the first block's load, and any later block
        whose load took longer than the previous block's compute.
    fill : int
        Cycles waiting for the streamer's first chunk beyond the first load.
    drain : int
        Cycles after the last issue until the last sums are accepted.
    """
    total: int  # = issue + load_stall + fill + drain
    issue: int
    load_stall: int
    fill: int
    drain: int


def job_cycles(row_lengths, cols, tokens, config, mode=Mode.SPARSE):
    """Predicts the hardware cycle count of one job with ideal streams.

    Parameters
    ----------
    row_lengths : array of int
        Nonzeros per output row (``CSRMatrix.row_lengths()``); in dense mode only its length,
        the number of rows, matters.
    cols : int
        Input features, 1 to ``config.max_in_features``.
    tokens : int
        Tokens in the job, 1 to ``config.max_tokens``.
    config : ArrayConfig
    mode : Mode

    Returns
    -------
    CycleBreakdown

    Raises
    ------
    ValueError
        If the job is outside what one job of ``config`` can hold.
    """
    if not isinstance(config, ArrayConfig):
        raise TypeError(f"config must be an ArrayConfig, not {config!r}")
    row_lengths = np.asarray(row_lengths, dtype=np.int64)
    rows = len(row_lengths)
    if not 1 <= rows <= config.max_out_features:
        raise ValueError(f"a job needs 1 to {config.max_out_features} rows, not {rows}")
    if not 1 <= cols <= config.max_in_features:
        raise ValueError(f"a job needs 1 to {config.max_in_features} columns, not {cols}")
    if not 1 <= tokens <= config.max_tokens:
        raise ValueError(f"a job needs 1 to {config.max_tokens} tokens, not {tokens}")
    if mode == Mode.SPARSE and ((row_lengths < 0) | (row_lengths > cols)).any():
        raise ValueError(f"row lengths must be from 0 to cols ({cols})")

    blocks = token_blocks(tokens, config)
    issue = issue_cycles_per_block(row_lengths, cols, config, mode)

    load_end = []     # cycle in which the last column of block j is written
    issue_start = []  # cycle in which block j issues its first chunk
    for block in range(blocks):
        load_start = 1 if block == 0 else load_end[-1] + 1
        if block >= 2:
            load_start = max(load_start, issue_start[block - 2] + issue)
        load_end.append(load_start + cols - 1)
        ready = load_end[-1] + 1
        if block == 0:
            issue_start.append(max(ready, FIRST_CHUNK))
        else:
            issue_start.append(max(ready, issue_start[-1] + issue))
    total = issue_start[-1] + issue - 1 + PIPELINE_LATENCY
    load_stall = load_end[0] + sum(
        issue_start[j] - (issue_start[j - 1] + issue) for j in range(1, blocks))
    fill = issue_start[0] - (load_end[0] + 1)
    return CycleBreakdown(total=total, issue=blocks * issue, load_stall=load_stall, fill=fill,
                          drain=PIPELINE_LATENCY)
