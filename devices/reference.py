"""The ``reference`` back end: the golden model and the exact cycle model.

Instant, and the yardstick every other back end is checked against.
"""

from ..hw.config import DEFAULT_CONFIG
from ..hw.formats import ColumnIndex, Mode
from ..sw.cycle_model import job_cycles
from ..sw.device import Device, JobResult
from ..sw.golden import golden_matmul
from ..sw.packing import check_job_fits, coded_weights, streamed_row_lengths
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

    def run_job(self, weights, activations, mode=Mode.SPARSE, index=ColumnIndex.CSR):
        mode, index = Mode(mode), ColumnIndex(index)
        coded = coded_weights(self.config, weights, index)
        check_job_fits(self.config, coded, activations)
        # What the core computes: a delta job's entries decoded as its decoder does.
        matrix = coded if index == ColumnIndex.CSR else coded.to_csr()
        lengths = streamed_row_lengths(self.config, coded, index)
        if self.memory is None:
            cycles = job_cycles(lengths, weights.cols, activations.shape[0], self.config,
                                mode).total
        else:
            cycles = throttled_job_cycles(lengths, weights.cols, activations.shape[0],
                                          self.config, mode, self.memory, index).cycles
        return JobResult(sums=golden_matmul(matrix, activations), cycles=cycles)
