"""The report of a sweep: its summary, the designs summed over layers, their Pareto fronts and
plots."""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from .. import pareto_front
from .spec import SweepSpec
from .table import RESULTS_FILE
from .worker import PointResult

__all__ = ["LISTED_FAILURES", "DesignPoint", "SweepReport"]

#: Failed points listed in the summary (all of them are in the CSV).
LISTED_FAILURES = 10


@dataclass
class SweepReport:
    """What :func:`run_sweep` did and found."""
    #: The spec run.
    spec: SweepSpec
    #: The output folder; ``results`` is its CSV.
    output: str
    #: The rows of this spec's points, in point order (earlier runs' rows included).
    results: list[PointResult]
    #: Points in the spec.
    points: int
    #: Points found done in the table.
    skipped: int
    #: Points computed now.
    computed: int
    #: Rows of this spec whose point failed.
    failed: int
    #: Wall time from the start of a local cluster (or from the connection to a running one) to the
    #: last row.
    wall_s: float
    #: Points computed per second from the first submission, each worker's first model load included
    #: (0 when nothing was computed).
    points_per_s: float
    #: Where the points ran.
    cluster: str
    #: The Pareto plots written (PNG paths); empty without plots.
    plots: list[str] = field(default_factory=list)

    @property
    def table(self):
        return str(Path(self.output) / RESULTS_FILE)

    @property
    def passed(self):
        """Whether every point of the spec has a result."""
        return self.failed == 0

    def as_json(self):
        return {"passed": self.passed, "table": self.table, "seed": self.spec.seed,
                "points": self.points, "skipped": self.skipped, "computed": self.computed,
                "failed": self.failed, "wall_s": self.wall_s, "points_per_s": self.points_per_s,
                "cluster": self.cluster, "plots": self.plots,
                "results": [dataclasses.asdict(row) for row in self.results]}

    def design_points(self):
        """Layer rows summed over the layers of each (model, tokens, config, method, sparsity):
        the designs the Pareto plots compare. See :func:`_design_points`."""
        return _design_points(self.results)

    def sections(self):
        """The summary as ``(title, header, rows)`` tables."""
        sections = [("Sweep", None, [
            ["results", self.table],
            ["points", f"{self.points} ({self.skipped} done before, {self.computed} computed "
                       f"now, {self.failed} failed)"],
            ["ran on", self.cluster],
            ["wall time", f"{self.wall_s:.1f} s"
                          + (f"; {self.points_per_s:.2f} points/s from the first submission "
                             "(workers' model loads included)" if self.computed else "")],
            ["seed", str(self.spec.seed)],
            *([["plots", ", ".join(self.plots)]] if self.plots else []),
        ])]
        for workload, designs in _by_workload(self.design_points()).items():
            front = [designs[index]
                     for index in pareto_front(designs, "sparse_cycles", "relative_error")]
            sections.append((f"Pareto front, cycles against relative error: {workload} "
                             f"({len(front)} of {len(designs)} designs)",
                             ["config", "method", "sparsity", "cycles", "speedup",
                              "rel. error", "cosine"],
                             [[design.config, design.method, _sparsity(design.target_sparsity),
                               f"{design.sparse_cycles:,}", f"{design.speedup:.2f}x",
                               f"{design.relative_error:.2%}", f"{design.cosine:.4f}"]
                              for design in front]))
        verified = [row for row in self.results if row.verify and not row.failed]
        if verified:
            sections.append(("Verified on Verilator", None, [
                ["points", str(len(verified))],
                ["bit-exact", f"{sum(row.bit_exact for row in verified)} of {len(verified)}"],
                ["cycles = model",
                 f"{sum(row.cycles_match for row in verified)} of {len(verified)}"]]))
        builds = [row for row in self.results if row.kind == "build" and not row.failed]
        if builds:
            sections.append((
                "Board builds (BERT-base: 72 linears, 90 %, 128 tokens, at the build's Fmax; "
                "a placement's Fmax is nextpnr's estimate before routing)",
                ["config", "seed", "clock", "Fmax", "LUT4", "FF", "DSP", "BRAM",
                 "critical path", "BERT-base"],
                [[row.config, str(row.build_seed), f"{row.clock_mhz:g} MHz",
                  f"{row.fmax_mhz:.2f} MHz" + ("" if row.routed else " (placed)"),
                  f"{row.lut4:,}", f"{row.ff:,}", str(row.dsp),
                  str(row.bram), "-" if row.critical_ns is None
                  else f"{row.critical_ns:.2f} ns {row.critical_path}",
                  f"{row.bert_base_s:.3f} s"] for row in builds]))
        failures = [row for row in self.results if row.failed]
        if failures:
            more = len(failures) - LISTED_FAILURES
            sections.append((f"Failed points ({len(failures)}"
                             + (f"; the first {LISTED_FAILURES} here, all in the CSV"
                                if more > 0 else "") + ")",
                             None, [[_describe(row), row.error]
                                    for row in failures[:LISTED_FAILURES]]))
        return sections


def _sparsity(target):
    return "N:M" if target is None else f"{target:.0%}"


def _describe(row):
    if row.kind == "build":
        return f"build {row.config} seed {row.build_seed}"
    return (f"{row.model} {row.layer} {row.config} {_method(row)} "
            f"{_sparsity(row.target_sparsity)}")


