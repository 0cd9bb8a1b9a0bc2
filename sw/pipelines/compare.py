"""Sweep pruning method and sparsity over a whole offloaded MiniLM: :func:`sweep`.

Cycles saved against output fidelity, as a :class:`CompareReport` and as CSV, JSON and PNG plots
in an output folder. ``sparsemac compare`` prints the report's table; from Python::

    from sparsemac.sw.pipelines.compare import sweep
    report = sweep(["magnitude", "2:4"], [0.5, 0.9], output="results/compare")
"""

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ...devices import open_device
from ...hw.config import DEFAULT_CONFIG
from ..memory_report import recorded_memory_cycles
from ..model_offload import cross_check, offload
from ..models import (DEFAULT_SENTENCE, SIMILARITY_PAIRS, load_model, ranking_agreement,
                      sentence_embeddings, tokenize)
from ..progress import progress_bar
from ..pruning import is_structured, parse_method
from ..quantisation import DEFAULT_GRANULARITY
from ..tables import write_csv

__all__ = ["DEFAULT_SPARSITIES", "DEFAULT_METHODS", "VERIFY_POINT", "ComparePoint",
           "CompareReport", "sweep"]

DEFAULT_SPARSITIES = (0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
DEFAULT_METHODS = ("magnitude", "random", "2:4", "1:4")
#: The point ``verify`` runs on Verilator when the sweep has it (else the sweep's last).
VERIFY_POINT = ("magnitude", 0.9)


@dataclass
class ComparePoint:
    """One row of the sweep: a pruned, offloaded model on one array configuration.

    Cycles are for the workload (the similarity benchmark's sentences in one batch); the
    fidelity figures compare with the float model as given and do not depend on the array.
    """

    method: str
    config: str
    sparsity_target: float
    sparsity: float
    sparse_cycles: int
    dense_cycles: int
    speedup: float
    ideal_speedup: float
    efficiency: float
    sparse_weight_bytes: int
    dense_weight_bytes: int
    embedding_cosine: float
    ranking_agreement: float
    grade_agreement: float


def _points(methods, sparsities):
    """(method, sparsity) pairs of the sweep; an N:M method is one point, sparsity None."""
    points = []
    for method in methods:
        if is_structured(method):
            points.append((method, None))
        else:
            points.extend((method, sparsity) for sparsity in sparsities)
    return points


@dataclass
class CompareReport:
    """The sweep: every point on every config, the workload, and the files written.

    ``as_json()`` is the content of ``compare.json``.
    """
    model: str
    seed: int
    granularity: str
    workload: dict
    configs: dict
    float_grade_agreement: float
    points: list
    verify: dict | None
    wall_s: float
    files: list = field(default_factory=list)
    #: ``--memory``: the preset and, per point and config, memory-bound cycles (issue 12).
    memory: dict | None = None

    @property
    def passed(self):
        """False only when the verified point differs between Verilator and the reference."""
        return self.verify is None or (self.verify["bit_exact"] and self.verify["cycles_equal"])

    def as_json(self):
        summary = asdict(self)
        summary["points"] = [_json_ready(asdict(point)) for point in self.points]
        del summary["files"]
        return summary

    def sections(self):
        """The human report as ``(title, header, rows)`` tables."""
        workload = self.workload
        title = (f"{self.model}: {workload['sentences']} sentences in one batch "
                 f"({workload['tokens_per_layer_call']} tokens per layer call); float model's "
                 f"ranking vs the pairs' grades: Spearman {self.float_grade_agreement:.3f}")
        header = ["method", "config", "sparsity", "sparse cyc", "dense cyc", "speedup", "ideal",
                  "eff", "cosine", "rank"]
        rows = [[point.method, point.config, f"{point.sparsity:.3f}",
                 f"{point.sparse_cycles:,}", f"{point.dense_cycles:,}", f"{point.speedup:.2f}x",
                 f"{point.ideal_speedup:.2f}x", f"{point.efficiency:.2f}",
                 f"{point.embedding_cosine:.4f}", f"{point.ranking_agreement:.3f}"]
                for point in self.points]
        summary = [["seed", str(self.seed)]]
        if self.verify:
            verify = self.verify
            summary.append([
                "verify", f"{verify['method']} {verify['sparsity']}, one sentence of "
                          f"{verify['tokens']} tokens, Verilator vs reference: bit-exact "
                          f"{verify['bit_exact']}, cycles equal {verify['cycles_equal']} "
                          f"({verify['sparse_cycles']:,} sparse cycles): "
                          + ("PASS" if self.passed else "FAIL")])
        summary += [["wall time", f"{self.wall_s:.1f} s"],
                    ["wrote", ", ".join(map(str, self.files))]]
        return [(title, header, rows), *self._memory_sections(), ("Summary", None, summary)]

    def _memory_sections(self):
        """The ``--memory`` table (issue 12), or nothing."""
        if self.memory is None:
            return []
        rows = [[point["method"], point["config"], f"{point['sparsity']:.3f}",
                 f"{point['sparse_cycles']:,}", f"{point['dense_cycles']:,}",
                 f"{point['dense_cycles'] / point['sparse_cycles']:.2f}x"]
                for point in self.memory["points"]]
        return [(f"Memory-bound cycles under {self.memory['describe']} (exact throttled model)",
                 ["method", "config", "sparsity", "sparse cyc", "dense cyc", "speedup"], rows)]


def sweep(methods=DEFAULT_METHODS, sparsities=DEFAULT_SPARSITIES, configs=(DEFAULT_CONFIG,), *,
          model="minilm", granularity=DEFAULT_GRANULARITY, seed=0, output="results/compare",
          verify=False, memory=None):
    """Offloads the model once per (method, sparsity) point and measures every config.

    Cycles come from the reference device on the first config and from the exact cycle model
    on the others (same recorded calls); fidelity is against the float model as given.

    Parameters
    ----------
    methods : sequence of str
        Pruning methods; an N:M method is one point at ``1 - N/M``.
    sparsities : sequence of float
        Sparsities of magnitude and random pruning.
    configs : sequence of ArrayConfig
        Named in the report by :meth:`ArrayConfig.key`.
    model, granularity, seed
        As in :func:`~sparsemac.sw.model_offload.offload`; the model needs a tokenizer.
    output : str or Path
        Folder for ``compare.csv``, ``compare.json`` and the PNG plots (created).
    verify : bool
        Rerun one point (magnitude 90 %) on Verilator: same cycles and bit-exact sums as the
        reference.
    memory : MemoryModel or None
        Also count every point's cycles under this memory model (the report's ``memory``).

    Returns
    -------
    CompareReport

    Raises
    ------
    ValueError
        If there is no method or config, a method is unknown, or the model has no tokenizer.
    """
    started = time.perf_counter()
    methods, sparsities, configs = list(methods), list(sparsities), list(configs)
    if not methods or not configs:
        raise ValueError("need at least one method and one config")
    for method in methods:  # a bad method fails here, before any work
        parse_method(method, explicit=True)
    points = _points(methods, sparsities)
    torch.set_num_threads(1)  # small elementwise work per layer: see the bert pipeline
    loaded = load_model(model)
    if loaded.tokenizer is None:
        raise ValueError(f"{loaded.name} has no tokenizer: the fidelity benchmark needs text")
    sentences = ([pair.first for pair in SIMILARITY_PAIRS]
                 + [pair.second for pair in SIMILARITY_PAIRS])
    grades = [pair.grade for pair in SIMILARITY_PAIRS]

    def embed(offloaded):
        # One batch: every layer runs once on the whole benchmark, padding included.
        return sentence_embeddings(offloaded, loaded.tokenizer, sentences,
                                   batch_size=len(sentences))

    def scores(embeddings):
        pairs = len(SIMILARITY_PAIRS)
        return (embeddings[:pairs] * embeddings[pairs:]).sum(dim=1)

    float_embeddings = embed(loaded.model)
    float_scores = scores(float_embeddings)
    config, others = configs[0], configs[1:]
    device = open_device("reference", config)
    rows, memory_points = [], []
    with progress_bar(len(points), "sweep", "point") as bar:
        for method, sparsity in points:
            offloaded, report = offload(copy.deepcopy(loaded.model), device, sparsity, method,
                                        seed=seed, granularity=granularity)
            embeddings = embed(offloaded)
            point_scores = scores(embeddings)
            fidelity = dict(
                embedding_cosine=float((embeddings * float_embeddings).sum(dim=1).mean()),
                ranking_agreement=ranking_agreement(point_scores, float_scores),
                grade_agreement=ranking_agreement(point_scores, grades))
            cycles = [(config.key(), report.sparse_cycles, report.dense_cycles)]
            cycles += [(other.key(), *report.cycles_for(other)) for other in others]
            for name, sparse, dense in cycles:
                speedup, ideal = dense / sparse, report.ideal_speedup
                rows.append(ComparePoint(
                    method=method, config=name, sparsity_target=report.sparsity_target,
                    sparsity=report.sparsity, sparse_cycles=sparse, dense_cycles=dense,
                    speedup=speedup, ideal_speedup=ideal, efficiency=speedup / ideal,
                    sparse_weight_bytes=report.sparse_weight_bytes,
                    dense_weight_bytes=report.dense_weight_bytes, **fidelity))
            if memory is not None:
                memory_points += _memory_points(report, method, configs, memory)
            bar.update()

    checked = _verify(loaded, points, config, seed, granularity) if verify else None
    tokens = int(loaded.tokenizer(sentences, padding=True,
                                  return_tensors="pt")["input_ids"].numel())
    result = CompareReport(
        model=loaded.name, seed=seed, granularity=granularity,
        workload={"sentences": len(sentences), "tokens_per_layer_call": tokens},
        configs={config.key(): config.as_dict() for config in configs},
        float_grade_agreement=ranking_agreement(float_scores, grades), points=rows,
        verify=checked, wall_s=time.perf_counter() - started,
        memory=None if memory is None else {"preset": asdict(memory),
                                            "describe": memory.describe(),
                                            "points": memory_points})
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    write_csv(output / "compare.csv", rows)
    (output / "compare.json").write_text(json.dumps(result.as_json(), indent=2) + "\n")
    result.files = [output / name for name in ("compare.csv", "compare.json",
                                                *_plot(rows, output))]
    return result


def _memory_points(report, method, configs, memory):
    """``--memory`` (issue 12): the point's recorded calls under ``memory`` on every config."""
    return [{"method": method, "config": config.key(), "sparsity": report.sparsity,
             **dict(zip(("sparse_cycles", "dense_cycles"),
                        recorded_memory_cycles(report, config, memory)))}
            for config in configs]


def _verify(loaded, points, config, seed, granularity):
    """Rerun the sample point on one sentence on Verilator and on the reference."""
    method, sparsity = VERIFY_POINT if VERIFY_POINT in points else points[-1]
    inputs = tokenize(loaded, DEFAULT_SENTENCE)
    reports = []
    for backend in ("reference", "verilator"):
        with open_device(backend, config) as device:
            offloaded, report = offload(copy.deepcopy(loaded.model), device, sparsity, method,
                                        seed=seed, granularity=granularity, keep_sums=True,
                                        progress=True)
            with torch.no_grad():
                offloaded(**inputs)
        reports.append(report)
    check = cross_check(*reports)
    reference, verilator = reports
    return {"method": method, "sparsity": sparsity, "config": config.as_dict(),
            "tokens": int(inputs["input_ids"].shape[1]), "bit_exact": check.bit_exact,
            "cycles_equal": check.cycles_equal, "sums_mismatch": check.sums_mismatch,
            "cycles_mismatch": check.cycles_mismatch,
            "sparse_cycles": verilator.sparse_cycles, "dense_cycles": verilator.dense_cycles,
            "reference_sparse_cycles": reference.sparse_cycles,
            "device_s": verilator.device_s}


def _json_ready(point):
    """JSON has no infinity (the ideal speedup at sparsity 1): null stands for it."""
    return {key: None if isinstance(value, float) and not math.isfinite(value) else value
            for key, value in point.items()}


def _plot(rows, output):
    """Speedup and fidelity against sparsity; returns the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    methods = list(dict.fromkeys(row.method for row in rows))
    configs = list(dict.fromkeys(row.config for row in rows))
    styles = dict(zip(configs, ("-", "--", ":", "-.") * len(configs)))
    colours = {method: f"C{index}" for index, method in enumerate(methods)}

    def series(method, config=None):
        wanted = config or configs[0]
        chosen = [row for row in rows if row.method == method and row.config == wanted]
        return sorted(chosen, key=lambda row: row.sparsity)

    figure, axes = plt.subplots(figsize=(7, 4.5))
    top = max(row.sparsity for row in rows)
    ideal = np.linspace(0, max(top, 0.5), 200)
    axes.plot(ideal, 1 / (1 - ideal), color="black", linestyle=":", label="ideal 1/(1-s)")
    for method in methods:
        for config in configs:
            points = series(method, config)
            axes.plot([row.sparsity for row in points], [row.speedup for row in points],
                      marker="o", color=colours[method], linestyle=styles[config],
                      label=method if len(configs) == 1 else f"{method} {config}")
    axes.set_yscale("log")
    axes.set_xlabel("achieved sparsity s")
    axes.set_ylabel("speedup (dense / sparse cycles)")
    axes.set_title("Whole MiniLM on the sparse MAC array: speedup vs sparsity")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(output / "speedup_vs_sparsity.png", dpi=120)
    plt.close(figure)

    figure, (cosine_axes, rank_axes) = plt.subplots(1, 2, figsize=(11, 4.5))
    for method in methods:
        points = series(method)
        sparsity = [row.sparsity for row in points]
        cosine_axes.plot(sparsity, [row.embedding_cosine for row in points], marker="o",
                         color=colours[method], label=method)
        rank_axes.plot(sparsity, [row.ranking_agreement for row in points], marker="o",
                       color=colours[method], label=method)
    cosine_axes.set_ylabel("embedding cosine vs float model")
    rank_axes.set_ylabel("similarity ranking Spearman vs float model")
    for axes in (cosine_axes, rank_axes):
        axes.set_xlabel("achieved sparsity s")
        axes.grid(True, alpha=0.3)
        axes.legend()
    figure.suptitle("Whole MiniLM, int8 offloaded: fidelity vs sparsity")
    figure.tight_layout()
    figure.savefig(output / "fidelity_vs_sparsity.png", dpi=120)
    plt.close(figure)
    return ["speedup_vs_sparsity.png", "fidelity_vs_sparsity.png"]
