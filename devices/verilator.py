"""The ``verilator`` back end: the core compiled by Verilator into a shared library.

:func:`build_library` verilates the core's Verilog
(:func:`~sparsemac.sim.verilog.generate_verilog`) together with ``verilator_harness.cpp`` (beside
this module) into one shared library, cached on disk per design (config, RTL, tool versions,
harness and build flags), so a second run neither regenerates nor recompiles.
:class:`VerilatorDevice` loads it with ctypes and runs each job entirely in C++ with ideal
streams (inputs always valid while data remains, outputs always ready) or at the rates of a
memory model (:mod:`sparsemac.sw.memory`).
"""

import ctypes
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..hw.config import DEFAULT_CONFIG
from ..hw.formats import ColumnIndex, CoreFormats, CoreStreams, Mode, Sparsity
from ..hw.link_formats import layout_bytes
from ..sim.toolchain import (WAIVED_WARNINGS, ToolMissingError, cache_dir, check_build_tools,
                             file_lock, fst_verilator_args, verilator_environment)
from ..sim.verilog import TOP_NAME, design_key, generate_verilog
from ..sw.device import Device, DeviceError, JobResult
from ..sw.memory import packed_stream_rates
from ..sw.packing import pack_job, unpack_sums
from ..sw.progress import phase

__all__ = ["BuildResult", "build_library", "library_dir", "is_cached", "VerilatorDevice"]

HARNESS = Path(__file__).resolve().with_name("verilator_harness.cpp")
LIBRARY_NAME = "libsparsemac_core.so"
MODEL_PREFIX = "Vsparsemac_core"  # the class verilator_harness.cpp includes

#: Verilator options: -O3 and fast X handling (Amaranth gives every register and memory an
#: initial value, so X never reaches an output); one thread, since the 2-core build machine gains
#: nothing from splitting a design this small; no assertions (Amaranth emits none).
VERILATOR_FLAGS = ("-O3", "--x-assign", "fast", "--x-initial", "fast", "--noassert",
                   "--threads", "1", "--no-timing")

#: Compiler options: the eval code (OPT_FAST) with -O2, the once-run initialisation (OPT_SLOW,
#: half a megabyte of memory-initialisation statements) with -O1 to keep cold builds short.
MAKE_FLAGS = ("OPT_FAST=-O2", "OPT_SLOW=-O1", "OPT_GLOBAL=-O2")
COMPILE_FLAGS = "-fPIC -fvisibility=hidden -fvisibility-inlines-hidden"
LINK_FLAGS = "-shared -Wl,--exclude-libs,ALL -Wl,-Bsymbolic"

#: Lines of the build log quoted in a DeviceError.
LOG_TAIL_LINES = 25

#: Cycles without any handshake after which a job is declared hung (the core never idles this
#: long: every phase moves at least one stream every few cycles).
DEFAULT_MAX_IDLE_CYCLES = 100_000

_ERRORS = {
    -1: "the core stalled: no stream moved for {max_idle} cycles",
    -2: "the core sent more sums beats than the job has ({expected})",
    -3: "a stream's bytes per beat do not match the library's port widths (stale build?)",
    -4: "the harness was called with a null handle or buffer",
}


@dataclass(frozen=True)
class BuildResult:
    """Where a Verilator library is and how it was obtained."""
    #: The shared library.
    path: Path
    #: True when an earlier build was reused: nothing was generated or compiled.
    cached: bool
    #: Time spent in :func:`build_library`.
    seconds: float
    #: The build log (of the build that made ``path``).
    log: Path


def _build_key(config, trace):
    harness = hashlib.sha256(HARNESS.read_bytes()).hexdigest()
    extra = json.dumps({"harness": harness, "trace": trace, "verilator": VERILATOR_FLAGS,
                        "make": MAKE_FLAGS, "compile": COMPILE_FLAGS, "link": LINK_FLAGS,
                        "waived": sorted(WAIVED_WARNINGS)}, sort_keys=True)
    return design_key(config, extra) + ("_fst" if trace else "")


def library_dir(config, *, trace=False):
    """The cache folder of the library of ``config`` (with FST tracing when ``trace``)."""
    return cache_dir("verilator", _build_key(config, trace))


def is_cached(config, *, trace=False):
    """Whether the library of ``config`` is built: :func:`build_library` then builds nothing."""
    return (library_dir(config, trace=trace) / LIBRARY_NAME).exists()


