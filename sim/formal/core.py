"""Formal harness of :class:`~sparsemac.hw.core.SparseMACCore`."""

import itertools

from amaranth.hdl import Assert, Assume, Cover, Mux, Signal

from ...hw.core import SparseMACCore
from ...hw.formats import Mode
from ...sw.cycle_model import job_cycles
from .environment import CSRSource, JobBounds
from .harness import Harness, count, transfer

__all__ = ["SparseMACCoreHarness", "BOUNDS", "STALL_RUN", "liveness_bound"]

#: The jobs the proofs cover.
BOUNDS = JobBounds(rows=2, cols=2, token_blocks=2, nnz=2)

#: Liveness fairness: an input with data to send is idle, or an output not ready, for at most
#: this many cycles in a row.
STALL_RUN = 1


def liveness_bound(config, bounds=BOUNDS, stall_run=STALL_RUN):
    """Cycles from a job's acceptance to its ``done`` beat, at most, for jobs within ``bounds``.

    The cycle model gives the longest job with ideal streams; a stall of up to ``stall_run``
    cycles may follow every cycle of it, and the ``done`` beat may wait as long.
    """
    longest = 0
    for rows, cols, blocks in itertools.product(range(1, bounds.rows + 1),
                                                range(1, bounds.cols + 1),
                                                range(1, bounds.token_blocks + 1)):
        tokens = blocks * config.token_lanes
        for lengths in itertools.product(range(cols + 1), repeat=rows):
            if sum(lengths) <= bounds.nnz:
                longest = max(longest, job_cycles(lengths, cols, tokens, config).total)
        if rows * cols <= bounds.nnz:
            longest = max(longest, job_cycles([cols] * rows, cols, tokens, config,
                                              Mode.DENSE).total)
    return (stall_run + 1) * longest + stall_run


class SparseMACCoreHarness(Harness):
    """The core's job contract: one job at a time, its sums, one ``done`` with the right count.

    The environment offers valid jobs within :data:`BOUNDS` (on the ``job`` stream at any
    time, busy or not), the activations of each block and the CSR streams of the job it
    accepted (:class:`CSRSource`); weights and activations are 0, since no control decision
    depends on them (the MAC array's arithmetic is left to simulation).

    ``job``: ``job`` is never ready while a job is in progress (from its acceptance to its
    ``done`` beat); ``sums`` beats come only inside a job and number ``rows * token_blocks``;
    ``done`` comes only after the last of them, once; its count is the number of cycles from
    acceptance to the last ``sums`` beat, both included (a counter one per busy cycle). Bounded.

    ``liveness``: with fairness (jobs offered, an input with data left idle at most
    :data:`STALL_RUN` cycles in a row, outputs not ready as long at most), ``done`` comes within
    :func:`liveness_bound` cycles of the acceptance. Bounded: the proof depth exceeds the bound.
    """

    DUT = SparseMACCore
    PROPERTIES = {
        **Harness.PROPERTIES,
        "job": "no job while busy; rows x blocks sums; done once, after them, with the count",
        "liveness": "with fair streams, done within the cycle model's bound",
        "cover": "a two-block job ends; sums back-pressured",
    }

    def environment(self, m):
        config = self.config
        self.active = active = Signal()
        self.held_job = job = Signal(self.job.payload.shape())
        accepted = transfer(self.job)
        m.d.comb += Assume(~self.job.valid | BOUNDS.holds(self.job.payload))
        with m.If(accepted):
            m.d.sync += [job.eq(self.job.payload), active.eq(1)]
        with m.Elif(transfer(self.done)):
            m.d.sync += active.eq(0)
        self.source = CSRSource(m, self, job, active, accepted, BOUNDS, tagged=False)

        column = Signal.like(job.cols)
        block = Signal.like(job.token_blocks)
        activations_pending = active & (block < job.token_blocks)
        for token in range(config.token_lanes):
            m.d.comb += Assume(~self.activations.valid | activations_pending
                               & (self.activations.payload[token] == 0))
        with m.If(transfer(self.activations)):
            with m.If(column == job.cols - 1):
                m.d.sync += [column.eq(0), block.eq(block + 1)]
            with m.Else():
                m.d.sync += column.eq(column + 1)
        with m.If(accepted):
            m.d.sync += [column.eq(0), block.eq(0)]
        self.pending = {**self.source.pending, "activations": activations_pending}

        self.accepted = accepted
        total = job.rows[:2] * job.token_blocks[:2]
        self.sums_seen = sums_seen = count(m, "sums_seen", 4, transfer(self.sums), accepted)
        self.last_sums = transfer(self.sums) & (sums_seen == total - 1)
        self.all_sums = sums_seen == total
        # Cycles from acceptance, that cycle included, up to the current one excluded.
        self.elapsed = count(m, "elapsed", 8, active, accepted)

    def check_job(self, m):
        expected = Signal.like(self.done.payload)
        with m.If(self.last_sums):
            m.d.sync += expected.eq(self.elapsed + 1)
        m.d.comb += [
            Assert(~self.job.ready | ~self.active, "a job accepted while one is in progress"),
            Assert(~self.sums.valid | self.active & ~self.all_sums, "a sums beat beyond the job"),
            Assert(~self.done.valid | self.active & self.all_sums,
                   "done outside a job or before its last sums beat"),
            Assert(~self.done.valid | (self.done.payload == expected),
                   "done's cycle count is not the cycles from acceptance to the last sums"),
        ]

    def check_liveness(self, m):
        m.d.comb += Assume(self.job.valid)
        for name, pending in self.pending.items():
            port = getattr(self, name)
            self._at_most(m, f"{name}_idle", pending & ~port.valid)
        for port in (self.sums, self.done):
            self._at_most(m, f"{port.valid.name}_blocked", ~port.ready)
        bound = liveness_bound(self.config)
        m.d.comb += Assert(~self.active | (self.elapsed <= bound),
                           f"a job took more than {bound} cycles")

    @staticmethod
    def _at_most(m, name, stalled):
        """Assumes ``stalled`` is high for at most :data:`STALL_RUN` cycles in a row."""
        run = Signal(range(STALL_RUN + 1), name=name)
        m.d.sync += run.eq(Mux(stalled, run + 1, 0))
        m.d.comb += Assume(~stalled | (run < STALL_RUN))

    def check_cover(self, m):
        m.d.comb += [
            Cover(transfer(self.done) & (self.held_job.token_blocks == 2)),
            Cover(self.sums.valid & ~self.sums.ready),
        ]
