"""Fine-tuning a task model: a few steps of a tiny BERT on a tiny CSV, resumed bit for bit; the
checkpoint it writes; and the inputs it refuses."""

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import TINY_TASK_SIZES, labelled_rows, tiny_bert_dir, write_labelled_csv

from sparsemac.sw import finetune as finetune_module
from sparsemac.app.cli import main
from sparsemac.sw.finetune import (REPORT_FILE, TASK_FILE, FinetuneRecipe, ModelKindError,
                                   finetune, load_task_model, predict, require_embedding_model)
from sparsemac.sw.models import load_model
from sparsemac.sw.resumable import CHECKPOINT_FILE
from sparsemac.sw.task import LabelledTexts, TaskDataError, task_splits

RECIPE = FinetuneRecipe(steps=6, batch_size=4, max_tokens=16)
SIZES = TINY_TASK_SIZES
EVERY = 2


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Float sums, and so bit-exact resumption, depend on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_bert_dir(tmp_path_factory.mktemp("base") / "tiny", seed=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_labelled_csv(tmp_path_factory.mktemp("data") / "tiny.csv", labelled_rows(60))


@pytest.fixture(scope="module")
def finished(base, data, tmp_path_factory):
    output = tmp_path_factory.mktemp("runs") / "uninterrupted"
    report = finetune(base, output, RECIPE, data=data, sizes=SIZES, checkpoint_every=EVERY,
                      progress=False)
    return output, report


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def interrupted(base, data, tmp_path_factory):
    """A run killed while computing step 3: its last checkpoint is from step 2."""
    output = tmp_path_factory.mktemp("runs") / "interrupted"
    original = finetune_module._Run.train_step

    def train_step(run):
        if run.step == 3:
            raise Interrupted
        return original(run)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(finetune_module._Run, "train_step", train_step)
        with pytest.raises(Interrupted):
            finetune(base, output, RECIPE, data=data, sizes=SIZES, checkpoint_every=EVERY,
                     progress=False)
    return output


def _copy_of(run, tmp_path):
    return Path(shutil.copytree(run, tmp_path / run.name))


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_finished_run_writes_a_task_model(base, finished):
    output, report = finished
    assert report.finished and report.step == RECIPE.steps and report.resumed_from is None
    assert report.train_texts == 24 and report.task.label_names == ("negative", "neutral",
                                                                    "positive")
    for name in ("model.safetensors", "config.json", "tokenizer.json", TASK_FILE, REPORT_FILE):
        assert (output / name).is_file(), name
    assert not (output / CHECKPOINT_FILE).exists()
    score = report.score
    assert score.accuracy.n == 12 and score.paired is None
    assert score.accuracy.interval.low <= score.accuracy.accuracy <= score.accuracy.interval.high
    loaded = load_task_model(output)
    assert loaded.task == report.task and loaded.model.config.num_labels == 3
    # The saved model predicts what the run scored.
    test = loaded.task.splits(report.task.data).test
    assert predict(loaded.model, loaded.tokenizer, test.texts) == score.predictions
    # The encoder trained (embeddings frozen), and the encoder alone loads as a BertModel.
    encoder = load_model(str(output)).model
    dense = load_model(base).model
    assert torch.equal(encoder.embeddings.word_embeddings.weight,
                       dense.embeddings.word_embeddings.weight)
    assert not torch.equal(encoder.encoder.layer[0].output.dense.weight,
                           dense.encoder.layer[0].output.dense.weight)


def test_resumed_run_ends_with_the_same_weights_bit_for_bit(base, data, finished, interrupted,
                                                            tmp_path):
    output = _copy_of(interrupted, tmp_path)
    assert (output / CHECKPOINT_FILE).is_file() and not (output / REPORT_FILE).exists()
    report = finetune(base, output, RECIPE, data=data, sizes=SIZES, checkpoint_every=EVERY,
                      resume=True, progress=False)
    assert report.resumed_from == 2 and report.finished
    ours, theirs = load_file(output / "model.safetensors"), load_file(
        finished[0] / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    assert report.score.predictions == finished[1].score.predictions


def test_resume_from_another_task_is_refused(base, interrupted, tmp_path):
    output = _copy_of(interrupted, tmp_path)
    other = write_labelled_csv(tmp_path / "other.csv", labelled_rows(60, ("good", "bad")))
    before = _digest(output / CHECKPOINT_FILE)
    with pytest.raises(ValueError, match=r"cannot resume .*: it is a run of another model, "
                                         r"corpus or recipe \(.*task\.label_names"):
        finetune(base, output, RECIPE, data=other, sizes=SIZES, resume=True, progress=False)
    assert _digest(output / CHECKPOINT_FILE) == before


def test_unfinished_run_needs_resume(base, data, interrupted):
    before = _digest(interrupted / CHECKPOINT_FILE)
    with pytest.raises(ValueError, match="holds an unfinished run; pass --resume"):
        finetune(base, interrupted, RECIPE, data=data, sizes=SIZES, progress=False)
    assert _digest(interrupted / CHECKPOINT_FILE) == before


def test_kinds_of_model_are_not_mixed(finished, base, data, tmp_path):
    output, _ = finished
    with pytest.raises(ModelKindError, match="is a fine-tuned task model"):
        require_embedding_model(str(output))
    with pytest.raises(ModelKindError, match="is a fine-tuned task model"):
        finetune(str(output), tmp_path / "again", RECIPE, data=data, sizes=SIZES,
                 progress=False)
    with pytest.raises(ModelKindError, match="is not a fine-tuned task model"):
        load_task_model(base)
    assert not (tmp_path / "again").exists()


def test_splits_of_other_data_are_refused(finished, tmp_path):
    _, report = finished
    other = write_labelled_csv(tmp_path / "other.csv", labelled_rows(61))
    with pytest.raises(TaskDataError, match="is not the labelled data the task model"):
        report.task.splits(other)


# The command's splits: 12 test, 24 train, 128 calibration and at least 1 distillation text.
@pytest.mark.parametrize("rows, message", [
    (labelled_rows(200, ("positive",)), "the train split has a single class"),
    # Every test text (the held-out head of the order) is neutral, no train text is.
    (None, "the test split has labels the train split never shows"),
    (labelled_rows(164), "the splits need 12 held out for testing + 24 train + 128 "
                         "calibration + at least 1 distillation unique texts, there are 164"),
])
def test_bad_data_exits_2_and_writes_nothing(base, tmp_path, capsys, rows, message):
    if rows is None:
        rows = _unseen_test_labels()
    path = write_labelled_csv(tmp_path / "bad.csv", rows)
    output = tmp_path / "run"
    status = main(["finetune", "--model", base, "--data", path, "--train", "24", "--test",
                   "12", "--steps", "2", "--output", str(output)])
    assert status == 2
    assert message in capsys.readouterr().err
    assert not output.exists()


def test_task_model_where_an_embedding_model_is_needed_exits_2(finished, tmp_path, capsys):
    status = main(["finetune", "--model", str(finished[0]), "--output", str(tmp_path / "run")])
    assert status == 2
    assert "is a fine-tuned task model" in capsys.readouterr().err


def test_time_budget_shorter_than_a_step_is_refused(base, data, tmp_path, monkeypatch):
    ticks = iter(range(1_000_000))
    monkeypatch.setattr(finetune_module, "_now", lambda: float(next(ticks)))
    with pytest.raises(ValueError, match="too short for one step"):
        finetune(base, tmp_path / "run", RECIPE, data=data, sizes=SIZES, time_budget=1,
                 progress=False)
    assert not (tmp_path / "run").exists()


def test_progress_lines_carry_the_elapsed_time(base, data, tmp_path, capsys):
    finetune(base, tmp_path / "run", FinetuneRecipe(steps=2, batch_size=4, max_tokens=16),
             data=data, sizes=SIZES)
    err = capsys.readouterr().err
    assert "step 2/2  loss " in err and "  elapsed 0m" in err


def _unseen_test_labels():
    """200 texts whose seed-0 order puts only neutral texts in the 12 held out for testing (the
    test split is the head of the order whatever the other sizes)."""
    rows = labelled_rows(200, ("positive", "negative"))
    names = ("negative", "positive")
    labelled = LabelledTexts(texts=[text for text, _ in rows],
                             labels=[names.index(label) for _, label in rows],
                             label_names=names, source="rows", licence="test")
    held = set(task_splits(labelled, 0, SIZES).test.texts)
    return [(text, "neutral" if text in held else label) for text, label in rows]
