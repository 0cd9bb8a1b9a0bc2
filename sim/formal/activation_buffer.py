"""Formal harness of :class:`~sparsemac.hw.activation_buffer.ActivationBuffer`."""

from amaranth.hdl import Array, Assert, Assume, Cat, Const, Cover, Mux, Signal, Value

from ...hw.activation_buffer import ActivationBuffer
from .harness import Harness, transfer
from ...hw.errors import InputError

__all__ = ["ActivationBufferHarness", "MAX_BLOCKS", "IN_FLIGHT"]

#: Token blocks per job in the proofs: three, so a block waits for a bank to be freed.
MAX_BLOCKS = 3

#: Chunks between ``chunks`` and ``operands``: the read port's register and the data register.
IN_FLIGHT = 2


class ActivationBufferHarness(Harness):
    """Each accepted chunk leaves once, in order, with the activations of its block's columns.

    The environment starts a job (at most ``max_in_features`` columns, :data:`MAX_BLOCKS`
    blocks) only when the previous one is over, fills ``cols`` beats per block and sends
    chunks whose columns are below ``cols``, ending each block with ``block_last``. Activation
    ``t`` of column ``c`` of block ``b`` is the tag ``(c + 1) | t << 4 | b << 5``, so a read of
    the wrong column, token lane, bank or a stale block shows (hence at most 8 columns and 2
    token lanes).

    ``scoreboard`` keeps the expected ``operands`` beat of every accepted chunk (its weights,
    its ``row_last`` and the tags of its columns) and asserts each beat that leaves is the
    oldest one expected, with at most :data:`IN_FLIGHT` in flight. Bounded.
    """

    DUT = ActivationBuffer
    PROPERTIES = {
        **Harness.PROPERTIES,
        "scoreboard": "operands = accepted chunks with their block's activations, in order",
        "cover": "both banks full with a fill waiting; a chunk waiting for its bank",
    }

    def environment(self, m):
        config = self.config
        if config.max_in_features > 8 or config.token_lanes > 2:
            raise InputError(f"the activation tags need max_in_features <= 8 and token_lanes "
                             f"<= 2, not {config.describe()}")
        cols = Signal.like(self.job.cols)
        blocks = Signal.like(self.job.token_blocks)
        self.active = active = Signal()
        self.in_flight = in_flight = Signal(range(IN_FLIGHT + 2))
        job = self.job
        m.d.comb += Assume(~self.start | ~active & (in_flight == 0)
                           & (job.cols >= 1) & (job.cols <= config.max_in_features)
                           & (job.token_blocks >= 1) & (job.token_blocks <= MAX_BLOCKS))
        with m.If(self.start):
            m.d.sync += [cols.eq(job.cols), blocks.eq(job.token_blocks), active.eq(1)]

        fill_column = Signal.like(cols)
        self.fill_pass = fill_pass = Signal(range(MAX_BLOCKS + 1))
        self.fill_pending = active & (fill_pass < blocks)
        for token in range(config.token_lanes):
            m.d.comb += Assume(~self.fill.valid | self.fill_pending & (
                self.fill.payload[token] == self.tag(fill_column, token, fill_pass)))
        with m.If(transfer(self.fill)):
            with m.If(fill_column == cols - 1):
                m.d.sync += [fill_column.eq(0), fill_pass.eq(fill_pass + 1)]
            with m.Else():
                m.d.sync += fill_column.eq(fill_column + 1)

        self.chunk_pass = chunk_pass = Signal(range(MAX_BLOCKS + 1))
        chunk = self.chunks.payload
        m.d.comb += Assume(~self.chunks.valid | active & (chunk_pass < blocks))
        for lane in range(config.lanes):
            m.d.comb += Assume(~self.chunks.valid | (chunk.columns[lane] < cols))
        with m.If(transfer(self.chunks) & chunk.block_last):
            m.d.sync += chunk_pass.eq(chunk_pass + 1)
            with m.If(chunk_pass == blocks - 1):
                m.d.sync += active.eq(0)
        m.d.sync += in_flight.eq(in_flight + transfer(self.chunks) - transfer(self.operands))
        with m.If(self.start):
            m.d.sync += [fill_column.eq(0), fill_pass.eq(0), chunk_pass.eq(0)]

    @staticmethod
    def tag(column, token, block):
        """The activation of token lane ``token`` at ``column`` of block ``block``."""
        return Cat((column + 1)[:4], Const(token, 1), block[:2], Const(0, 1)).as_signed()

    def check_scoreboard(self, m):
        config = self.config
        chunk = self.chunks.payload
        expected = Signal.like(self.operands.payload)
        m.d.comb += [
            expected.weights.eq(chunk.values),
            expected.row_last.eq(chunk.row_last),
        ]
        for lane in range(config.lanes):
            for token in range(config.token_lanes):
                m.d.comb += expected.activations[lane][token].eq(
                    self.tag(chunk.columns[lane], token, self.chunk_pass))
        width = len(Value.cast(expected))
        queue = Array(Signal(width, name=f"expected{i}") for i in range(IN_FLIGHT + 1))
        head = Signal(range(IN_FLIGHT + 1))
        tail = Signal(range(IN_FLIGHT + 1))

        with m.If(transfer(self.chunks)):
            m.d.sync += [queue[tail].eq(expected),
                         tail.eq(Mux(tail == IN_FLIGHT, 0, tail + 1))]
        with m.If(transfer(self.operands)):
            m.d.sync += head.eq(Mux(head == IN_FLIGHT, 0, head + 1))
        m.d.comb += [
            Assert(self.in_flight <= IN_FLIGHT, "more chunks in flight than pipeline stages"),
            Assert(~self.operands.valid | (self.in_flight != 0), "an operands beat from nothing"),
            Assert(~self.operands.valid | (Value.cast(self.operands.payload) == queue[head]),
                   "operands beat is not the oldest accepted chunk with its activations"),
        ]

    def check_cover(self, m):
        m.d.comb += [
            Cover(self.fill.valid & ~self.fill.ready & self.fill_pending & (self.fill_pass == 2)),
            Cover(self.chunks.valid & ~self.chunks.ready & ~self.operands.valid),
        ]
