"""The host driver: one API over every device that runs the sparse MAC core.

A :class:`Device` runs *jobs*: one weight matrix against at most ``config.max_tokens`` tokens,
with at most ``config.max_out_features`` rows. :meth:`Device.matmul` splits any layer that fits
the activation buffer into such jobs (over rows and over token blocks), runs them in turn and
adds their cycles: each job's own activation load and output drain are counted, because the
hardware pays them.

Back ends (:func:`open_device`):

``reference``
    The golden model and the exact cycle model: instant, and the yardstick for the others.
``amaranth``
    The core in Amaranth's Python simulator: slow, needs no C++ compiler.
``verilator``
    The core compiled by Verilator into a shared library, driven at full rate from C++.
``fpga``
    A ULX3S board over its USB serial port (or the same board top simulated behind a
    pseudo-terminal).
"""

import abc
import importlib
import time
from dataclasses import dataclass, field

import torch

from ..hw.config import ArrayConfig, DEFAULT_CONFIG
from ..hw.formats import Mode
from .csr import CSRMatrix, csr_stream_bytes, dense_stream_bytes
from .cycle_model import job_cycles, token_blocks
from .golden import golden_matmul
from .packing import check_job_fits
from .throttled_cycle_model import throttled_job_cycles

__all__ = ["DeviceError", "JobResult", "MatmulResult", "Device", "ReferenceDevice",
           "AmaranthDevice", "BACKENDS", "open_device"]


class DeviceError(RuntimeError):
    """A device could not be built, opened or run; the message says what to do."""


@dataclass
class JobResult:
    """What one job returned.

    Attributes
    ----------
    sums : torch.Tensor of int32, [tokens, rows]
    cycles : int
        The hardware cycle counter (the cycle model's prediction on ``reference``).
    """
    sums: torch.Tensor
    cycles: int


@dataclass
class MatmulResult:
    """A whole layer's product, combined from its jobs.

    Attributes
    ----------
    sums : torch.Tensor of int32, [tokens, rows]
    cycles : int
        Sum of the jobs' cycle counts.
    jobs : int
    weight_bytes : int
        Weight traffic over all jobs (weights are re-streamed for every token block).
    activation_bytes, output_bytes : int
    wall_s : float
        Host wall time spent in the device.
    job_cycles : list of int
    """
    sums: torch.Tensor
    cycles: int
    jobs: int
    weight_bytes: int
    activation_bytes: int
    output_bytes: int
    wall_s: float
    job_cycles: list = field(default_factory=list)


