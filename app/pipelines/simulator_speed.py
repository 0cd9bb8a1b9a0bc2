"""How fast the simulators themselves are: :func:`measure_simulator_speed`.

For each array configuration (``sparsemac bench`` takes the default array and one with four
times its multipliers) it measures the simulated cycles per second of each back
end on a BERT-base-shaped sparse job (the Amaranth simulator on a small job: it is thousands of
times slower), and the time of a cold Verilator build (an empty cache) against a cached one.
"""

import os
import platform
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass

import torch

from ...devices.amaranth import AmaranthDevice
from ...devices.reference import ReferenceDevice
from ...devices.verilator import VerilatorDevice, build_library, is_cached
from ...hw.config import ArrayConfig
from ...hw.formats import Mode
from ...sim.toolchain import tool_versions
from ...sw.csr import CSRMatrix
from ...sw.progress import progress

__all__ = ["BackendRun", "ConfigSpeed", "Machine", "SimulatorSpeedReport",
           "measure_config_speed", "measure_simulator_speed"]


#: (rows, cols, tokens, sparsity) of the job each back end runs; Amaranth gets a small one.
LARGE_JOB = (3072, 768, 128, 0.9)
SMALL_JOB = (64, 64, 8, 0.9)


@dataclass
class BackendRun:
    """One back end on one job (sparse and dense mode, one after the other)."""
    #: The device's back-end name.
    backend: str
    #: The job run, e.g. ``3072x768, 128 tokens, 90% sparse + dense``.
    job: str
    #: Simulated clock cycles of both modes.
    cycles: int
    #: Wall time of both runs.
    wall_s: float
    #: Simulated cycles per second of wall time.
    cycles_per_s: float
    #: CPU time of this process over both runs.
    cpu_s: float
    #: Simulated cycles per CPU second: unaffected by other processes sharing the machine.
    cycles_per_cpu_s: float
    #: What a reader should know of the figure (the reference simulates no clock).
    note: str = ""


@dataclass
class ConfigSpeed:
    """Everything measured for one array configuration."""
    #: The config's key, e.g. ``k8t4``.
    name: str
    #: The config's fields (:meth:`ArrayConfig.as_dict <sparsemac.hw.config.ArrayConfig.as_dict>`).
    config: dict[str, int]
    #: Seconds of a Verilator build in an empty cache; None when the cold build was not measured.
    cold_build_s: float | None
    #: Seconds of a build that hits the cache; None when Verilator was skipped (``cold=False`` and
    #: no cached build).
    cached_build_s: float | None
    #: One :class:`BackendRun` per back end measured.
    runs: list[BackendRun]


@dataclass
class Machine:
    """What ran the measurement."""
    #: CPUs of the machine (:func:`os.cpu_count`; None when unknown).
    cpus: int | None
    #: The Python version.
    python: str
    #: The platform, as :func:`platform.platform` names it.
    platform: str
    #: The simulator tools' versions, by tool (:func:`~sparsemac.sim.toolchain.tool_versions`).
    tools: dict[str, str]


@dataclass
class SimulatorSpeedReport:
    """Every configuration measured, and the machine; :meth:`as_json` is the JSON file."""
    #: CPUs, Python, platform and simulator tool versions of the machine.
    machine: Machine
    #: Seeds the jobs' weights and activations.
    seed: int
    #: One :class:`ConfigSpeed` per array configuration.
    configs: list[ConfigSpeed]
    #: Wall time of the whole measurement.
    wall_s: float

    def as_json(self):
        return asdict(self)

    def sections(self):
        """The human report as ``(title, header, rows)`` tables."""
        sections = []
        for measured in self.configs:
            config = ArrayConfig(**measured.config)
            rows = [[run.backend, run.job, f"{run.cycles:,}", f"{run.wall_s:.3f}",
                     f"{run.cycles_per_s:,.0f}", f"{run.cycles_per_cpu_s:,.0f}", run.note]
                    for run in measured.runs]
            sections.append((f"{measured.name}: {config.describe()}",
                             ["back end", "job", "cycles", "wall s", "cycles/s", "cycles/CPU s",
                              "note"], rows))
            cold = ("skipped" if measured.cold_build_s is None
                    else f"{measured.cold_build_s:.1f} s")
            cached = ("skipped" if measured.cached_build_s is None
                      else f"{measured.cached_build_s:.3f} s")
            sections.append((f"{measured.name}: Verilator build", None, [
                ["cold (empty cache)", cold], ["cached", cached]]))
        return sections


