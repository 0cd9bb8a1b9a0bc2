"""The speed-accuracy front of a pruned, offloaded BERT: :func:`measure_front`.

Every point is a model offloaded to the array (every encoder linear pruned, quantised to int8,
packed in CSR): the float model and int8 alone for reference, each pruning method at each
sparsity, and distilled checkpoints as they are. Per point:

- **cycles**, sparse and dense, measured on the device (the reference back end: golden model
  and exact cycle model, which equal the RTL's cycle for cycle) for the workload, the first
  test texts of the task in one padded batch; speedup = dense / sparse cycles;
- **task accuracy** on the labelled tweets of :mod:`sparsemac.sw.task`. For a task model
  (:mod:`sparsemac.sw.finetune`): its own accuracy on its 4,000 held-out test texts with a 95 %
  interval, and the drop against the float model on the same texts with a paired-bootstrap
  95 % interval and McNemar's exact test (:mod:`sparsemac.sw.stats`). For an embedding model,
  the quick check: a linear probe fitted on the point's own train embeddings and scored on the
  test split, and the dense (float) model's probe reading the point's test embeddings;
  embedding cosine and kNN agreement to the float model. The thousands of task texts run
  through the same int8 arithmetic on the host
  (:meth:`Int8Linear.from_offloaded <sparsemac.sw.quantisation.Int8Linear.from_offloaded>`),
  which is checked, per point, to give the device's very outputs for the workload;
- weight bytes of one pass over the link, CSR and dense.

The report's :attr:`CompareReport.front` is the Pareto-optimal subset (no other point is as
fast and as accurate, and better in one) and :attr:`CompareReport.best` gives, per method, the
fastest point whose accuracy is within :data:`WITHIN_POINTS` of the float model's (for a task
model: the upper end of the drop's interval). ``sparsemac compare`` prints it; from Python::

    from sparsemac.app.pipelines.compare import measure_front
    report = measure_front(["magnitude", "sparsegpt"], [0.5, 0.8], output="results/compare")
"""

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ...devices import open_device
from ...hw.config import DEFAULT_CONFIG, ArrayConfig
from ...hw.formats import ColumnIndex
from ...sw.activation_sparsity import NONE, parse_activation
from ...sw.memory_report import recorded_memory_cycles
from ...sw.finetune import (ModelKindError, is_task_model, load_task_model, predict,
                        require_embedding_model, score_predictions)
from ...sw.methods import parse_method
from ...sw.model_offload import cross_check, offload, run_on_host
from ...sw.models import load_model, sentence_embeddings
from ...sw.packing import check_index
from ...sw.progress import progress
from ...sw.quantisation import DEFAULT_GRANULARITY, GRANULARITIES
from ...sw.stats import DEFAULT_LEVEL, DEFAULT_RESAMPLES, Interval, PairedComparison
from ...sw.tables import write_csv
from ...sw.task import (SplitSizes, embed_splits, evaluate_embeddings, load_labelled, load_texts,
                    model_embedder, task_splits)
from . import check_output_folder, pareto_front
from ...hw.errors import InputError

__all__ = ["DEFAULT_METHODS", "DEFAULT_SPARSITIES", "DEFAULT_SIZES", "DEFAULT_WORKLOAD",
           "QUICK_CHECK", "TASK_MODEL", "WITHIN_POINTS", "FrontPoint", "VerilatorRerun",
           "CompareReport", "best_within", "measure_front"]

#: Methods of the default front, with the sizes below: float, int8 and 4 pruned points took
#: 18.5 minutes on the shared 2-core machine at load average 10 to 12 (a point embeds 1,200
#: tweets through its int8 model: 145 to 235 s; sparsegpt adds 90 to 150 s of pruning), about
#: half that at load 2 to 4. Wanda, a third method, adds 8 minutes at that load; it was
#: dominated by sparsegpt at both sparsities (docs/results.md), so it is left to ``--methods``.
DEFAULT_METHODS = ("magnitude", "sparsegpt")
DEFAULT_SPARSITIES = (0.5, 0.8)
#: Train and test split sizes of the default front (the task's own defaults are 2,000 and
#: 1,000, which take 2.5 times as long per point).
DEFAULT_SIZES = SplitSizes(train=800, test=400)
#: Test texts in the workload whose cycles are measured.
DEFAULT_WORKLOAD = 16
#: What :attr:`CompareReport.evaluation` says accuracy is.
TASK_MODEL = "task model"
QUICK_CHECK = "quick check"
#: "Within one point": the accuracy drop, in percentage points, that :func:`best_within` allows.
WITHIN_POINTS = 1.0
# Accuracies are ratios of counts: a drop of exactly one point must not fail on rounding.
_TOLERANCE = 1e-9


