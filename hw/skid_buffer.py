"""The skid buffer: a stream register whose every output, ``ready`` included, is a register."""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["SkidBuffer"]


class SkidBuffer(wiring.Component):
    """Cuts every combinational path through a stream: ``valid``, ``payload`` and ``ready``.

    The output register holds the beat on offer; a second (skid) register catches the beat
    taken in the cycle the output stalls, so ``i_stream.ready`` can be a register (high while
    the skid register is empty) and the stream still moves a beat every cycle.

    Contract
    --------
    Every beat taken on ``i_stream`` leaves on ``o_stream``, in order, no earlier than the
    cycle after it was taken. The buffer holds two beats: it takes a beat whenever it holds at
    most one at the start of the cycle, and offers one whenever it holds any, so with
    ``o_stream`` always ready a beat taken in one cycle is offered in the next and one beat a
    cycle passes. ``i_stream.ready``, ``o_stream.valid`` and ``o_stream.payload`` depend on
    registers only.

    Parameters
    ----------
    shape : shape-like
        The payload.

    Attributes
    ----------
    i_stream : In(stream.Signature(shape))
    o_stream : Out(stream.Signature(shape))
    """

    def __init__(self, shape):
        self._shape = shape
        super().__init__({"i_stream": In(stream.Signature(shape)),
                          "o_stream": Out(stream.Signature(shape))})

    @property
    def shape(self):
        return self._shape

    def elaborate(self, platform):
        m = Module()
        # The payload registers have no reset: only the valid bits say what they hold, and a
        # reset fanning out to every payload bit is a long wire in a wide stream.
        payload = Signal(self._shape, reset_less=True)
        skid = Signal(self._shape, reset_less=True)
        skid_valid = Signal()
        m.d.comb += [self.i_stream.ready.eq(~skid_valid), self.o_stream.payload.eq(payload)]
        with m.If(~self.o_stream.valid | self.o_stream.ready):
            # The output register takes the older beat: the skid's, else the input's.
            m.d.sync += [
                self.o_stream.valid.eq(skid_valid | self.i_stream.valid),
                payload.eq(Mux(skid_valid, skid, self.i_stream.payload)),
                skid_valid.eq(0),
            ]
        with m.Elif(self.i_stream.valid & self.i_stream.ready):
            m.d.sync += [skid_valid.eq(1), skid.eq(self.i_stream.payload)]
        return m