class Device(abc.ABC):
    """A sparse MAC core that runs jobs.

    Parameters
    ----------
    config : ArrayConfig
    """

    #: The back-end name, as :func:`open_device` takes it.
    name = None

    def __init__(self, config=DEFAULT_CONFIG):
        if not isinstance(config, ArrayConfig):
            raise TypeError(f"config must be an ArrayConfig, not {config!r}")
        self._config = config

    @property
    def config(self):
        return self._config

    @abc.abstractmethod
    def run_job(self, weights, activations, mode=Mode.SPARSE):
        """Runs one job.

        Parameters
        ----------
        weights : CSRMatrix
            At most ``config.max_out_features`` rows and ``config.max_in_features`` columns.
        activations : torch.Tensor of int8, [tokens, cols]
            At most ``config.max_tokens`` tokens.
        mode : Mode

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

    def matmul(self, weights, activations, mode=Mode.SPARSE):
        """``activations @ weights.T`` in int32 on this device, split into jobs as needed.

        Parameters
        ----------
        weights : CSRMatrix, [rows, cols]
        activations : torch.Tensor of int8, [tokens, cols]
        mode : Mode
            ``Mode.DENSE`` streams every weight: the baseline the sparse mode is compared with.

        Returns
        -------
        MatmulResult

        Raises
        ------
        TypeError, ValueError
            If the operands are malformed or the layer is wider than ``max_in_features``.
        DeviceError
            If the device fails.
        """
        if not isinstance(weights, CSRMatrix):
            raise TypeError(f"weights must be a CSRMatrix, not {type(weights).__name__}")
        mode = Mode(mode)
        config = self._config
        if not isinstance(activations, torch.Tensor) or activations.dtype != torch.int8:
            raise TypeError("activations must be an int8 torch.Tensor, not "
                            f"{getattr(activations, 'dtype', type(activations).__name__)}")
        if activations.dim() != 2 or activations.shape[0] < 1:
            raise ValueError("activations must be 2-D [tokens, in_features] with at least one "
                             f"token, not {tuple(activations.shape)}")
        rows, cols = weights.shape
        # One check of the whole layer gives the user the layer's own numbers in the message.
        check_job_fits(config, weights.row_slice(0, min(rows, config.max_out_features)),
                       activations[:config.max_tokens])

        tokens = activations.shape[0]
        sums = torch.empty((tokens, rows), dtype=torch.int32)
        cycles, weight_bytes, activation_bytes, output_bytes = [], 0, 0, 0
        started = time.perf_counter()
        for token_start in range(0, tokens, config.max_tokens):
            block = activations[token_start:token_start + config.max_tokens].contiguous()
            blocks = token_blocks(block.shape[0], config)
            for row_start in range(0, rows, config.max_out_features):
                tile = weights.row_slice(row_start, min(rows, row_start + config.max_out_features))
                result = self.run_job(tile, block, mode)
                sums[token_start:token_start + block.shape[0],
                     row_start:row_start + tile.rows] = result.sums
                cycles.append(result.cycles)
                weight_bytes += blocks * (csr_stream_bytes(tile, config.lanes)
                                          if mode == Mode.SPARSE
                                          else dense_stream_bytes(tile.rows, cols, config.lanes))
                activation_bytes += blocks * config.token_lanes * cols
                output_bytes += blocks * config.token_lanes * tile.rows * config.SUM_WIDTH // 8
        return MatmulResult(sums=sums, cycles=sum(cycles), jobs=len(cycles),
                            weight_bytes=weight_bytes, activation_bytes=activation_bytes,
                            output_bytes=output_bytes, wall_s=time.perf_counter() - started,
                            job_cycles=cycles)


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


class AmaranthDevice(Device):
    """The core in Amaranth's simulator, fed with ideal streams.

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

    def run_job(self, weights, activations, mode=Mode.SPARSE):
        from ..sim.amaranth_sim import run_core_job
        from .packing import pack_job, unpack_sums

        packed = pack_job(self.config, weights, activations, mode)
        run = run_core_job(self.config, packed, vcd_path=self._vcd_path, memory=self.memory)
        return JobResult(sums=unpack_sums(self.config, run.sums, packed.rows, packed.tokens),
                         cycles=run.cycles)


#: Back-end name -> "module:class" of its device, imported only when opened.
BACKENDS = {
    "reference": "sparsemac.sw.driver:ReferenceDevice",
    "amaranth": "sparsemac.sw.driver:AmaranthDevice",
    "verilator": "sparsemac.sim.verilator_device:VerilatorDevice",
    "fpga": "sparsemac.sw.fpga_device:FPGADevice",
}


def open_device(backend, config=DEFAULT_CONFIG, **options):
    """Opens a device by back-end name.

    Parameters
    ----------
    backend : str
        One of :data:`BACKENDS`.
    config : ArrayConfig
    **options
        Passed to the device (e.g. ``fst_path`` for ``verilator``, ``port`` for ``fpga``).

    Raises
    ------
    ValueError
        If ``backend`` is unknown.
    DeviceError
        If the device cannot be built or opened.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    module_name, class_name = BACKENDS[backend].split(":")
    device_class = getattr(importlib.import_module(module_name), class_name)
    return device_class(config, **options)