@dataclass
class FrontPoint:
    """One model on the front."""

    #: ``"float"``, ``"int8"`` (no pruning), a pruning method, or ``"checkpoint"``.
    method: str
    #: The float model never runs on the array: its cycles are the dense ones (speedup 1).
    #: One of ``"float"``, ``"int8"``, ``"pruned"``, ``"checkpoint"``.
    kind: str
    #: The model it was made from (a checkpoint's directory).
    model: str
    #: Asked for; None for N:M patterns, checkpoints, float and int8.
    sparsity_target: float | None
    #: Achieved fraction of zero int8 weights over the offloaded linears (0 for float).
    sparsity: float
    #: Sparse cycles of the workload, measured on the device (equal to the dense ones for the float
    #: model).
    sparse_cycles: int
    #: Dense cycles of the same calls.
    dense_cycles: int
    #: Dense over sparse cycles.
    speedup: float
    #: Bytes of one pass of every layer's weights in sparse mode.
    sparse_weight_bytes: int
    #: Bytes of one pass in dense mode.
    dense_weight_bytes: int
    #: Test accuracy: a task model's own, or the quick check's (a probe refitted on the point's
    #: embeddings, :class:`~sparsemac.sw.task.TaskReport`).
    accuracy: float
    #: The quick check's accuracy of the float model's probe reading the point's embeddings;
    #: None for a task model.
    accuracy_dense_probe: float | None
    #: The quick check's mean embedding cosine to the float model; None for a task model.
    cosine: float | None
    #: The quick check's kNN agreement with the float model; None for a task model.
    knn_agreement: float | None
    #: The host's int8 embeddings of the workload equal the device's, bit for bit (None for the
    #: float model).
    host_equals_device: bool | None
    #: Wall time of the point: pruning, device run, embedding and probes.
    seconds: float
    #: Per array configuration of the front (by :meth:`ArrayConfig.key`), the workload's
    #: ``sparse_cycles`` and ``dense_cycles`` from the exact cycle model (the first config's equal
    #: the measured ones), and ``memory_sparse_cycles``, ``memory_dense_cycles`` under the front's
    #: memory model (the exact throttled cycle model), None without one.
    by_config: dict[str, dict[str, int | None]] = field(default_factory=dict)
    #: A task model's 95 % interval of `accuracy`; None for the quick check.
    interval: Interval | None = None
    #: A task model's comparison with the float model on the same test items (None for the
    #: float point itself, and for the quick check).
    paired: PairedComparison | None = None
    #: The feed-forward activation (``str(ActivationSpec)``): the front's, or a checkpoint's.
    activation: str = "none"
    #: Measured fraction of exactly-zero int8 activations the workload sent (0 for float).
    activation_sparsity: float = 0.0
    #: Products over those of a nonzero weight and a nonzero activation, per layer
    #: ``1 / ((1 - s_w)(1 - s_a))`` weighted by its share of the workload.
    joint_ideal_speedup: float = 1.0

    @property
    def label(self) -> str:
        """How tables and the plot name the point."""
        if self.kind == "checkpoint":
            name = f"checkpoint {Path(self.model).name}"
        elif self.sparsity_target is None or self.kind != "pruned":
            name = self.method
        else:
            name = f"{self.method} {self.sparsity_target:g}"
        shown = self.activation != "none" and self.kind in ("int8", "pruned")
        return f"{name} {self.activation}" if shown else name


def _figures(point, task):
    """A point's accuracy cells in the table: a task model's with intervals, or the quick
    check's."""
    if not task:
        return [f"{point.accuracy:.2%}", f"{point.accuracy_dense_probe:.2%}",
                f"{point.cosine:.4f}", f"{point.knn_agreement:.3f}"]
    paired = point.paired
    if paired is None:
        return [f"{point.accuracy:.2%}", point.interval.points(), "-", "-", "-"]
    return [f"{point.accuracy:.2%}", point.interval.points(), f"{100 * paired.drop:+.2f}",
            paired.drop_interval.points(), f"{paired.mcnemar_p:.3g}"]


def best_within(points, dense_accuracy, within=WITHIN_POINTS) -> dict:
    """Per method, the index of the fastest point whose accuracy is within `within` points.

    A point with a paired comparison (a task model's) is within only when the upper end of the
    95 % interval of its drop is; a point without one, when its accuracy is.

    Parameters
    ----------
    points : sequence of FrontPoint
    dense_accuracy : float
        The float model's accuracy, in [0, 1].
    within : float
        Allowed drop in percentage points.

    Returns
    -------
    dict of str to int or None
        By method (a checkpoint by its label), in order of first appearance; None where no
        point of the method is accurate enough. The float model is left out.
    """
    floor = dense_accuracy - within / 100 - _TOLERANCE
    best = {}
    for index, point in enumerate(points):
        if point.kind == "float":
            continue
        name = point.label if point.kind == "checkpoint" else point.method
        best.setdefault(name, None)
        current = best[name]
        accurate = (point.paired.within(within) if point.paired is not None
                    else point.accuracy >= floor)
        if accurate and (current is None or point.speedup > points[current].speedup):
            best[name] = index
    return best


