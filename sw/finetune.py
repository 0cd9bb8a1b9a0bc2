"""Task models: a BERT fine-tuned with a classification head on labelled texts, and how to load,
run and score one.

:func:`finetune` trains a ``BertForSequenceClassification`` (the encoder of an embedding model
such as MiniLM, its pooler and a new linear head over the [CLS] token) with cross-entropy on the
train split of a labelled task (:func:`~sparsemac.sw.task.task_splits` with
:data:`~sparsemac.sw.task.TASK_SPLIT_SIZES`), and scores it on the test split. The run is
resumable as ``sparsemac prune`` is (:mod:`sparsemac.sw.resumable`): batches and the learning
rate are pure functions of (seed, step), so a run resumed from a checkpoint ends with the same
weights, bit for bit, as one never interrupted, on the same thread count.

A finished run leaves a Hugging Face directory: ``model.safetensors``, ``config.json``, the
tokenizer files, :data:`TASK_FILE` (what the model classifies and which splits it was trained
and tested on) and :data:`REPORT_FILE`. :func:`load_task_model` loads it; every command takes it
as ``--model DIR``. Its 36 encoder linears are what :func:`~sparsemac.sw.model_offload.offload`
puts on the array; the pooler (hidden x hidden) and the head (labels x hidden) stay on the host
in float, 0.7 % of MiniLM's multiply-accumulates a token.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import BertForSequenceClassification, PreTrainedTokenizerFast

from .models import load_model, read_json, read_safetensors
from .ffn_activation import restore_activation
from .resumable import (batch_indices, check_output, check_recipe, note_threads,
                        optimizer_tensors, restore_optimizer, run_rows, state_sha256,
                        texts_sha256, train_steps, write_checkpoint, write_model_directory)
from .stats import AccuracyEstimate, PairedComparison, accuracy_estimate, compare_paired
from .task import (BUILTIN_SOURCE, TASK_SPLIT_SIZES, SplitSizes, TaskDataError, TaskSplits,
                   check_labels, load_labelled, task_splits)
from ..hw.errors import InputError

__all__ = ["REPORT_FILE", "TASK_FILE", "FinetuneRecipe", "FinetuneReport", "ModelKindError",
           "TaskInfo", "TaskModel", "TaskScore", "finetune", "is_task_model", "load_task_model",
           "predict", "read_task_info", "require_embedding_model", "score_predictions"]

#: What a task model classifies, beside its weights (JSON).
TASK_FILE = "sparsemac-task.json"
#: The JSON report of a finished fine-tuning run; written last.
REPORT_FILE = "finetune_report.json"

# The clock of time budgets and step times (a test replaces it to make them deterministic).
_now = time.perf_counter
# A training step (forward, backward, AdamW) costs about 3 forward passes of the batch.
_STEP_PER_FORWARD = 3.0
_PREDICT_BATCH = 64


class ModelKindError(InputError):
    """A task model where an embedding model is needed, or the reverse (the CLI exits 2)."""


@dataclass(frozen=True)
class FinetuneRecipe:
    """How a task model is fine-tuned: everything that decides its weights."""

    #: Optimiser steps; the default reads 12,800 of the 16,000 train texts once, and fits in
    #: 30 minutes on one thread of a shared 2-core machine (docs/results.md).
    steps: int = 400
    #: Texts per step.
    batch_size: int = 32
    #: Sequences are padded to the longest of the batch and cut at this many tokens.
    max_tokens: int = 48
    #: Peak AdamW learning rate: linear warm-up over `warmup` of the steps, then linear decay to
    #: zero at the last step.
    learning_rate: float = 8e-5
    #: The fraction of the steps the learning rate warms up over.
    warmup: float = 0.1
    #: AdamW's decoupled weight decay.
    weight_decay: float = 0.01
    #: Seeds the head's initialisation, the batch order and dropout.
    seed: int = 0

    def __post_init__(self):
        check_recipe(self)
        if self.weight_decay < 0:
            raise InputError(f"weight_decay must not be negative, not {self.weight_decay!r}")

    def learning_rate_at(self, step: int) -> float:
        """The learning rate of optimiser step `step` (0-based)."""
        warmup = round(self.warmup * self.steps)
        if step < warmup:
            return self.learning_rate * (step + 1) / (warmup + 1)
        return self.learning_rate * (self.steps - step) / (self.steps - warmup)


@dataclass(frozen=True)
class TaskInfo:
    """What :data:`TASK_FILE` records: the classes and the splits of a task model."""

    #: Class names; the head's output ``i`` is ``label_names[i]``.
    label_names: tuple[str, ...]
    #: Where the labelled texts came from (:attr:`LabelledTexts.source
    #: <sparsemac.sw.task.LabelledTexts.source>`).
    data: str
    #: The SHA-256 of their texts and labels.
    data_sha256: str
    #: The seed of the splits: ``task_splits(labelled, split_seed, sizes)``.
    split_seed: int
    #: The sizes of the splits.
    sizes: SplitSizes
    #: The model spec it was fine-tuned from (or, for a pruned one, its teacher's).
    base: str

    def json_text(self) -> str:
        """The content of :data:`TASK_FILE` (:meth:`from_json` reads it back, parsed)."""
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, content: dict, where: str) -> TaskInfo:
        try:
            return cls(label_names=tuple(content["label_names"]), data=content["data"],
                       data_sha256=content["data_sha256"], split_seed=content["split_seed"],
                       sizes=SplitSizes(**content["sizes"]), base=content["base"])
        except (KeyError, TypeError) as error:
            raise InputError(f"{where}: not a sparsemac task file: {error}") from error

    def splits(self, data: str | os.PathLike | None = None) -> TaskSplits:
        """The model's splits of `data`: a labelled CSV, or None for the data it was trained on
        (the built-in tweets, or the CSV at the path it recorded).

        Raises
        ------
        TaskDataError
            If `data` is not the labelled set the model was trained on (other texts, labels
            or classes), or as :func:`~sparsemac.sw.task.load_labelled`.
        """
        if data is None and self.data != BUILTIN_SOURCE:
            data = self.data
        labelled = load_labelled(data)
        if _labelled_sha256(labelled) != self.data_sha256:
            raise TaskDataError(f"{labelled.source} is not the labelled data the task model "
                                f"was trained on ({self.data}): score it on that data")
        return task_splits(labelled, self.split_seed, self.sizes)


@dataclass
class TaskModel:
    """A loaded task model."""

    #: The checkpoint directory's name.
    name: str
    #: float32, eval mode.
    model: BertForSequenceClassification
    #: The tokenizer saved with it.
    tokenizer: PreTrainedTokenizerFast
    #: Its classes and splits.
    task: TaskInfo
    #: The directory.
    source: str


@dataclass
class TaskScore:
    """A model's accuracy on a test split, and against a baseline on the same items."""

    #: Its accuracy, with the 95 % interval.
    accuracy: AccuracyEstimate
    #: Against the baseline's predictions (the dense model's), when there is one.
    paired: PairedComparison | None
    #: Predicted class per test item, in the split's order.
    predictions: list[int]


