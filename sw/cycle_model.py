"""The exact cycle model of :class:`sparsemac.hw.core.SparseMACCore`.

It replays the core's schedule with every input stream valid and every output ready, and
predicts the number its hardware cycle counter reports, cycle for cycle. The schedule:

* cycle 0 accepts the job; from cycle 1 the activation buffer takes one column per cycle, so
  block 0 is loaded after ``cols`` cycles and its bank can be read from cycle ``cols + 1``;
* the streamer fetches its first word and its first row pointer in cycle 1 and hands over its
  first chunk in cycle 3 (cycle 4 in a sparse job of an array whose chunks span rows);
* one chunk is issued per cycle from then on, ``max(1, ceil(n / K))`` per row of ``n``
  nonzeros (with ``span_rows``, ``max(1, ceil((n - c) / K))`` where ``c`` of the row's nonzeros
  rode in the previous row's last chunk: :func:`span_carries`), as long as the bank of the
  block is loaded; block ``j`` is loaded into bank
  ``j % 2`` once block ``j - 1`` is loaded and block ``j - 2`` has issued its last chunk;
* the last chunk's sums leave five cycles after it is issued (read, register the read data,
  multiply, add, accumulate); eight with ``ArrayConfig.registered``, whose MAC array has a
  fanout stage, multipliers that register their operands, and its products registered again
  in the logic (:func:`pipeline_latency`). Its skid buffers
  on the inputs cost nothing here: with every input valid from the job's first cycle, each
  holds its stream's next beat whenever the core would take it.

A DUAL job (:class:`~sparsemac.hw.formats.Sparsity`) sends each row of a token block as
``max(1, max over its tokens t of ceil(n_t / K))`` beats of (weight, activation) pairs, where
``n_t`` counts the row's nonzero weights whose column's activation in token ``t`` is nonzero
(:func:`dual_row_beats`). It loads nothing: its beats are taken one a cycle from cycle 1 and the
last one's sums leave four cycles after it (the operand select's register, multiply, add,
accumulate; seven with ``registered``): :func:`dual_job_cycles`.

A layer is split into jobs by :func:`job_tiles`; each job is counted on its own, its first load
and its drain included. A column tile is a job of its own width whose rows hold only their
nonzeros in its columns, so splitting a row of ``n`` nonzeros costs its rounding to whole chunks
once per tile (``ceil(51 / 16) + ceil(26 / 16)`` = 6 chunks instead of ``ceil(77 / 16)`` = 5).
"""

from dataclasses import dataclass

import numpy as np

from ..hw.config import ArrayConfig
from ..hw.formats import Mode
from .csr import CSRMatrix
from ..hw.errors import InputError

__all__ = ["CycleBreakdown", "JobTile", "job_cycles", "job_tiles", "issue_cycles_per_block",
           "span_carries", "ChunkSlice", "pass_chunks", "token_blocks", "dual_row_lengths",
           "dual_row_beats", "dual_job_cycles", "pipeline_latency"]

#: Cycles from the issue of a chunk to the acceptance of the sums it completes.
PIPELINE_LATENCY = 5

#: The cycle in which the streamer's first chunk is ready, counting the job's acceptance as 0.
FIRST_CHUNK = 3

#: One cycle more in a sparse job of an array whose chunks span rows: its streamer takes the
#: first row into its row registers before it emits (``CSRWeightStreamer``).
SPAN_FIRST_CHUNK = FIRST_CHUNK + 1

#: The cycle in which a DUAL job's first pairs beat is taken, and the cycles from the last
#: beat's to the acceptance of its sums: one fewer than a chunk's, as a pairs beat has no buffer
#: read, only the operand select's register.
DUAL_FIRST_BEAT = 1
DUAL_PIPELINE_LATENCY = PIPELINE_LATENCY - 1

#: Cycles ``ArrayConfig.registered`` adds to both: the MAC array's fanout stage, the
#: multipliers' operand registers and the products' registers in the logic.
REGISTERED_LATENCY = 3


