"""Multiplier: the inferred registers in simulation, the ECP5 DSP block on the ECP5."""

import random
from types import SimpleNamespace

import pytest
from amaranth.back import rtlil
from amaranth.sim import Simulator

from helpers import CLOCK_PERIOD
from sparsemac.hw.multiplier import Multiplier


def test_product_two_enabled_cycles_later():
    """Random int8 operands and a random enable: the product is that of the operands two
    enabled cycles back, and a disabled cycle changes nothing."""
    dut = Multiplier(8)
    sim = Simulator(dut)
    sim.add_clock(CLOCK_PERIOD)
    rng = random.Random(5)
    enabled = []  # the operands of each enabled cycle, in order
    checked = []

    async def testbench(ctx):
        for _ in range(300):
            a, b, enable = rng.randrange(-128, 128), rng.randrange(-128, 128), rng.random() < 0.7
            ctx.set(dut.a, a)
            ctx.set(dut.b, b)
            ctx.set(dut.enable, enable)
            await ctx.tick()
            if enable:
                enabled.append(a * b)
            if len(enabled) >= 2:
                assert ctx.get(dut.product) == enabled[-2]
                checked.append(enabled[-2])
    sim.add_testbench(testbench)
    sim.run()
    assert len(checked) > 150 and min(checked) < 0 < max(checked)


def test_ecp5_platform_instantiates_the_dsp_with_its_registers():
    text = rtlil.convert(Multiplier(8), platform=SimpleNamespace(family="ecp5"))
    assert "MULT18X18D" in text
    for register in ("REG_INPUTA_CLK", "REG_INPUTB_CLK", "REG_OUTPUT_CLK"):
        assert f'parameter \\{register} "CLK0"' in text
    assert 'parameter \\REG_PIPELINE_CLK "NONE"' in text
    # The 16 product bits are wired, the DSP's other 20 outputs are not.
    assert "connect \\P15 " in text and "connect \\P16 " not in text
    assert "MULT18X18D" not in rtlil.convert(Multiplier(8))


@pytest.mark.parametrize("width, error", [(0, ValueError), (19, ValueError),
                                          (8.0, TypeError)])
def test_rejects_a_width_the_dsp_cannot_hold(width, error):
    with pytest.raises(error, match=repr(width)):
        Multiplier(width)
