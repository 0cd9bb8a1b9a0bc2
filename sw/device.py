"""The abstract device: one API over every back end that runs the sparse MAC core.

A :class:`Device` runs *jobs*: one weight matrix against at most ``config.max_tokens`` tokens,
with at most ``config.max_out_features`` rows and ``config.max_in_features`` columns.
:meth:`Device.matmul` splits any layer into such jobs (over token blocks, rows and column tiles:
:func:`~sparsemac.sw.cycle_model.job_tiles`), runs them in turn, adds the column tiles' int32 sums
on the host as the accumulators would (wrapping) and adds their cycles: each job's own activation
load and output drain are counted, because the hardware pays them.

The back ends (``reference``, ``amaranth``, ``verilator``, ``fpga``) live in
:mod:`sparsemac.devices`, one module each, and are opened with
:func:`sparsemac.devices.open_device`. Library code (model offload, say) takes a :class:`Device`
object and never names a back end.
"""

import abc
import time
from dataclasses import dataclass, field

import torch

from ..hw.config import ArrayConfig, DEFAULT_CONFIG
from ..hw.formats import ColumnIndex, Mode, Sparsity
from .csr import CSRMatrix
from .cycle_model import job_tiles, token_blocks
from .golden import accumulate_int32
from .packing import check_operands, check_sparsity, pairs_stream_bytes, weight_stream_bytes
from ..hw.errors import SparsemacError

__all__ = ["DeviceError", "JobResult", "MatmulResult", "Device"]


class DeviceError(SparsemacError, RuntimeError):
    """A device could not be built, opened or run; the message says what to do."""


@dataclass
class JobResult:
    """What one job returned."""
    #: int32, ``[tokens, rows]``.
    sums: torch.Tensor
    #: The hardware cycle counter (the cycle model's prediction on ``reference``).
    cycles: int


@dataclass
class MatmulResult(JobResult):
    """A whole layer's product, combined from its jobs: a :class:`JobResult` whose ``cycles``
    is the sum of the jobs' cycle counts, with the figures of the jobs.
    """
    #: Jobs the layer took, one per :class:`~sparsemac.sw.cycle_model.JobTile`.
    jobs: int
    #: Weight traffic over all jobs (weights are re-streamed for every token block; a DUAL job's
    #: pairs, which carry its activations too).
    weight_bytes: int
    #: Activations sent over all jobs.
    activation_bytes: int
    #: Sums returned over all jobs (a layer of several column tiles returns one set of sums per
    #: tile).
    output_bytes: int
    #: Host wall time spent in the device.
    wall_s: float
    #: Each job's cycle count, in the order the jobs ran.
    job_cycles: list[int] = field(default_factory=list)


class Device(abc.ABC):
    """A sparse MAC core that runs jobs.

    Parameters
    ----------
    config : ArrayConfig
    """

    #: The back-end name, as :func:`sparsemac.devices.open_device` takes it.
    name = None

    def __init__(self, config=DEFAULT_CONFIG):
        if not isinstance(config, ArrayConfig):
            raise TypeError(f"config must be an ArrayConfig, not {config!r}")
        self._config = config

    @property
    def config(self):
        return self._config

    @abc.abstractmethod
    def run_job(self, weights, activations, mode=Mode.SPARSE, index=ColumnIndex.CSR,
                sparsity=Sparsity.WEIGHTS):
        """Runs one job.

        Parameters
        ----------
        weights : CSRMatrix
            At most ``config.max_out_features`` rows and ``config.max_in_features`` columns.
        activations : torch.Tensor of int8, [tokens, cols]
            At most ``config.max_tokens`` tokens.
        mode : Mode
        index : ColumnIndex
        sparsity : Sparsity

        Returns
        -------
        JobResult
        """

    def close(self):
        """Releases the device."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def matmul(self, weights, activations, mode=Mode.SPARSE, index=ColumnIndex.CSR,
               sparsity=Sparsity.WEIGHTS):
        """``activations @ weights.T`` in int32 on this device, split into jobs as needed.

        Parameters
        ----------
        weights : CSRMatrix, [rows, cols]
        activations : torch.Tensor of int8, [tokens, cols]
        mode : Mode
            ``Mode.DENSE`` streams every weight: the baseline the sparse mode is compared with.
        index : ColumnIndex
            How a sparse job sends its column indices (``DELTA``: on a config with the delta
            decoder).
        sparsity : Sparsity
            ``DUAL`` (on a dual-sparse config, a sparse CSR job) also skips zero activations,
            per token; the sums are the same.

        Returns
        -------
        MatmulResult

        Raises
        ------
        TypeError, ValueError
            If the operands are malformed, or the config cannot run ``sparsity``
            (:func:`~sparsemac.sw.packing.check_sparsity`).
        DeviceError
            If the device fails.
        """
        if not isinstance(weights, CSRMatrix):
            raise TypeError(f"weights must be a CSRMatrix, not {type(weights).__name__}")
        mode, sparsity = Mode(mode), Sparsity(sparsity)
        config = self._config
        check_sparsity(config, sparsity, mode, index)
        check_operands(weights, activations)
        rows, cols = weights.shape
        tokens = activations.shape[0]
        jobs = list(job_tiles(rows, cols, tokens, config))

        sums = torch.zeros((tokens, rows), dtype=torch.int32)
        cycles, weight_bytes, activation_bytes, output_bytes = [], 0, 0, 0
        started = time.perf_counter()
        for job in jobs:
            block = activations[job.token_start:job.token_stop,
                                job.col_start:job.col_stop].contiguous()
            blocks = token_blocks(job.tokens, config)
            tile = job.weights(weights)
            result = self.run_job(tile, block, mode, index, sparsity)
            region = (slice(job.token_start, job.token_stop), slice(job.row_start, job.row_stop))
            sums[region] = accumulate_int32(sums[region], result.sums)
            cycles.append(result.cycles)
            if sparsity == Sparsity.DUAL:
                weight_bytes += pairs_stream_bytes(config, tile, block)
            else:
                weight_bytes += blocks * weight_stream_bytes(config, tile, mode, index)
                activation_bytes += blocks * config.token_lanes * job.cols
            output_bytes += blocks * config.token_lanes * tile.rows * config.SUM_WIDTH // 8
        return MatmulResult(sums=sums, cycles=sum(cycles), jobs=len(cycles),
                            weight_bytes=weight_bytes, activation_bytes=activation_bytes,
                            output_bytes=output_bytes, wall_s=time.perf_counter() - started,
                            job_cycles=cycles)