@dataclass
class FinetuneReport:
    """What :func:`finetune` did."""

    #: The output directory.
    output: str
    #: The model it started from.
    model: str
    #: The recipe the run followed.
    recipe: FinetuneRecipe
    #: What the model classifies, and its splits.
    task: TaskInfo
    #: False when the time budget stopped the run: the directory then holds a checkpoint to
    #: resume from, and `score` is None.
    finished: bool
    #: Optimiser steps done so far.
    step: int
    #: The step of the checkpoint this invocation resumed from.
    resumed_from: int | None
    #: Texts of the train split.
    train_texts: int
    #: Train texts longer than ``recipe.max_tokens`` tokens, which training cuts.
    truncated_texts: int
    #: Accuracy on the test split, with its 95 % interval (finished runs).
    score: TaskScore | None
    #: Mean loss of the last 10 steps (or fewer) this invocation ran.
    final_loss: float | None
    #: Mean wall time of the steps this invocation ran.
    step_s: float | None
    #: Wall time of this invocation until the end of training.
    train_s: float
    #: Wall time of this invocation.
    wall_s: float
    #: Torch threads it ran on.
    threads: int

    @property
    def passed(self) -> bool:
        """Always: a run the time budget stopped is not a failure, it resumes."""
        return True

    def as_json(self) -> dict:
        """JSON-ready; the test predictions are left out."""
        result = asdict(self)
        if result["score"] is not None:
            del result["score"]["predictions"]
        return result

    def sections(self) -> list[tuple]:
        """The run as one ``(title, header, rows)`` table, its summary."""
        task, recipe = self.task, self.recipe
        head, tail = run_rows(self, recipe.steps)
        rows = [["model", self.model],
                ["data", f"{self.train_texts} train texts of {task.data} "
                         f"({', '.join(task.label_names)}; {self.truncated_texts} cut at "
                         f"{recipe.max_tokens} tokens)"],
                ["recipe", f"{recipe.steps} steps of {recipe.batch_size}, seed {recipe.seed}, "
                           f"split seed {task.split_seed}, {self.threads} threads"], *head]
        if self.finished:
            accuracy = self.score.accuracy
            rows += [["test accuracy", f"{accuracy.accuracy:.2%} on {accuracy.n} held-out "
                                       f"texts, 95 % interval {accuracy.interval.points()} %"],
                     ["wrote", f"{self.output} (model.safetensors, config.json, tokenizer, "
                               "sparsemac-task.json, finetune_report.json)"]]
        rows += [*tail, ["training", f"{self.train_s:.1f} s"],
                 ["wall time", f"{self.wall_s:.1f} s"]]
        return [("Summary", None, rows)]


