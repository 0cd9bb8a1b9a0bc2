"""The ``reference`` back end: the golden model and the exact cycle model.

Instant, and the yardstick every other back end is checked against.
"""

from ..hw.formats import Mode
from ..sw.cycle_model import job_cycles
from ..sw.device import Device, JobResult
from ..sw.golden import golden_matmul
from ..sw.packing import check_job_fits

__all__ = ["ReferenceDevice"]


class ReferenceDevice(Device):
    """The golden model and the exact cycle model: what every other device must return."""

    name = "reference"

    def run_job(self, weights, activations, mode=Mode.SPARSE):
        check_job_fits(self.config, weights, activations)
        breakdown = job_cycles(weights.row_lengths(), weights.cols, activations.shape[0],
                               self.config, Mode(mode))
        return JobResult(sums=golden_matmul(weights, activations), cycles=breakdown.total)
