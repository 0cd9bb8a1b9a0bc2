"""The ``amaranth`` back end: the core in Amaranth's Python simulator.

Slow, but needs no C++ compiler; each job is run by
:func:`~sparsemac.sim.amaranth_sim.run_core_job` with ideal streams or at the rates of a memory
model (:mod:`sparsemac.sw.memory`).
"""

from ..hw.config import DEFAULT_CONFIG
from ..hw.formats import ColumnIndex, Mode, Sparsity
from ..sim.amaranth_sim import run_core_job
from ..sw.device import Device, JobResult
from ..sw.packing import pack_job, unpack_sums

__all__ = ["AmaranthDevice"]


class AmaranthDevice(Device):
    """The core in Amaranth's simulator, fed with ideal streams or at a memory model's rates.

    Parameters
    ----------
    config : ArrayConfig
    vcd_path : str or None
        Write the waveform of the last job here.
    memory : MemoryModel or None
        Feed the input streams at this model's rates; None for ideal streams.
    """

    name = "amaranth"

    def __init__(self, config=DEFAULT_CONFIG, *, vcd_path=None, memory=None):
        super().__init__(config)
        self._vcd_path = vcd_path
        self.memory = memory

    def run_job(self, weights, activations, mode=Mode.SPARSE, index=ColumnIndex.CSR,
                sparsity=Sparsity.WEIGHTS):
        packed = pack_job(self.config, weights, activations, mode, index, sparsity)
        run = run_core_job(self.config, packed, vcd_path=self._vcd_path, memory=self.memory)
        return JobResult(sums=unpack_sums(self.config, run.sums, packed.rows, packed.tokens),
                         cycles=run.cycles)
