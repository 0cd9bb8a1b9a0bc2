# amaranth: UnusedElaboratable=no
# (a testbench's component is built for its cache key even when its Verilog is already cached)
"""Builds the cocotb testbenches with Verilator and runs them: the engine of ``sparsemac regress``.

Each testbench is one DUT (the whole core or one block) and one cocotb module under
:mod:`sparsemac.sim.cocotb`. A Verilator build is cached on disk under
``cache_dir("cocotb", ...)``, keyed by the config, the top level, the Verilog text, the build
flags, the tool versions and the Python environment (whose cocotb libraries it loads), so a
second run compiles nothing; a file lock lets parallel pytest workers share a build instead of
racing to make it.

Every random choice of a run derives from one seed (cocotb's ``COCOTB_RANDOM_SEED``; cocotb
reseeds each test from it and the test's name), so a failing test replays alone with the
command :func:`replay_command` prints. A failing test is rerun once with an FST waveform kept.
"""

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from ..hw.config import ArrayConfig
from .cocotb.cases import CASE_NAMES
from .cocotb.testbench import CLOCK_PERIOD_NS, config_environment
from .toolchain import (WAIVED_WARNINGS, cache_dir, check_build_tools, file_lock,
                        fst_verilator_args, tool_versions, verilator_environment)
from .verilog import TOP_NAME, generate_verilog
from ..hw.errors import RunFailure

__all__ = ["CocotbTestbench", "TESTBENCHES", "NAMED_CONFIGS", "WAIVED_WARNINGS", "TestResult",
           "TestbenchRun", "RegressionReport",
           "testbench_verilog", "build", "run_testbench", "run_regression", "replay_command",
           "merge_junit"]


@dataclass(frozen=True)
class CocotbTestbench:
    """One DUT and the cocotb module that tests it."""
    #: Short name used on the command line: ``core``, ``streamer``, ``mac_array``.
    name: str
    #: The Verilog top module.
    toplevel: str
    #: The cocotb test module.
    module: str
    #: Its test function, parametrised over :data:`CASE_NAMES`.
    test: str

    def component(self, config):
        """The Amaranth component to generate, or None for the core (the default design)."""
        if self.name == "streamer":
            from ..hw.csr_streamer import CSRWeightStreamer
            return CSRWeightStreamer(config)
        if self.name == "mac_array":
            from ..hw.mac_array import MACArray
            return MACArray(config)
        return None

    def test_names(self):
        """Full cocotb names of the testbench's tests, as cocotb.parametrize names them."""
        short = self.module.rsplit(".", 1)[1]
        return [f"{short}.{self.test}/case={case}" for case in CASE_NAMES]


TESTBENCHES = {testbench.name: testbench for testbench in (
    CocotbTestbench("core", TOP_NAME, "sparsemac.sim.cocotb.testbench_core", "test_core"),
    CocotbTestbench("streamer", "csr_weight_streamer", "sparsemac.sim.cocotb.testbench_streamer",
                    "test_streamer"),
    CocotbTestbench("mac_array", "mac_array", "sparsemac.sim.cocotb.testbench_mac_array",
                    "test_mac_array"),
)}

#: The configurations ``--all-configs`` runs, by :meth:`ArrayConfig.key`. ``k4t32i512r1`` is
#: the ULX3S build (``hw.boards.BOARDS``; the default array, k8t4, is run by the
#: Verilator device tests); ``k8t8i1024p2r1``, its previous build, has the dual-port
#: buffer; the others put K and T at their extremes with a small activation
#: buffer, enough for the catalogue's 384-column cases; ``k5t3i512d4`` makes both
#: odd (adder trees and lane padding that powers of two never exercise) and has the delta
#: decoder, which its ``delta_gaps`` case runs; ``k5t3i512s1`` is the same odd array with
#: chunks that span rows (segmented adder trees); ``k5t3i512a1`` the same odd array with the
#: dual-sparse mode, which its ``dual_sparse`` case runs (a weight per multiplier).
NAMED_CONFIGS = {config.key(): config for config in (
    ArrayConfig(lanes=4, token_lanes=32, max_in_features=512, registered=1),
    ArrayConfig(lanes=8, token_lanes=8, max_in_features=1024, read_ports=2, registered=1),
    ArrayConfig(lanes=1, token_lanes=1, max_in_features=512),
    ArrayConfig(lanes=4, token_lanes=16, max_in_features=512),
    ArrayConfig(lanes=5, token_lanes=3, max_in_features=512, delta_bits=4),
    ArrayConfig(lanes=5, token_lanes=3, max_in_features=512, span_rows=1),
    ArrayConfig(lanes=5, token_lanes=3, max_in_features=512, dual_sparse=1),
)}

