"""Recovering a pruned BERT by knowledge distillation from its dense self.

:func:`distill_prune` prunes the encoder linears of a student copy of a BERT gradually, on the
cubic schedule of Zhu & Gupta (:class:`~sparsemac.sw.pruning.GradualPruner`), while it learns
to reproduce the dense model (the teacher) on a text corpus: the loss is the distance between
the two models' sentence embeddings (mean-pooled last hidden states) plus the mean squared error
of every encoder layer's hidden states, as in SparseBERT and TinyBERT. A task model
(:mod:`sparsemac.sw.finetune`) is distilled with its classification head, and the loss adds the
KL divergence of the two models' class distributions at a temperature (soft logits). The word,
position and token-type embeddings stay frozen (they are never pruned and the teacher's are
right).

A run is resumable: every ``checkpoint_every`` steps it writes one safetensors file into the
output directory holding the student's weights, the masks, the AdamW state and the torch random
state as tensors, and its JSON state (step, recipe, identity of teacher, corpus and
calibration text) in the file's metadata; no pickle anywhere. Batches and the learning rate are
pure functions of the step, so a run resumed from a checkpoint ends with the same weights, bit
for bit, as one that was never interrupted (on the same machine and thread count). A finished
run leaves a Hugging Face checkpoint directory (``model.safetensors``, ``config.json``,
tokenizer files) that :func:`~sparsemac.sw.models.load_model` loads, and :data:`REPORT_FILE`
beside it.

With a sparse feed-forward activation (:attr:`DistillRecipe.activation`, see
:mod:`sparsemac.sw.activation_sparsity`) the student computes it from the first step, while
the teacher keeps its own: the student learns to do without the activations it drops. Its
``config.json`` records the activation, so that ``load_model`` puts it back.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..hw.config import DEFAULT_CONFIG
from .activation_sparsity import parse_activation
from .calibration import check_pattern, prune_calibrated
from .ffn_activation import (ActivationSparsityReport, measure_activation_sparsity,
                             record_activation, sparsify_activations)
from .finetune import (TASK_FILE, TaskInfo, is_task_model, load_task_model, predict,
                       score_predictions)
from .methods import KINDS, PruningMethod
from .models import LoadedModel, load_model
from .pruning import (GradualPruner, LayerPruneReport, cubic_sparsity, layer_prune_report,
                      matching_linears, prune_mask)
from .resumable import (CHECKPOINT_FILE, batch_indices, check_output, check_recipe,
                        note_threads, optimizer_tensors, restore_optimizer, run_rows,
                        state_sha256, texts_sha256, train_steps, write_checkpoint,
                        write_model_directory)
from .stats import PairedComparison
from .task import TaskReport, TaskSplits, embed_splits, evaluate_embeddings, model_embedder
from ..hw.errors import InputError

__all__ = [
    "CHECKPOINT_FILE", "EMBEDDING_LOSSES", "MASK_METHODS", "REPORT_FILE", "DistillRecipe",
    "Fidelity", "PruneReport", "distill_prune",
]

#: The JSON report of a finished run, beside the Hugging Face files; written last.
REPORT_FILE = "distill_report.json"
#: The mask methods of a recipe: every kind but random, whose masks cannot grow on a schedule.
MASK_METHODS = tuple(kind for kind in KINDS if kind != "random")
#: How the student's sentence embedding is compared with the teacher's.
EMBEDDING_LOSSES = ("cosine", "mse")

# Student forward and backward plus AdamW cost about 3 teacher forward passes: measured 4.1 s a
# step against 0.95 s for the teacher's forward on MiniLM, 32 x 48 tokens, one thread.
_STEP_PER_TEACHER_FORWARD = 4.0
# The clock of time budgets and step times (a test replaces it to make them deterministic).
_now = time.perf_counter


@dataclass(frozen=True)
class DistillRecipe:
    """How a sparse model is distilled: everything that decides its weights."""

    #: Fraction of each encoder linear's weights removed at the end, in (0, 1); 0 (no weight
    #: pruned) when `activation` is sparse.
    sparsity: float = 0.9
    #: How masks are chosen at each pruning step: the smallest ``|w|`` of the current student
    #: weights (pruned weights staying pruned), or the calibrated methods of
    #: :func:`~sparsemac.sw.calibration.prune_calibrated` run on the student as it is, fed the
    #: calibration texts (their zeroed weights score lowest, so they stay pruned too).
    #: One of ``"magnitude"``, ``"wanda"``, ``"sparsegpt"``.
    method: str = "magnitude"
    #: None: unstructured. ``"N:M"`` (e.g. ``"2:4"``): the steps before the last pruning step prune
    #: unstructured on the schedule, the last one to the N:M pattern, whose sparsity ``1 - N/M``
    #: must be `sparsity`. ``"k-aligned"`` (calibrated methods): every row keeps a multiple of
    #: `lanes` weights at every pruning step. ``None``, ``"N:M"`` or ``"k-aligned"``.
    pattern: str | None = None
    #: The array's K, for ``"k-aligned"`` (by default the default array's).
    lanes: int = DEFAULT_CONFIG.lanes
    #: Optimiser steps, at least 2. The default, with the learning rate below, is the recipe
    #: measured in docs/results.md ("A longer recovery").
    steps: int = 1200
    #: Fraction of `steps` by which the sparsity reaches its final value; pruning starts at step 0
    #: from dense and the remaining steps recover at the final sparsity.
    prune_end: float = 0.6
    #: Steps between mask updates (``frequency`` of the cubic schedule).
    prune_every: int = 10
    #: Sentences per step.
    batch_size: int = 32
    #: Sequences are padded to the longest of the batch and cut at this many tokens.
    max_tokens: int = 48
    #: Peak AdamW learning rate: linear warm-up over `warmup` of the steps, constant until the end
    #: of pruning, then linear decay to zero at the last step.
    learning_rate: float = 3e-4
    #: Fraction of `steps` of warm-up.
    warmup: float = 0.05
    #: ``1 - cosine`` or the mean squared error of the mean-pooled last hidden states.
    #: ``"cosine"`` or ``"mse"``.
    embedding_loss: str = "cosine"
    #: Weight of the embedding loss in the total.
    embedding_weight: float = 1.0
    #: Weight of the per-layer hidden-state MSE in the total.
    hidden_weight: float = 1.0
    #: With a task model as teacher (:mod:`sparsemac.sw.finetune`), the weight of the soft-logit
    #: loss, ``temperature ** 2`` times the KL divergence of the student's class distribution
    #: at `temperature` from the teacher's (Hinton et al.); unused with an embedding teacher.
    logit_weight: float = 1.0
    #: The temperature of the soft logits of that loss.
    temperature: float = 2.0
    #: Seeds the batch order and dropout.
    seed: int = 0
    #: The student's feed-forward activation, an ``--activation`` spec
    #: (:func:`~sparsemac.sw.activation_sparsity.parse_activation`), kept in canonical text.
    activation: str = "none"

    def __post_init__(self):
        object.__setattr__(self, "activation", str(parse_activation(self.activation)))
        # Sparsity 0 prunes no weight: a run only when the activation changes.
        low = 0.0 if self.activation != "none" and self.sparsity == 0.0 else None
        if isinstance(self.sparsity, bool) or not (self.sparsity == low
                                                   or 0.0 < self.sparsity < 1.0):
            raise InputError(f"sparsity must be between 0 and 1 (exclusive; 0 with a sparse "
                             f"activation), not {self.sparsity!r}")
        if self.method not in MASK_METHODS:
            raise InputError(f"unknown mask method {self.method!r}; valid: "
                             f"{', '.join(map(repr, MASK_METHODS))}")
        check_pattern(self.sparsity, self.mask_method.pattern, self.lanes)
        check_recipe(self, positive=("steps", "prune_every", "batch_size", "max_tokens"))
        if self.steps < 2:
            raise InputError(f"steps must be at least 2 (prune, then train at the final "
                             f"sparsity), not {self.steps!r}")
        if not 0.0 <= self.prune_end <= 1.0:
            raise InputError(f"prune_end must be a fraction of the steps in [0, 1], not "
                             f"{self.prune_end!r}")
        if self.embedding_loss not in EMBEDDING_LOSSES:
            raise InputError(f"embedding_loss must be one of {EMBEDDING_LOSSES}, not "
                             f"{self.embedding_loss!r}")
        if min(self.embedding_weight, self.hidden_weight, self.logit_weight) < 0:
            raise InputError("loss weights must not be negative")
        if not self.temperature > 0:
            raise InputError(f"temperature must be positive, not {self.temperature!r}")

    @property
    def mask_method(self) -> PruningMethod:
        """The method and pattern of the last pruning step.

        Raises
        ------
        ValueError
            If the pattern is invalid or does not suit the method.
        """
        return PruningMethod(self.method, self.pattern)

    @property
    def prune_end_step(self) -> int:
        """The step whose mask has the final sparsity: at least 1, at most ``steps - 1``."""
        return min(max(1, round(self.prune_end * self.steps)), self.steps - 1)

    def learning_rate_at(self, step: int) -> float:
        """The learning rate of optimiser step `step` (0-based)."""
        warmup = round(self.warmup * self.steps)
        if step < warmup:
            return self.learning_rate * (step + 1) / (warmup + 1)
        end = self.prune_end_step
        if step <= end:
            return self.learning_rate
        return self.learning_rate * (self.steps - step) / (self.steps - end)


@dataclass
class Fidelity:
    """How close a model is to the dense teacher."""

    #: Mean cosine similarity between its and the teacher's sentence embeddings of the evaluation
    #: texts (the task's test split when there is a task).
    embedding_cosine: float
    #: The linear-probe task figures against the teacher (the quick check), when a task was
    #: given and the teacher is an embedding model.
    task: TaskReport | None = None
    #: With a task model as teacher: the model's accuracy on the test split against the
    #: teacher's on the same items (95 % intervals, paired drop, McNemar).
    accuracy: PairedComparison | None = None
    #: Exactly-zero int8 activations entering each ``output.dense``, on the same texts.
    activations: ActivationSparsityReport | None = None


@dataclass
class PruneReport:
    """What :func:`distill_prune` did."""

    #: The output directory.
    output: str
    #: The teacher's model spec.
    model: str
    #: The recipe the run followed.
    recipe: DistillRecipe
    #: False when the time budget stopped the run: the directory then holds a checkpoint to resume
    #: from, and `layers`, `before` and `after` are empty or None.
    finished: bool
    #: Optimiser steps done so far (``recipe.steps`` when finished).
    step: int
    #: The step the checkpoint this invocation resumed from was taken at.
    resumed_from: int | None
    #: Zero weights over all pruned linears, as a fraction (None unless finished).
    sparsity: float | None
    #: Per pruned linear, in module order.
    layers: list[LayerPruneReport]
    #: One-shot pruning of the teacher to the final sparsity with the recipe's method, no training:
    #: what distillation starts from.
    before: Fidelity | None
    #: The distilled model.
    after: Fidelity | None
    #: Texts the embedding cosine averages over.
    eval_texts: int
    #: Texts of the distillation corpus.
    corpus_texts: int
    #: Corpus texts longer than ``recipe.max_tokens`` tokens, which training cuts.
    truncated_texts: int
    #: Mean loss of the last 10 steps (or fewer) this invocation ran.
    final_loss: float | None
    #: Mean wall time of the steps this invocation ran.
    step_s: float | None
    #: Wall time of this invocation.
    wall_s: float

    @property
    def passed(self) -> bool:
        """Always: a run the time budget stopped is not a failure, it resumes."""
        return True

    def as_json(self) -> dict:
        """The report as JSON-ready built-in types."""
        return asdict(self)

    def sections(self) -> list[tuple]:
        """The run as ``(title, header, rows)`` tables: a finished run's pruned linears and
        fidelity, then the summary."""
        recipe = self.recipe
        one_shot = self.finished and self.after is self.before
        schedule = ("in one shot" if one_shot else
                    f"over {recipe.steps} steps (final sparsity from step {recipe.prune_end_step})")
        head, tail = run_rows(self, recipe.steps)
        summary = [["model", self.model],
                   ["recipe", f"{recipe.method} to {recipe.sparsity:.1%} {schedule}, activation "
                              f"{recipe.activation}"],
                   ["corpus", f"{self.corpus_texts} texts ({self.truncated_texts} cut at "
                              f"{recipe.max_tokens} tokens)"], *head]
        sections = []
        if self.finished:
            sections = [self._layer_section(), self._fidelity_section(one_shot)]
            task = ", sparsemac-task.json: a task model" if self.after.accuracy is not None else ""
            summary += [
                ["sparsity", f"{self.sparsity:.4f} over all pruned linears"],
                ["activation zeros", f"{self.after.activations.sparsity:.4f} of the int8 "
                                     "activations entering output.dense"],
                ["wrote", f"{self.output} (model.safetensors, config.json, tokenizer, "
                          f"distill_report.json{task})"]]
        summary += [*tail, ["wall time", f"{self.wall_s:.1f} s"]]
        return sections + [("Summary", None, summary)]

    def _layer_section(self) -> tuple:
        # The activations are counted in the encoder, whose names a classifier prefixes.
        zeros = {layer.name: layer.sparsity for layer in self.after.activations.layers}
        rows = []
        for layer in self.layers:
            out_features, in_features = layer.shape
            weights = 1 - layer.nnz / (out_features * in_features)
            activation = zeros.get(_encoder_name(layer.name))
            ideal = 1 / ((1 - weights) * (1 - (activation or 0.0)))
            rows.append([layer.name, f"{out_features}x{in_features}", f"{weights:.4f}",
                         f"{layer.nnz:,}",
                         "-" if activation is None else f"{activation:.4f}", f"{ideal:.2f}x"])
        return (f"Pruned linears (act. zeros: exactly-zero int8 activations on the "
                f"{self.eval_texts} held-out texts; ideal speedup 1/((1-s_w)(1-s_a)))",
                ["layer", "shape", "sparsity", "nonzeros", "act. zeros", "ideal"], rows)

    def _fidelity_section(self, one_shot: bool) -> tuple:
        """The model's fidelity before and after distillation (only once for a one-shot run):
        a task model's accuracy with intervals and paired drops, else the quick check's."""
        stages = (("one-shot", self.before),) + (() if one_shot else
                                                 (("distilled", self.after),))
        if self.after.accuracy is not None:
            paired = self.after.accuracy
            teacher = paired.baseline
            rows = [["teacher", f"{teacher.accuracy:.2%}", teacher.interval.points(), "", "",
                     "", "", ""]]
            for name, fidelity in stages:
                paired = fidelity.accuracy
                rows.append([name, f"{paired.candidate.accuracy:.2%}",
                             paired.candidate.interval.points(), f"{100 * paired.drop:+.2f}",
                             paired.drop_interval.points(), f"{paired.mcnemar_p:.3g}",
                             f"{fidelity.embedding_cosine:.4f}",
                             f"{fidelity.activations.sparsity:.4f}"])
            return (f"Task model accuracy on {paired.n} held-out test texts, 95 % intervals; "
                    f"drops in points, paired with the teacher (bootstrap seed {paired.seed}, "
                    f"{paired.resamples:,} resamples)",
                    ["model", "accuracy", "95 % interval", "drop", "drop 95 % interval",
                     "McNemar p", "embedding cosine", "activation zeros"], rows)
        return (f"Quick check on the task's {self.eval_texts} test texts, a linear probe "
                f"refitted on each model's embeddings (dense model: accuracy "
                f"{self.after.task.dense_accuracy:.2%})",
                ["model", "embedding cosine", "accuracy", "dense probe", "kNN agreement",
                 "activation zeros"],
                [[name, f"{fidelity.embedding_cosine:.4f}", f"{fidelity.task.accuracy:.2%}",
                  f"{fidelity.task.accuracy_dense_probe:.2%}",
                  f"{fidelity.task.knn_agreement:.3f}", f"{fidelity.activations.sparsity:.4f}"]
                 for name, fidelity in stages])


def distill_prune(model: str, texts: Sequence[str], output: str | os.PathLike,
                  recipe: DistillRecipe = DistillRecipe(), *,
                  eval_texts: Sequence[str] | None = None, task: TaskSplits | None = None,
                  calibration_texts: Sequence[str] | None = None, resume: bool = False,
                  checkpoint_every: int = 50, time_budget: float | None = None,
                  progress: bool = True, one_shot: bool = False,
                  init: str | os.PathLike | None = None) -> PruneReport:
    """Prune a BERT gradually while distilling it from its dense self; write the result.

    Parameters
    ----------
    model : str
        The teacher, as :func:`~sparsemac.sw.models.load_model` takes it; it needs a
        tokenizer. A task model (:func:`~sparsemac.sw.finetune.load_task_model`) is distilled
        with its classification head, the soft-logit loss added, and the result is a task
        model too.
    texts : sequence of str
        The distillation corpus, read in a seeded order, epoch after epoch.
    output : path
        Directory of the run: its checkpoint while it runs, the Hugging Face checkpoint and
        :data:`REPORT_FILE` when it is done. It must not exist, be empty, or (with `resume`)
        hold a checkpoint of the same model, corpus and recipe.
    recipe : DistillRecipe
    eval_texts : sequence of str, optional
        Without a task, the held-out texts of the embedding cosine; by default the corpus's
        first 64 texts.
    task : TaskSplits, optional
        A labelled task (by default a task teacher's own splits): with a task teacher the
        fidelity figures are its accuracy against the teacher's; otherwise those of
        :func:`~sparsemac.sw.task.evaluate_embeddings` (cosine over the test split, probe
        accuracies), the teacher's embeddings computed once. Keep its train and test splits
        out of `texts`.
    calibration_texts : sequence of str, optional
        What the calibrated mask methods feed the student at each pruning step; by default
        the task's calibration split. Keep them out of the evaluation texts.
    resume, checkpoint_every, time_budget, progress
        As :func:`~sparsemac.sw.finetune.finetune` takes them (the final evaluation here is the
        final scoring there).
    one_shot : bool
        Train nothing: write the teacher (or `init`) pruned in one shot to the final sparsity
        with the recipe's activation, and report what that costs (``before`` and ``after`` are its
        figures).
    init : path, optional
        A pruned checkpoint of the teacher's architecture (an earlier run's directory) to start
        the student from instead of the teacher: its zero weights stay zero, the recipe's
        schedule may prune more (sparsity 0: none). So weights first, then the activation.

    Returns
    -------
    PruneReport

    Raises
    ------
    ValueError
        If the corpus is empty, the model has no tokenizer, a calibrated method has no
        calibration texts, `output` holds something other
        than a checkpoint of this very run (another model, corpus or recipe: the message names
        what differs) or a finished run, or the time budget is shorter than one step (as
        measured on the first batch). Nothing is written then.
    FileNotFoundError
        As :func:`~sparsemac.sw.models.load_model`.
    """
    started = _now()
    texts = list(texts)
    if not texts:
        raise InputError("the distillation corpus is empty")
    if checkpoint_every < 1:
        raise InputError(f"checkpoint_every must be at least 1, not {checkpoint_every!r}")
    if time_budget is not None and not time_budget > 0:
        raise InputError(f"time budget must be positive, not {time_budget!r} s")
    output = Path(output)
    task_model = load_task_model(model) if is_task_model(model) else None
    if task_model is None:
        teacher = load_model(model)
    else:
        teacher = LoadedModel(name=task_model.name, model=task_model.model,
                              tokenizer=task_model.tokenizer, source=task_model.source)
        task = task_model.task.splits() if task is None else task
    if teacher.tokenizer is None:
        raise InputError(f"{teacher.name} has no tokenizer: distillation needs text")
    if calibration_texts is None and task is not None:
        calibration_texts = task.calibration.texts
    calibration = list(calibration_texts or [])
    readers = {f"mask method {recipe.method!r}": recipe.method != "magnitude",
               f"activation {recipe.activation}": parse_activation(recipe.activation).calibrated}
    for reader, reads in readers.items():
        if reads and not calibration:
            raise InputError(f"{reader} needs calibration texts (or a task)")
    calibrated = any(readers.values())
    # Runs from before the activation was a recipe field resume: none is not recorded.
    recorded = {key: value for key, value in asdict(recipe).items()
                if (key, value) != ("activation", "none")}
    identity = {"model": model, "teacher_sha256": state_sha256(teacher.model),
                "corpus_sha256": texts_sha256(texts), "corpus_texts": len(texts),
                # Magnitude masks read no calibration text: another one is the same run.
                "calibration_sha256": texts_sha256(calibration) if calibrated else None,
                "recipe": recorded}
    start = None
    if init is not None:  # of the teacher's kind: a task model starts from a task model
        if (task_model is not None) != is_task_model(str(init)):
            raise InputError(f"--init {init}: the teacher is {'a' if task_model else 'no'} task "
                             "model, so the start must be one of the same kind (an earlier "
                             "prune --output of it)")
        start = (load_model(str(init)) if task_model is None
                 else load_task_model(str(init))).model
    if start is not None:
        identity["init_sha256"] = state_sha256(start)
    checkpoint = check_output(output, identity, resume, report_file=REPORT_FILE,
                              command="sparsemac prune")
    run = _Run(teacher, texts, recipe, calibration, start)
    deadline = None if time_budget is None else started + time_budget
    step_estimate = run.estimate_step_s()
    if time_budget is not None and _now() + step_estimate > deadline:
        raise InputError(f"time budget of {time_budget:g} s is too short for one step: a step "
                         f"takes about {step_estimate:.1f} s here (estimated as "
                         f"{_STEP_PER_TEACHER_FORWARD:g} x the teacher's forward pass on the "
                         f"first batch of {recipe.batch_size} texts), and the evaluations "
                         "before and after the steps need time of their own")
    resumed_from = run.restore(checkpoint, identity) if checkpoint is not None else None
    evaluate = _Evaluator(teacher, list(eval_texts or texts[:64]), task, task_model is not None)
    evaluated = _now()
    pruned = run.one_shot()
    if progress:  # the two evaluations take as long as many steps: say so before the first
        print(f"scoring the one-shot model on {len(evaluate.texts)} test texts (and the "
              "distilled one again at the end)", file=sys.stderr, flush=True)
    before = evaluate(pruned)
    # The final evaluation scores one model too; the teacher's embeddings are already made.
    reserve = _now() - evaluated
    loss_window, step_times = [], []
    if not one_shot:
        loss_window, step_times = run.train(output, identity, checkpoint_every, deadline,
                                            reserve, step_estimate, progress)
    finished = one_shot or run.step == recipe.steps
    final = pruned if one_shot else run.student
    report = PruneReport(
        output=str(output), model=model, recipe=recipe, finished=finished, step=run.step,
        resumed_from=resumed_from, sparsity=None, layers=[], before=None, after=None,
        eval_texts=len(evaluate.texts), corpus_texts=len(texts),
        truncated_texts=run.truncated_texts(),
        final_loss=float(np.mean(loss_window)) if loss_window else None,
        step_s=float(np.mean(step_times)) if step_times else None, wall_s=0.0)
    if finished:
        report.layers = run.layer_reports(final)
        total = sum(layer.shape[0] * layer.shape[1] for layer in report.layers)
        report.sparsity = 1.0 - sum(layer.nnz for layer in report.layers) / total
        report.before = before
        report.after = before if one_shot else evaluate(final)
    report.wall_s = _now() - started
    if finished:
        _write_model(output, final, teacher, report,
                     None if task_model is None else task_model.task)
    return report


class _Run:
    """The student, teacher, optimiser and pruner of one run, and its step counter."""

    def __init__(self, teacher: LoadedModel, texts: list[str], recipe: DistillRecipe,
                 calibration: list[str], start=None):
        self.teacher = teacher
        self.texts = texts
        self.recipe = recipe
        self.calibration = calibration
        # What the student starts from: the teacher, or a pruned model whose zeros stay.
        self.start = teacher.model if start is None else start
        self.student = self.with_activation(copy.deepcopy(self.start))
        self.kept = None if start is None else {
            name: linear.weight.detach() != 0 for name, linear in matching_linears(self.student)}
        encoder = _encoder(self.student)
        for module in (encoder.embeddings, encoder.pooler):
            if module is not None:
                module.requires_grad_(False)
        self.student.train()
        self.trained = [p for p in self.student.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trained, lr=recipe.learning_rate,
                                           weight_decay=0.0)
        self.pruner = GradualPruner(self.student, recipe.sparsity, 0, recipe.prune_end_step,
                                    frequency=recipe.prune_every)
        self.step = 0
        torch.manual_seed(recipe.seed)

    def batch(self, step: int):
        """Tokenised texts of optimiser step `step`: a pure function of seed and step."""
        indices = batch_indices(self.recipe.seed, len(self.texts), step, self.recipe.batch_size)
        return self.teacher.tokenizer([self.texts[i] for i in indices], padding=True,
                                      truncation=True, max_length=self.recipe.max_tokens,
                                      return_tensors="pt")

    def truncated_texts(self) -> int:
        lengths = self.teacher.tokenizer(self.texts)["input_ids"]
        return sum(len(ids) > self.recipe.max_tokens for ids in lengths)

    def estimate_step_s(self) -> float:
        """Seconds one step takes, from a timed teacher forward pass on the first batch."""
        inputs = self.batch(0)
        begin = _now()
        with torch.no_grad():
            self.teacher.model(**inputs)
        return _STEP_PER_TEACHER_FORWARD * (_now() - begin)

    def with_activation(self, model):
        """`model`, its feed-forward activation the recipe's (``relu@S`` calibrated on the
        calibration text, in the model as given)."""
        sparsify_activations(model, self.recipe.activation, tokenizer=self.teacher.tokenizer,
                             calibration=self.calibration)
        return model

    def one_shot(self):
        """A copy of the start (the teacher, or `init`) pruned in one shot to the final
        sparsity, with the recipe's activation."""
        pruned = self.with_activation(copy.deepcopy(self.start))
        linears = matching_linears(pruned)
        masks = self.masks(pruned, self.recipe.sparsity, self.recipe.pattern)
        with torch.no_grad():
            for name, linear in linears:
                linear.weight.mul_(masks[name])
        return pruned

    def masks(self, model, sparsity: float, pattern: str | None) -> dict[str, torch.Tensor]:
        """Keep-masks of `model`'s pruned linears by the recipe's method, one shot.

        The calibrated methods also update the kept weights (SparseGPT) and apply the masks.
        """
        method = self.recipe.method
        if method == "magnitude":
            return {name: prune_mask(linear.weight, None if pattern else sparsity,
                                     pattern or "magnitude")
                    for name, linear in matching_linears(model)}
        was_training = model.training
        model.eval()  # no dropout in the calibration activations
        try:
            return prune_calibrated(model, self.teacher.tokenizer, method, sparsity,
                                    self.calibration, pattern=pattern,
                                    lanes=self.recipe.lanes).masks
        finally:
            model.train(was_training)

    def train(self, output, identity, checkpoint_every, deadline, reserve, step_estimate,
              progress):
        """Run steps until the recipe is done or the deadline; checkpoint on the way."""
        return train_steps(self, self.recipe.steps, "distill", output, identity,
                           checkpoint_every, deadline, reserve, step_estimate, progress, _now)

    def train_step(self) -> dict[str, float]:
        """One optimiser step at `step`: its loss and the sparsity after it."""
        loss = _train_step(self, self.step)
        return {"loss": loss, "sparsity": self.pruner.sparsity or 0.0}

    def save(self, output: Path, identity: dict) -> None:
        """Write the checkpoint (:func:`~sparsemac.sw.resumable.write_checkpoint`)."""
        tensors = {f"student.{key}": value for key, value in self.student.state_dict().items()}
        tensors.update({f"mask.{name}": mask for name, mask in self.pruner.masks.items()})
        optimizer, param_groups = optimizer_tensors(self.optimizer)
        tensors.update(optimizer)
        tensors["rng.torch"] = torch.get_rng_state()
        write_checkpoint(output, tensors, {
            "step": self.step, "identity": identity, "pruner_sparsity": self.pruner.sparsity,
            "threads": torch.get_num_threads(), "param_groups": param_groups})

    def restore(self, checkpoint: tuple[dict, dict], identity: dict) -> int:
        """Load a checkpoint checked by :func:`~sparsemac.sw.resumable.check_output`; returns
        its step."""
        state, tensors = checkpoint
        student = {key[len("student."):]: value for key, value in tensors.items()
                   if key.startswith("student.")}
        self.student.load_state_dict(student)
        self.pruner.masks = {key[len("mask."):]: value for key, value in tensors.items()
                             if key.startswith("mask.")}
        self.pruner.sparsity = state["pruner_sparsity"]
        restore_optimizer(self.optimizer, tensors, state["param_groups"])
        torch.set_rng_state(tensors["rng.torch"])
        note_threads(state["threads"])
        self.step = state["step"]
        return self.step

    def layer_reports(self, model) -> list[LayerPruneReport]:
        # pruning's own report of a pruned layer, as prune_model returns it.
        return [layer_prune_report(name, linear.weight.detach(), self.recipe.sparsity)
                for name, linear in matching_linears(model)]


