"""Formal harness of :class:`~sparsemac.hw.operand_select.OperandSelect`."""

from amaranth.hdl import Array, Assert, Assume, Cover, Mux, Signal, Value

from ...hw.formats import Sparsity
from ...hw.operand_select import OperandSelect
from .harness import Harness, transfer

__all__ = ["OperandSelectHarness", "MAX_ROWS", "MAX_BLOCKS"]

#: Rows and token blocks of a job in the proofs: 2 x 2, so a job ends mid-stream.
MAX_ROWS = 2
MAX_BLOCKS = 2


class OperandSelectHarness(Harness):
    """Each pairs beat a DUAL job takes leaves exactly once, in order, transposed.

    The environment starts a job (1 to :data:`MAX_ROWS` rows, 1 to :data:`MAX_BLOCKS` blocks,
    either sparsity) only once the previous one has nothing in flight, and the buffer offers
    ``operands`` only in a WEIGHTS job, as in the core; the pairs stream offers beats at any
    time, of this job or the next.

    ``once`` keeps the expected ``o_stream`` beat of every pairs beat taken (its pairs, one
    weight and one activation per lane and token) and asserts each beat that leaves in a DUAL
    job is the oldest one expected, with at most one in flight, and that no pairs beat is taken
    outside a DUAL job or past its ``rows x token_blocks`` rows. Bounded.
    """

    DUT = OperandSelect
    PROPERTIES = {
        **Harness.PROPERTIES,
        "once": "every pairs beat of a DUAL job leaves once, in order; none taken outside it",
        "cover": "a DUAL job ends with the next job's pairs waiting; o_stream back-pressured",
    }

    def environment(self, m):
        job = self.job
        self.in_flight = in_flight = Signal(range(3))
        self.dual = dual = Signal()
        self.rows_left = rows_left = Signal(range(MAX_ROWS * MAX_BLOCKS + 1))
        m.d.comb += Assume(~self.operands.valid | ~dual & ~self.start)
        m.d.comb += Assume(~self.start | (in_flight == 0) & (rows_left == 0)
                           & (job.rows >= 1) & (job.rows <= MAX_ROWS)
                           & (job.token_blocks >= 1) & (job.token_blocks <= MAX_BLOCKS))
        closed = transfer(self.pairs) & self.pairs.payload.row_last
        with m.If(self.start):
            is_dual = job.sparsity == Sparsity.DUAL
            m.d.sync += [dual.eq(is_dual),
                         rows_left.eq(Mux(is_dual, job.rows * job.token_blocks, 0))]
        with m.Elif(closed & (rows_left != 0)):
            m.d.sync += rows_left.eq(rows_left - 1)
        taken_out = transfer(self.o_stream) & dual
        m.d.sync += in_flight.eq(in_flight + transfer(self.pairs) - taken_out)

    def check_once(self, m):
        config = self.config
        pairs = self.pairs.payload
        expected = Signal.like(self.o_stream.payload)
        m.d.comb += expected.row_last.eq(pairs.row_last)
        if config.span_rows:
            m.d.comb += expected.split.eq(config.lanes)
        for lane in range(config.lanes):
            for token in range(config.token_lanes):
                m.d.comb += [expected.weights[lane][token].eq(pairs.weights[token][lane]),
                             expected.activations[lane][token].eq(pairs.activations[token][lane])]
        width = len(Value.cast(expected))
        queue = Array(Signal(width, name=f"expected{i}") for i in range(2))
        head, tail = Signal(), Signal()
        with m.If(transfer(self.pairs)):
            m.d.sync += [queue[tail].eq(expected), tail.eq(~tail)]
        with m.If(transfer(self.o_stream) & self.dual):
            m.d.sync += head.eq(~head)
        m.d.comb += [
            Assert(~self.pairs.ready | self.dual & (self.rows_left != 0),
                   "a pairs beat taken outside its DUAL job or past its last row"),
            Assert(self.in_flight <= 1, "more pairs beats in flight than the one register"),
            Assert(~self.dual | ~self.o_stream.valid | (self.in_flight != 0),
                   "an o_stream beat of a DUAL job from no pairs beat"),
            Assert(~self.dual | ~self.o_stream.valid
                   | (Value.cast(self.o_stream.payload) == queue[head]),
                   "o_stream beat is not the oldest pairs beat taken, transposed"),
        ]

    def check_cover(self, m):
        m.d.comb += [
            Cover(self.dual & (self.rows_left == 0) & self.pairs.valid & (self.in_flight == 0)),
            Cover(self.dual & self.o_stream.valid & ~self.o_stream.ready),
        ]
