"""cocotb regression of :class:`sparsemac.hw.csr_streamer.CSRWeightStreamer` alone
(top level ``csr_weight_streamer``).

The CSR streams of each catalogue case go in; every ``chunks`` beat must match the reference
schedule (:func:`~.model.row_chunks`: ``max(1, ceil(n / K))`` chunks per row, or spanning
rows with ``span_rows``, unused lanes zero, ``row_last``/``block_last`` flags, ``split``) and
``busy`` must fall once the last chunk is out.
"""

import cocotb
from cocotb.triggers import RisingEdge

from ...sw.packing import pack_job
from .model import chunk_expectation, input_beats
from .scoreboard import Scoreboard
from .streams import BackPressure, StreamDriver, StreamMonitor
from .testbench import CASES, Testbench

_WEIGHT_STREAMS = ("row_pointers", "columns", "values")


class StreamerTestbench(Testbench):
    """Drivers on the three CSR streams and on ``start``/``job``; monitor and back-pressure on
    ``chunks``; the chunk schedule as reference; a scoreboard as checker."""

    def __init__(self, dut):
        super().__init__(dut)
        dut.start.value = 0
        self.inputs = {name: StreamDriver(dut, name, self.clock) for name in _WEIGHT_STREAMS}
        self.chunks = StreamMonitor(dut, "chunks", self.clock)
        self.chunks_ready = BackPressure(dut, "chunks", self.clock)

    async def start(self, job):
        """Pulses ``start`` for one cycle with ``job`` on the job port (the core's handshake)."""
        self.dut.job.value = job
        self.dut.start.value = 1
        await RisingEdge(self.clock)
        self.dut.start.value = 0

    async def run(self, case, profile):
        expected = chunk_expectation(self.config, case)
        scoreboard = Scoreboard("chunks", self.formats.coded_chunk, expected)
        self.chunks.callback = scoreboard.check
        for driver in self.inputs.values():
            driver.pauses = self.pauses(profile.idle)
        self.chunks_ready.pauses = self.pauses(profile.backpressure)

        packed = pack_job(self.config, case.weights, case.activations, case.mode, case.index)
        beats = input_beats(self.config, packed)
        await self.start(packed.job)
        for name in _WEIGHT_STREAMS:
            if beats[name]:
                cocotb.start_soon(self.inputs[name].send(beats[name]))
        await self.within(self.chunks.wait_for(self.chunks.count + len(expected)),
                          self.timeout_cycles(len(expected), profile),
                          f"{case.name} ({profile.name}): waiting for {len(expected)} chunks")
        scoreboard.finish()
        assert not self.dut.busy.value, f"{case.name}: busy still high after the last chunk"


@cocotb.test()
@cocotb.parametrize(case=CASES)
async def test_streamer(dut, case):
    """One case, ideal then stalled streams: every chunk of every pass, in order."""
    await StreamerTestbench.run_case(dut, case)