def _train_step(run: _Run, step: int) -> float:
    """One optimiser step of distillation at `step`; returns its loss."""
    recipe = run.recipe
    _prune_step(run, step)
    inputs = run.batch(step)
    with torch.no_grad():
        target = run.teacher.model(**inputs, output_hidden_states=True)
    result = run.student(**inputs, output_hidden_states=True)
    mask = inputs["attention_mask"].unsqueeze(-1).to(torch.float32)
    # The last hidden state, of an encoder or of a classifier's encoder.
    student_pooled = _mean_pool(result.hidden_states[-1], mask)
    teacher_pooled = _mean_pool(target.hidden_states[-1], mask)
    if recipe.embedding_loss == "cosine":
        embedding = 1.0 - F.cosine_similarity(student_pooled, teacher_pooled).mean()
    else:
        embedding = F.mse_loss(student_pooled, teacher_pooled)
    # Index 0 is the embedding layer's output, frozen and equal in both: it adds nothing.
    pairs = list(zip(result.hidden_states[1:], target.hidden_states[1:]))
    tokens = mask.sum() * result.hidden_states[-1].shape[-1]
    hidden = sum((((s - t) * mask) ** 2).sum() / tokens for s, t in pairs) / len(pairs)
    loss = recipe.embedding_weight * embedding + recipe.hidden_weight * hidden
    if getattr(target, "logits", None) is not None:  # a task teacher: its soft labels too
        temperature = recipe.temperature
        soft = F.kl_div(F.log_softmax(result.logits / temperature, dim=-1),
                        F.softmax(target.logits / temperature, dim=-1), reduction="batchmean")
        loss = loss + recipe.logit_weight * temperature ** 2 * soft
    for group in run.optimizer.param_groups:
        group["lr"] = recipe.learning_rate_at(step)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.trained, 1.0)
    run.optimizer.step()
    run.pruner.apply_masks()
    return float(loss.detach())