@dataclass
class VerilatorRerun:
    """One point rerun on one test text on Verilator and on the reference back end."""

    #: The point's :attr:`FrontPoint.label`.
    label: str
    #: Tokens of the test text.
    tokens: int
    #: Verilator's sums equal the reference's in every call.
    bit_exact: bool
    #: Verilator's cycles equal the reference's in every call.
    cycles_equal: bool
    #: Layers whose sums differ.
    sums_mismatch: list[str]
    #: Layers whose cycles differ.
    cycles_mismatch: list[str]
    #: Verilator's sparse cycles of the text.
    sparse_cycles: int
    #: Verilator's dense cycles of the same calls.
    dense_cycles: int
    #: The reference's sparse cycles of the text.
    reference_sparse_cycles: int
    #: Host wall time in the Verilator device.
    device_s: float


@dataclass
class CompareReport:
    """The front: every point, which are Pareto-optimal, the best per method, files written.

    ``as_json()`` is the content of ``compare.json``.
    """

    #: The float model's name.
    model: str
    #: Seeds the task's splits and random pruning.
    seed: int
    #: Activation quantisation scale: ``"tensor"`` or ``"token"``.
    granularity: str
    #: The fields of the array the device ran.
    config: dict[str, int]
    #: The task's data: its ``source``, the ``train`` and ``test`` split sizes, the
    #: ``calibration`` texts and their ``calibration_source``.
    data: dict[str, str | int]
    #: The batch whose cycles are measured: ``texts`` and ``tokens``.
    workload: dict[str, int]
    #: The float model's task accuracy.
    dense_accuracy: float
    #: Every :class:`FrontPoint` measured, in order.
    points: list[FrontPoint]
    #: Indices into `points` of the Pareto-optimal ones, by increasing speedup.
    front: list[int]
    #: Per method, the index of its fastest point within :data:`WITHIN_POINTS` of the float
    #: accuracy, or None.
    best: dict[str, int | None]
    #: The fastest best point rerun on one test text on Verilator and on the reference back end,
    #: compared; None without ``verify``.
    verify: VerilatorRerun | None
    #: Wall time of the whole comparison.
    wall_s: float
    #: The files written: ``compare.csv``, ``compare.json``, ``front.png``.
    files: list[Path] = field(default_factory=list)
    #: ``memory``: the model's description, when the front had one.
    memory: str | None = None
    #: How the sparse jobs sent column indices: ``csr`` or ``delta``.
    index: str = "csr"
    #: What accuracy is: :data:`TASK_MODEL` (a fine-tuned classifier's own, with intervals and
    #: paired drops) or :data:`QUICK_CHECK` (a probe refitted on each point's embeddings).
    evaluation: str = "quick check"
    #: A task model's paired bootstrap: ``seed``, ``resamples``, ``level``; None otherwise.
    bootstrap: dict[str, int | float] | None = None
    #: SmoothQuant migration strength of the offloaded points; None: none.
    smoothing: float | None = None
    #: The feed-forward activation of the int8 and pruned points.
    activation: str = "none"

    @property
    def passed(self):
        """False when a point's host and device embeddings differ or the Verilator rerun
        disagrees with the reference."""
        host = all(point.host_equals_device is not False for point in self.points)
        return host and (self.verify is None
                         or (self.verify.bit_exact and self.verify.cycles_equal))

    def as_json(self):
        summary = asdict(self)
        summary["points"] = [dict(_json_ready(asdict(point)), label=point.label)
                             for point in self.points]
        del summary["files"]
        return summary

    def sections(self):
        """The human report as ``(title, header, rows)`` tables."""
        data, workload = self.data, self.workload
        task = self.evaluation == TASK_MODEL
        measured = (f"task model: its own accuracy on {data['test']} held-out test texts of "
                    f"{data['source']}, 95 % intervals, drops paired with the float model"
                    if task else f"quick check: a linear probe refitted on each point's "
                    f"embeddings of {data['train']} train texts, scored on {data['test']} test "
                    f"texts of {data['source']}")
        title = (f"{self.model} on K={self.config['lanes']} T={self.config['token_lanes']}; "
                 f"{measured}; cycles of {workload['texts']} test texts in one batch "
                 f"({workload['tokens']} tokens a layer call)"
                 + ("; delta column index" if self.index == "delta" else "")
                 + ("" if self.smoothing is None else
                    f"; SmoothQuant migration alpha {self.smoothing:g}")
                 + (f"; activation {self.activation} (act. zeros: measured on the workload; "
                    "ideal w+a = 1/((1-s_w)(1-s_a)))" if self.activation != "none" else ""))
        figures = (["accuracy", "95 % interval", "drop", "drop 95 % interval", "McNemar p"]
                   if task else ["accuracy", "dense probe", "cosine", "kNN"])
        header = ["point", "sparsity", "act. zeros", "sparse cyc", "dense cyc", "speedup",
                  "ideal w+a", *figures, f"{self.index.upper()} bytes", "front", "s"]
        front = set(self.front)
        rows = [[point.label, f"{point.sparsity:.3f}", f"{point.activation_sparsity:.3f}",
                 f"{point.sparse_cycles:,}", f"{point.dense_cycles:,}", f"{point.speedup:.2f}x",
                 f"{point.joint_ideal_speedup:.2f}x", *_figures(point, task),
                 f"{point.sparse_weight_bytes:,}", "*" if index in front else "",
                 f"{point.seconds:.0f}"]
                for index, point in enumerate(self.points)]
        best = [[name, "-" if index is None else
                 f"{self.points[index].label}: {self.points[index].speedup:.2f}x at "
                 f"{self.points[index].accuracy:.2%}"]
                for name, index in self.best.items()]
        seed = str(self.seed) + ("" if not task else
                                 f" (splits: the task model's; bootstrap: seed "
                                 f"{self.bootstrap['seed']}, {self.bootstrap['resamples']:,} "
                                 f"resamples of {data['test']} items)")
        summary = [["seed", seed],
                   ["float accuracy", f"{self.dense_accuracy:.2%}"],
                   ["host = device", "yes on every point" if all(
                       point.host_equals_device is not False for point in self.points)
                    else "NO on " + ", ".join(point.label for point in self.points
                                              if point.host_equals_device is False)]]
        if self.verify:
            verify = self.verify
            summary.append([
                "verify", f"{verify.label}, {verify.tokens} tokens, Verilator vs "
                          f"reference: bit-exact {verify.bit_exact}, cycles equal "
                          f"{verify.cycles_equal} ({verify.sparse_cycles:,} sparse "
                          f"cycles): " + ("PASS" if self.passed else "FAIL")])
        summary += [["wall time", f"{self.wall_s:.1f} s"],
                    ["wrote", ", ".join(map(str, self.files))]]
        return [(title, header, rows), *self._memory_sections(),
                (f"Highest speedup within {WITHIN_POINTS:g} point of the float model's "
                 "accuracy" + (" (the upper end of the drop's 95 % interval)" if task else ""),
                 None, best),
                ("Summary", None, summary)]


    def _memory_sections(self):
        """Every point on every config, and under the memory model, when the front
        had more than one config or a memory model; else nothing."""
        if self.memory is None and len(self.points[0].by_config) < 2:
            return []
        bound = self.memory is not None
        header = ["point", "config", "sparse cyc", "dense cyc", "speedup",
                  *(["memory sparse", "memory dense", "speedup"] if bound else [])]
        rows = []
        for point in self.points:
            for key, cycles in point.by_config.items():
                rows.append([point.label, key, f"{cycles['sparse_cycles']:,}",
                             f"{cycles['dense_cycles']:,}",
                             f"{cycles['dense_cycles'] / cycles['sparse_cycles']:.2f}x"])
                if bound:
                    sparse, dense = cycles["memory_sparse_cycles"], cycles["memory_dense_cycles"]
                    rows[-1] += [f"{sparse:,}", f"{dense:,}", f"{dense / sparse:.2f}x"]
        title = "Cycles on every config (exact cycle model)" + (
            f"; under {self.memory} (exact throttled model)" if bound else "")
        return [(title, header, rows)]