def finetune(model: str, output: str | os.PathLike, recipe: FinetuneRecipe = FinetuneRecipe(),
             *, data: str | os.PathLike | None = None, sizes: SplitSizes = TASK_SPLIT_SIZES,
             split_seed: int = 0, resume: bool = False, checkpoint_every: int = 50,
             time_budget: float | None = None, progress: bool = True) -> FinetuneReport:
    """Fine-tune an embedding model with a classification head on a labelled task; write it.

    Parameters
    ----------
    model : str
        The embedding model to start from, as :func:`~sparsemac.sw.models.load_model` takes it;
        it needs a tokenizer.
    output : path
        Directory of the run: its checkpoint while it runs, the task model when it is done. It
        must not exist, be empty, or (with `resume`) hold a checkpoint of the same run.
    recipe : FinetuneRecipe
    data : path, optional
        A labelled CSV (``text``, ``label``); None: the built-in tweets.
    sizes : SplitSizes
        Of the splits; the model trains on the train split and is scored on the test split.
    split_seed : int
        Seed of the splits (kept apart from ``recipe.seed`` so that runs of other seeds are
        scored on the same test items).
    resume : bool
        Continue from the checkpoint in `output`; without one, start from the beginning.
    checkpoint_every : int
        Steps between checkpoints.
    time_budget : float, optional
        Seconds this invocation may run. When the next step and the final scoring would no
        longer fit, it writes a checkpoint and returns an unfinished report.
    progress : bool
        Show progress on stderr with the elapsed time.

    Returns
    -------
    FinetuneReport

    Raises
    ------
    TaskDataError
        If the data cannot be read, is too small for `sizes`, has a single class in its train
        split or a test label the train split lacks.
    ModelKindError
        If `model` is already a task model.
    ValueError
        If the model has no tokenizer, `output` holds something else than a checkpoint of this
        run (the message names what differs) or a finished run, or the time budget is shorter
        than one step. Nothing is written then.
    """
    started = _now()
    if checkpoint_every < 1:
        raise InputError(f"checkpoint_every must be at least 1, not {checkpoint_every!r}")
    if time_budget is not None and not time_budget > 0:
        raise InputError(f"time budget must be positive, not {time_budget!r} s")
    labelled = load_labelled(data)
    splits = task_splits(labelled, split_seed, sizes)
    check_labels(splits)
    require_embedding_model(model)
    base = load_model(model)
    if base.tokenizer is None:
        raise InputError(f"{base.name} has no tokenizer: fine-tuning needs text")
    info = TaskInfo(label_names=labelled.label_names, data=labelled.source,
                    data_sha256=_labelled_sha256(labelled), split_seed=split_seed, sizes=sizes,
                    base=model)
    identity = {"model": model, "base_sha256": state_sha256(base.model),
                "task": json.loads(info.json_text()), "recipe": asdict(recipe)}
    output = Path(output)
    checkpoint = check_output(output, identity, resume, report_file=REPORT_FILE,
                              command="sparsemac finetune")
    run = _Run(base, info, splits, recipe)
    deadline = None if time_budget is None else started + time_budget
    forward_s = run.forward_s()
    step_estimate = _STEP_PER_FORWARD * forward_s
    # Scoring runs every test text forward once, in batches of _PREDICT_BATCH.
    reserve = forward_s * len(splits.test) / recipe.batch_size
    if deadline is not None and _now() + step_estimate > deadline:
        raise InputError(f"time budget of {time_budget:g} s is too short for one step: a step "
                         f"takes about {step_estimate:.1f} s here, and scoring the test split "
                         f"at the end about {reserve:.0f} s")
    resumed_from = run.restore(checkpoint) if checkpoint is not None else None
    losses, step_times = run.train(output, identity, checkpoint_every, deadline, reserve,
                                   step_estimate, progress)
    train_s = _now() - started
    finished = run.step == recipe.steps
    report = FinetuneReport(
        output=str(output), model=model, recipe=recipe, task=info, finished=finished,
        step=run.step, resumed_from=resumed_from, train_texts=len(splits.train),
        truncated_texts=run.truncated,
        score=None, final_loss=float(np.mean(losses)) if losses else None,
        step_s=float(np.mean(step_times)) if step_times else None, train_s=train_s,
        wall_s=0.0, threads=torch.get_num_threads())
    if finished:
        run.classifier.eval()
        report.score = score_predictions(
            splits.test.labels, predict(run.classifier, base.tokenizer, splits.test.texts))
    report.wall_s = _now() - started
    if finished:
        write_model_directory(output, run.classifier, base.source, base.tokenizer,
                              {TASK_FILE: info.json_text(),
                               REPORT_FILE: json.dumps(report.as_json(), indent=2) + "\n"},
                              REPORT_FILE)
    return report