def pipeline_latency(config, dual=False):
    """Cycles from the issue of a job's last chunk (``dual``: the taking of a DUAL job's last
    pairs beat) to the acceptance of its sums, on an array of ``config``."""
    latency = DUAL_PIPELINE_LATENCY if dual else PIPELINE_LATENCY
    return latency + REGISTERED_LATENCY * config.registered


def token_blocks(tokens, config):
    """Blocks of ``config.token_lanes`` tokens needed for ``tokens`` tokens."""
    return -(-tokens // config.token_lanes)


@dataclass(frozen=True)
class JobTile:
    """One job of a layer: tokens ``token_start:token_stop`` against rows
    ``row_start:row_stop`` and input columns ``col_start:col_stop``.

    A layer wider than ``max_in_features`` is split into column tiles: each is a job of its own
    whose int32 sums the host adds, wrapping, into the layer's
    (:func:`~sparsemac.sw.golden.accumulate_int32`).
    """
    #: First token of the job.
    token_start: int
    #: One past its last token.
    token_stop: int
    #: First output row.
    row_start: int
    #: One past its last output row.
    row_stop: int
    #: First input column (the tile's offset in the layer's reduction axis).
    col_start: int
    #: One past its last input column.
    col_stop: int

    @property
    def tokens(self):
        return self.token_stop - self.token_start

    @property
    def cols(self):
        return self.col_stop - self.col_start

    def row_lengths(self, weights):
        """Nonzeros of each of this tile's rows within its columns, as an int64 array.

        Parameters
        ----------
        weights : CSRMatrix
            The whole layer.
        """
        first, last = (int(weights.indptr[row]) for row in (self.row_start, self.row_stop))
        inside = self._inside(weights.indices[first:last])
        # Prefix sums over the tile's nonzeros turn each row's count into one subtraction.
        prefix = np.concatenate(([0], np.cumsum(inside, dtype=np.int64)))
        bounds = weights.indptr[self.row_start:self.row_stop + 1] - first
        return prefix[bounds[1:]] - prefix[bounds[:-1]]

    def weights(self, weights):
        """This tile's weights as a matrix of their own, columns counted from ``col_start``.

        Parameters
        ----------
        weights : CSRMatrix
            The whole layer.

        Returns
        -------
        CSRMatrix
            Shape ``(row_stop - row_start, col_stop - col_start)``.
        """
        rows = weights.row_slice(self.row_start, self.row_stop)
        if self.cols == weights.cols:
            return rows
        inside = self._inside(rows.indices)
        indptr = np.concatenate(([0], np.cumsum(self.row_lengths(weights))))
        return CSRMatrix(indptr=indptr, indices=rows.indices[inside] - self.col_start,
                         data=rows.data[inside], shape=(rows.rows, self.cols))

    def _inside(self, indices):
        return (indices >= self.col_start) & (indices < self.col_stop)


def job_tiles(rows, cols, tokens, config):
    """The jobs a layer of ``rows`` x ``cols`` weights and ``tokens`` tokens is split into.

    Token blocks of ``config.max_tokens`` tokens, each against row tiles of
    ``config.max_out_features`` rows, each against column tiles of ``config.max_in_features``
    columns (the last one ragged): how :meth:`Device.matmul
    <sparsemac.sw.device.Device.matmul>` runs a layer and how the cycle model counts it.

    Yields
    ------
    JobTile

    Raises
    ------
    ValueError
        If ``rows``, ``cols`` or ``tokens`` is below 1 (checked on the first iteration).
    """
    if min(rows, cols, tokens) < 1:
        raise InputError(f"a layer needs at least one row, column and token, not {rows} rows, "
                         f"{cols} columns and {tokens} tokens")
    for token_start in range(0, tokens, config.max_tokens):
        token_stop = min(tokens, token_start + config.max_tokens)
        for row_start in range(0, rows, config.max_out_features):
            row_stop = min(rows, row_start + config.max_out_features)
            for col_start in range(0, cols, config.max_in_features):
                yield JobTile(token_start, token_stop, row_start, row_stop, col_start,
                              min(cols, col_start + config.max_in_features))


def span_carries(row_lengths, lanes):
    """How many of each row's nonzeros ride in the previous row's last chunk, when chunks span
    rows (``ArrayConfig.span_rows``), over one pass.

    A row's last chunk is filled up with the first nonzeros of the next row of the pass, never
    its last one (a chunk closes at most one row): ``min(K - r, n' - 1)`` of them, where ``r``
    (1 to K) is what is left of the row and ``n'`` the next row's length. Nothing rides in the
    chunk of an empty row or across the end of the pass.

    Parameters
    ----------
    row_lengths : array of int
        Nonzeros per row of the pass.
    lanes : int
        K.

    Returns
    -------
    numpy.ndarray of int64
        ``c`` per row (0 for the first row); row ``i`` then issues ``max(1, ceil((n_i - c_i) /
        K))`` chunks of its own, and its last one closes it.
    """
    lengths = [int(length) for length in row_lengths]
    carries = [0] * len(lengths)
    for row, length in enumerate(lengths[:-1]):
        rest = length - carries[row]
        if rest == 0:
            continue
        left = rest - lanes * ((rest - 1) // lanes)
        carries[row + 1] = max(0, min(lanes - left, lengths[row + 1] - 1))
    return np.array(carries, dtype=np.int64)


@dataclass(frozen=True)
class ChunkSlice:
    """One chunk of a sparse pass: the pass's entries ``start:stop`` (rows back to back)."""
    #: The row of the chunk's first lane.
    row: int
    #: The pass's first entry in the chunk, counting the rows back to back.
    start: int
    #: One past its last entry.
    stop: int
    #: The chunk's ``split`` field: on a chunk that spans rows, the lanes of ``row`` (the rest of
    #: the chunk begins row ``row + 1``); K on every other chunk.
    split: int
    #: Whether the chunk closes ``row``.
    row_last: bool


def pass_chunks(row_lengths, lanes, span=False):
    """The chunks the streamer emits for one sparse pass, in order.

    Parameters
    ----------
    row_lengths : array of int
    lanes : int
        K.
    span : bool
        Chunks span rows (``ArrayConfig.span_rows``), as :func:`span_carries` tells.

    Returns
    -------
    list of ChunkSlice
    """
    lengths = [int(length) for length in row_lengths]
    carries = span_carries(lengths, lanes).tolist() if span else [0] * len(lengths)
    carries.append(0)
    chunks, row_start = [], 0
    for row, length in enumerate(lengths):
        row_stop = row_start + length
        own = max(1, -(-(length - carries[row]) // lanes))
        for index in range(own):
            first = row_start + carries[row] + index * lanes
            last = index == own - 1
            extra = carries[row + 1] if last else 0
            chunks.append(ChunkSlice(row, first, min(first + lanes, row_stop) + extra,
                                     row_stop - first if extra else lanes, last))
        row_start = row_stop
    return chunks


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
        ``sum over rows of max(1, ceil(n / K))``, with ``n = cols`` for every row in dense mode;
        with ``config.span_rows`` (sparse mode), ``n`` less the row's :func:`span_carries`.
    """
    lanes = config.lanes
    row_lengths = np.asarray(row_lengths, dtype=np.int64)
    if mode == Mode.DENSE:
        return len(row_lengths) * max(1, -(-cols // lanes))
    if config.span_rows:
        row_lengths = row_lengths - span_carries(row_lengths, lanes)
    return int(np.maximum(1, -(-row_lengths // lanes)).sum())


@dataclass(frozen=True)
class CycleBreakdown:
    """Where the cycles of one job go."""
    #: What the hardware cycle counter reports.
    total: int  # = issue + load_stall + fill + drain
    #: Cycles issuing chunks (``token_blocks x issue_cycles_per_block``).
    issue: int
    #: Cycles the array waited for activations: the first block's load, and any later block whose
    #: load took longer than the previous block's compute.
    load_stall: int
    #: Cycles waiting for the streamer's first chunk beyond the first load.
    fill: int
    #: Cycles after the last issue until the last sums are accepted.
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
        raise InputError(f"a job needs 1 to {config.max_out_features} rows, not {rows}")
    if not 1 <= cols <= config.max_in_features:
        raise InputError(f"a job needs 1 to {config.max_in_features} columns, not {cols}")
    if not 1 <= tokens <= config.max_tokens:
        raise InputError(f"a job needs 1 to {config.max_tokens} tokens, not {tokens}")
    if mode == Mode.SPARSE and ((row_lengths < 0) | (row_lengths > cols)).any():
        raise InputError(f"row lengths must be from 0 to cols ({cols})")

    blocks = token_blocks(tokens, config)
    issue = issue_cycles_per_block(row_lengths, cols, config, mode)
    first_chunk = SPAN_FIRST_CHUNK if config.span_rows and mode == Mode.SPARSE else FIRST_CHUNK

    load_end = []     # cycle in which the last column of block j is written
    issue_start = []  # cycle in which block j issues its first chunk
    for block in range(blocks):
        load_start = 1 if block == 0 else load_end[-1] + 1
        if block >= 2:
            load_start = max(load_start, issue_start[block - 2] + issue)
        load_end.append(load_start + cols - 1)
        ready = load_end[-1] + 1
        if block == 0:
            issue_start.append(max(ready, first_chunk))
        else:
            issue_start.append(max(ready, issue_start[-1] + issue))
    drain = pipeline_latency(config)
    total = issue_start[-1] + issue - 1 + drain
    load_stall = load_end[0] + sum(
        issue_start[j] - (issue_start[j - 1] + issue) for j in range(1, blocks))
    fill = issue_start[0] - (load_end[0] + 1)
    return CycleBreakdown(total=total, issue=blocks * issue, load_stall=load_stall, fill=fill,
                          drain=drain)


def dual_row_lengths(weights, activations, config):
    """Pairs of each row for each token of a DUAL job: its nonzero weights whose column's
    activation in that token is nonzero.

    Parameters
    ----------
    weights : CSRMatrix
    activations : torch.Tensor or numpy.ndarray of int8, [tokens, cols]
    config : ArrayConfig

    Returns
    -------
    numpy.ndarray of int64, [token_blocks * T, rows]
        The tokens padded to whole blocks with zero activations (no pairs).
    """
    live = np.asarray(activations) != 0
    tokens = live.shape[0]
    # Prefix sums over each token's live entries turn a row's count into one subtraction.
    prefix = np.zeros((tokens, weights.nnz + 1), dtype=np.int64)
    np.cumsum(live[:, weights.indices], axis=1, out=prefix[:, 1:])
    lengths = np.zeros((token_blocks(tokens, config) * config.token_lanes, weights.rows),
                       dtype=np.int64)
    lengths[:tokens] = prefix[:, weights.indptr[1:]] - prefix[:, weights.indptr[:-1]]
    return lengths


def dual_row_beats(weights, activations, config):
    """Pairs beats of each row of each token block of a DUAL job.

    Parameters and tokens as :func:`dual_row_lengths`.

    Returns
    -------
    numpy.ndarray of int64, [token_blocks, rows]
        ``max(1, max over the block's tokens t of ceil(n_t / K))``.
    """
    lengths = dual_row_lengths(weights, activations, config)
    longest = lengths.reshape(-1, config.token_lanes, weights.rows).max(axis=1)
    return np.maximum(1, -(-longest // config.lanes))


def dual_job_cycles(beats, config):
    """Predicts the hardware cycle count of one DUAL job with ideal streams.

    Parameters
    ----------
    beats : int
        Pairs beats of the whole job (the sum of :func:`dual_row_beats`).
    config : ArrayConfig

    Returns
    -------
    CycleBreakdown
        Nothing is loaded: ``total = beats + 4`` (``beats + 7`` with ``config.registered``).
    """
    if beats < 1:
        raise InputError(f"a DUAL job has at least one pairs beat, not {beats}")
    drain = pipeline_latency(config, dual=True)
    return CycleBreakdown(total=DUAL_FIRST_BEAT + beats - 1 + drain, issue=beats, load_stall=0,
                          fill=DUAL_FIRST_BEAT - 1, drain=drain)