def measure_front(methods=DEFAULT_METHODS, sparsities=DEFAULT_SPARSITIES, *, model="minilm",
                  checkpoints=(), configs=(DEFAULT_CONFIG,), granularity=DEFAULT_GRANULARITY,
                  seed=0, sizes=DEFAULT_SIZES, workload=DEFAULT_WORKLOAD, data=None,
                  calibration=None, output="results/compare", verify=False, memory=None,
                  index=ColumnIndex.CSR, smoothing=None, activation=None):
    """Measure the speed-accuracy front: every method at every sparsity, and checkpoints.

    Parameters
    ----------
    methods : sequence of str or PruningMethod
        Pruning methods as :func:`~sparsemac.sw.model_offload.offload` takes them; an N:M
        pattern (``2:4``, ``sparsegpt-2:4``) is one point at ``1 - N/M``.
    sparsities : sequence of float
        Sparsities of the other methods.
    model : str
        The float model: ``minilm`` or a local BERT checkpoint with a tokenizer.
    checkpoints : sequence of str or Path
        Pruned (e.g. distilled) checkpoints of the same architecture, offloaded with their
        zeros as they are and scored against `model`.
    configs : sequence of ArrayConfig
        The device runs the first; the others get the same calls' cycles from the exact cycle
        model (:attr:`FrontPoint.by_config`). The front is the first config's.
    granularity : str
        Activation scale, as in :func:`~sparsemac.sw.model_offload.offload`.
    seed : int
        Of the task's splits and of random pruning.
    sizes : SplitSizes
        Of the task's splits; the calibration split is the calibrated methods' text.
    workload : int
        Test texts in the batch whose cycles are measured.
    data : str or Path or None
        A labelled CSV (``text``, ``label``); None for the built-in tweets.
    calibration : str or Path or None
        A text file of calibration text instead of the calibration split.
    output : str or Path
        Folder for ``compare.csv``, ``compare.json`` and ``front.png`` (created).
    verify : bool
        Rerun the fastest point within one point of the float model (else the fastest) on
        Verilator, one test text: bit-exact sums and equal cycles to the reference.
    memory : MemoryModel or None
        Also count every point's workload cycles under this memory model.
    index : ColumnIndex
        How the sparse jobs send column indices, on every config: ``DELTA`` needs configs
        with the delta decoder (e.g. ``k8t4d5``).
    smoothing : float or None
        SmoothQuant migration strength of every offloaded point, from the calibration text
        (:func:`~sparsemac.sw.model_offload.offload`); None: none.
    activation : ActivationSpec or str or None
        The feed-forward activation of the int8 and pruned points (``relu@S`` calibrated on
        the calibration text); checkpoints keep their own, the float model GELU. Each point
        reports the zeros its workload sent (:attr:`FrontPoint.activation_sparsity`).

    Returns
    -------
    CompareReport

    Raises
    ------
    ValueError
        If a method, sparsity, size, file or checkpoint is wrong; all of it is checked before
        any model is loaded.
    """
    started = time.perf_counter()
    methods, sparsities, checkpoints = list(methods), list(sparsities), list(checkpoints)
    configs = list(configs)
    if not configs:
        raise InputError("need at least one array config")
    config = configs[0]
    index = ColumnIndex(index)
    for other in configs:
        check_index(other, index)
    plan = _plan(methods, sparsities, checkpoints, configs, granularity, workload, sizes)
    output = Path(output)
    check_output_folder(output, "compare results")
    activation = parse_activation(NONE if activation is None else activation)
    texts = load_texts(calibration) if calibration is not None else None
    evaluation = (_TaskModelScore(model, data, seed) if is_task_model(model)
                  else _QuickCheck(model, data, seed, sizes))
    splits, tokenizer = evaluation.splits, evaluation.tokenizer
    texts = splits.calibration.texts if texts is None else texts
    # Every checkpoint loads now: a truncated one fails before an hour of points.
    checkpoint_models = [evaluation.checkpoint(str(source)) for source in checkpoints]
    torch.set_num_threads(1)  # small elementwise work per layer: see the bert pipeline
    batch = splits.test.texts[:workload]
    tokens = int(tokenizer(batch, padding=True, truncation=True,
                           return_tensors="pt")["input_ids"].shape[1])
    evaluation.score_float()
    device = open_device("reference", config)

    def measure(kind, method, source, base, sparsity):
        point_started = time.perf_counter()
        offloaded, report = offload(base, device, sparsity, method, seed=seed,
                                    granularity=granularity, calibration=texts,
                                    tokenizer=tokenizer, index=index, smoothing=smoothing,
                                    activation=None if kind == "checkpoint" else activation)
        on_device = evaluation.outputs(offloaded, batch)
        run_on_host(offloaded, report)
        on_host = evaluation.outputs(offloaded, batch)
        by_config = {}
        for other in configs:
            cycles = ((report.sparse_cycles, report.dense_cycles) if other is config
                      else report.cycles_for(other))
            bound = (None, None) if memory is None else recorded_memory_cycles(
                report, other, memory, index)
            by_config[other.key()] = dict(sparse_cycles=cycles[0], dense_cycles=cycles[1],
                                          memory_sparse_cycles=bound[0],
                                          memory_dense_cycles=bound[1])
        return FrontPoint(
            method=method if kind == "pruned" else kind, kind=kind, model=source,
            sparsity_target=(None if kind != "pruned" or parse_method(method).fixes_sparsity
                             else sparsity),
            sparsity=report.sparsity, sparse_cycles=report.sparse_cycles,
            dense_cycles=report.dense_cycles, speedup=report.speedup,
            sparse_weight_bytes=report.sparse_weight_bytes,
            dense_weight_bytes=report.dense_weight_bytes,
            host_equals_device=bool(torch.equal(on_device, on_host)),
            by_config=by_config, **evaluation.score(offloaded),
            seconds=time.perf_counter() - point_started, activation=report.activation,
            activation_sparsity=report.activation_sparsity,
            joint_ideal_speedup=report.joint_ideal_speedup)

    points = []
    for number, (kind, method, source, sparsity) in enumerate(plan, start=1):
        base = (checkpoint_models[checkpoints.index(source)] if kind == "checkpoint"
                else copy.deepcopy(evaluation.model))
        point = measure(kind, method, str(source), base, sparsity)
        points.append(point)
        if kind == "int8":  # the float model: never on the array, its cycles are the dense ones
            points.insert(0, FrontPoint(
                method="float", kind="float", model=evaluation.name, sparsity_target=None,
                sparsity=0.0, sparse_cycles=point.dense_cycles, dense_cycles=point.dense_cycles,
                speedup=1.0, sparse_weight_bytes=point.dense_weight_bytes,
                dense_weight_bytes=point.dense_weight_bytes, host_equals_device=None,
                seconds=0.0, **evaluation.float_figures(),
                by_config={key: dict(cycles, sparse_cycles=cycles["dense_cycles"],
                                     memory_sparse_cycles=cycles["memory_dense_cycles"])
                           for key, cycles in point.by_config.items()}))
        output.mkdir(parents=True, exist_ok=True)  # each finished point is kept at once
        write_csv(output / "compare.csv", [_csv_row(point) for point in points])
        progress(f"point {number}/{len(plan)} {point.label}: {point.speedup:.2f}x, accuracy "
                 f"{point.accuracy:.2%}{evaluation.describe(point)}, {point.seconds:.0f} s "
                 f"(elapsed {time.perf_counter() - started:.0f} s)")

    best = best_within(points, evaluation.accuracy)
    checked = None
    if verify:
        checked = _verify(points, best, evaluation, texts, splits.test.texts[0], config, seed,
                          granularity, index, smoothing, activation)
    result = CompareReport(
        model=evaluation.name, seed=seed, granularity=granularity, config=config.as_dict(),
        data={"source": splits.train.source, "train": len(splits.train),
              "test": len(splits.test), "calibration": len(texts),
              "calibration_source": "calibration split" if calibration is None
              else str(calibration)},
        workload={"texts": len(batch), "tokens": tokens}, dense_accuracy=evaluation.accuracy,
        points=points, front=pareto_front(points, "speedup", "accuracy", maximise=True),
        best=best, verify=checked, wall_s=time.perf_counter() - started,
        memory=None if memory is None else memory.describe(), index=index.name.lower(),
        evaluation=evaluation.kind, bootstrap=evaluation.bootstrap(), smoothing=smoothing,
        activation=str(activation))
    (output / "compare.json").write_text(json.dumps(result.as_json(), indent=2) + "\n")
    _plot(result, output / "front.png")
    result.files = [output / name for name in ("compare.csv", "compare.json", "front.png")]
    return result