def _prune_step(run: _Run, step: int) -> None:
    """Update the masks at a pruning step of the schedule, by the recipe's method."""
    pruner, recipe = run.pruner, run.recipe
    if not pruner.is_pruning_step(step):
        return
    sparsity = cubic_sparsity(step, 0.0, recipe.sparsity, 0, pruner.end_step,
                              recipe.prune_every)
    last = step == pruner.end_step
    n_m = recipe.mask_method.fixes_sparsity
    if sparsity == 0.0 or (recipe.method == "magnitude" and not (n_m and last)):
        pruner.step(step)  # magnitude, pruned weights ranked below every kept one
    else:
        # Before the last step an N:M pattern cannot hold the scheduled sparsity: unstructured.
        pattern = None if n_m and not last else recipe.pattern
        pruner.masks = run.masks(run.student, sparsity, pattern)
        pruner.sparsity = sparsity
    if run.kept is not None:  # a pruned start keeps its zeros
        pruner.masks = {name: mask & run.kept[name] for name, mask in pruner.masks.items()}
    pruner.apply_masks()


def _mean_pool(hidden, mask):
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class _Evaluator:
    """Fidelity of a model against the teacher; the teacher's figures are computed once."""

    def __init__(self, teacher: LoadedModel, texts: list[str], task: TaskSplits | None,
                 classifies: bool):
        self.teacher = teacher
        self.task = task
        self.classifies = classifies
        self.texts = task.test.texts if task is not None else texts
        if classifies:
            self.dense = self._embedder(teacher.model)(self.texts)
            self.baseline = predict(teacher.model, teacher.tokenizer, self.texts)
        else:
            self.dense = (embed_splits(self._embedder(teacher.model), task) if task is not None
                          else self._embedder(teacher.model)(texts))

    def __call__(self, model) -> Fidelity:
        was_training = model.training
        model.eval()
        try:
            activations = measure_activation_sparsity(_encoder(model), self.teacher.tokenizer,
                                                      self.texts)
            if self.classifies:
                embeddings = self._embedder(model)(self.texts)
                accuracy = score_predictions(
                    self.task.test.labels, predict(model, self.teacher.tokenizer, self.texts),
                    self.baseline).paired
                return Fidelity(float((embeddings * self.dense).sum(dim=1).mean()),
                                accuracy=accuracy, activations=activations)
            if self.task is None:
                embeddings = self._embedder(model)(self.texts)
                return Fidelity(float((embeddings * self.dense).sum(dim=1).mean()),
                                activations=activations)
            task = evaluate_embeddings(self.dense, self._embedder(model), self.task)
            return Fidelity(task.cosine, task, activations=activations)
        finally:
            model.train(was_training)

    def _embedder(self, model):
        return model_embedder(_encoder(model), self.teacher.tokenizer)


#: The attribute of a classifier that holds its encoder (a BertModel).
_ENCODER = "bert"


def _encoder(model):
    """The BertModel of an encoder or of a classifier."""
    return getattr(model, _ENCODER, model)


def _encoder_name(name: str) -> str:
    """A module's name in :func:`_encoder`'s model: a classifier's encoder prefix dropped."""
    return name.removeprefix(f"{_ENCODER}.")


def _write_model(output: Path, student, teacher: LoadedModel, report: PruneReport,
                 task: TaskInfo | None) -> None:
    """The Hugging Face directory (with a task teacher's :data:`~sparsemac.sw.finetune.TASK_FILE`,
    so that the student is a task model too, and the student's feed-forward activation in its
    config), then the report (which marks the run finished), then the checkpoint goes."""
    record_activation(student)
    files = {} if task is None else {TASK_FILE: task.json_text()}
    files[REPORT_FILE] = json.dumps(report.as_json(), indent=2) + "\n"
    write_model_directory(output, student, teacher.source, teacher.tokenizer, files,
                          REPORT_FILE)
