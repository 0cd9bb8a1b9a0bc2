"""Recovering a pruned BERT by knowledge distillation from its dense self.

:func:`distill_prune` prunes the encoder linears of a student copy of a BERT gradually, on the
cubic schedule of Zhu & Gupta (:class:`~sparsemac.sw.pruning.GradualPruner`), while it learns
to reproduce the dense model (the teacher) on a text corpus: the loss is the distance between
the two models' sentence embeddings (mean-pooled last hidden states) plus the mean squared error
of every encoder layer's hidden states, as in SparseBERT and TinyBERT. The word, position and
token-type embeddings stay frozen (they are never pruned and the teacher's are right).

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
import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from ..hw.config import DEFAULT_CONFIG
from .activation_sparsity import parse_activation
from .calibration import K_ALIGNED, check_pattern, prune_calibrated
from .ffn_activation import (ActivationSparsityReport, measure_activation_sparsity,
                             record_activation, sparsify_activations)
from .models import LoadedModel, load_model
from .pruning import (GradualPruner, LayerPruneReport, cubic_sparsity, layer_prune_report,
                      matching_linears, prune_mask)
from .task import TaskReport, TaskSplits, embed_splits, evaluate_embeddings, model_embedder

__all__ = [
    "CHECKPOINT_FILE", "EMBEDDING_LOSSES", "MASK_METHODS", "REPORT_FILE", "DistillRecipe",
    "Fidelity", "PruneReport", "distill_prune",
]

#: The resumable state of an unfinished run, inside its output directory.
CHECKPOINT_FILE = "checkpoint.safetensors"
#: The JSON report of a finished run, beside the Hugging Face files; written last.
REPORT_FILE = "distill_report.json"
#: The mask methods of a recipe.
MASK_METHODS = ("magnitude", "wanda", "sparsegpt")
#: How the student's sentence embedding is compared with the teacher's.
EMBEDDING_LOSSES = ("cosine", "mse")

_WEIGHTS_FILE = "model.safetensors"
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json",
                    "special_tokens_map.json")
_STATE_KEY = "sparsemac_state"
_STATE_FORMAT = 1
# Student forward and backward plus AdamW cost about 3 teacher forward passes: measured 4.1 s a
# step against 0.95 s for the teacher's forward on MiniLM, 32 x 48 tokens, one thread.
_STEP_PER_TEACHER_FORWARD = 4.0
# The clock of time budgets and step times (a test replaces it to make them deterministic).
_now = time.perf_counter
# A non-TTY progress line is printed at least this often, and at most every step.
_PLAIN_PROGRESS_S = 60.0


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
    #: Weights of the embedding loss and of the per-layer hidden-state MSE in the total.
    embedding_weight: float = 1.0
    hidden_weight: float = 1.0
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
            raise ValueError(f"sparsity must be between 0 and 1 (exclusive; 0 with a sparse "
                             f"activation), not {self.sparsity!r}")
        if self.method not in MASK_METHODS:
            raise ValueError(f"unknown mask method {self.method!r}; valid: "
                             f"{', '.join(map(repr, MASK_METHODS))}")
        if self.pattern == K_ALIGNED and self.method == "magnitude":
            raise ValueError(f"the {K_ALIGNED!r} pattern needs a calibrated method "
                             "(wanda or sparsegpt), not 'magnitude'")
        check_pattern(self.sparsity, self.pattern, self.lanes)
        for name in ("steps", "prune_every", "batch_size", "max_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if self.steps < 2:
            raise ValueError(f"steps must be at least 2 (prune, then train at the final "
                             f"sparsity), not {self.steps!r}")
        if self.max_tokens < 2:
            raise ValueError(f"max_tokens must be at least 2 ([CLS] [SEP]), not "
                             f"{self.max_tokens!r}")
        for name in ("prune_end", "warmup"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a fraction of the steps in [0, 1], not "
                                 f"{getattr(self, name)!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, not {self.learning_rate!r}")
        if self.embedding_loss not in EMBEDDING_LOSSES:
            raise ValueError(f"embedding_loss must be one of {EMBEDDING_LOSSES}, not "
                             f"{self.embedding_loss!r}")
        if min(self.embedding_weight, self.hidden_weight) < 0:
            raise ValueError("loss weights must not be negative")

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
    #: The linear-probe task figures against the teacher, when a task was given.
    task: TaskReport | None = None
    #: Exactly-zero int8 activations entering each ``output.dense``, on the same texts.
    activations: ActivationSparsityReport | None = None


@dataclass
class PruneReport:
    """What :func:`distill_prune` did."""

    #: The output directory.
    output: str
    #: The teacher's model spec.
    model: str
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

    def as_dict(self) -> dict:
        """The report as JSON-ready built-in types."""
        return asdict(self)


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
        tokenizer.
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
        A labelled task: the fidelity figures are then those of
        :func:`~sparsemac.sw.task.evaluate_embeddings` (cosine over the test split, probe
        accuracies), the teacher's embeddings computed once. Keep its train and test splits
        out of `texts`.
    calibration_texts : sequence of str, optional
        What the calibrated mask methods feed the student at each pruning step; by default
        the task's calibration split. Keep them out of the evaluation texts.
    resume : bool
        Continue from the checkpoint in `output`; without one, start from the beginning.
    checkpoint_every : int
        Steps between checkpoints.
    time_budget : float, optional
        Seconds this invocation may run. When the next step and the final evaluation would no
        longer fit, it writes a checkpoint and returns an unfinished report.
    progress : bool
        Show progress on stderr: a bar on a terminal, else a line every minute.
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
        raise ValueError("the distillation corpus is empty")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be at least 1, not {checkpoint_every!r}")
    if time_budget is not None and not time_budget > 0:
        raise ValueError(f"time budget must be positive, not {time_budget!r} s")
    output = Path(output)
    teacher = load_model(model)
    if teacher.tokenizer is None:
        raise ValueError(f"{teacher.name} has no tokenizer: distillation needs text")
    if calibration_texts is None and task is not None:
        calibration_texts = task.calibration.texts
    calibration = list(calibration_texts or [])
    readers = {f"mask method {recipe.method!r}": recipe.method != "magnitude",
               f"activation {recipe.activation}": parse_activation(recipe.activation).calibrated}
    for reader, reads in readers.items():
        if reads and not calibration:
            raise ValueError(f"{reader} needs calibration texts (or a task)")
    calibrated = any(readers.values())
    # Runs from before the activation was a recipe field resume: none is not recorded.
    recorded = {key: value for key, value in asdict(recipe).items()
                if (key, value) != ("activation", "none")}
    identity = {"model": model, "teacher_sha256": _state_sha256(teacher.model),
                "corpus_sha256": _texts_sha256(texts), "corpus_texts": len(texts),
                # Magnitude masks read no calibration text: another one is the same run.
                "calibration_sha256": _texts_sha256(calibration) if calibrated else None,
                "recipe": recorded}
    start = None if init is None else load_model(str(init)).model
    if start is not None:
        identity["init_sha256"] = _state_sha256(start)
    checkpoint = _check_output(output, identity, resume)
    run = _Run(teacher, texts, recipe, calibration, start)
    deadline = None if time_budget is None else started + time_budget
    step_estimate = run.estimate_step_s()
    if time_budget is not None and _now() + step_estimate > deadline:
        raise ValueError(f"time budget of {time_budget:g} s is too short for one step: a step "
                         f"takes about {step_estimate:.1f} s here (estimated as "
                         f"{_STEP_PER_TEACHER_FORWARD:g} x the teacher's forward pass on the "
                         f"first batch of {recipe.batch_size} texts)")
    resumed_from = run.restore(checkpoint, identity) if checkpoint is not None else None
    evaluate = _Evaluator(teacher, list(eval_texts or texts[:64]), task)
    evaluated = _now()
    pruned = run.one_shot()
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
        _write_model(output, final, teacher, report)
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
        for module in (self.student.embeddings, self.student.pooler):
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
        size = self.recipe.batch_size
        positions = np.arange(step * size, (step + 1) * size)
        epochs, offsets = np.divmod(positions, len(self.texts))
        indices = [_epoch_order(self.recipe.seed, len(self.texts), int(epoch))[offset]
                   for epoch, offset in zip(epochs, offsets)]
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
        losses, step_times = [], []
        bar = _Progress(self.recipe.steps, self.step) if progress else None
        try:
            while self.step < self.recipe.steps:
                expected = max(step_estimate, np.mean(step_times[-5:]) if step_times else 0.0)
                if deadline is not None and _now() + expected + reserve > deadline:
                    self.save(output, identity)
                    break
                begin = _now()
                losses.append(_train_step(self, self.step))
                self.step += 1
                step_times.append(_now() - begin)
                if bar is not None:
                    bar.update(self.step, losses[-1], self.pruner.sparsity or 0.0)
                if self.step % checkpoint_every == 0 and self.step < self.recipe.steps:
                    self.save(output, identity)
        finally:
            if bar is not None:
                bar.close()
        return losses[-10:], step_times

    def save(self, output: Path, identity: dict) -> None:
        """Write the checkpoint atomically: a crash mid-write keeps the previous one."""
        tensors = {f"student.{key}": value.contiguous()
                   for key, value in self.student.state_dict().items()}
        tensors.update({f"mask.{name}": mask.contiguous()
                        for name, mask in self.pruner.masks.items()})
        optimizer = self.optimizer.state_dict()
        for index, state in optimizer["state"].items():
            tensors.update({f"optimizer.{index}.{key}": torch.as_tensor(value).contiguous()
                            for key, value in state.items()})
        tensors["rng.torch"] = torch.get_rng_state()
        state = {"format": _STATE_FORMAT, "step": self.step, "identity": identity,
                 "pruner_sparsity": self.pruner.sparsity, "threads": torch.get_num_threads(),
                 "param_groups": optimizer["param_groups"]}
        output.mkdir(parents=True, exist_ok=True)
        partial = output / (CHECKPOINT_FILE + ".partial")
        save_file(tensors, partial, metadata={_STATE_KEY: json.dumps(state)})
        os.replace(partial, output / CHECKPOINT_FILE)

    def restore(self, checkpoint: tuple[dict, dict], identity: dict) -> int:
        """Load a checkpoint checked by :func:`_check_output`; returns its step."""
        state, tensors = checkpoint
        student = {key[len("student."):]: value for key, value in tensors.items()
                   if key.startswith("student.")}
        self.student.load_state_dict(student)
        self.pruner.masks = {key[len("mask."):]: value for key, value in tensors.items()
                             if key.startswith("mask.")}
        self.pruner.sparsity = state["pruner_sparsity"]
        optimizer_state: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                _, index, name = key.split(".", 2)
                optimizer_state.setdefault(int(index), {})[name] = value
        groups = [dict(group, betas=tuple(group["betas"])) for group in state["param_groups"]]
        self.optimizer.load_state_dict({"state": optimizer_state, "param_groups": groups})
        torch.set_rng_state(tensors["rng.torch"])
        if state["threads"] != torch.get_num_threads():
            # Float sums split differently over another thread count: still a valid run.
            print(f"note: resuming on {torch.get_num_threads()} threads, the checkpoint was "
                  f"written on {state['threads']}: the weights will not equal an uninterrupted "
                  "run's bit for bit", file=sys.stderr)
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
    student_pooled = _mean_pool(result.last_hidden_state, mask)
    teacher_pooled = _mean_pool(target.last_hidden_state, mask)
    if recipe.embedding_loss == "cosine":
        embedding = 1.0 - F.cosine_similarity(student_pooled, teacher_pooled).mean()
    else:
        embedding = F.mse_loss(student_pooled, teacher_pooled)
    # Index 0 is the embedding layer's output, frozen and equal in both: it adds nothing.
    pairs = list(zip(result.hidden_states[1:], target.hidden_states[1:]))
    tokens = mask.sum() * result.last_hidden_state.shape[-1]
    hidden = sum((((s - t) * mask) ** 2).sum() / tokens for s, t in pairs) / len(pairs)
    loss = recipe.embedding_weight * embedding + recipe.hidden_weight * hidden
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
    n_m = recipe.pattern not in (None, K_ALIGNED)
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


@lru_cache(maxsize=4)
def _epoch_order(seed: int, size: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(size)


class _Evaluator:
    """Fidelity of a model against the teacher; the teacher's embeddings are computed once."""

    def __init__(self, teacher: LoadedModel, texts: list[str], task: TaskSplits | None):
        self.teacher = teacher
        self.task = task
        self.texts = task.test.texts if task is not None else texts
        self.dense = (embed_splits(self._embedder(teacher.model), task) if task is not None
                      else self._embedder(teacher.model)(texts))

    def __call__(self, model) -> Fidelity:
        was_training = model.training
        model.eval()
        try:
            activations = measure_activation_sparsity(model, self.teacher.tokenizer, self.texts)
            if self.task is None:
                embeddings = self._embedder(model)(self.texts)
                return Fidelity(float((embeddings * self.dense).sum(dim=1).mean()),
                                activations=activations)
            task = evaluate_embeddings(self.dense, self._embedder(model), self.task)
            return Fidelity(task.cosine, task, activations)
        finally:
            model.train(was_training)

    def _embedder(self, model):
        return model_embedder(model, self.teacher.tokenizer)


