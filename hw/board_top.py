"""The board design: UART pins, the host link and the core; and its ULX3S (ECP5) shell.

:class:`BoardTop` is the whole design behind two UART pins and eight LEDs, independent of any
platform: the Verilator board simulation compiles exactly this, with a fast UART divisor.
:class:`ULX3STop` adds what only the ULX3S has: the 25 MHz oscillator, the ECP5 PLL and the pins.
"""

from fractions import Fraction

from amaranth.hdl import (ClockDomain, ClockSignal, Const, DomainRenamer, Instance, Module, Mux,
                          ResetInserter, ResetSignal, Signal)
from amaranth.lib import io, wiring
from amaranth.lib.cdc import ResetSynchronizer
from amaranth.lib.wiring import In, Out

from .component import ArrayComponent
from .core import SparseMACCore
from .host_link import HostLink
from .uart import UARTReceiver, UARTTransmitter, uart_divisor
from .errors import InputError

__all__ = ["BoardTop", "ULX3STop", "PLLSettings", "PLL_OUTPUT_HZ", "pll_settings"]

#: Inter-byte time-out of a request frame, in seconds of the board clock.
DEFAULT_TIMEOUT_S = 0.05


class BoardTop(ArrayComponent):
    """The core behind a UART host link, with status LEDs.

    ::

        rx --> UARTReceiver --> HostLink --> SparseMACCore --> HostLink --> UARTTransmitter --> tx

    Parameters
    ----------
    config : ArrayConfig
    clock_hz : int
        The ``sync`` clock rate.
    baud : int
        UART rate; ``clock_hz / baud`` must be a whole number of cycles (within 2 %), at least 4.
    design_hash : int
        64-bit design hash reported by the identification word.
    timeout_s : float
        Inter-byte time-out within a request frame, at least 16 bit times.

    Attributes
    ----------
    rx : In(1)
        UART input pin (idles high).
    tx : Out(1)
        UART output pin.
    leds : Out(8)
        0: heartbeat, 1: job running, 2: receiving, 3: transmitting, 4: error reply sent
        (each activity LED stretched to be visible).
    """

    def __init__(self, config, *, clock_hz, baud, design_hash, timeout_s=DEFAULT_TIMEOUT_S):
        self._clock_hz = int(clock_hz)
        self._baud = int(baud)
        self._divisor = uart_divisor(clock_hz, baud)
        self._design_hash = design_hash
        self._timeout_cycles = max(16 * 10 * self._divisor, round(timeout_s * clock_hz))
        super().__init__(config)

    def members(self, formats):
        return {"rx": In(1, init=1), "tx": Out(1, init=1), "leds": Out(8)}

    def elaborate(self, platform):
        m = Module()

        m.submodules.receiver = receiver = UARTReceiver(self._divisor)
        m.submodules.transmitter = transmitter = UARTTransmitter(self._divisor)
        m.submodules.link = link = HostLink(
            self._config, design_hash=self._design_hash, clock_hz=self._clock_hz,
            baud=self._baud, timeout_cycles=self._timeout_cycles)
        if self._config.registered:
            core = self._core_with_registered_reset(m, link)
        else:
            m.submodules.core = core = ResetInserter(link.core_reset)(SparseMACCore(self._config))

        m.d.comb += [receiver.rx.eq(self.rx), self.tx.eq(transmitter.tx)]
        wiring.connect(m, receiver.o_stream, link.rx)
        wiring.connect(m, link.tx, transmitter.i_stream)
        wiring.connect(m, link.core, core)

        # LEDs: a heartbeat of about 1 Hz and activity stretched to about 1/20 s.
        half_second = max(2, self._clock_hz // 2)
        heartbeat = Signal(range(half_second))
        m.d.sync += heartbeat.eq(Mux(heartbeat == half_second - 1, 0, heartbeat + 1))
        blink = Signal()
        with m.If(heartbeat == 0):
            m.d.sync += blink.eq(~blink)
        m.d.comb += [self.leds[0].eq(blink), self.leds[1].eq(link.busy)]
        stretch = max(2, self._clock_hz // 20)
        for index, event in ((2, link.rx.valid), (3, transmitter.busy), (4, link.error)):
            m.d.comb += self.leds[index].eq(_stretch(m, event, stretch, f"led{index}"))

        return m

    def _core_with_registered_reset(self, m, link):
        """The core in a clock domain of its own on the board's clock, whose reset is one
        register: the board's reset or the link's ``RESET``, a cycle later. Its thousands of
        registers then have a single driver for their reset instead of a gate joining two."""
        m.domains.core = ClockDomain("core")
        core_reset = Signal(init=1)
        m.d.sync += core_reset.eq(link.core_reset)
        m.d.comb += [ClockSignal("core").eq(ClockSignal("sync")),
                     ResetSignal("core").eq(core_reset)]
        m.submodules.core = core = DomainRenamer("core")(SparseMACCore(self._config))
        return core


def _stretch(m, event, cycles, name):
    """A signal high for ``cycles`` cycles after each ``event``, so a pulse shows on a LED."""
    timer = Signal(range(cycles + 1), name=f"{name}_timer")
    with m.If(event):
        m.d.sync += timer.eq(cycles)
    with m.Elif(timer != 0):
        m.d.sync += timer.eq(timer - 1)
    return timer != 0


class PLLSettings:
    """Dividers of an ECP5 EHXPLLL with CLKOP fed back: ``out = in / clki_div * clkfb_div``.

    Attributes
    ----------
    clki_div, clkfb_div, clkop_div : int
    input_hz, output_hz, vco_hz : Fraction
    """

    def __init__(self, input_hz, clki_div, clkfb_div, clkop_div):
        self.clki_div, self.clkfb_div, self.clkop_div = clki_div, clkfb_div, clkop_div
        self.input_hz = Fraction(input_hz)
        self.output_hz = self.input_hz / clki_div * clkfb_div
        self.vco_hz = self.output_hz * clkop_div

    def __repr__(self):
        return (f"PLLSettings(CLKI_DIV={self.clki_div}, CLKFB_DIV={self.clkfb_div}, "
                f"CLKOP_DIV={self.clkop_div}, out={float(self.output_hz) / 1e6:g} MHz)")


#: The EHXPLLL output's range, Hz (ECP5 data sheet, CLKOP).
PLL_OUTPUT_HZ = (3_125_000, 400_000_000)


def pll_settings(input_hz, output_hz):
    """EHXPLLL dividers that make exactly ``output_hz`` from ``input_hz``.

    The phase detector runs at 3.125 to 400 MHz, the VCO at 400 to 800 MHz and the output at
    3.125 to 400 MHz (ECP5 data sheet); the highest VCO rate is chosen for the least jitter.

    Raises
    ------
    ValueError
        If ``output_hz`` is outside the output's range, or no divider set gives it exactly.
    """
    if not PLL_OUTPUT_HZ[0] <= output_hz <= PLL_OUTPUT_HZ[1]:
        low, high = (f"{hz / 1e6:g}" for hz in PLL_OUTPUT_HZ)
        raise InputError(f"the ECP5 PLL's output runs at {low} to {high} MHz, not "
                         f"{output_hz / 1e6:g} MHz")
    best = _exact_pll_settings(input_hz, output_hz)
    if best is None:
        below = next((hz for hz in range(int(output_hz) // 1_000_000 * 1_000_000, 0, -1_000_000)
                      if _exact_pll_settings(input_hz, hz)), None)
        above = next((hz for hz in range(-(-int(output_hz) // 1_000_000) * 1_000_000,
                                         int(output_hz) + 100_000_001, 1_000_000)
                      if _exact_pll_settings(input_hz, hz)), None)
        nearest = " or ".join(f"{hz / 1e6:g}" for hz in (below, above) if hz is not None)
        raise InputError(f"the ECP5 PLL cannot make exactly {output_hz / 1e6:g} MHz from "
                         f"{input_hz / 1e6:g} MHz: the nearest whole-MHz clocks it can make are "
                         f"{nearest} MHz")
    return best


def _exact_pll_settings(input_hz, output_hz):
    """The dividers of :func:`pll_settings` with the highest VCO rate, or None."""
    best = None
    for clki_div in range(1, 129):
        pfd = Fraction(input_hz) / clki_div
        if not 3_125_000 <= pfd <= 400_000_000:
            continue
        clkfb_div = Fraction(output_hz) / pfd
        if clkfb_div.denominator != 1 or not 1 <= clkfb_div <= 80:
            continue
        for clkop_div in range(1, 129):
            settings = PLLSettings(input_hz, clki_div, int(clkfb_div), clkop_div)
            if 400e6 <= settings.vco_hz <= 800e6 and (best is None
                                                        or settings.vco_hz > best.vco_hz):
                best = settings
    return best


class ULX3STop(wiring.Component):
    """The ULX3S design: PLL from the 25 MHz oscillator, :class:`BoardTop` on the FTDI UART.

    ``sync`` is the PLL output, held in reset until the PLL locks; ``clock_hz`` equal to the
    oscillator's rate bypasses the PLL.

    Parameters
    ----------
    config : ArrayConfig
    clock_hz : int
    baud : int
    design_hash : int
    """

    OSCILLATOR_HZ = 25_000_000

    def __new__(cls, config, *, clock_hz, baud, **kwargs):
        # A clock the PLL cannot make, or a baud rate it cannot divide, is refused before the
        # object exists, so it leaves no "created but never used" elaboratable to warn about.
        if clock_hz != cls.OSCILLATOR_HZ:
            pll_settings(cls.OSCILLATOR_HZ, clock_hz)
        uart_divisor(clock_hz, baud)
        return super().__new__(cls, config, clock_hz=clock_hz, baud=baud, src_loc_at=1, **kwargs)

    def __init__(self, config, *, clock_hz, baud, design_hash):
        self._board = BoardTop(config, clock_hz=clock_hz, baud=baud, design_hash=design_hash)
        self._clock_hz = clock_hz
        self._pll = (None if clock_hz == self.OSCILLATOR_HZ
                     else pll_settings(self.OSCILLATOR_HZ, clock_hz))
        super().__init__({})

    @property
    def board(self):
        return self._board

    def elaborate(self, platform):
        m = Module()

        m.submodules.oscillator = oscillator_buffer = io.Buffer(
            "i", platform.request("clk25", 0, dir="-"))
        oscillator = oscillator_buffer.i
        m.domains.sync = ClockDomain("sync")
        if self._pll is None:
            m.d.comb += ClockSignal("sync").eq(oscillator)
            locked = Const(1)
        else:
            pll = self._pll
            clock = Signal()
            locked = Signal()
            m.submodules.pll = Instance(
                "EHXPLLL",
                a_FREQUENCY_PIN_CLKI=f"{self.OSCILLATOR_HZ / 1e6:g}",
                a_FREQUENCY_PIN_CLKOP=f"{float(pll.output_hz) / 1e6:g}",
                a_ICP_CURRENT="12", a_LPF_RESISTOR="8",
                a_MFG_ENABLE_FILTEROPAMP="1", a_MFG_GMCREF_SEL="2",
                p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
                p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA",
                p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=pll.clkop_div,
                p_CLKOP_CPHASE=pll.clkop_div - 1, p_CLKOP_FPHASE=0,
                p_CLKI_DIV=pll.clki_div, p_CLKFB_DIV=pll.clkfb_div, p_FEEDBK_PATH="CLKOP",
                i_CLKI=oscillator, i_CLKFB=clock, i_RST=0, i_STDBY=0, i_PHASESEL0=0,
                i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1,
                i_PLLWAKESYNC=0, i_ENCLKOP=0,
                o_CLKOP=clock, o_LOCK=locked)
            # nextpnr derives the output clock's constraint from the dividers above.
            m.d.comb += ClockSignal("sync").eq(clock)
        m.submodules.reset_sync = ResetSynchronizer(~locked, domain="sync")

        m.submodules.board = board = self._board
        uart = platform.request("uart", 0, dir="-")
        m.submodules.uart_rx = uart_rx = io.Buffer("i", uart.rx)
        m.submodules.uart_tx = uart_tx = io.Buffer("o", uart.tx)
        m.d.comb += [board.rx.eq(uart_rx.i), uart_tx.o.eq(board.tx)]
        for index in range(8):
            m.submodules[f"led{index}"] = led = io.Buffer("o", platform.request("led", index,
                                                                                dir="-"))
            m.d.comb += led.o.eq(board.leds[index])

        return m
