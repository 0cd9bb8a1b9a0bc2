"""The registered multiplier: operands and product in registers, an ECP5 DSP block on the ECP5."""

from amaranth.hdl import ClockSignal, Instance, Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .errors import InputError

__all__ = ["Multiplier"]

#: The operand width of the ECP5's MULT18X18D.
DSP_WIDTH = 18


class Multiplier(wiring.Component):
    """A signed multiplier with a register on each operand and on the product.

    On an ECP5 platform (one whose ``family`` is ``"ecp5"``) it is a hand-instantiated
    MULT18X18D with its A and B input registers and its output register on CLK0/CE0: nextpnr
    then times the multiplier as registered (``MULT18X18D_REGS_ALL``) instead of as a
    combinational path, and the registers cost no slices. Yosys does not move inferred registers
    into the ECP5's DSP blocks. Elsewhere (simulation, Verilator) the same two register stages
    are inferred. Neither register is reset; the DSP's are not tied to the global reset either,
    so both versions behave alike cycle for cycle.

    Contract
    --------
    In every cycle with ``enable`` high the operand registers take ``a`` and ``b`` and the
    product register takes the product of the operand registers: ``product`` is ``a * b`` of
    the operands two enabled cycles back. With ``enable`` low nothing changes.

    Parameters
    ----------
    width : int
        Of each signed operand, 1 to 18.

    Raises
    ------
    TypeError
        If ``width`` is not an integer.
    ValueError
        If it is out of range.

    Attributes
    ----------
    a, b : In(signed(width))
    enable : In(1)
    product : Out(signed(2 * width))
    """

    def __new__(cls, width, *args, **kwargs):
        # Refused before the object exists, so a bad width leaves no "created but never used"
        # elaboratable behind to warn about.
        if not isinstance(width, int) or isinstance(width, bool):
            raise TypeError(f"Multiplier width must be an integer, not {width!r}")
        if not 1 <= width <= DSP_WIDTH:
            raise InputError(f"Multiplier width must be from 1 to {DSP_WIDTH}, not {width!r}")
        return super().__new__(cls, width, *args, src_loc_at=1, **kwargs)

    def __init__(self, width):
        self._width = width
        super().__init__({"a": In(signed(width)), "b": In(signed(width)), "enable": In(1),
                          "product": Out(signed(2 * width))})

    @property
    def width(self):
        return self._width

    def elaborate(self, platform):
        m = Module()
        if getattr(platform, "family", None) == "ecp5":
            self._instantiate_dsp(m)
            return m
        a = Signal.like(self.a, reset_less=True)
        b = Signal.like(self.b, reset_less=True)
        product = Signal.like(self.product, reset_less=True)
        with m.If(self.enable):
            m.d.sync += [a.eq(self.a), b.eq(self.b), product.eq(a * b)]
        m.d.comb += self.product.eq(product)
        return m

    def _instantiate_dsp(self, m):
        # The DSP's ports are single bits (A0 ... A17, P0 ... P35); the operands enter sign
        # extended to 18 bits, and the product's low bits are the exact 2 * width-bit product.
        # The product bits above those are left unconnected: connected to wires nothing reads,
        # they made Yosys' ABC9 fail an assertion when reintegrating the mapped design
        # (``GetSize(conn.first) == GetSize(conn.second)``) on some arrays, e.g. k4t8i64p2r1.
        a, b = self.a.as_signed(), self.b.as_signed()
        product = Signal(2 * self._width)
        ports = {}
        for bit in range(DSP_WIDTH):
            ports[f"i_A{bit}"] = a[min(bit, self._width - 1)]
            ports[f"i_B{bit}"] = b[min(bit, self._width - 1)]
            ports[f"i_C{bit}"] = 0
        for bit in range(2 * self._width):
            ports[f"o_P{bit}"] = product[bit]
        registers = {f"p_REG_{name}_{setting}": value
                     for name in ("INPUTA", "INPUTB", "OUTPUT")
                     for setting, value in (("CLK", "CLK0"), ("CE", "CE0"), ("RST", "RST0"))}
        m.submodules.dsp = Instance(
            "MULT18X18D", **registers, **ports,
            p_REG_INPUTC_CLK="NONE", p_REG_PIPELINE_CLK="NONE", p_GSR="DISABLED",
            p_RESETMODE="SYNC", p_SOURCEB_MODE="B_SHIFT", p_MULT_BYPASS="DISABLED",
            p_CAS_MATCH_REG="FALSE",
            i_SIGNEDA=1, i_SIGNEDB=1, i_SOURCEA=0, i_SOURCEB=0,
            i_CLK0=ClockSignal("sync"), i_CE0=self.enable, i_RST0=0)
        m.d.comb += self.product.eq(product)
