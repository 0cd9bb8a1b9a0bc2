"""The ``reference`` back end: the golden model and the exact cycle model.

Instant, and the yardstick every other back end is checked against.
"""

from ..hw.config import DEFAULT_CONFIG
from ..hw.formats import ColumnIndex, Mode, Sparsity
from ..sw.cycle_model import dual_row_beats, job_cycles
from ..sw.device import Device, JobResult
from ..sw.golden import golden_matmul
from ..sw.packing import check_job_fits, check_sparsity, coded_weights, streamed_row_lengths
from ..sw.throttled_cycle_model import throttled_dual_job_cycles, throttled_job_cycles

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

    def run_job(self, weights, activations, mode=Mode.SPARSE, index=ColumnIndex.CSR,
                sparsity=Sparsity.WEIGHTS):
        mode, index = Mode(mode), ColumnIndex(index)
        check_sparsity(self.config, sparsity, mode, index)
        coded = coded_weights(self.config, weights, index)
        check_job_fits(self.config, coded, activations)
        if Sparsity(sparsity) == Sparsity.DUAL:
            # Skipped products are zeros: the sums are the weight-only job's.
            beats = int(dual_row_beats(weights, activations, self.config).sum())
            cycles = throttled_dual_job_cycles(beats, weights.rows, activations.shape[0],
                                               self.config, self.memory).cycles
            return JobResult(sums=golden_matmul(weights, activations), cycles=cycles)
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