def _method(row):
    """A layer row's method, with its activation when that is not GELU."""
    return row.method if row.activation in ("", "none") else f"{row.method} {row.activation}"


@dataclass
class DesignPoint:
    """A design, summed over the sweep's layers of one workload (model, tokens run)."""
    #: The model of the workload.
    model: str
    #: Tokens run.
    tokens: int
    #: The array config's key.
    config: str
    #: The pruning method.
    method: str
    #: The sparsity asked for; None for N:M.
    target_sparsity: float | None
    #: Layers summed.
    layers: int
    #: K x T of the config.
    multipliers: int
    #: Bits of its activation buffer.
    activation_buffer_bits: int
    #: Sparse cycles summed over the layers.
    sparse_cycles: int
    #: Dense cycles summed over the layers.
    dense_cycles: int
    #: The layers' mean relative error.
    relative_error: float
    #: The layers' mean cosine.
    cosine: float

    @property
    def speedup(self):
        return self.dense_cycles / self.sparse_cycles


def _design_points(results):
    """Groups layer rows by (model, requested tokens, config, method and activation, target
    sparsity): cycles add up over the layers, relative error and cosine are averaged. A group
    with a failed layer is left out (its failure is listed on its own)."""
    groups = {}
    for row in results:
        if row.kind == "layer":
            groups.setdefault((row.model, row.tokens, row.config, _method(row),
                               row.target_sparsity), []).append(row)
    designs = []
    for (model, _, config, method, sparsity), rows in groups.items():
        if any(row.failed for row in rows):
            continue
        designs.append(DesignPoint(
            model=model, tokens=rows[0].tokens_run, config=config, method=method,
            target_sparsity=sparsity, layers=len(rows), multipliers=rows[0].multipliers,
            activation_buffer_bits=rows[0].activation_buffer_bits,
            sparse_cycles=sum(row.sparse_cycles for row in rows),
            dense_cycles=sum(row.dense_cycles for row in rows),
            relative_error=sum(row.relative_error for row in rows) / len(rows),
            cosine=sum(row.cosine for row in rows) / len(rows)))
    return designs


def _by_workload(designs):
    workloads = {}
    for design in designs:
        name = f"{design.model}, {design.layers} layer(s), {design.tokens} tokens"
        workloads.setdefault(name, []).append(design)
    return workloads


def _plot(designs, folder):
    """The Pareto plots as PNGs in ``folder``: cycles against relative error, and cycles
    against the array's multipliers and activation buffer. Returns their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = _by_workload(designs)
    if not workloads:
        return []
    configs = sorted({design.config for design in designs})
    colours = {config: plt.get_cmap("tab10")(index % 10) for index, config in enumerate(configs)}
    methods = sorted({design.method for design in designs})
    markers = {method: "osD^v<>P*X"[index % 10] for index, method in enumerate(methods)}

    def scatter(axes, designs, x, y, scale=1.0):
        for design in designs:
            axes.scatter(getattr(design, x) / scale, getattr(design, y),
                         color=colours[design.config], marker=markers[design.method], s=28,
                         alpha=0.8)
        front = [designs[index] for index in pareto_front(designs, x, y)]
        axes.step([getattr(item, x) / scale for item in front],
                  [getattr(item, y) for item in front], where="post", color="black",
                  linewidth=1)
        axes.grid(alpha=0.3)

    def legend(figure):
        handles = [plt.Line2D([], [], color=colours[config], marker="o", linestyle="",
                              label=config) for config in configs]
        handles += [plt.Line2D([], [], color="grey", marker=markers[method], linestyle="",
                               label=method) for method in methods]
        handles.append(plt.Line2D([], [], color="black", label="Pareto front"))
        figure.legend(handles=handles, loc="outside right upper", fontsize="small")

    paths = []
    figure, axes = plt.subplots(1, len(workloads), figsize=(6 * len(workloads), 4.5),
                                squeeze=False, layout="constrained")
    for ax, (workload, items) in zip(axes[0], workloads.items()):
        scatter(ax, items, "sparse_cycles", "relative_error")
        ax.set(title=workload, xlabel="sparse cycles (cycle model, summed over layers)",
               ylabel="relative error vs float layer (mean)", xscale="log")
    legend(figure)
    paths.append(folder / "pareto_fidelity.png")
    figure.savefig(paths[-1], dpi=110)
    plt.close(figure)

    figure, axes = plt.subplots(len(workloads), 2, figsize=(11, 4.2 * len(workloads)),
                                squeeze=False, layout="constrained")
    for row, (workload, items) in zip(axes, workloads.items()):
        scatter(row[0], items, "multipliers", "sparse_cycles")
        row[0].set(title=workload, xlabel="int8 multipliers (K x T)",
                   ylabel="sparse cycles", yscale="log")
        scatter(row[1], items, "activation_buffer_bits", "sparse_cycles", scale=1024)
        row[1].set(title=workload, xlabel="activation buffer (kbit)", ylabel="sparse cycles",
                   xscale="log", yscale="log")
    legend(figure)
    paths.append(folder / "pareto_resources.png")
    figure.savefig(paths[-1], dpi=110)
    plt.close(figure)
    return [str(path) for path in paths]
