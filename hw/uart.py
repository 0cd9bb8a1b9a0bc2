"""8N1 UART receiver and transmitter: byte streams to and from a pair of pins.

A bit lasts ``divisor`` clock cycles (:func:`uart_divisor` derives it from the clock and baud
rates). Both blocks sit in the ``sync`` domain.
"""

from amaranth.hdl import Module, Signal, Cat, Const
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

from .errors import InputError

__all__ = ["uart_divisor", "UARTReceiver", "UARTTransmitter"]

#: The largest baud rate error (clock / divisor against the nominal rate) that 8N1 tolerates
#: with margin for the other end's error.
MAX_BAUD_ERROR = 0.02


def uart_divisor(clock_hz, baud):
    """Clock cycles per bit for ``baud`` at ``clock_hz``.

    Raises
    ------
    ValueError
        If the divisor is under 4 or the resulting rate is off by more than 2 %.
    """
    if not clock_hz > 0 or not baud > 0:
        raise InputError(f"clock and baud rates must be positive, not {clock_hz!r} and {baud!r}")
    divisor = round(clock_hz / baud)
    if divisor < 4:
        raise InputError(f"a {clock_hz / 1e6:g} MHz clock is too slow for {baud} baud: "
                         f"the UART needs at least 4 cycles per bit, not {clock_hz / baud:.2f}")
    error = abs(clock_hz / divisor - baud) / baud
    if error > MAX_BAUD_ERROR:
        raise InputError(f"{baud} baud from {clock_hz / 1e6:g} MHz is off by {error:.1%} "
                         f"(divisor {divisor}): choose a baud rate that divides the clock")
    return divisor


class _BitTimed(wiring.Component):
    """A UART block with a fixed number of clock cycles per bit.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit, at least 4 (both :class:`UARTReceiver` and
        :class:`UARTTransmitter` take it).
    """

    def __init__(self, divisor):
        if not isinstance(divisor, int) or isinstance(divisor, bool):
            raise TypeError(f"divisor must be an integer, not {divisor!r}")
        if divisor < 4:
            raise InputError(f"divisor must be at least 4 cycles per bit, not {divisor!r}")
        self._divisor = divisor
        super().__init__()

    @property
    def divisor(self):
        """Clock cycles per bit."""
        return self._divisor


class UARTReceiver(_BitTimed):
    """Turns 8N1 frames on ``rx`` into bytes on ``o_stream``.

    Contract
    --------
    A falling edge on ``rx`` that is still low half a bit later starts a frame; each data bit is
    sampled in its middle, least significant first. A frame whose stop bit is low is dropped and
    pulses ``error``. A received byte waits on ``o_stream`` until taken; a byte that completes
    while the previous one is still waiting is dropped and pulses ``error`` (the link protocol
    recovers from lost bytes; there is no flow control).

    Attributes
    ----------
    rx : In(1)
        The pin, asynchronous to the clock (synchronised inside).
    o_stream : Out(stream.Signature(8))
    error : Out(1)
        One-cycle pulse on a framing error or an overrun.
    """

    rx: In(1, init=1)
    o_stream: Out(stream.Signature(8))
    error: Out(1)

    def elaborate(self, platform):
        m = Module()

        rx = Signal(init=1)
        m.submodules.rx_sync = FFSynchronizer(self.rx, rx, init=1)

        timer = Signal(range(self._divisor))
        bit = Signal(range(9))
        shift = Signal(8)

        with m.If(self.o_stream.ready):
            m.d.sync += self.o_stream.valid.eq(0)

        with m.FSM():
            with m.State("Idle"):
                with m.If(~rx):
                    m.d.sync += timer.eq(self._divisor // 2 - 1)
                    m.next = "Start"
            with m.State("Start"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    with m.If(rx):
                        m.next = "Idle"  # a glitch, not a start bit
                    with m.Else():
                        m.d.sync += [timer.eq(self._divisor - 1), bit.eq(0)]
                        m.next = "Data"
            with m.State("Data"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    m.d.sync += [timer.eq(self._divisor - 1), shift.eq(Cat(shift[1:], rx)),
                                 bit.eq(bit + 1)]
                    with m.If(bit == 7):
                        m.next = "Stop"
            with m.State("Stop"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    with m.If(rx & (~self.o_stream.valid | self.o_stream.ready)):
                        m.d.sync += [self.o_stream.valid.eq(1), self.o_stream.payload.eq(shift)]
                    with m.Else():
                        m.d.comb += self.error.eq(1)
                    # After a low stop bit, wait for the line to go idle before the next frame.
                    m.next = "Idle"
                    with m.If(~rx):
                        m.next = "Break"
            with m.State("Break"):
                with m.If(rx):
                    m.next = "Idle"

        return m


class UARTTransmitter(_BitTimed):
    """Sends the bytes of ``i_stream`` as 8N1 frames on ``tx``.

    Contract
    --------
    A byte is taken when the previous frame's stop bit is over; ``tx`` idles high. Bytes
    offered back to back go out back to back, one every ``10 * divisor`` cycles.

    Attributes
    ----------
    i_stream : In(stream.Signature(8))
    tx : Out(1)
        The pin level, registered.
    busy : Out(1)
        A frame is being sent.
    """

    i_stream: In(stream.Signature(8))
    tx: Out(1, init=1)
    busy: Out(1)

    def elaborate(self, platform):
        m = Module()

        timer = Signal(range(self._divisor))
        # Start bit, eight data bits, stop bit; shifted out least significant first.
        shift = Signal(10, init=0x3FF)
        bits_left = Signal(range(11))

        m.d.comb += [self.tx.eq(shift[0]), self.busy.eq(bits_left != 0)]

        with m.If(bits_left == 0):
            m.d.comb += self.i_stream.ready.eq(1)
            with m.If(self.i_stream.valid):
                m.d.sync += [shift.eq(Cat(Const(0, 1), self.i_stream.payload, Const(1, 1))),
                             bits_left.eq(10), timer.eq(self._divisor - 1)]
        with m.Else():
            m.d.sync += timer.eq(timer - 1)
            with m.If(timer == 0):
                m.d.sync += [shift.eq(Cat(shift[1:], Const(1, 1))), bits_left.eq(bits_left - 1),
                             timer.eq(self._divisor - 1)]

        return m
