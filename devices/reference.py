"""The ``reference`` back end: the golden model and the exact cycle model.

Instant, and the yardstick every other back end is checked against.
"""

from ..hw.config import DEFAULT_CONFIG
from ..hw.formats import Mode
from ..sw.cycle_model import job_cycles
from ..sw.device import Device, JobResult
from ..sw.golden import golden_matmul
from ..sw.packing import check_job_fits
from ..sw.throttled_cycle_model import throttled_job_cycles

__all__ = ["ReferenceDevice"]


class ReferenceDevice(Device):
    """The golden model and the exact cycle model: what every other device must return.

    Parameters
    ----------
    config : ArrayConfig
    memory : MemoryModel or None
        Predict the cycles with the input streams at this model's rates; None for ideal streams.
    """

    name = "reference"

    def __init__(self, config=DEFAULT_CONFIG, *, memory=None):
        super().__init__(config)
        self.memory = memory

    def run_job(self, weights, activations, mode=Mode.SPARSE):
        check_job_fits(self.config, weights, activations)
        if self.memory is None:
            cycles = job_cycles(weights.row_lengths(), weights.cols, activations.shape[0],
                                self.config, Mode(mode)).total
        else:
            cycles = throttled_job_cycles(weights.row_lengths(), weights.cols,
                                          activations.shape[0], self.config, Mode(mode),
                                          self.memory).cycles
        return JobResult(sums=golden_matmul(weights, activations), cycles=cycles)