#: The Verilator warnings waived: the ones Amaranth's Verilog (written by Yosys) triggers by
#: construction, each with its reason: WIDTHEXPAND (operands of different widths in one Yosys
#: cell; Amaranth's extension is explicit), WIDTHTRUNC (`!x` of a multi-bit value, from
#: Value.bool()), CASEINCOMPLETE (FSM `casez` without default; defaults are assigned before
#: the case). The list is shared with the Verilator device, which builds the same Verilog:
#: Verilator's default lint of all three DUTs in every config raises these three and no other,
#: so any new warning still fails the build. (-Wall adds only style warnings, DECLFILENAME,
#: PROCASSINIT and UNUSEDSIGNAL, which are off by default and not waived.)

#: Make variables, passed in MAKEFLAGS so that they count as command-line overrides:
#: -O0 throughout, because a cocotb run spends its time in Python, not in the model
#: (measured: the 21 core tests take 2.9 s instead of 1.6 s) while the C++ compile of the
#: core (1.5 MB of code with --public-flat-rw) drops from about 38 s to 29 s.
_MAKE_OVERRIDES = "OPT_FAST=-O0 OPT_SLOW=-O0 OPT_GLOBAL=-O0"

#: Failing tests rerun with a waveform, at most this many per testbench.
MAX_WAVEFORM_RERUNS = 3


def testbench_verilog(config, testbench):
    """The (cached) Verilog of ``testbench``'s DUT for ``config``."""
    return generate_verilog(config, testbench.component(config), name=testbench.toplevel)


def _build_args(waves):
    args = [f"-Wno-{warning}" for warning in WAIVED_WARNINGS]
    return args + (fst_verilator_args() if waves else [])