def _commands(verilog, trace, pairs):
    defines = (" -DSPARSEMAC_TRACE" if trace else "") + (" -DSPARSEMAC_PAIRS" if pairs else "")
    verilate = ["verilator", "--cc", str(verilog), "--top-module", TOP_NAME,
                "--prefix", MODEL_PREFIX, "-Mdir", "obj", *VERILATOR_FLAGS,
                *(f"-Wno-{warning}" for warning in WAIVED_WARNINGS),
                "--exe", str(HARNESS), "-o", LIBRARY_NAME,
                "-CFLAGS", COMPILE_FLAGS + defines,
                "-LDFLAGS", LINK_FLAGS]
    if trace:
        verilate += fst_verilator_args()
    make = ["make", "-C", "obj", "-f", f"{MODEL_PREFIX}.mk", f"-j{os.cpu_count() or 1}",
            *MAKE_FLAGS, LIBRARY_NAME]
    return verilate, make


def _tail(log, lines=LOG_TAIL_LINES):
    text = log.read_text(errors="replace").splitlines() if log.exists() else []
    return "\n".join(text[-lines:])


def build_library(config=DEFAULT_CONFIG, *, trace=False):
    """Returns the Verilator library of ``config``, building it only on a cache miss.

    Parameters
    ----------
    config : ArrayConfig
    trace : bool
        Build with FST waveform support (a separate, slightly slower library).

    Returns
    -------
    BuildResult

    Raises
    ------
    DeviceError
        If g++, make or perl is missing, or the build fails; the message quotes the end of the
        build log and the command to retry.
    """
    started = time.perf_counter()
    folder = library_dir(config, trace=trace)
    library, log = folder / LIBRARY_NAME, folder / "build.log"
    with file_lock(folder / "build.lock"):
        if library.exists():
            return BuildResult(library, True, time.perf_counter() - started, log)
        try:
            check_build_tools()
            env = verilator_environment()
        except ToolMissingError as error:
            raise DeviceError(f"cannot build the Verilator model: {error}") from error
        with phase(f"building the Verilator model of {config.describe()}"
                   + (" with FST tracing" if trace else "") + " (once; cached in "
                   f"{folder.parent})"):
            _build(config, trace, folder, log, env)
    return BuildResult(library, False, time.perf_counter() - started, log)


def _build(config, trace, folder, log, env):
    """Generates the Verilog and compiles the library into ``folder``, logging to ``log``."""
    verilog = generate_verilog(config)
    shutil.rmtree(folder / "obj", ignore_errors=True)
    with open(log, "w") as output:
        # The harness feeds the pairs stream only of a core that has it.
        commands = _commands(verilog, trace, "pairs" in CoreStreams(config).data_inputs)
        for command in commands:
            output.write(f"$ {shlex.join(command)}\n")
            output.flush()
            status = subprocess.run(command, cwd=folder, env=env, stdout=output,
                                    stderr=subprocess.STDOUT).returncode
            if status != 0:
                retry = " && ".join(shlex.join(c) for c in commands)
                raise DeviceError(
                    f"the Verilator build of {config.describe()} failed ({command[0]} exited "
                    f"with {status}). Last lines of {log}:\n{_tail(log)}\n"
                    f"Retry by hand with: cd {folder} && "
                    f"VERILATOR_ROOT={env['VERILATOR_ROOT']} PATH=$VERILATOR_ROOT/bin:$PATH "
                    f"sh -c {shlex.quote(retry)}")
    # Rename into place last: the library's presence means the build finished.
    os.replace(folder / "obj" / LIBRARY_NAME, folder / LIBRARY_NAME)
    shutil.rmtree(folder / "obj", ignore_errors=True)


class _Stream(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("beats", ctypes.c_uint64), ("bytes", ctypes.c_uint64),
                ("rate", ctypes.c_uint64)]


#: The harness's SM_INPUTS: the data inputs of a dual-sparse core (a core without pairs passes
#: an empty fifth stream).
_HARNESS_INPUTS = 5


class _JobStats(ctypes.Structure):
    _fields_ = [("sums_beats", ctypes.c_uint64), ("clock_cycles", ctypes.c_uint64),
                ("inputs_left", ctypes.c_uint64 * _HARNESS_INPUTS)]


_libraries = {}


def _load(path):
    """The ctypes library at ``path``, with its function signatures, loaded once per process."""
    if path not in _libraries:
        library = ctypes.CDLL(str(path))
        library.sm_create.argtypes = [ctypes.c_char_p]
        library.sm_create.restype = ctypes.c_void_p
        library.sm_has_trace.argtypes = []
        library.sm_has_trace.restype = ctypes.c_int
        library.sm_run_job.argtypes = [
            ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint64, ctypes.POINTER(_Stream),
            ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64,
            ctypes.POINTER(_JobStats)]
        library.sm_run_job.restype = ctypes.c_int64
        library.sm_destroy.argtypes = [ctypes.c_void_p]
        library.sm_destroy.restype = None
        _libraries[path] = library
    return _libraries[path]