def _plan(methods, sparsities, checkpoints, configs, granularity, workload, sizes):
    """The points to measure, as ``(kind, method, model, sparsity)``; every argument checked."""
    for config in configs:
        if not isinstance(config, ArrayConfig):
            raise TypeError(f"config must be an ArrayConfig, not {config!r}")
    if granularity not in GRANULARITIES:
        raise InputError(f"granularity must be one of {GRANULARITIES}, not {granularity!r}")
    if isinstance(workload, bool) or not isinstance(workload, int) \
            or not 1 <= workload <= sizes.test:
        raise InputError(f"the workload must be 1 to {sizes.test} test texts (the test "
                         f"split), not {workload!r}")
    for sparsity in sparsities:
        if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) \
                or not 0.0 <= sparsity <= 1.0:
            raise InputError(f"sparsity must be a number in [0, 1], not {sparsity!r}")
    methods = [parse_method(method) for method in methods]
    unstructured = [method.text for method in methods if not method.fixes_sparsity]
    if unstructured and not sparsities:
        raise InputError(f"{', '.join(unstructured)} need at least one sparsity")
    for checkpoint in checkpoints:
        if not Path(checkpoint).is_dir():
            raise InputError(f"checkpoint {checkpoint}: no such directory")
    plan = [("int8", "magnitude", None, 0.0)]
    for method in methods:
        if method.fixes_sparsity:
            plan.append(("pruned", method.text, None, None))
        else:
            plan.extend(("pruned", method.text, None, sparsity) for sparsity in sparsities)
    # A checkpoint keeps its own zeros: pruning it to sparsity 0 adds none.
    plan.extend(("checkpoint", "magnitude", checkpoint, 0.0) for checkpoint in checkpoints)
    return [(kind, method, "" if source is None else source, sparsity)
            for kind, method, source, sparsity in plan]


