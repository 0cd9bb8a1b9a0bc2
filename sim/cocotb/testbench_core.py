"""cocotb regression of :class:`sparsemac.hw.core.SparseMACCore` (top level ``sparsemac_core``).

Each test runs one catalogue case twice on the same core, without a reset in between: once with
ideal streams, where the cycle count on ``done`` must equal the cycle model's exactly, then with
idle inputs and back-pressured outputs, where the sums must be unchanged and the count may only
grow. Run it through ``sparsemac regress`` or :mod:`sparsemac.sim.regress`.
"""

import cocotb

from ...hw.formats import CoreStreams
from .model import core_expectation, input_beats
from .scoreboard import Scoreboard
from .streams import BackPressure, StreamDriver, StreamMonitor
from .testbench import CASES, Testbench


class CoreTestbench(Testbench):
    """Drivers on ``job`` and the four input streams, monitors and back-pressure on ``sums``
    and ``done``, the golden model and cycle model as reference, a scoreboard as checker."""

    def __init__(self, dut):
        super().__init__(dut)
        self.job = StreamDriver(dut, "job", self.clock)
        self.inputs = {name: StreamDriver(dut, name, self.clock)
                       for name in CoreStreams(self.config).data_inputs}
        self.sums = StreamMonitor(dut, "sums", self.clock)
        self.done = StreamMonitor(dut, "done", self.clock)
        self.sums_ready = BackPressure(dut, "sums", self.clock)
        self.done_ready = BackPressure(dut, "done", self.clock)

    async def run(self, case, profile):
        """Runs ``case`` under the stall ``profile`` and checks every beat and the cycles."""
        expectation = core_expectation(self.config, case)
        scoreboard = Scoreboard("sums", self.formats.sums, expectation.sums, "token lane")
        cycles = []
        self.sums.callback = scoreboard.check
        self.done.callback = cycles.append
        for driver in (self.job, *self.inputs.values()):
            driver.pauses = self.pauses(profile.idle)
        self.sums_ready.pauses = self.pauses(profile.backpressure)
        self.done_ready.pauses = self.pauses(profile.backpressure)

        beats = input_beats(self.config, expectation.packed)
        senders = [cocotb.start_soon(self.job.send([expectation.packed.job]))]
        senders += [cocotb.start_soon(self.inputs[name].send(beats[name]))
                    for name in self.inputs if beats[name]]
        await self.within(self.done.wait_for(self.done.count + 1),
                          self.timeout_cycles(expectation.cycles, profile),
                          f"{case.name} ({profile.name}): waiting for done")
        for sender in senders:
            assert sender.done(), f"{case.name}: the core finished before taking all its input"
        self.dut._log.info("%s, %s streams: %d cycles (cycle model %d)", case.describe(),
                           profile.name, cycles[0], expectation.cycles)
        scoreboard.check_cycles(cycles[0], expectation.cycles, profile.ideal)
        scoreboard.finish()


@cocotb.test()
@cocotb.parametrize(case=CASES)
async def test_core(dut, case):
    """One case, ideal then stalled streams: bit-exact sums and the exact cycle count."""
    await CoreTestbench.run_case(dut, case)
