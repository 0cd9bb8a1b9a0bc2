"""What resumable training runs share: identity hashes, the output directory's rules, the
checkpoint file, and progress on stderr.

A run (``sparsemac prune``, ``sparsemac finetune``) writes one safetensors file into its output
directory every so many steps: tensors, with the run's JSON state in the file's metadata (no
pickle anywhere). The state holds an identity (model, data and recipe hashes); a run resumes
only from a checkpoint of the same identity, and a finished run is marked by its report file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from .models import write_safetensors
from ..hw.errors import InputError

__all__ = ["CHECKPOINT_FILE", "Progress", "batch_indices", "check_output", "check_recipe",
           "differences", "note_threads", "optimizer_tensors", "read_checkpoint",
           "restore_optimizer", "run_rows", "state_sha256", "texts_sha256", "train_steps",
           "write_checkpoint", "write_model_directory"]

#: The resumable state of an unfinished run, inside its output directory.
CHECKPOINT_FILE = "checkpoint.safetensors"

_WEIGHTS_FILE = "model.safetensors"
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json",
                    "special_tokens_map.json")
_STATE_KEY = "sparsemac_state"
_STATE_FORMAT = 1
# The clock of progress lines (a test replaces it to make them deterministic).
_now = time.perf_counter
# A non-TTY progress line is printed at least this often, and at most every step.
_PLAIN_PROGRESS_S = 60.0


def state_sha256(model: torch.nn.Module) -> str:
    """SHA-256 of a model's state, by key in sorted order: its identity in a run's state."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def texts_sha256(texts: list[str]) -> str:
    """SHA-256 of texts in order."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def batch_indices(seed: int, size: int, step: int, batch_size: int,
                  lengths: tuple[int, ...] | None = None) -> list[int]:
    """Indices into `size` texts of optimiser step `step`: a pure function of its arguments.

    The texts are read epoch after epoch, each epoch in its own seeded order. With `lengths`
    (each text's token count), every window of :data:`_BUCKET_BATCHES` batches of that order is
    sorted by length and the epoch's whole batches are then shuffled, seeded, so that a batch
    pads little (a third fewer tokens on the tweets) and still holds random texts.
    """
    positions = np.arange(step * batch_size, (step + 1) * batch_size)
    epochs, offsets = np.divmod(positions, size)
    return [int(_epoch_order(seed, size, int(epoch), batch_size, lengths)[offset])
            for epoch, offset in zip(epochs, offsets)]


# Batches of a window sorted by length in :func:`batch_indices`.
_BUCKET_BATCHES = 16


@lru_cache(maxsize=4)
def _epoch_order(seed: int, size: int, epoch: int, batch_size: int,
                 lengths: tuple[int, ...] | None) -> np.ndarray:
    order = np.random.default_rng([seed, epoch]).permutation(size)
    if lengths is None:
        return order
    lengths = np.asarray(lengths)
    window = batch_size * _BUCKET_BATCHES
    order = np.concatenate([
        chunk[np.argsort(lengths[chunk], kind="stable")]
        for chunk in np.split(order, range(window, size, window))])
    whole = size // batch_size
    batches = np.random.default_rng([seed, epoch, 1]).permutation(whole)
    head = order[:whole * batch_size].reshape(whole, batch_size)[batches].reshape(-1)
    return np.concatenate([head, order[whole * batch_size:]])


def train_steps(run, total: int, desc: str, output: Path, identity: dict,
                checkpoint_every: int, deadline: float | None, reserve: float,
                step_estimate: float, progress: bool,
                clock: Callable[[], float]) -> tuple[list[float], list[float]]:
    """Run a run's steps until `total` or the deadline, checkpointing on the way.

    Parameters
    ----------
    run
        Has ``step`` (steps done), ``train_step() -> dict`` (one optimiser step at ``step``;
        its figures, ``loss`` first, for the progress line) and ``save(output, identity)``.
    total : int
        Steps of the recipe.
    desc : str
        The progress bar's name.
    output, identity
        Passed to ``run.save``: every `checkpoint_every` steps before the last, and when the
        deadline stops the run.
    deadline : float or None
        On `clock`; the run stops before a step that would end later than `reserve` seconds
        before it (a step is taken to last the longer of `step_estimate` and the mean of the
        last five).
    progress : bool
        Show a :class:`Progress` on stderr.
    clock : callable
        Seconds, monotonic.

    Returns
    -------
    tuple of list of float
        The losses of the last 10 steps (or fewer) and every step's wall time.
    """
    losses, step_times = [], []
    bar = Progress(total, run.step, desc) if progress else None
    try:
        while run.step < total:
            expected = max(step_estimate, np.mean(step_times[-5:]) if step_times else 0.0)
            if deadline is not None and clock() + expected + reserve > deadline:
                run.save(output, identity)
                break
            begin = clock()
            figures = run.train_step()
            run.step += 1
            step_times.append(clock() - begin)
            losses.append(figures["loss"])
            if bar is not None:
                bar.update(run.step, **figures)
            if run.step % checkpoint_every == 0 and run.step < total:
                run.save(output, identity)
    finally:
        if bar is not None:
            bar.close()
    return losses[-10:], step_times


def check_output(output: Path, identity: dict, resume: bool, *, report_file: str,
                 command: str) -> tuple[dict, dict] | None:
    """Decide what `output` allows before anything is written.

    Parameters
    ----------
    output : Path
        The run's directory.
    identity : dict
        What makes the run this run (JSON-ready); a checkpoint of another identity is refused.
    resume : bool
        Whether a checkpoint may be continued.
    report_file : str
        The file a finished run leaves.
    command : str
        The command's name, for the messages (e.g. ``"sparsemac prune"``).

    Returns
    -------
    tuple of dict, or None
        The checkpoint to resume from as ``(state, tensors)``, or None to start afresh.

    Raises
    ------
    ValueError
        If `output` is a file, holds a finished run, holds something else than a checkpoint,
        holds a checkpoint without `resume`, or a checkpoint of another identity (the message
        names every difference); or if `resume` is asked where there is nothing to resume.
    """
    if output.exists() and not output.is_dir():
        raise InputError(f"output {output} is a file, not a directory")
    if not output.exists() or not any(output.iterdir()):
        if resume:
            raise InputError(f"--resume: {output} holds no run to resume; drop --resume to "
                             "start one there")
        return None
    if (output / report_file).exists():
        raise InputError(f"output {output} already holds a finished run ({report_file}); "
                         "choose another directory")
    path = output / CHECKPOINT_FILE
    if not path.is_file():
        raise InputError(f"output {output} exists and is not a {command} run (no "
                         f"{CHECKPOINT_FILE}); choose another directory")
    if not resume:
        raise InputError(f"output {output} holds an unfinished run; pass --resume to continue "
                         "it, or choose another directory")
    state, tensors = read_checkpoint(path, command)
    found = differences(state.get("identity", {}), identity)
    if found:
        raise InputError(f"cannot resume {path}: it is a run of another model, corpus or "
                         f"recipe ({'; '.join(found)})")
    return state, tensors


def read_checkpoint(path: Path, command: str) -> tuple[dict, dict]:
    """The JSON state and the tensors of a checkpoint file.

    Raises
    ------
    ValueError
        If the file is not a readable safetensors file or holds no state of this format.
    """
    try:
        with safe_open(path, framework="pt") as file:
            metadata = file.metadata() or {}
            tensors = {key: file.get_tensor(key) for key in file.keys()}
    except Exception as error:  # safetensors raises its own error types for a bad header
        raise InputError(f"{path} is not a readable safetensors checkpoint: {error}") from error
    if _STATE_KEY not in metadata:
        raise InputError(f"{path} has no {_STATE_KEY} metadata: not a {command} checkpoint")
    state = json.loads(metadata[_STATE_KEY])
    if state.get("format") != _STATE_FORMAT:
        raise InputError(f"{path} has checkpoint format {state.get('format')!r}, expected "
                         f"{_STATE_FORMAT}")
    return state, tensors


def write_checkpoint(output: Path, tensors: dict[str, torch.Tensor], state: dict) -> None:
    """Write :data:`CHECKPOINT_FILE` atomically (a crash mid-write keeps the previous one).

    `state` is stored as JSON in the file's metadata, with the format version added.
    """
    output.mkdir(parents=True, exist_ok=True)
    partial = output / (CHECKPOINT_FILE + ".partial")
    write_safetensors({key: value.contiguous() for key, value in tensors.items()}, partial,
              metadata={_STATE_KEY: json.dumps(dict(state, format=_STATE_FORMAT))})
    os.replace(partial, output / CHECKPOINT_FILE)


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict, list]:
    """An optimiser's state as tensors named ``optimizer.<index>.<name>``, and its JSON-ready
    parameter groups."""
    state = optimizer.state_dict()
    tensors = {f"optimizer.{index}.{key}": torch.as_tensor(value)
               for index, entries in state["state"].items() for key, value in entries.items()}
    return tensors, state["param_groups"]


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict, param_groups: list) -> None:
    """Load what :func:`optimizer_tensors` gave back into `optimizer`."""
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    groups = [dict(group, betas=tuple(group["betas"])) for group in param_groups]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def note_threads(saved: int) -> None:
    """Say on stderr when a run resumes on another thread count than its checkpoint's."""
    if saved != torch.get_num_threads():
        # Float sums split differently over another thread count: still a valid run.
        print(f"note: resuming on {torch.get_num_threads()} threads, the checkpoint was "
              f"written on {saved}: the weights will not equal an uninterrupted run's bit for "
              "bit", file=sys.stderr)


def write_model_directory(output: Path, model, tokenizer_source: str, tokenizer,
                          files: dict[str, str], report_file: str) -> None:
    """Leave a finished run's Hugging Face directory, then its report, then drop the checkpoint.

    Parameters
    ----------
    output : Path
    model : transformers.PreTrainedModel
        Its state goes to ``model.safetensors`` and its config to ``config.json``.
    tokenizer_source : str
        A directory whose tokenizer files are copied; when it has none, `tokenizer` saves its
        own.
    tokenizer : transformers.PreTrainedTokenizerFast
    files : dict of str to str
        Text files to write, by name; the one named `report_file` is written last (it marks
        the run finished), by a rename.
    report_file : str
    """
    output.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    write_safetensors(state, output / _WEIGHTS_FILE, metadata={"format": "pt"})
    model.config.to_json_file(output / "config.json")
    source = Path(tokenizer_source)
    copies = [source / name for name in _TOKENIZER_FILES if (source / name).is_file()]
    for file in copies:
        shutil.copyfile(file, output / file.name)
    if not copies:  # a model without a directory of its own (bert-base)
        tokenizer.save_pretrained(str(output))
    for name, content in files.items():
        if name != report_file:
            (output / name).write_text(content)
    partial = output / (report_file + ".partial")
    partial.write_text(files[report_file])
    os.replace(partial, output / report_file)
    (output / CHECKPOINT_FILE).unlink(missing_ok=True)


def check_recipe(recipe, positive: tuple[str, ...] = ("steps", "batch_size", "max_tokens")
                 ) -> None:
    """Refuses a training recipe whose fields every run has break their rules.

    Parameters
    ----------
    recipe : DistillRecipe or FinetuneRecipe
        Its ``max_tokens``, ``learning_rate`` and ``warmup`` are read, and the `positive` ones.
    positive : tuple of str
        The fields that are whole numbers of at least 1.

    Raises
    ------
    ValueError
        If a `positive` field is not a whole number of at least 1, ``max_tokens`` is under 2,
        ``learning_rate`` is not positive or ``warmup`` is not a fraction in [0, 1].
    """
    for name in positive:
        value = getattr(recipe, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive integer, not {value!r}")
    if recipe.max_tokens < 2:
        raise InputError(f"max_tokens must be at least 2 ([CLS] [SEP]), not "
                         f"{recipe.max_tokens!r}")
    if not recipe.learning_rate > 0:
        raise InputError(f"learning_rate must be positive, not {recipe.learning_rate!r}")
    if not 0.0 <= recipe.warmup <= 1.0:
        raise InputError(f"warmup must be a fraction of the steps in [0, 1], not "
                         f"{recipe.warmup!r}")


def run_rows(report, steps: int) -> tuple[list[list[str]], list[list[str]]]:
    """The summary rows every run report shares, as ``(head, tail)``: where it resumed and
    where the time budget stopped it, then its loss and times.

    Parameters
    ----------
    report : PruneReport or FinetuneReport
        Its ``output``, ``finished``, ``step``, ``resumed_from``, ``final_loss``, ``step_s`` and
        ``wall_s`` are read.
    steps : int
        The recipe's steps.
    """
    head = []
    if report.resumed_from is not None:
        head.append(["resumed", f"at step {report.resumed_from}"])
    if not report.finished:
        head.append(["stopped", f"by the time budget at step {report.step}/{steps}; checkpoint "
                                f"in {report.output}: run the same command with --resume to "
                                "continue"])
    tail = []
    if report.final_loss is not None:
        tail.append(["loss", f"{report.final_loss:.4f}"])
    if report.step_s is not None:
        tail.append(["step time", f"{report.step_s:.2f} s"])
    return head, tail


def differences(saved: dict, wanted: dict, prefix: str = "") -> list[str]:
    """``key: saved there, wanted here`` for every leaf that differs."""
    found = []
    for key in sorted(set(saved) | set(wanted)):
        there, here = saved.get(key), wanted.get(key)
        if isinstance(there, dict) and isinstance(here, dict):
            found += differences(there, here, f"{prefix}{key}.")
        elif there != here:
            found.append(f"{prefix}{key} {there!r} in the checkpoint, {here!r} now")
    return found


class Progress:
    """A tqdm bar on a terminal; otherwise a plain line a minute (and at the end) with the
    elapsed time and an estimate of what is left."""

    def __init__(self, total: int, initial: int, desc: str):
        self.total = total
        self.initial = initial
        self.started = _now()
        self.last_line = self.started
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step")

    def update(self, step: int, **figures: float) -> None:
        """Step `step` is done; `figures` (e.g. ``loss=0.31``) are shown beside it."""
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({name: f"{value:.4f}" for name, value in figures.items()})
            return
        now = _now()
        if now - self.last_line < _PLAIN_PROGRESS_S and step < self.total:
            return
        self.last_line = now
        elapsed = now - self.started
        left = elapsed / (step - self.initial) * (self.total - step)
        shown = "".join(f"  {name} {value:.4f}" for name, value in figures.items())
        print(f"step {step}/{self.total}{shown}  elapsed {_clock(elapsed)}  left {_clock(left)}",
              file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(math.ceil(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"