def is_task_model(spec: str | os.PathLike) -> bool:
    """Whether `spec` names a task model directory (one holding :data:`TASK_FILE`)."""
    return (Path(spec).expanduser() / TASK_FILE).is_file()


def require_embedding_model(spec: str | os.PathLike) -> None:
    """Refuse a task model where an embedding model is needed.

    Raises
    ------
    ModelKindError
        If `spec` is a task model directory.
    """
    if is_task_model(spec):
        raise ModelKindError(f"{spec} is a fine-tuned task model ({TASK_FILE}); this needs an "
                             "embedding model such as minilm or a checkpoint of one")


def read_task_info(spec: str | os.PathLike) -> TaskInfo:
    """What a task model classifies and its splits, without loading its weights.

    Raises
    ------
    ModelKindError
        If `spec` is not a task model (an embedding model, or no directory).
    ValueError
        If its :data:`TASK_FILE` is damaged.
    """
    path = Path(spec).expanduser()
    if not is_task_model(path):
        raise ModelKindError(f"{spec} is not a fine-tuned task model (no {TASK_FILE}): "
                             "run sparsemac finetune first, or pass a directory it wrote")
    return TaskInfo.from_json(read_json(path / TASK_FILE), str(path / TASK_FILE))


def load_task_model(spec: str | os.PathLike) -> TaskModel:
    """Load a task model written by :func:`finetune` (or pruned from one by ``sparsemac prune``).

    Raises
    ------
    ModelKindError
        If `spec` is not a task model (an embedding model, or no directory).
    ValueError, FileNotFoundError
        If the directory's files are damaged or do not fill the model exactly.
    """
    path = Path(spec).expanduser()
    info = read_task_info(path)
    encoder = load_model(str(path))  # checks config, weights and tokenizer, loads the encoder
    model = BertForSequenceClassification(encoder.model.config)
    state = read_safetensors(path / "model.safetensors")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise InputError(f"{path}: not a BertForSequenceClassification of its config: "
                         f"{error}") from error
    if model.config.num_labels != len(info.label_names):
        raise InputError(f"{path}: the head has {model.config.num_labels} outputs, {TASK_FILE} "
                         f"names {len(info.label_names)} classes")
    restore_activation(model, str(path / "config.json"))  # a sparse one, from prune
    return TaskModel(name=path.resolve().name, model=model.to(torch.float32).eval(),
                     tokenizer=encoder.tokenizer, task=info, source=str(path))


def predict(model: BertForSequenceClassification, tokenizer: PreTrainedTokenizerFast,
            texts: Sequence[str], *, batch_size: int = _PREDICT_BATCH) -> list[int]:
    """The class a model predicts for each text (texts batched in order of length).

    Returns
    -------
    list of int
        In the order of `texts`.
    """
    texts = list(texts)
    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    order = np.argsort(lengths, kind="stable")
    predictions = np.empty(len(texts), dtype=np.int64)
    for start in range(0, len(texts), batch_size):
        chosen = order[start:start + batch_size]
        inputs = tokenizer([texts[i] for i in chosen], padding=True, truncation=True,
                           max_length=model.config.max_position_embeddings,
                           return_tensors="pt")
        with torch.no_grad():
            predictions[chosen] = model(**inputs).logits.argmax(dim=-1).numpy()
    return predictions.tolist()


def score_predictions(labels: Sequence[int], predictions: Sequence[int],
                      baseline: Sequence[int] | None = None, *, seed: int = 0) -> TaskScore:
    """Accuracy with its 95 % interval, and the paired comparison with a baseline's predictions.

    Parameters
    ----------
    labels, predictions : sequence of int
        Per test item.
    baseline : sequence of int, optional
        The dense model's predictions on the same items.
    seed : int
        Of the paired bootstrap.
    """
    labels = np.asarray(labels)
    correct = np.asarray(predictions) == labels
    paired = None if baseline is None else compare_paired(np.asarray(baseline) == labels,
                                                          correct, seed=seed)
    return TaskScore(accuracy=accuracy_estimate(correct), paired=paired,
                     predictions=list(map(int, predictions)))