def _random_job(rows, cols, tokens, sparsity, seed):
    generator = torch.Generator().manual_seed(seed)
    dense = torch.randint(-128, 128, (rows, cols), generator=generator, dtype=torch.int8)
    dense[torch.rand((rows, cols), generator=generator) < sparsity] = 0
    activations = torch.randint(-128, 128, (tokens, cols), generator=generator,
                                dtype=torch.int8)
    return CSRMatrix.from_dense(dense), activations


def _measure(device, job, seed):
    rows, cols, tokens, sparsity = job
    weights, activations = _random_job(rows, cols, tokens, sparsity, seed)
    cycles = wall = 0
    cpu = time.process_time()
    for mode in (Mode.SPARSE, Mode.DENSE):
        result = device.matmul(weights, activations, mode)
        cycles += result.cycles
        wall += result.wall_s
    cpu = time.process_time() - cpu
    return BackendRun(backend=device.name,
                      job=f"{rows}x{cols}, {tokens} tokens, {sparsity:.0%} sparse + dense",
                      cycles=cycles, wall_s=wall, cycles_per_s=cycles / wall if wall else 0.0,
                      cpu_s=cpu, cycles_per_cpu_s=cycles / cpu if cpu else 0.0)


@contextmanager
def _cache(path):
    """Points the build cache (SPARSEMAC_CACHE) at ``path`` for the duration."""
    previous = os.environ.get("SPARSEMAC_CACHE")
    os.environ["SPARSEMAC_CACHE"] = str(path)
    try:
        yield
    finally:
        if previous is None:
            del os.environ["SPARSEMAC_CACHE"]
        else:
            os.environ["SPARSEMAC_CACHE"] = previous


def measure_config_speed(config, *, cold=True, amaranth=True, seed=0):
    """Measures one array configuration on every back end.

    Parameters
    ----------
    config : ArrayConfig
    cold : bool
        Time a cold Verilator build in an empty cache. Without it nothing is built: Verilator
        runs only when the configuration's library is already cached, else it is skipped (and
        the report says so).
    amaranth : bool
        Also run the Amaranth simulator (on a small job).
    seed : int
        Seeds the random jobs.

    Returns
    -------
    ConfigSpeed

    Raises
    ------
    DeviceError
        If a build or a device fails.
    """
    name = config.key()
    runs, cold_s, cached_s = [], None, None
    if cold or is_cached(config):
        with tempfile.TemporaryDirectory(prefix="sparsemac-speed-") as folder:
            with _cache(folder) if cold else nullcontext():
                first = build_library(config)  # cold in the empty cache, else a hit
                cached = build_library(config)
                progress(f"{name}: Verilator on {LARGE_JOB[0]}x{LARGE_JOB[1]} x {LARGE_JOB[2]} "
                         "tokens")
                with VerilatorDevice(config) as device:
                    runs.append(_measure(device, LARGE_JOB, seed))
        cold_s = None if first.cached else first.seconds
        cached_s = cached.seconds
    else:
        progress(f"{name}: no cached Verilator build and no cold build asked: Verilator skipped")
    reference = _measure(ReferenceDevice(config), LARGE_JOB, seed)
    reference.note = "golden + cycle model: no clock is simulated"
    runs.append(reference)
    if amaranth:
        progress(f"{name}: Amaranth on {SMALL_JOB[0]}x{SMALL_JOB[1]} x {SMALL_JOB[2]} tokens")
        runs.append(_measure(AmaranthDevice(config), SMALL_JOB, seed))
    return ConfigSpeed(name=name, config=config.as_dict(), cold_build_s=cold_s,
                       cached_build_s=cached_s, runs=runs)


def measure_simulator_speed(configs, *, cold=True, amaranth=True, seed=0):
    """Measures every configuration (see :func:`measure_config_speed`).

    Returns
    -------
    SimulatorSpeedReport
    """
    started = time.perf_counter()
    measured = [measure_config_speed(config, cold=cold, amaranth=amaranth, seed=seed)
                for config in configs]
    return SimulatorSpeedReport(
        machine=Machine(cpus=os.cpu_count(), python=platform.python_version(),
                        platform=platform.platform(), tools=tool_versions()),
        seed=seed, configs=measured, wall_s=time.perf_counter() - started)
