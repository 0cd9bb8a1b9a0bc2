"""Runs jobs on the core in Amaranth's own simulator: slow, but needs no C++ compiler.

Stream drivers and sinks here are shared by the Amaranth unit tests of every block and by the
``amaranth`` back end of the host driver. Each stream side is its own testbench; drivers may
insert random idle cycles and sinks random back-pressure, from a seeded generator.
"""

import random
from dataclasses import dataclass

import numpy as np
from amaranth.hdl import Value
from amaranth.sim import Simulator

from ..hw.core import SparseMACCore
from ..hw.link_formats import layout_bytes
from ..sw.memory import RATE_ONE, packed_stream_rates
from ..sw.packing import beats_to_ints
from .stalls import IDEAL
from ..hw.errors import SparsemacError

__all__ = ["stream_put_all", "stream_put_throttled", "stream_get_all", "run_core_job", "CoreRun",
           "CoreTimeout"]

CLOCK_PERIOD = 1e-8


class CoreTimeout(SparsemacError, RuntimeError):
    """The core did not finish a job within its cycle budget: it is stuck."""


async def stream_put_all(ctx, stream, beats, rng, idle):
    """Sends every beat (integers) on ``stream``, going idle before a beat with ``idle``."""
    for beat in beats:
        while idle and rng.random() < idle:
            ctx.set(stream.valid, 0)
            await ctx.tick()
        ctx.set(stream.valid, 1)
        ctx.set(Value.cast(stream.payload), beat)
        await ctx.tick().until(stream.ready)
    ctx.set(stream.valid, 0)


async def stream_put_throttled(ctx, stream, beats, rate):
    """Sends every beat of a :class:`~sparsemac.sw.memory.StreamRate` stream at its credit rate.

    Follows the credit scheme of :mod:`sparsemac.sw.memory` from the cycle in which the testbench
    starts, which must be the cycle in which the job is accepted.
    """
    beat, level = rate.bytes * RATE_ONE, 0
    for value in beats:
        ctx.set(Value.cast(stream.payload), value)
        taken = False
        while not taken:
            offered = level >= beat
            ctx.set(stream.valid, offered)
            _, _, ready = await ctx.tick().sample(stream.ready)
            taken = offered and ready
            level = min(level - (beat if taken else 0) + rate.rate, beat)
    ctx.set(stream.valid, 0)


async def stream_get_all(ctx, stream, count, rng, backpressure):
    """Receives ``count`` beats (integers) from ``stream``, refusing a cycle with
    ``backpressure``."""
    payload = Value.cast(stream.payload)
    beats = []
    while len(beats) < count:
        ready = not (backpressure and rng.random() < backpressure)
        ctx.set(stream.ready, ready)
        _, _, valid, value = await ctx.tick().sample(stream.valid, payload)
        if ready and valid:
            beats.append(value)
    ctx.set(stream.ready, 0)
    return beats


@dataclass
class CoreRun:
    """What the core returned for one job."""
    #: uint8 ``[token_blocks * rows, bytes per sums beat]``: every sums beat, in order.
    sums: np.ndarray
    #: The cycle count the core reported on ``done``.
    cycles: int


def _to_bytes(beats, width):
    return np.array([list(beat.to_bytes(width, "little")) for beat in beats],
                    dtype=np.uint8).reshape(len(beats), width)


def run_core_job(config, packed, stalls=IDEAL, vcd_path=None, max_cycles=None, memory=None,
                 core=None, monitor=None):
    """Runs one packed job on a fresh :class:`SparseMACCore` in the Amaranth simulator.

    Parameters
    ----------
    config : ArrayConfig
    packed : PackedJob
    stalls : sparsemac.sim.stalls.StallPattern
    vcd_path : str or None
        Write a waveform here.
    max_cycles : int or None
        Give up after this many cycles; the default allows 50 cycles per beat, far above what
        any stall pattern costs a working core, plus the credit waits under ``memory``.
    memory : MemoryModel or None
        Feed the inputs at this model's credit rates instead of the stall pattern's idle cycles.
    core : SparseMACCore or None
        The core to simulate (of ``config``), e.g. a subclass that exposes its blocks; a new
        :class:`SparseMACCore` by default.
    monitor : callable or None
        ``monitor(core)`` returns an async testbench run in the background beside the job, e.g.
        to count handshakes.

    Returns
    -------
    CoreRun

    Raises
    ------
    CoreTimeout
        If the job is not done within ``max_cycles``.
    """
    core = SparseMACCore(config) if core is None else core
    sim = Simulator(core)
    sim.add_clock(CLOCK_PERIOD)
    streams = packed_stream_rates(config, packed, memory)
    rates = {name: getattr(streams, name) for name in core.signature.data_inputs}
    if max_cycles is None:
        beats = sum(len(getattr(packed, name)) for name in rates)
        max_cycles = 1000 + 50 * (beats + packed.token_blocks * packed.rows)
        max_cycles += sum(-(-rate.total_bytes * RATE_ONE // rate.rate)
                          for rate in streams if rate.rate)
    rng = random.Random(stalls.seed)
    result = {}

    def driver(name, stream, beats):
        streams_rng = random.Random(rng.random())

        async def testbench(ctx):
            if rates[name].rate:
                await stream_put_throttled(ctx, stream, beats, rates[name])
            else:
                await stream_put_all(ctx, stream, beats, streams_rng, stalls.idle)
        return testbench

    async def control(ctx):
        await stream_put_all(ctx, core.job, [packed.job], rng, 0)
        sink_rng = random.Random(rng.random())
        result["sums"] = await stream_get_all(ctx, core.sums, packed.token_blocks * packed.rows,
                                              sink_rng, stalls.backpressure)
        (cycles,) = await stream_get_all(ctx, core.done, 1, sink_rng, stalls.backpressure)
        result["cycles"] = cycles

    async def watchdog(ctx):
        await ctx.delay(max_cycles * CLOCK_PERIOD)
        raise CoreTimeout(f"the core did not finish the job within {max_cycles} cycles")

    sim.add_testbench(watchdog, background=True)
    if monitor is not None:
        sim.add_testbench(monitor(core), background=True)
    for name in rates:
        beats = getattr(packed, name)
        if len(beats):
            sim.add_testbench(driver(name, getattr(core, name), beats_to_ints(beats)),
                              background=True)
    sim.add_testbench(control)
    if vcd_path is not None:
        with sim.write_vcd(vcd_path):
            sim.run()
    else:
        sim.run()
    width = layout_bytes(core.formats.sums)
    return CoreRun(sums=_to_bytes(result["sums"], width), cycles=result["cycles"])