def _build_key(config, testbench, verilog_text, waves):
    blob = json.dumps({"config": config.as_dict(), "top": testbench.toplevel,
                       "verilog": hashlib.sha256(verilog_text.encode()).hexdigest(),
                       "args": _build_args(waves), "make": _MAKE_OVERRIDES,
                       "tools": tool_versions(),
                       # The simulator loads the cocotb libraries of the environment that built
                       # it: a build from another (perhaps deleted) venv would not start.
                       "environment": sys.prefix}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@contextlib.contextmanager
def _toolchain_environment():
    """os.environ set up for Verilator while the block runs (the runner copies os.environ)."""
    saved = dict(os.environ)
    env = verilator_environment()
    env["MAKEFLAGS"] = " ".join(filter(None, [env.get("MAKEFLAGS", ""), _MAKE_OVERRIDES]))
    env["COCOTB_ANSI_OUTPUT"] = "0"
    # cocotb hands every module imported after its start to pytest's assertion rewriter,
    # torch included (15 s of compiling per run): rewrite only the testbench modules.
    env["COCOTB_REWRITE_ASSERTION_FILES"] = "testbench_*.py"
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def build(config, testbench, waves=False, verilog=None):
    """Compiles ``testbench`` for ``config`` with Verilator, unless the cache already has it.

    Parameters
    ----------
    config : ArrayConfig
    testbench : CocotbTestbench
    waves : bool
        Compile FST tracing in (a separate build; only made when waves are asked for).
    verilog : Path, optional
        Build this Verilog instead of the generated one (e.g. a mutant, for self-tests).

    Returns
    -------
    build_dir : Path
    compiled : bool
        Whether this call compiled (False: taken from the cache).

    Raises
    ------
    RuntimeError
        If Verilator or the C++ build fails; the message names the build log.
    """
    from cocotb_tools.runner import get_runner

    check_build_tools()
    verilog = Path(verilog) if verilog is not None else testbench_verilog(config, testbench)
    key = _build_key(config, testbench, verilog.read_text(), waves)
    build_dir = cache_dir("cocotb", f"{testbench.toplevel}_{config.key()}_{key}"
                          + ("_fst" if waves else ""))
    stamp = build_dir / "build.ok"
    with file_lock(build_dir.with_suffix(".lock")):
        if stamp.exists():
            return build_dir, False
        log = build_dir / "build.log"
        with _toolchain_environment():
            runner = get_runner("verilator")
            try:
                runner.build(sources=[verilog], hdl_toplevel=testbench.toplevel,
                             build_dir=build_dir, build_args=_build_args(waves), waves=waves,
                             log_file=log, clean=True)
            except (RuntimeError, SystemExit) as error:
                raise RunFailure(f"Verilator build of {testbench.toplevel} failed ({error}); "
                                   f"see {log}") from None
        stamp.write_text(verilog.name)
    return build_dir, True


@dataclass
class TestResult:
    """One cocotb test's outcome, read from its JUnit XML."""
    #: The testbench's :attr:`CocotbTestbench.name`.
    testbench: str
    #: The test's name, as the JUnit XML gives it.
    name: str
    #: Neither a failure nor an error was reported.
    passed: bool
    #: Simulated clock cycles of the test.
    cycles: int
    #: Seconds the test took.
    wall_time: float
    #: The failure's or error's message, empty when it passed.
    message: str = ""
    #: Its FST waveform, when one was kept.
    waveform: Path | None = None

    @property
    def case(self):
        return self.name.rsplit("=", 1)[-1]


@dataclass
class TestbenchRun:
    """The outcome of one testbench on one config."""
    #: The array configuration the DUT was built for.
    config: ArrayConfig
    #: The testbench that ran.
    testbench: CocotbTestbench
    #: Seeds the cases and stall patterns.
    seed: int
    #: One :class:`TestResult` per test that reported.
    results: list = field(default_factory=list)
    #: The JUnit XML cocotb wrote; None before the tests ran.
    results_xml: Path | None = None
    #: The simulator's log; None before the tests ran.
    log: Path | None = None
    #: Seconds of the Verilator build (a cache hit included).
    build_seconds: float = 0.0
    #: This run compiled the DUT (False: taken from the cache).
    compiled: bool = False
    #: Why the build failed or tests did not report; empty otherwise.
    error: str = ""

    @property
    def failed(self):
        return [result for result in self.results if not result.passed]


@dataclass
class RegressionReport:
    """Every testbench run of one regression: ``sparsemac regress`` prints it."""
    runs: list[TestbenchRun]
    #: The regression seed, which replays every test.
    seed: int
    #: The folder of ``results.xml``, the logs and the waveforms.
    output: Path
    #: Wall time of the whole regression.
    seconds: float

    @property
    def failures(self):
        """Testbenches that did not run plus tests that failed."""
        return sum(bool(run.error) + len(run.failed) for run in self.runs)

    @property
    def passed(self):
        return self.failures == 0

    def csv_rows(self):
        """One dict per test."""
        return [{"config": run.config.key(), "testbench": result.testbench, "test": result.name,
                 "passed": result.passed, "cycles": result.cycles,
                 "wall_s": result.wall_time, "message": result.message}
                for run in self.runs for result in run.results]

    def as_json(self):
        return {"passed": self.passed, "seed": self.seed, "output": str(self.output),
                "seconds": self.seconds,
                "errors": [{"config": run.config.key(), "testbench": run.testbench.name,
                            "error": run.error} for run in self.runs if run.error],
                "tests": self.csv_rows()}

    def sections(self):
        """Per testbench and config the tests passed and failed, then each failure with its log and
        the one command that replays it, then where the results are."""
        rows = [[run.config.key(), run.testbench.name, len(run.results) - len(run.failed),
                 len(run.failed), f"{sum(result.cycles for result in run.results):,}",
                 f"{sum(result.wall_time for result in run.results):.1f} s"
                 + (f" (+{run.build_seconds:.0f} s build)" if run.compiled else "")]
                for run in self.runs]
        sections = [("Regression", ["config", "test", "passed", "failed", "simulated cycles",
                                    "wall time"], rows)]
        for run in self.runs:
            if run.error:
                sections.append((f"ERROR {run.config.key()} {run.testbench.name}", None,
                                 [["error", run.error]]))
            for result in run.failed:
                details = [["message", result.message], ["log", str(run.log)]]
                if result.waveform is not None:
                    details.append(["waveform", str(result.waveform)])
                details.append(["replay", replay_command(run.config, run.testbench, result,
                                                         self.seed)])
                sections.append((f"FAILED {run.config.key()} {result.testbench} {result.name}",
                                 None, details))
        return sections + [("Summary", None, [
            ["JUnit XML", str(Path(self.output) / "results.xml")], ["seed", str(self.seed)],
            ["wall time", f"{self.seconds:.0f} s"],
            ["result", "all passed" if self.passed else f"{self.failures} failed"]])]


def _parse_results(testbench, path):
    results = []
    if not path.exists():
        return results
    for case in ET.parse(path).getroot().iter("testcase"):
        properties = {p.get("name"): p.get("value") for p in case.iter("property")}
        sim_ns = (float(properties.get("sim_time_stop", 0))
                  - float(properties.get("sim_time_start", 0)))
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        results.append(TestResult(
            testbench=testbench.name, name=case.get("name"), passed=problem is None,
            cycles=round(sim_ns / CLOCK_PERIOD_NS), wall_time=float(case.get("time", 0)),
            message="" if problem is None else (problem.get("message") or "")))
    return results


class _LogWatcher:
    """Calls ``on_test(name, passed)`` as cocotb logs each test's end, from a thread."""

    _PATTERN = re.compile(r"(\S+) (passed|failed)\b")

    def __init__(self, path, on_test):
        self._path, self._on_test = path, on_test
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        position = 0
        while True:
            stopping = self._stop.wait(0.2)
            if self._path.exists():
                with open(self._path, errors="replace") as log:
                    log.seek(position)
                    text = log.read()
                    complete = text.rfind("\n") + 1
                    position += len(text[:complete].encode(errors="replace"))
                for line in text[:complete].splitlines():
                    match = self._PATTERN.search(line)
                    if match and "/case=" in match.group(1):
                        self._on_test(match.group(1), match.group(2) == "passed")
            if stopping:
                return


def _test(config, testbench, build_dir, test_dir, seed, test_filter, waves, on_test=None):
    """One simulator run of ``testbench``'s tests matching ``test_filter``; returns the results."""
    from cocotb_tools.runner import get_runner

    if test_dir.exists():
        shutil.rmtree(test_dir)
    test_dir.mkdir(parents=True)
    results_xml = test_dir / "results.xml"
    log = test_dir / "sim.log"
    with _toolchain_environment():
        runner = get_runner("verilator")
        watcher = _LogWatcher(log, on_test) if on_test else contextlib.nullcontext()
        with watcher:
            try:
                runner.test(test_module=testbench.module, hdl_toplevel=testbench.toplevel,
                            hdl_toplevel_lang="verilog", build_dir=build_dir,
                            test_dir=test_dir, seed=seed,
                            test_filter=test_filter, waves=waves,
                            extra_env={**config_environment(config),
                                       # the runner would name Verilator's waves dump.vcd
                                       "COCOTB_RESULTS_ATTACHMENTS": ",".join(
                                           [str(test_dir / "dump.fst")] * waves + [str(log)])},
                            results_xml=str(results_xml), log_file=log)
            except SystemExit:
                pass  # under pytest the runner exits on failures; the XML says which
    return _parse_results(testbench, results_xml), results_xml, log


def _names_filter(names):
    return "(" + "|".join(re.escape(name) + "$" for name in names) + ")"


def selected_tests(testbench, pattern=None):
    """``testbench``'s test names matching the regular expression ``pattern`` (all if None)."""
    names = testbench.test_names()
    if pattern is None:
        return names
    regex = re.compile(pattern)
    return [name for name in names if regex.search(f"{testbench.module}.{name}")
            or regex.search(name)]


def run_testbench(config, testbench, seed, output, pattern=None, waves=False, verilog=None,
              on_test=None, keep_failure_waves=True):
    """Builds (if needed) and runs the tests of ``testbench`` that match ``pattern``.

    Parameters
    ----------
    config : ArrayConfig
    testbench : CocotbTestbench
    seed : int
        The regression seed.
    output : Path
        Results go to ``output/<testbench>/`` (results.xml, sim.log, waveforms).
    pattern : str, optional
        Regular expression on test names (``test_core/case=tiny``); default: all.
    waves : bool
        Record an FST waveform of every test.
    verilog : Path, optional
        A different Verilog for the DUT (self-tests build a mutant this way).
    on_test : callable(str, bool), optional
        Called as each test ends, for progress displays.
    keep_failure_waves : bool
        Rerun each failing test (up to :data:`MAX_WAVEFORM_RERUNS`) with a waveform.

    Returns
    -------
    TestbenchRun
    """
    run = TestbenchRun(config=config, testbench=testbench, seed=seed)
    names = selected_tests(testbench, pattern)
    if not names:
        return run
    start = time.monotonic()
    try:
        build_dir, run.compiled = build(config, testbench, waves=waves, verilog=verilog)
    except RuntimeError as error:
        run.error = str(error)
        return run
    run.build_seconds = time.monotonic() - start
    testbench_dir = Path(output) / testbench.name
    run.results, run.results_xml, run.log = _test(
        config, testbench, build_dir, testbench_dir, seed, _names_filter(names), waves, on_test)
    missing = set(names) - {f"{testbench.module.rsplit('.', 1)[1]}.{r.name}" for r in run.results}
    if missing and not run.error:
        run.error = (f"{len(missing)} tests did not report (simulator crash?), e.g. "
                     f"{sorted(missing)[0]}; see {run.log}")
    if waves:
        for result in run.results:
            result.waveform = testbench_dir / "dump.fst"
    elif keep_failure_waves:
        for result in run.failed[:MAX_WAVEFORM_RERUNS]:
            result.waveform = _rerun_with_waves(config, testbench, seed, testbench_dir, result,
                                                verilog)
    return run


def _rerun_with_waves(config, testbench, seed, testbench_dir, result, verilog):
    """Reruns one failing test with FST tracing; returns the waveform's path (or None)."""
    try:
        build_dir, _ = build(config, testbench, waves=True, verilog=verilog)
    except RuntimeError:
        return None
    short = testbench.module.rsplit(".", 1)[1]
    test_dir = testbench_dir / "waves" / result.case
    _test(config, testbench, build_dir, test_dir, seed, _names_filter([f"{short}.{result.name}"]),
          True)
    waveform = test_dir / "dump.fst"
    return waveform if waveform.exists() else None


def replay_command(config, testbench, result, seed):
    """The one command that reruns ``result`` alone, with the same seed and waves."""
    return (f"sparsemac regress --config {config.key()} --testbench {testbench.name} "
            f"--test '{re.escape(result.name)}$' --seed {seed} --waves")


def merge_junit(paths, destination):
    """Merges cocotb's per-testbench JUnit files into one ``<testsuites>`` document."""
    root = ET.Element("testsuites", name="sparsemac regress")
    for path in paths:
        if path is not None and Path(path).exists():
            for suite in ET.parse(path).getroot().iter("testsuite"):
                root.append(suite)
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(destination, encoding="utf-8", xml_declaration=True)
    return destination


def run_regression(configs, testbenches, seed, output, pattern=None, waves=False, on_test=None,
                   on_testbench=None):
    """Runs ``testbenches`` on each of ``configs``; writes ``output/results.xml``.

    Parameters
    ----------
    configs : list of ArrayConfig
    testbenches : list of CocotbTestbench
    seed : int
    output : Path
        Each config's results go to ``output/<config name>/<testbench>/``.
    pattern, waves, on_test
        As :func:`run_testbench`.
    on_testbench : callable(ArrayConfig, CocotbTestbench), optional
        Called before each testbench starts (builds included), for progress displays.

    Returns
    -------
    list of TestbenchRun
    """
    runs = []
    for config in configs:
        for testbench in testbenches:
            if not selected_tests(testbench, pattern):
                continue
            if on_testbench is not None:
                on_testbench(config, testbench)
            runs.append(run_testbench(config, testbench, seed, Path(output) / config.key(),
                                  pattern, waves, on_test=on_test))
    merge_junit([run.results_xml for run in runs], Path(output) / "results.xml")
    return runs