def _verify(points, best, evaluation, texts, text, config, seed, granularity, index,
            smoothing, activation):
    """Rerun one point on one test text on Verilator and on the reference."""
    chosen = [index for index in best.values() if index is not None
              and points[index].kind in ("pruned", "checkpoint")]
    pool = chosen or [index for index, point in enumerate(points)
                      if point.kind in ("pruned", "checkpoint")] or [1]
    point = points[max(pool, key=lambda index: points[index].speedup)]
    method = "magnitude" if point.kind != "pruned" else point.method
    sparsity = 0.0 if point.kind != "pruned" else point.sparsity_target
    reports = []
    for backend in ("reference", "verilator"):
        model = (evaluation.checkpoint(point.model) if point.kind == "checkpoint"
                 else copy.deepcopy(evaluation.model))
        with open_device(backend, config) as device:
            offloaded, report = offload(model, device, sparsity, method, seed=seed,
                                        granularity=granularity, calibration=texts,
                                        tokenizer=evaluation.tokenizer, keep_sums=True,
                                        progress=True, index=index, smoothing=smoothing,
                                        activation=None if point.kind == "checkpoint"
                                        else activation)
            evaluation.outputs(offloaded, [text])
        reports.append(report)
    check = cross_check(*reports)
    reference, verilator = reports
    return VerilatorRerun(label=point.label,
                          tokens=len(evaluation.tokenizer(text)["input_ids"]),
                          bit_exact=check.bit_exact, cycles_equal=check.cycles_equal,
                          sums_mismatch=check.sums_mismatch,
                          cycles_mismatch=check.cycles_mismatch,
                          sparse_cycles=verilator.sparse_cycles,
                          dense_cycles=verilator.dense_cycles,
                          reference_sparse_cycles=reference.sparse_cycles,
                          device_s=verilator.device_s)


