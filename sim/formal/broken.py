"""Deliberately broken variants of the blocks, each one bug a proof must catch.

Each variant wraps the real block, with the same signature, and changes one of its ports, so
the block's own code stays untouched. The tests run each proof on its variant and expect a
counterexample: a proof that passes on a broken block proves nothing.
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, flipped

from ...hw.activation_buffer import ActivationBuffer
from ...hw.core import SparseMACCore
from ...hw.csr_streamer import CSRWeightStreamer
from ...hw.frame_receiver import FrameReceiver
from ...hw.mac_array import MACArray
from ...hw.operand_select import OperandSelect
from .harness import transfer

__all__ = ["BrokenVariant", "PairDroppingStreamer", "SplitLosingStreamer", "DuplicatingBuffer",
           "FlickeringMACArray", "RowLosingMACArray", "SkippingCounterCore", "EagerCore",
           "ImpatientReceiver", "RepeatingSelect"]


class BrokenVariant(wiring.Component):
    """The block ``BLOCK`` with every port passed through, then changed by ``mutate``."""

    BLOCK = None

    def __init__(self, config):
        self._inner = self.make_block(config)
        self.config = config
        super().__init__(dict(self._inner.signature.members.items()))

    def elaborate(self, platform):
        m = Module()
        m.submodules.inner = inner = self._inner
        for name, member in self.signature.members.items():
            outer, port = getattr(self, name), getattr(inner, name)
            if member.is_signature:
                wiring.connect(m, flipped(outer), port)
            elif member.flow == In:
                m.d.comb += port.eq(outer)
            else:
                m.d.comb += outer.eq(port)
        # A later assignment in the same module overrides the pass-through.
        self.mutate(m, inner)
        return m

    def make_block(self, config):
        return self.BLOCK(config)

    def mutate(self, m, inner):
        raise NotImplementedError


class PairDroppingStreamer(BrokenVariant):
    """Drops the second pair of every pass (its value becomes 0, i.e. an unused lane)."""

    BLOCK = CSRWeightStreamer

    def mutate(self, m, inner):
        value = inner.chunks.payload.values[0]
        with m.If(value == 2):
            m.d.comb += self.chunks.payload.values[0].eq(0)


class SplitLosingStreamer(BrokenVariant):
    """Sends every chunk with ``split`` = K: a chunk that spans rows then gives the next row's
    head to the row it closes (for an array with ``span_rows``)."""

    BLOCK = CSRWeightStreamer

    def mutate(self, m, inner):
        m.d.comb += self.chunks.payload.split.eq(self.config.lanes)


class _SendingTwice(BrokenVariant):
    """Sends a beat of the block's output stream ``STREAM`` again in the cycle after it was
    taken."""

    STREAM = None

    def mutate(self, m, inner):
        again = Signal()
        stream = getattr(self, self.STREAM)
        m.d.sync += again.eq(transfer(stream))
        m.d.comb += stream.valid.eq(getattr(inner, self.STREAM).valid | again)


class DuplicatingBuffer(_SendingTwice):
    """Sends an ``operands`` beat again in the cycle after it was taken."""

    BLOCK = ActivationBuffer
    STREAM = "operands"


class RepeatingSelect(_SendingTwice):
    """Sends an ``o_stream`` beat again in the cycle after it was taken: a pairs beat that
    contributes twice."""

    BLOCK = OperandSelect
    STREAM = "o_stream"


class FlickeringMACArray(BrokenVariant):
    """Flips a bit of the sums payload in every cycle the beat waits for ``ready``."""

    BLOCK = MACArray

    def mutate(self, m, inner):
        flip = Signal()
        with m.If(self.sums.valid & ~self.sums.ready):
            m.d.sync += flip.eq(~flip)
        m.d.comb += self.sums.payload[0].eq(inner.sums.payload[0] ^ flip)


class RowLosingMACArray(BrokenVariant):
    """Swallows the first row's ``sums`` beat: takes it from the array, never offers it."""

    BLOCK = MACArray

    def mutate(self, m, inner):
        swallowed = Signal()
        with m.If(inner.sums.valid):
            m.d.sync += swallowed.eq(1)
        with m.If(~swallowed):
            m.d.comb += [self.sums.valid.eq(0), inner.sums.ready.eq(1)]


class SkippingCounterCore(BrokenVariant):
    """Reports one cycle too many for jobs longer than eight cycles: a counter that skips."""

    BLOCK = SparseMACCore

    def mutate(self, m, inner):
        cycles = inner.done.payload
        m.d.comb += self.done.payload.eq(cycles + (cycles > 8))


class EagerCore(BrokenVariant):
    """Says ``job`` is ready while busy (the core itself still ignores that job)."""

    BLOCK = SparseMACCore

    def mutate(self, m, inner):
        m.d.comb += self.job.ready.eq(1)


class ImpatientReceiver(BrokenVariant):
    """Withdraws a ``received`` beat after it has waited one cycle for ``ready``."""

    BLOCK = FrameReceiver

    def make_block(self, config):
        return FrameReceiver(config, timeout_cycles=16)

    def mutate(self, m, inner):
        waited = Signal()
        m.d.sync += waited.eq(self.received.valid & ~self.received.ready)
        m.d.comb += self.received.valid.eq(inner.received.valid & ~waited)