def _state_sha256(model) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _texts_sha256(texts: list[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def _check_output(output: Path, identity: dict, resume: bool):
    """Decide what `output` allows before anything is written: the checkpoint to resume from
    as ``(state, tensors)``, or None to start afresh."""
    if output.exists() and not output.is_dir():
        raise ValueError(f"output {output} is a file, not a directory")
    if not output.exists() or not any(output.iterdir()):
        return None
    if (output / REPORT_FILE).exists():
        raise ValueError(f"output {output} already holds a finished run ({REPORT_FILE}); "
                         "choose another directory")
    path = output / CHECKPOINT_FILE
    if not path.is_file():
        raise ValueError(f"output {output} exists and is not a sparsemac prune run (no "
                         f"{CHECKPOINT_FILE}); choose another directory")
    if not resume:
        raise ValueError(f"output {output} holds an unfinished run; pass --resume to continue "
                         "it, or choose another directory")
    state, tensors = _read_checkpoint(path)
    differences = _differences(state.get("identity", {}), identity)
    if differences:
        raise ValueError(f"cannot resume {path}: it is a run of another model, corpus or "
                         f"recipe ({'; '.join(differences)})")
    return state, tensors


def _read_checkpoint(path: Path) -> tuple[dict, dict]:
    try:
        with safe_open(path, framework="pt") as file:
            metadata = file.metadata() or {}
            tensors = {key: file.get_tensor(key) for key in file.keys()}
    except Exception as error:  # safetensors raises its own error types for a bad header
        raise ValueError(f"{path} is not a readable safetensors checkpoint: {error}") from error
    if _STATE_KEY not in metadata:
        raise ValueError(f"{path} has no {_STATE_KEY} metadata: not a sparsemac prune checkpoint")
    state = json.loads(metadata[_STATE_KEY])
    if state.get("format") != _STATE_FORMAT:
        raise ValueError(f"{path} has checkpoint format {state.get('format')!r}, expected "
                         f"{_STATE_FORMAT}")
    return state, tensors


def _differences(saved: dict, wanted: dict, prefix: str = "") -> list[str]:
    """``key: saved there, wanted here`` for every leaf that differs."""
    differences = []
    for key in sorted(set(saved) | set(wanted)):
        there, here = saved.get(key), wanted.get(key)
        if isinstance(there, dict) and isinstance(here, dict):
            differences += _differences(there, here, f"{prefix}{key}.")
        elif there != here:
            differences.append(f"{prefix}{key} {there!r} in the checkpoint, {here!r} now")
    return differences


def _write_model(output: Path, student, teacher: LoadedModel, report: PruneReport) -> None:
    """The Hugging Face directory, then the report (which marks the run finished), then the
    checkpoint goes."""
    output.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().contiguous() for key, value in student.state_dict().items()}
    save_file(state, output / _WEIGHTS_FILE, metadata={"format": "pt"})
    record_activation(student)
    student.config.to_json_file(output / "config.json")
    source = Path(teacher.source)
    files = [source / name for name in _TOKENIZER_FILES if (source / name).is_file()]
    if files:
        for file in files:
            shutil.copyfile(file, output / file.name)
    else:  # a model without a directory of its own (bert-base): its tokenizer's own files
        teacher.tokenizer.save_pretrained(str(output))
    partial = output / (REPORT_FILE + ".partial")
    partial.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    os.replace(partial, output / REPORT_FILE)
    (output / CHECKPOINT_FILE).unlink(missing_ok=True)


class _Progress:
    """A tqdm bar on a terminal; otherwise a plain line a minute (and at the end)."""

    def __init__(self, total: int, initial: int):
        self.total = total
        self.initial = initial
        self.started = _now()
        self.last_line = self.started
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="distill", unit="step")

    def update(self, step: int, loss: float, sparsity: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", sparsity=f"{sparsity:.3f}")
            return
        now = _now()
        if now - self.last_line < _PLAIN_PROGRESS_S and step < self.total:
            return
        self.last_line = now
        elapsed = now - self.started
        left = elapsed / (step - self.initial) * (self.total - step)
        print(f"step {step}/{self.total}  loss {loss:.4f}  sparsity {sparsity:.3f}  "
              f"elapsed {_clock(elapsed)}  left {_clock(left)}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(math.ceil(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"
