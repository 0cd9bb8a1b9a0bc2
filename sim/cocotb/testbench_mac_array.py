"""cocotb regression of :class:`sparsemac.hw.mac_array.MACArray` alone (top level
``mac_array``).

The chunks of each catalogue case, with the activations of their columns, go in as
``operands`` beats; every ``sums`` beat must equal the golden model's row of the block.
"""

import cocotb

from .model import mac_array_stimulus
from .scoreboard import Scoreboard
from .streams import BackPressure, StreamDriver, StreamMonitor
from .testbench import CASES, Testbench


class MACArrayTestbench(Testbench):
    """A driver on ``operands``, monitor and back-pressure on ``sums``, the golden model as
    reference, a scoreboard as checker."""

    def __init__(self, dut):
        super().__init__(dut)
        self.operands = StreamDriver(dut, "operands", self.clock)
        self.sums = StreamMonitor(dut, "sums", self.clock)
        self.sums_ready = BackPressure(dut, "sums", self.clock)

    async def run(self, case, profile):
        operands, expected = mac_array_stimulus(self.config, case)
        scoreboard = Scoreboard("sums", self.formats.sums, expected, "token lane")
        self.sums.callback = scoreboard.check
        self.operands.pauses = self.pauses(profile.idle)
        self.sums_ready.pauses = self.pauses(profile.backpressure)
        sender = cocotb.start_soon(self.operands.send(operands))
        await self.within(self.sums.wait_for(self.sums.count + len(expected)),
                          self.timeout_cycles(len(operands), profile),
                          f"{case.name} ({profile.name}): waiting for {len(expected)} sums")
        assert sender.done(), f"{case.name}: all sums came before all operands went in"
        scoreboard.finish()


@cocotb.test()
@cocotb.parametrize(case=CASES)
async def test_mac_array(dut, case):
    """One case, ideal then stalled streams: every row's T sums, bit-exact."""
    await MACArrayTestbench.run_case(dut, case)
