"""``sparsemac bench``: how fast the simulators themselves are.

For the default array and a large one it measures the simulated cycles per second of each back
end on a BERT-base-shaped sparse job (the Amaranth simulator on a small job: it is thousands of
times slower), and the time of a cold Verilator build (an empty cache) against a cached one. It
prints a table and writes the figures as JSON.
"""

import json
import os
import platform
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

from .simulate import format_sections, progress

__all__ = ["HELP", "add_arguments", "run", "BackendRun", "ConfigBench", "bench_config"]

HELP = "measure the simulators: simulated cycles per second of each back end, build times"

#: name -> (lanes, token_lanes): the default array and one with four times its multipliers.
CONFIGS = {"default": (8, 4), "large": (16, 8)}

#: (rows, cols, tokens, sparsity) of the job each back end runs; Amaranth gets a small one.
LARGE_JOB = (3072, 768, 128, 0.9)
SMALL_JOB = (64, 64, 8, 0.9)


def add_arguments(parser):
    parser.add_argument("--output", type=Path, default=Path("results") / "bench.json",
                        help="JSON file to write (default: %(default)s)")
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help=f"comma-separated arrays to measure, of {', '.join(CONFIGS)} "
                             "(default: %(default)s)")
    parser.add_argument("--no-cold", action="store_true",
                        help="skip the cold Verilator build (the slowest part)")
    parser.add_argument("--no-amaranth", action="store_true",
                        help="skip the Amaranth simulator")
    parser.add_argument("--seed", type=int, default=0, help="seeds the random jobs")


@dataclass
class BackendRun:
    """One back end on one job (sparse and dense mode, one after the other)."""
    backend: str
    job: str
    cycles: int
    wall_s: float
    cycles_per_s: float
    cpu_s: float
    cycles_per_cpu_s: float  # unaffected by other processes sharing the machine
    note: str = ""


@dataclass
class ConfigBench:
    """Everything measured for one array configuration."""
    name: str
    config: dict
    cold_build_s: float | None
    cached_build_s: float
    runs: list


def _random_job(rows, cols, tokens, sparsity, seed):
    import torch

    from ..csr import CSRMatrix

    generator = torch.Generator().manual_seed(seed)
    dense = torch.randint(-128, 128, (rows, cols), generator=generator, dtype=torch.int8)
    dense[torch.rand((rows, cols), generator=generator) < sparsity] = 0
    activations = torch.randint(-128, 128, (tokens, cols), generator=generator,
                                dtype=torch.int8)
    return CSRMatrix.from_dense(dense), activations


def _measure(device, job, seed):
    from ...hw.formats import Mode

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


def bench_config(name, config, *, cold=True, amaranth=True, seed=0):
    """Measures one array configuration on every back end.

    Returns
    -------
    ConfigBench
    """
    from ...sim.verilator_device import VerilatorDevice, build_library
    from ..driver import AmaranthDevice, ReferenceDevice

    with tempfile.TemporaryDirectory(prefix="sparsemac-bench-") as folder:
        with _cache(folder) if cold else nullcontext():
            if cold:
                progress(f"{name}: cold Verilator build of {config.describe()} in {folder}")
            first = build_library(config)  # cold in the empty cache, else usually a hit
            cached = build_library(config)
            progress(f"{name}: Verilator on {LARGE_JOB[0]}x{LARGE_JOB[1]} x {LARGE_JOB[2]} "
                     "tokens")
            with VerilatorDevice(config) as device:
                runs = [_measure(device, LARGE_JOB, seed)]
    cold_s = None if first.cached else first.seconds
    reference = _measure(ReferenceDevice(config), LARGE_JOB, seed)
    reference.note = "golden + cycle model: no clock is simulated"
    runs.append(reference)
    if amaranth:
        progress(f"{name}: Amaranth on {SMALL_JOB[0]}x{SMALL_JOB[1]} x {SMALL_JOB[2]} tokens")
        runs.append(_measure(AmaranthDevice(config), SMALL_JOB, seed))
    return ConfigBench(name=name, config=config.as_dict(), cold_build_s=cold_s,
                       cached_build_s=cached.seconds, runs=runs)


def _sections(benches):
    sections = []
    for bench in benches:
        config = bench.config
        title = (f"{bench.name}: K={config['lanes']} T={config['token_lanes']} "
                 f"in<={config['max_in_features']}")
        rows = [[run.backend, run.job, f"{run.cycles:,}", f"{run.wall_s:.3f}",
                 f"{run.cycles_per_s:,.0f}", f"{run.cycles_per_cpu_s:,.0f}"]
                for run in bench.runs]
        sections.append((title, ["back end", "job", "cycles", "wall s", "cycles/s",
                                 "cycles/CPU s"], rows))
        cold = "skipped" if bench.cold_build_s is None else f"{bench.cold_build_s:.1f} s"
        sections.append((f"{bench.name}: Verilator build", None, [
            ["cold (empty cache)", cold],
            ["cached", f"{bench.cached_build_s:.3f} s"],
        ]))
    return sections


def run(args):
    from ...hw.config import ArrayConfig
    from ...sim.toolchain import tool_versions
    from ..driver import DeviceError

    names = [name.strip() for name in args.configs.split(",") if name.strip()]
    unknown = [name for name in names if name not in CONFIGS]
    if unknown or not names:
        print(f"sparsemac bench: error: unknown config(s) {unknown}: choose from "
              f"{', '.join(CONFIGS)}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    benches = []
    try:
        for name in names:
            lanes, token_lanes = CONFIGS[name]
            config = ArrayConfig(lanes=lanes, token_lanes=token_lanes)
            benches.append(bench_config(name, config, cold=not args.no_cold,
                                        amaranth=not args.no_amaranth, seed=args.seed))
    except DeviceError as error:
        print(f"sparsemac bench: device error: {error}", file=sys.stderr)
        return 1
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "tools": tool_versions()},
        "seed": args.seed,
        "configs": [asdict(bench) for bench in benches],
        "wall_s": time.perf_counter() - started,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(format_sections(_sections(benches)))
    print(f"\nwritten to {args.output}")
    return 0