class _Run:
    """The classifier, its optimiser and the step counter of one run."""

    def __init__(self, base, info: TaskInfo, splits: TaskSplits, recipe: FinetuneRecipe):
        self.tokenizer = base.tokenizer
        self.texts = splits.train.texts
        self.labels = torch.tensor(splits.train.labels)
        self.recipe = recipe
        counts = [len(ids) for ids in base.tokenizer(self.texts)["input_ids"]]
        self.truncated = sum(count > recipe.max_tokens for count in counts)
        # Token counts as trained: batches of like lengths pad little.
        self.lengths = tuple(min(count, recipe.max_tokens) for count in counts)
        config = copy.deepcopy(base.model.config)
        config.num_labels = len(info.label_names)
        config.id2label = dict(enumerate(info.label_names))
        config.label2id = {name: i for i, name in enumerate(info.label_names)}
        config.architectures = ["BertForSequenceClassification"]
        torch.manual_seed(recipe.seed)
        self.classifier = BertForSequenceClassification(config)
        # The encoder (and the pooler, if the base has one) come from the base model; the rest
        # keeps its seeded initialisation.
        self.classifier.bert.load_state_dict(base.model.state_dict(), strict=False)
        # The word, position and token-type embeddings stay as trained: updating the 30,522 x
        # hidden word table every step would cost more than it brings on a small task.
        self.classifier.bert.embeddings.requires_grad_(False)
        self.classifier.train()
        trained = [(n, p) for n, p in self.classifier.named_parameters() if p.requires_grad]
        decay = [p for n, p in trained if not n.endswith("bias") and "LayerNorm" not in n]
        rest = [p for n, p in trained if n.endswith("bias") or "LayerNorm" in n]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": recipe.weight_decay},
             {"params": rest, "weight_decay": 0.0}], lr=recipe.learning_rate)
        self.step = 0

    def batch(self, step: int):
        """Tokenised texts and labels of optimiser step `step`: a pure function of seed and
        step."""
        indices = batch_indices(self.recipe.seed, len(self.texts), step,
                                self.recipe.batch_size, self.lengths)
        inputs = self.tokenizer([self.texts[i] for i in indices], padding=True,
                                truncation=True, max_length=self.recipe.max_tokens,
                                return_tensors="pt")
        return inputs, self.labels[indices]

    def forward_s(self) -> float:
        """Seconds of one forward pass of the first batch, timed."""
        inputs, _ = self.batch(0)
        begin = _now()
        with torch.no_grad():
            self.classifier(**inputs)
        return _now() - begin

    def train(self, output, identity, checkpoint_every, deadline, reserve, step_estimate,
              progress):
        """Run steps until the recipe is done or the deadline; checkpoint on the way."""
        return train_steps(self, self.recipe.steps, "finetune", output, identity,
                           checkpoint_every, deadline, reserve, step_estimate, progress, _now)

    def train_step(self) -> dict[str, float]:
        """One optimiser step at `step`: its loss."""
        inputs, labels = self.batch(self.step)
        loss = F.cross_entropy(self.classifier(**inputs).logits, labels)
        for group in self.optimizer.param_groups:
            group["lr"] = self.recipe.learning_rate_at(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(
            [p for p in self.classifier.parameters() if p.requires_grad], 1.0)
        self.optimizer.step()
        return {"loss": float(loss.detach())}

    def save(self, output: Path, identity: dict) -> None:
        tensors = {f"classifier.{key}": value
                   for key, value in self.classifier.state_dict().items()}
        optimizer, param_groups = optimizer_tensors(self.optimizer)
        tensors.update(optimizer)
        tensors["rng.torch"] = torch.get_rng_state()
        write_checkpoint(output, tensors, {"step": self.step, "identity": identity,
                                           "threads": torch.get_num_threads(),
                                           "param_groups": param_groups})

    def restore(self, checkpoint: tuple[dict, dict]) -> int:
        state, tensors = checkpoint
        self.classifier.load_state_dict({key[len("classifier."):]: value
                                         for key, value in tensors.items()
                                         if key.startswith("classifier.")})
        restore_optimizer(self.optimizer, tensors, state["param_groups"])
        torch.set_rng_state(tensors["rng.torch"])
        note_threads(state["threads"])
        self.step = state["step"]
        return self.step


def _labelled_sha256(labelled) -> str:
    return texts_sha256([f"{label}\t{text}" for text, label in
                         zip(labelled.texts, (labelled.label_names[i] for i in labelled.labels))])