class VerilatorDevice(Device):
    """The core compiled by Verilator, fed with ideal streams from C++.

    The library is built on first use (tens of seconds) and cached on disk.

    Parameters
    ----------
    config : ArrayConfig
    fst_path : str or Path or None
        Write an FST waveform of every job run on this device here; the file is complete once
        the device is closed.
    max_idle_cycles : int
        Cycles without any stream handshake after which a job fails instead of hanging (plus,
        under a memory model, the longest a stream waits for one beat's credit).
    memory : MemoryModel or None
        Feed the input streams at this model's rates (:mod:`sparsemac.sw.memory`); None for
        ideal streams.

    Raises
    ------
    DeviceError
        If the library cannot be built.
    """

    name = "verilator"

    def __init__(self, config=DEFAULT_CONFIG, *, fst_path=None,
                 max_idle_cycles=DEFAULT_MAX_IDLE_CYCLES, memory=None):
        super().__init__(config)
        self.memory = memory
        self._build = build_library(config, trace=fst_path is not None)
        self._library = _load(self._build.path)
        self._fst_path = None if fst_path is None else Path(fst_path)
        formats = CoreFormats(config)
        self._job_bytes, self._sums_bytes = layout_bytes(formats.job), layout_bytes(formats.sums)
        path = None if fst_path is None else os.fsencode(fst_path)
        self._handle = self._library.sm_create(path)
        if not self._handle:
            raise DeviceError("the Verilator model could not be created")
        #: The watchdog, in cycles without a handshake; may be changed between jobs.
        self.max_idle_cycles = max_idle_cycles
        #: Clock cycles simulated by this device, for throughput figures.
        self.clock_cycles = 0

    @property
    def build(self):
        """The :class:`BuildResult` of this device's library."""
        return self._build

    def run_job(self, weights, activations, mode=Mode.SPARSE, index=ColumnIndex.CSR,
                sparsity=Sparsity.WEIGHTS):
        packed = pack_job(self.config, weights, activations, mode, index, sparsity)
        if self._handle is None:
            raise DeviceError("the Verilator device is closed")
        expected = packed.token_blocks * packed.rows
        rates = packed_stream_rates(self.config, packed, self.memory)
        # harness.cpp's input enum follows this order (tests/test_verilator.py checks it)
        names = CoreStreams(self.config).data_inputs
        streams = (_Stream * _HARNESS_INPUTS)()
        keep = []  # contiguous copies stay alive until the call returns
        for slot, name in zip(streams, names):
            rate = getattr(rates, name)
            beats = np.ascontiguousarray(getattr(packed, name))
            keep.append(beats)
            slot.data = beats.ctypes.data if beats.size else None
            slot.beats, slot.bytes = beats.shape[0], (beats.shape[1] if beats.ndim == 2 else 0)
            slot.rate = rate.rate
        max_idle = self.max_idle_cycles + rates.longest_credit_wait
        sums = np.zeros((expected, self._sums_bytes), dtype=np.uint8)
        stats = _JobStats()
        cycles = self._library.sm_run_job(
            self._handle, packed.job.to_bytes(self._job_bytes, "little"), self._job_bytes, streams,
            sums.ctypes.data, expected, self._sums_bytes, max_idle, ctypes.byref(stats))
        self.clock_cycles += stats.clock_cycles
        if cycles < 0:
            message = _ERRORS.get(cycles, f"unknown harness error {cycles}").format(
                max_idle=max_idle, expected=expected)
            raise DeviceError(f"Verilator job {packed.rows}x{packed.cols} x {packed.tokens} "
                              f"tokens ({packed.mode.name.lower()}) failed: {message}; "
                              f"{stats.sums_beats} of {expected} sums beats received")
        left = dict(zip(names, stats.inputs_left))
        if stats.sums_beats != expected or any(left.values()):
            raise DeviceError(f"the core reported done after {stats.sums_beats} of {expected} "
                              f"sums beats, with input beats left over: {left}")
        return JobResult(sums=unpack_sums(self.config, sums, packed.rows, packed.tokens),
                         cycles=int(cycles))

    def close(self):
        if getattr(self, "_handle", None):
            self._library.sm_destroy(self._handle)
            self._handle = None

    def __del__(self):
        self.close()