class _QuickCheck:
    """Accuracy of an embedding model: a probe refitted on each point's embeddings, with the
    float model's probe, embedding cosine and kNN agreement beside it."""

    kind = QUICK_CHECK

    def __init__(self, model, data, seed, sizes):
        require_embedding_model(model)
        self.splits = task_splits(load_labelled(data), seed=seed, sizes=sizes)
        loaded = load_model(model)
        if loaded.tokenizer is None:
            raise InputError(f"{loaded.name} has no tokenizer: the task needs text")
        self.name, self.model, self.tokenizer = loaded.name, loaded.model, loaded.tokenizer
        self.dense = self.float = None
        self.accuracy = None

    def checkpoint(self, path):
        """A checkpoint's model, refused if it is a task model."""
        require_embedding_model(path)
        return load_model(path).model

    def score_float(self):
        started = time.perf_counter()
        self.dense = embed_splits(model_embedder(self.model, self.tokenizer), self.splits)
        self.float = evaluate_embeddings(self.dense, self.dense, self.splits)
        self.accuracy = self.float.dense_accuracy
        progress(f"float model embedded and probed (quick check): accuracy "
                 f"{self.accuracy:.2%}, {time.perf_counter() - started:.0f} s")

    def outputs(self, model, texts):
        return sentence_embeddings(model, self.tokenizer, texts, batch_size=len(texts))

    def score(self, model):
        task = evaluate_embeddings(self.dense, model_embedder(model, self.tokenizer),
                                   self.splits)
        return dict(accuracy=task.accuracy, accuracy_dense_probe=task.accuracy_dense_probe,
                    cosine=task.cosine, knn_agreement=task.knn_agreement)

    def float_figures(self):
        return dict(accuracy=self.accuracy, accuracy_dense_probe=self.accuracy, cosine=1.0,
                    knn_agreement=1.0)

    def describe(self, point):
        return f", cosine {point.cosine:.4f}"

    def bootstrap(self):
        return None


