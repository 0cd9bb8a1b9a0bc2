"""Formal harness of :class:`~sparsemac.hw.csr_streamer.CSRWeightStreamer`."""

from amaranth.hdl import Assert, Assume, Cat, Cover, Mux, Signal

from ...hw.csr_streamer import CSRWeightStreamer
from ...hw.formats import Mode
from .environment import CSRSource, JobBounds
from .harness import Harness, transfer

__all__ = ["CSRStreamerHarness", "BOUNDS"]

#: The jobs the proofs cover (``cols`` up to the smallest ``max_in_features``).
BOUNDS = JobBounds(rows=3, cols=8, token_blocks=2, nnz=6)


class CSRStreamerHarness(Harness):
    """Every job's (column, value) pairs leave in order, each once, in row-aligned chunks.

    The environment sends valid jobs within :data:`BOUNDS` (``start`` only when the previous
    job's last chunk has left) and their CSR streams (:class:`CSRSource`). The streamer never looks
    at a weight or a column index, only moves them, so the data are tags that name their
    position in the pass (data independence): pair ``p`` has value ``p + 1`` and column ``p``.

    ``conservation`` then asserts, for every chunk that leaves: its used lanes (nonzero values)
    are a prefix and carry pairs ``p, p + 1, ...`` with their columns (dense: ``base + lane``);
    ``row_last`` falls exactly where the row's end pointer says, every other chunk is full, an
    empty row is one chunk with no pair; ``block_last`` marks the last row of each pass; no
    chunk leaves outside a job, and ``busy`` stays high until the job's last chunk is out.
    With ``span_rows`` the lanes of a chunk from its ``split`` on are the next row's: a sparse
    row's last chunk (not the pass's last, not an empty row's) carries exactly ``min(K - r,
    n' - 1)`` of them (r pairs of its own, n' in the next row), its ``split`` is r when it
    carries any and K otherwise, and the row checks above count only the lanes below ``split``.
    Bounded: the pair counters grow without bound over jobs, so induction does not close.
    """

    DUT = CSRWeightStreamer
    PROPERTIES = {
        **Harness.PROPERTIES,
        "conservation": "pairs out = pairs in, in order, once; row_last/block_last placed right",
        "cover": "a job ends; a stall; an empty row; a row over two chunks (with span_rows: a "
                 "chunk carrying the next row's head)",
    }

    def environment(self, m):
        lanes = self.config.lanes
        self.active = active = Signal()
        self.held_job = job = Signal(self.job.shape())
        accepted = self.start & ~self.busy
        m.d.comb += [Assume(~self.start | ~active), Assume(~accepted | BOUNDS.holds(self.job))]
        with m.If(accepted):
            m.d.sync += [job.eq(self.job), active.eq(1)]
        sparse = job.mode == Mode.SPARSE
        self.source = CSRSource(m, self, job, active, accepted, BOUNDS, tagged=True)

        # What has left: passes, rows of this pass, pairs of this pass, pairs of this row.
        self.out_pass = out_pass = Signal(range(BOUNDS.token_blocks + 1))
        self.out_row = out_row = Signal(range(BOUNDS.rows))
        self.out_pair = out_pair = Signal(range(BOUNDS.nnz + 1))
        self.row_start = row_start = Signal(range(BOUNDS.nnz + 1))
        chunk = self.chunks.payload
        self.used = used = Cat(chunk.values[lane] != 0 for lane in range(lanes))
        self.taken = taken = sum(used[lane] for lane in range(lanes))
        # The pairs of the row the chunk closes or continues; the rest begin the next row.
        self.own = own = (sum(used[lane] & (chunk.split > lane) for lane in range(lanes))
                          if self.config.span_rows else taken)
        self.row_end = Mux(sparse, self.source.ends[out_pass[0]][out_row], row_start + job.cols)
        with m.If(transfer(self.chunks)):
            m.d.sync += out_pair.eq(out_pair + taken)
            with m.If(chunk.block_last):
                m.d.sync += [out_row.eq(0), out_pair.eq(0), row_start.eq(0),
                             out_pass.eq(out_pass + 1)]
                with m.If(out_pass == job.token_blocks - 1):
                    m.d.sync += active.eq(0)
            with m.Elif(chunk.row_last):
                m.d.sync += [out_row.eq(out_row + 1), row_start.eq(out_pair + own)]
        with m.If(accepted):
            m.d.sync += [out_pass.eq(0), out_row.eq(0), out_pair.eq(0), row_start.eq(0)]

    def check_conservation(self, m):
        lanes = self.config.lanes
        address_width = self.config.column_address_width
        job, chunk = self.held_job, self.chunks.payload
        sparse = job.mode == Mode.SPARSE
        used, own, out_pair = self.used, self.own, self.out_pair
        row_last = out_pair + own == self.row_end
        column_base = Mux(sparse, out_pair, out_pair - self.row_start)
        # One Assert per line, so that the source line in a failure names the check.
        valid = self.chunks.valid
        m.d.comb += [
            Assert(~valid | self.active & (self.out_pass < job.token_blocks),
                   "a chunk outside a job"),
            Assert(~valid | (chunk.row_last == row_last), "row_last not at the row's end"),
            Assert(~valid | row_last | (own == lanes), "a chunk before its row's end not full"),
            Assert(~valid | (out_pair + own <= self.row_end), "a chunk past its row's end"),
            Assert(~valid | (chunk.block_last == (chunk.row_last & (self.out_row == job.rows - 1))),
                   "block_last not on the last row of the pass"),
        ]
        for lane in range(lanes):
            expected_column = (column_base + lane)[:address_width]
            m.d.comb += Assert(~valid | ~used[lane] | ((chunk.values[lane] == out_pair + lane + 1)
                                                      & (chunk.columns[lane] == expected_column)),
                               f"lane {lane}: not the next pair in order")
            if lane + 1 < lanes:
                m.d.comb += Assert(~valid | used[lane] | ~used[lane + 1],
                                   f"lane {lane} unused before a used one")
        m.d.comb += Assert(self.busy | ~self.active | (self.out_pass == job.token_blocks - 1)
                           & self.chunks.valid & chunk.block_last,
                           "busy fell before the job's last chunk")
        if self.config.span_rows:
            self._check_span(m)

    def _check_span(self, m):
        lanes, chunk = self.config.lanes, self.chunks.payload
        sparse = self.held_job.mode == Mode.SPARSE
        next_length = self.source.ends[self.out_pass[0]][self.out_row + 1] - self.row_end
        head = Mux(next_length == 0, 0, next_length - 1)  # never the next row's last pair
        room = lanes - self.own
        # An empty row's chunk carries nothing (see sw.cycle_model.span_carries).
        spans = sparse & chunk.row_last & ~chunk.block_last & (self.own != 0)
        spill = Mux(spans, Mux(room < head, room, head), 0)
        carried = self.taken - self.own
        valid = self.chunks.valid
        m.d.comb += [
            Assert(~valid | (carried == spill), "a row's last chunk without the next row's head"),
            Assert(~valid | (chunk.split == Mux(carried != 0, self.own, lanes)),
                   "split is not where the rows meet"),
        ]

    def check_cover(self, m):
        job, chunk = self.held_job, self.chunks.payload
        last = transfer(self.chunks) & chunk.block_last & (self.out_pass == job.token_blocks - 1)
        m.d.comb += [
            Cover(last & (job.token_blocks == 2)),
            Cover(self.chunks.valid & ~self.chunks.ready & self.busy),
            Cover(transfer(self.chunks) & chunk.row_last & (self.taken == 0)),
            Cover(transfer(self.chunks) & chunk.row_last & (self.out_pair != self.row_start)),
        ]
        if self.config.span_rows:
            m.d.comb += Cover(transfer(self.chunks) & chunk.row_last & (self.taken > self.own))
