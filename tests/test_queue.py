"""Queue: every beat through in order, its level, ready low only while full, bad depths refused."""

import random

import pytest
from amaranth.hdl import unsigned
from amaranth.sim import Simulator

from helpers import CLOCK_PERIOD, STALLS, BlockTestbench
from sparsemac.hw.errors import InputError
from sparsemac.hw.queue import Queue


@pytest.mark.parametrize("depth", [2, 8])
@pytest.mark.parametrize("idle, backpressure", [(0, 0), (STALLS, STALLS), (0, 0.8), (0.8, 0)])
def test_every_beat_passes_in_order(depth, idle, backpressure):
    rng = random.Random(5)
    beats = [rng.randrange(1 << 12) for _ in range(200)]
    dut = Queue(unsigned(12), depth)
    bench = BlockTestbench(dut, seed=9)
    bench.put(dut.i_stream, beats, idle=idle)
    bench.get("beats", dut.o_stream, len(beats), backpressure=backpressure)
    assert bench.run(3000)["beats"] == beats


def test_fills_to_its_depth_then_drains_a_beat_a_cycle():
    """With the output stalled the queue takes exactly ``depth`` beats (ready low from then on,
    the level counting each), and once the output is ready they leave one a cycle, in order,
    a beat taken in one cycle offered in the next."""
    dut = Queue(unsigned(8), 4)
    sim = Simulator(dut)
    sim.add_clock(CLOCK_PERIOD)
    samples = []

    async def testbench(ctx):
        ctx.set(dut.i_stream.valid, 1)
        for cycle in range(12):
            ctx.set(dut.i_stream.payload, 10 + cycle)
            ctx.set(dut.o_stream.ready, cycle >= 6)
            _, _, *values = await ctx.tick().sample(
                dut.i_stream.ready, dut.level, dut.o_stream.valid, dut.o_stream.payload)
            samples.append(tuple(values))
    sim.add_testbench(testbench)
    sim.run()
    # (i_stream.ready, level, o_stream.valid, o_stream.payload) in cycles 0 to 11.
    assert [sample[:3] for sample in samples[:7]] == [
        (1, 0, 0), (1, 1, 1), (1, 2, 1), (1, 3, 1), (0, 4, 1), (0, 4, 1), (0, 4, 1)]
    taken = [sample[3] for sample in samples[1:6]]
    assert taken == [10] * 5, "the oldest beat stays on offer while stalled"
    # Cycle 6 gives 10; from cycle 7 there is room again.
    assert [sample[3] for sample in samples[6:10]] == [10, 11, 12, 13]
    assert samples[6][0] == 0 and samples[7][0] == 1


@pytest.mark.parametrize("depth", [0, 1, 3, 12, "8", 8.0, True])
def test_bad_depths_are_refused(depth):
    with pytest.raises(InputError, match="power of two"):
        Queue(unsigned(8), depth)
