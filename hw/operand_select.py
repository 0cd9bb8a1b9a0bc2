"""The operand select of a dual-sparse array: the MAC array's operands from the buffer or the
pairs stream."""

from amaranth.hdl import Module, Signal
from amaranth.lib import stream
from amaranth.lib.wiring import In, Out

from .component import JobComponent
from .formats import Sparsity
from .errors import InputError

__all__ = ["OperandSelect"]


class OperandSelect(JobComponent):
    """Feeds the MAC array a weight per multiplier, from the activation buffer or from ``pairs``.

    A WEIGHTS job passes the buffer's ``operands`` through in the same cycle, each lane's weight
    copied to every token lane. A DUAL job takes ``pairs`` instead, through one register, so
    that the multipliers are driven from a register as they are from the buffer: pair ``k`` of
    token lane ``t`` becomes lane ``k``'s weight and activation for token ``t``.

    Contract
    --------
    After ``start`` (one cycle, while ``job`` is valid) the job's ``sparsity`` chooses the source
    until the next ``start``; the other input is never taken. A DUAL job takes ``pairs`` beats
    from the cycle after ``start`` until it has taken ``rows x token_blocks`` beats with
    ``row_last``, and no more, so the next job's beats wait for its own ``start``. Every beat
    taken leaves once, in order, on ``o_stream``: a buffer beat in the cycle it arrives, a
    ``pairs`` beat one cycle after it is taken (with ``split`` K with ``span_rows``: a pairs beat
    spans no rows).

    Attributes
    ----------
    start, job
        As in :class:`~sparsemac.hw.component.JobComponent`.
    operands : In(stream.Signature(formats.operands))
        The activation buffer's beats.
    pairs : In(stream.Signature(formats.pairs))
        The DUAL job's beats.
    o_stream : Out(stream.Signature(formats.array_operands))
        To the MAC array.
    """

    @classmethod
    def check(cls, config):
        super().check(config)
        if not config.dual_sparse:
            raise InputError(f"an operand select is built only for a dual-sparse array, not "
                             f"{config.key()}")

    def streams(self, formats):
        return {
            "operands": In(stream.Signature(formats.operands)),
            "pairs": In(stream.Signature(formats.pairs)),
            "o_stream": Out(stream.Signature(formats.array_operands)),
        }

    def elaborate(self, platform):
        m = Module()
        lanes, token_lanes = self._config.lanes, self._config.token_lanes
        dual = Signal()   # the source, until the next job
        taking = Signal()  # rows of the DUAL job are left to take
        rows, blocks = Signal.like(self.job.rows), Signal.like(self.job.token_blocks)
        row, block = Signal.like(rows), Signal.like(blocks)
        with m.If(self.start):
            is_dual = self.job.sparsity == Sparsity.DUAL
            m.d.sync += [dual.eq(is_dual), taking.eq(is_dual), rows.eq(self.job.rows),
                         blocks.eq(self.job.token_blocks), row.eq(0), block.eq(0)]
        held = Signal(self._formats.array_operands)
        held_valid = Signal()
        pairs = self.pairs.payload
        with m.If(taking & self.pairs.valid & (~held_valid | self.o_stream.ready)):
            m.d.comb += self.pairs.ready.eq(1)
            with m.If(pairs.row_last):
                with m.If(row != rows - 1):
                    m.d.sync += row.eq(row + 1)
                with m.Elif(block != blocks - 1):
                    m.d.sync += [row.eq(0), block.eq(block + 1)]
                with m.Else():
                    m.d.sync += taking.eq(0)
            m.d.sync += held.row_last.eq(pairs.row_last)
            if self._config.span_rows:
                m.d.sync += held.split.eq(lanes)
            for lane in range(lanes):
                for token in range(token_lanes):
                    m.d.sync += [
                        held.weights[lane][token].eq(pairs.weights[token][lane]),
                        held.activations[lane][token].eq(pairs.activations[token][lane]),
                    ]
        with m.If(self.pairs.ready):
            m.d.sync += held_valid.eq(1)
        with m.Elif(self.o_stream.ready):
            m.d.sync += held_valid.eq(0)

        operands = self.operands.payload
        with m.If(dual):
            m.d.comb += [self.o_stream.valid.eq(held_valid), self.o_stream.payload.eq(held)]
        with m.Else():
            m.d.comb += [
                self.o_stream.valid.eq(self.operands.valid),
                self.operands.ready.eq(self.o_stream.ready),
                self.o_stream.payload.activations.eq(operands.activations),
                self.o_stream.payload.row_last.eq(operands.row_last),
            ]
            if self._config.span_rows:
                m.d.comb += self.o_stream.payload.split.eq(operands.split)
            for lane in range(lanes):
                for token in range(token_lanes):
                    m.d.comb += self.o_stream.payload.weights[lane][token].eq(
                        operands.weights[lane])
        return m
