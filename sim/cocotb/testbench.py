"""What every testbench shares: the config handed over by the runner, clock, reset, seed and
stall profiles.

The runner (:mod:`sparsemac.sim.regress`) passes the array configuration in the environment
variable :data:`CONFIG_VARIABLE` as JSON, because the cocotb modules run inside the simulator
process. Randomness comes from ``cocotb.RANDOM_SEED``, which cocotb derives per test from the
regression seed and the test's name, so one seed replays any single test exactly.
"""

import json
import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, with_timeout

from ...hw.config import ArrayConfig
from ...hw.formats import CoreFormats
from ..stalls import IDEAL, StallPattern
from .cases import CASE_NAMES, build_case
from .streams import no_pauses, random_pauses

__all__ = ["CONFIG_VARIABLE", "CLOCK_PERIOD_NS", "PROFILES", "config_environment",
           "config_from_environment", "CASES", "Testbench"]

CONFIG_VARIABLE = "SPARSEMAC_CONFIG"
CLOCK_PERIOD_NS = 10


#: Every job runs under each profile in turn: ideal streams (exact cycle count), then stalls.
PROFILES = (IDEAL, StallPattern(0.3, 0.3, name="stalled"))


#: The catalogue as ``cocotb.parametrize`` values, named by case: tests are then called
#: ``test_core/case=random_s50`` (cocotb would number names longer than 10 characters).
CASES = [cocotb.Param(value=name, name=name) for name in CASE_NAMES]


def config_environment(config):
    """The environment entry that hands ``config`` to the cocotb modules."""
    return {CONFIG_VARIABLE: json.dumps(config.as_dict())}


def config_from_environment():
    """The :class:`ArrayConfig` the runner built the DUT for."""
    text = os.environ.get(CONFIG_VARIABLE)
    if text is None:
        raise RuntimeError(f"{CONFIG_VARIABLE} is not set: run the benches through "
                           "sparsemac.sim.regress (or `sparsemac regress`)")
    return ArrayConfig(**json.loads(text))


class Testbench:
    """Base of the per-DUT testbenches: starts the clock and owns the test's random source.

    Parameters
    ----------
    dut : cocotb handle
        A top level generated from an Amaranth component (ports ``clk``, ``rst``).
    """

    def __init__(self, dut):
        self.dut = dut
        self.config = config_from_environment()
        self.formats = CoreFormats(self.config)
        self.rng = random.Random(cocotb.RANDOM_SEED)
        self.clock = dut.clk
        Clock(dut.clk, CLOCK_PERIOD_NS, unit="ns").start()
        dut.rst.value = 1

    @classmethod
    async def run_case(cls, dut, name):
        """The body of every bench test: a fresh testbench runs case ``name`` under each
        stall profile in turn (no reset in between, so jobs also run back to back)."""
        testbench = cls(dut)
        await testbench.reset()
        case = build_case(name, testbench.config, testbench.rng)
        for profile in PROFILES:
            await testbench.run(case, profile)

    async def run(self, case, profile):
        """Runs ``case`` under the stall ``profile`` and checks everything the DUT emits."""
        raise NotImplementedError

    async def reset(self, cycles=2):
        self.dut.rst.value = 1
        await ClockCycles(self.clock, cycles)
        self.dut.rst.value = 0

    def pauses(self, probability):
        """A pause generator for one stream side, seeded from the test's random source."""
        if not probability:
            return no_pauses()
        return random_pauses(random.Random(self.rng.getrandbits(64)), probability)

    async def within(self, awaitable, cycles, what):
        """Awaits ``awaitable``, failing the test if it takes more than ``cycles`` cycles."""
        try:
            return await with_timeout(awaitable, cycles * CLOCK_PERIOD_NS, "ns")
        except TimeoutError as error:  # cocotb 2 raises SimTimeoutError, a TimeoutError
            raise AssertionError(f"{what}: not done after {cycles} cycles (DUT hung?)") from error

    @staticmethod
    def timeout_cycles(model_cycles, profile):
        """Generous time for a job: stalls at most multiply the ideal schedule's length."""
        return 64 + model_cycles * (1 if profile.ideal else 8) * 2