class _TaskModelScore:
    """Accuracy of a task model on its own held-out test split, with 95 % intervals, each point
    compared with the float model on the same items."""

    kind = TASK_MODEL

    def __init__(self, model, data, seed):
        self.task = load_task_model(model)
        self.splits = self.task.task.splits(data)
        self.name, self.model, self.tokenizer = (self.task.name, self.task.model,
                                                 self.task.tokenizer)
        self.seed = seed
        self.baseline = self.float = None
        self.accuracy = None

    def checkpoint(self, path):
        """A checkpoint's model: a task model of the same classes and data."""
        other = load_task_model(path)
        if (other.task.label_names, other.task.data_sha256) != (
                self.task.task.label_names, self.task.task.data_sha256):
            raise ModelKindError(f"checkpoint {path} is a task model of other classes or data "
                                 f"than {self.name}")
        return other.model

    def score_float(self):
        started = time.perf_counter()
        self.baseline = predict(self.model, self.tokenizer, self.splits.test.texts)
        self.float = score_predictions(self.splits.test.labels, self.baseline)
        self.accuracy = self.float.accuracy.accuracy
        progress(f"float task model scored: accuracy {self.accuracy:.2%} "
                 f"{self.float.accuracy.interval.points()} on {self.float.accuracy.n} test "
                 f"texts, {time.perf_counter() - started:.0f} s")

    def outputs(self, model, texts):
        inputs = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            return model(**inputs).logits

    def score(self, model):
        score = score_predictions(self.splits.test.labels,
                                  predict(model, self.tokenizer, self.splits.test.texts),
                                  self.baseline, seed=self.seed)
        return dict(accuracy=score.accuracy.accuracy, accuracy_dense_probe=None, cosine=None,
                    knn_agreement=None, interval=score.accuracy.interval, paired=score.paired)

    def float_figures(self):
        return dict(accuracy=self.accuracy, accuracy_dense_probe=None, cosine=None,
                    knn_agreement=None, interval=self.float.accuracy.interval)

    def describe(self, point):
        paired = point.paired
        return (f" {point.interval.points()}, drop {100 * paired.drop:+.2f} "
                f"{paired.drop_interval.points()} points, McNemar p {paired.mcnemar_p:.3g}")

    def bootstrap(self):
        return {"seed": self.seed, "resamples": DEFAULT_RESAMPLES, "level": DEFAULT_LEVEL}


def _csv_row(point):
    """A point as one flat CSV row: each config's cycles as ``<config>_<figure>`` columns."""
    row = {name: value for name, value in asdict(point).items()
           if name not in ("by_config", "interval", "paired")}
    if point.interval is not None:
        row.update(accuracy_low=point.interval.low, accuracy_high=point.interval.high)
    if point.paired is not None:
        row.update(drop=point.paired.drop, drop_low=point.paired.drop_interval.low,
                   drop_high=point.paired.drop_interval.high, mcnemar_p=point.paired.mcnemar_p)
    for key, cycles in point.by_config.items():
        row.update({f"{key}_{name}": value for name, value in cycles.items()})
    return dict(row, label=point.label)


def _json_ready(point):
    """JSON has no infinity: null stands for it."""
    return {key: None if isinstance(value, float) and not math.isfinite(value) else value
            for key, value in point.items()}


def _plot(report, path):
    """Speedup against task accuracy, the front drawn through its points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = report.points
    figure, axes = plt.subplots(figsize=(7.5, 4.8))
    names = list(dict.fromkeys(point.label if point.kind == "checkpoint" else point.method
                               for point in points if point.kind not in ("float", "int8")))
    colours = {name: f"C{index % 10}" for index, name in enumerate(names)}
    for point in points:
        name = point.label if point.kind == "checkpoint" else point.method
        style = {"float": dict(marker="*", s=180, color="black", label="float model"),
                 "int8": dict(marker="D", s=60, color="grey", label="int8 only")}.get(
            point.kind, dict(marker="s" if point.kind == "checkpoint" else "o", s=45,
                             color=colours.get(name)))
        axes.scatter(point.speedup, 100 * point.accuracy, zorder=3, **style)
    for name in names:  # one legend entry per method
        axes.scatter([], [], color=colours[name], label=name,
                     marker="s" if name.startswith("checkpoint") else "o")
    front = [points[index] for index in report.front]
    axes.step([point.speedup for point in front], [100 * point.accuracy for point in front],
              where="pre", color="black", linewidth=1, alpha=0.6, label="Pareto front")
    dense = 100 * report.dense_accuracy
    top = max(100 * point.accuracy for point in points)
    axes.axhspan(dense - WITHIN_POINTS, max(top, dense) + 0.5, color="green", alpha=0.08,
                 label=f"at most {WITHIN_POINTS:g} point below float")
    axes.set_xscale("log")
    axes.set_xlabel("speedup on the array (dense / sparse cycles, measured)")
    axes.set_ylabel("task model accuracy (%)" if report.evaluation == TASK_MODEL
                    else "quick check: accuracy of a refitted linear probe (%)")
    axes.set_title(f"{report.model}: speed against accuracy ({report.data['test']} test "
                   "tweets)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="lower left")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
