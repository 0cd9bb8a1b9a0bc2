"""The UART receiver and transmitter in Amaranth's simulator: loopback, framing, divisors."""

import gc
import random
import warnings

import pytest
from amaranth.hdl import Module
from amaranth.sim import Simulator

from sparsemac.hw.uart import UARTReceiver, UARTTransmitter, uart_divisor
from sparsemac.sim.amaranth_sim import stream_get_all, stream_put_all


def loopback(data, divisor, idle, backpressure, seed, take=True):
    """Bytes ``data`` through transmitter -> pin -> receiver; returns (received, errors).

    With ``take`` false the receiver's output is never taken."""
    m = Module()
    m.submodules.tx = tx = UARTTransmitter(divisor)
    m.submodules.rx = rx = UARTReceiver(divisor)
    m.d.comb += rx.rx.eq(tx.tx)
    sim = Simulator(m)
    sim.add_clock(1e-8)
    received, errors = [], []

    async def driver(ctx):
        await stream_put_all(ctx, tx.i_stream, data, random.Random(seed), idle)

    async def monitor(ctx):
        received.extend(await stream_get_all(ctx, rx.o_stream, len(data),
                                             random.Random(seed + 1), backpressure))

    async def errors_bench(ctx):
        async for _, _, error in ctx.tick().sample(rx.error):
            if error:
                errors.append(error)

    sim.add_testbench(driver)
    if take:
        sim.add_testbench(monitor)
    sim.add_process(errors_bench)
    sim.run_until(1e-8 * (len(data) + 4) * 10 * divisor * 3)
    return received, errors


EDGE_CASES = [[0x00], [0xFF], [0x55, 0xAA], [0xA5, 0x5A, 0x00, 0xFF, 0x01, 0x80]]


@pytest.mark.parametrize("divisor", [4, 5, 10])
@pytest.mark.parametrize("data", EDGE_CASES + [
    [random.Random(seed).randrange(256) for _ in range(24)] for seed in range(2)])
def test_loopback(divisor, data):
    received, errors = loopback(data, divisor, idle=0.3, backpressure=0.3, seed=divisor)
    assert received == data
    assert errors == []


def send_bits(ctx, pin, bits, divisor):
    async def run():
        for bit in bits:
            ctx.set(pin, bit)
            await ctx.tick().repeat(divisor)
        ctx.set(pin, 1)
    return run()


def test_framing_error_drops_the_byte_and_the_next_frame_is_received():
    divisor = 6
    rx = UARTReceiver(divisor)
    sim = Simulator(rx)
    sim.add_clock(1e-8)
    seen = {"bytes": [], "errors": 0}
    bad = [0] + [1, 0, 1, 0, 1, 0, 1, 0] + [0]           # stop bit low
    good = [0] + [(0x3C >> bit) & 1 for bit in range(8)] + [1]

    async def driver(ctx):
        ctx.set(rx.rx, 1)
        await ctx.tick().repeat(5)
        await send_bits(ctx, rx.rx, bad + [0] * 3 + [1, 1], divisor)
        await send_bits(ctx, rx.rx, good + [1], divisor)

    async def monitor(ctx):
        ctx.set(rx.o_stream.ready, 1)
        async for _, _, valid, payload, error in ctx.tick().sample(
                rx.o_stream.valid, rx.o_stream.payload, rx.error):
            if valid:
                seen["bytes"].append(payload)
            seen["errors"] += error

    sim.add_testbench(driver)
    sim.add_process(monitor)
    sim.run_until(1e-8 * divisor * 40)
    assert seen["bytes"] == [0x3C]
    assert seen["errors"] == 1


def test_overrun_pulses_error():
    received, errors = loopback([1, 2, 3], 4, idle=0, backpressure=0, seed=0, take=False)
    assert received == [] and len(errors) == 2


@pytest.mark.parametrize("clock_hz, baud, divisor", [
    (30_000_000, 3_000_000, 10), (25_000_000, 115_200, 217), (4_000_000, 1_000_000, 4)])
def test_divisor(clock_hz, baud, divisor):
    assert uart_divisor(clock_hz, baud) == divisor


@pytest.mark.parametrize("clock_hz, baud, message", [
    (10_000_000, 3_000_000, "at least 4 cycles"),
    (25_000_000, 3_000_000, "off by"),
    (0, 9600, "positive")])
def test_bad_divisor(clock_hz, baud, message):
    with pytest.raises(ValueError, match=message):
        uart_divisor(clock_hz, baud)


def test_bad_divisor_parameter():
    with warnings.catch_warnings():
        # The half-made objects are reported as unused when collected: they are meant to be.
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="at least 4"):
            UARTReceiver(3)
        with pytest.raises(TypeError, match="integer"):
            UARTTransmitter(4.0)
        gc.collect()
