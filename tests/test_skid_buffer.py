"""SkidBuffer: every beat through, in order, at one a cycle, with registered outputs."""

import random

import pytest
from amaranth.hdl import unsigned
from amaranth.lib import data
from amaranth.sim import Simulator

from helpers import CLOCK_PERIOD, STALLS, BlockTestbench
from sparsemac.hw.skid_buffer import SkidBuffer

#: A struct payload, as the core's streams carry.
PAIR = data.StructLayout({"value": unsigned(8), "last": unsigned(1)})


@pytest.mark.parametrize("shape", [unsigned(12), PAIR], ids=["unsigned", "struct"])
@pytest.mark.parametrize("idle, backpressure", [(0, 0), (STALLS, 0), (0, STALLS),
                                                (STALLS, STALLS), (0.7, 0.1), (0.1, 0.7)])
def test_every_beat_passes_in_order(shape, idle, backpressure):
    width = data.Layout.cast(shape).size if isinstance(shape, data.Layout) else shape.width
    rng = random.Random(3)
    beats = [rng.randrange(1 << width) for _ in range(200)]
    dut = SkidBuffer(shape)
    bench = BlockTestbench(dut, seed=7)
    bench.put(dut.i_stream, beats, idle=idle)
    bench.get("beats", dut.o_stream, len(beats), backpressure=backpressure)
    assert bench.run(2000)["beats"] == beats


def test_one_beat_a_cycle_one_cycle_late():
    """With ideal streams a beat taken in cycle i is offered in cycle i + 1, every cycle."""
    dut = SkidBuffer(unsigned(8))
    bench = BlockTestbench(dut, seed=1)
    bench.put(dut.i_stream, list(range(1, 21)), idle=0)
    bench.get("beats", dut.o_stream, 20, backpressure=0)
    bench.record("valid", 22, dut.o_stream.valid, dut.o_stream.payload)
    results = bench.run(100)
    assert results["beats"] == list(range(1, 21))
    # Sample i is taken in cycle i, the cycle before clock edge i + 1.
    assert results["valid"][:21] == [(0, 0)] + [(1, beat) for beat in range(1, 21)]


def test_takes_two_beats_then_holds_ready_low():
    """A stalled output fills the output and skid registers, then ``ready`` goes low (a
    register: from the cycle after the second beat is taken) and stays low."""
    dut = SkidBuffer(unsigned(8))
    sim = Simulator(dut)
    sim.add_clock(CLOCK_PERIOD)
    samples = []

    async def testbench(ctx):
        ctx.set(dut.i_stream.valid, 1)
        for beat in (5, 6, 7, 8, 9):
            ctx.set(dut.i_stream.payload, beat)
            _, _, ready, valid, payload = await ctx.tick().sample(
                dut.i_stream.ready, dut.o_stream.valid, dut.o_stream.payload)
            samples.append((ready, valid, payload))
    sim.add_testbench(testbench)
    sim.run()
    assert samples == [(1, 0, 0), (1, 1, 5), (0, 1, 5), (0, 1, 5), (0, 1, 5)]
    assert dut.shape == unsigned(8)
