"""Tests for sparsemac.sw.distill and ``sparsemac prune``: a few steps on a tiny BERT."""

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import tiny_bert_dir, tiny_task_model_dir

from sparsemac.sw import distill
from sparsemac.app.cli import main
from sparsemac.sw.distill import CHECKPOINT_FILE, REPORT_FILE, DistillRecipe, distill_prune
from sparsemac.sw.ffn_activation import model_activation
from sparsemac.sw.finetune import load_task_model, predict
from sparsemac.sw.models import SIMILARITY_PAIRS, load_model
from sparsemac.sw.pruning import matching_linears
from sparsemac.sw.task import SplitSizes, TaskReport, load_labelled, task_splits

TEXTS = [text for pair in SIMILARITY_PAIRS for text in (pair.first, pair.second)]
# Dense until step 0, 90 % from step 4 (prune_end 0.6 of 6 steps), 2 steps of recovery after.
RECIPE = DistillRecipe(steps=6, batch_size=4, prune_every=1)
EVERY = 2  # checkpoint interval of every run here
# A small slice of the built-in tweets for the fidelity figures of the uninterrupted run.
TASK = task_splits(load_labelled(), 0, SplitSizes(train=60, test=30, calibration=1,
                                                  distillation=1))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Every run here on one thread, as the command runs by default: float sums, and so
    bit-exact resumption, depend on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Interrupted(Exception):
    """Stands for the process being killed in the middle of a run."""


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return tiny_bert_dir(tmp_path_factory.mktemp("teacher") / "tiny", seed=0)


@pytest.fixture(scope="module")
def finished(teacher, tmp_path_factory):
    """An uninterrupted run: its directory, its report, and after every optimiser step the
    step, the schedule's sparsity and whether every pruned weight was still zero."""
    output = tmp_path_factory.mktemp("runs") / "uninterrupted"
    original = distill._train_step
    steps = []

    def train_step(run, step):
        loss = original(run, step)
        masked = all(not bool(linear.weight[~run.pruner.masks[name]].any())
                     for name, linear in run.pruner.linears)
        pruned = [int((~mask).sum()) for mask in run.pruner.masks.values()]
        steps.append((step, run.pruner.sparsity, masked, pruned))
        return loss

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(distill, "_train_step", train_step)
        report = distill_prune(teacher, TEXTS, output, RECIPE, checkpoint_every=EVERY,
                               task=TASK, progress=False)
    return output, report, steps


@pytest.fixture(scope="module")
def interrupted(teacher, tmp_path_factory):
    """A run killed while computing step 3: its last checkpoint is from step 2."""
    return _interrupt(teacher, tmp_path_factory.mktemp("runs") / "interrupted", RECIPE)


def _interrupt(teacher, output, recipe, **options):
    """`output`, a run of `recipe` (and `options` of distill_prune) killed while computing
    step 3."""
    original = distill._train_step

    def train_step(run, step):
        if step == 3:
            raise Interrupted
        return original(run, step)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(distill, "_train_step", train_step)
        with pytest.raises(Interrupted):
            distill_prune(teacher, TEXTS, output, recipe, checkpoint_every=EVERY,
                          progress=False, **options)
    return output


def _copy_of(run, tmp_path):
    """A copy of a run directory that a test may resume or damage."""
    return Path(shutil.copytree(run, tmp_path / run.name))


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pruned_count(numel, sparsity=RECIPE.sparsity):
    return round(sparsity * numel)


def test_sparsity_is_exact_after_the_final_step(finished):
    output, report, _ = finished
    assert report.finished and report.step == RECIPE.steps
    weights = load_file(output / "model.safetensors")
    assert len(report.layers) == 12
    for layer in report.layers:
        weight = weights[layer.name + ".weight"]
        zeros = weight.numel() - int(torch.count_nonzero(weight))
        assert zeros == _pruned_count(weight.numel()), layer.name
        assert layer.nnz == weight.numel() - zeros
    total = sum(layer.shape[0] * layer.shape[1] for layer in report.layers)
    assert report.sparsity == 1 - sum(layer.nnz for layer in report.layers) / total


def test_masks_stay_applied_after_every_optimiser_step(teacher, finished):
    output, report, steps = finished
    assert [step for step, *_ in steps] == list(range(RECIPE.steps))
    sizes = [layer.shape[0] * layer.shape[1] for layer in report.layers]
    for step, sparsity, masked, pruned in steps:
        assert masked, step
        assert pruned == [_pruned_count(size, sparsity) for size in sizes], step
    # The cubic schedule rose from dense at step 0 to 90 % at step 4 and held it.
    schedule = [sparsity for _, sparsity, *_ in steps]
    assert schedule[0] == 0.0 and schedule[4:] == [RECIPE.sparsity] * 2
    assert schedule == sorted(schedule) and len(set(schedule)) == 5
    # The kept weights trained: they differ from the teacher's.
    student = load_model(str(output)).model
    dense = load_model(teacher).model
    for name, linear in matching_linears(student):
        kept = linear.weight != 0
        assert not torch.equal(linear.weight[kept], dense.get_submodule(name).weight[kept])


def test_resumed_run_ends_with_the_same_weights_bit_for_bit(teacher, finished, interrupted,
                                                             tmp_path):
    output = _copy_of(interrupted, tmp_path)
    assert (output / CHECKPOINT_FILE).is_file() and not (output / REPORT_FILE).exists()
    report = distill_prune(teacher, TEXTS, output, RECIPE, checkpoint_every=EVERY,
                           resume=True, progress=False)
    assert report.resumed_from == 2 and report.finished
    assert not (output / CHECKPOINT_FILE).exists()  # a finished run keeps only the model
    _assert_same_weights(output, finished[0])


def _assert_same_weights(output, reference):
    weights = load_file(output / "model.safetensors")
    expected = load_file(reference / "model.safetensors")
    assert weights.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(weights[key], value), key


def test_saved_directory_loads_with_its_tokenizer_and_report(teacher, finished):
    output, report, _ = finished
    loaded = load_model(str(output))
    saved = load_file(output / "model.safetensors")
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, saved[key]), key
    teacher_tokenizer = load_model(teacher).tokenizer
    assert loaded.tokenizer(TEXTS)["input_ids"] == teacher_tokenizer(TEXTS)["input_ids"]
    written = json.loads((output / REPORT_FILE).read_text())
    assert written["recipe"]["seed"] == 0 and written["recipe"]["sparsity"] == 0.9
    assert written["finished"] is True
    assert [layer["nnz"] for layer in written["layers"]] == [l.nnz for l in report.layers]
    assert written["after"]["embedding_cosine"] == report.after.embedding_cosine
    assert written["after"]["task"]["accuracy"] == report.after.task.accuracy
    for fidelity in (report.before, report.after):
        assert isinstance(fidelity.task, TaskReport) and fidelity.task.test_size == 30
        assert fidelity.embedding_cosine == fidelity.task.cosine
        assert 0.0 < fidelity.embedding_cosine < 1.0
    assert report.eval_texts == 30


def test_resume_from_another_recipe_is_refused_and_keeps_the_checkpoint(
        teacher, interrupted, tmp_path, capsys):
    output = _copy_of(interrupted, tmp_path)
    checkpoint = output / CHECKPOINT_FILE
    before = _digest(checkpoint)
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    status = main(["prune", "--model", teacher, "--output", str(output), "--texts", str(texts),
                   "--steps", "6", "--batch-size", "4", "--prune-every", "1", "--sparsity",
                   "0.8", "--resume"])
    assert status == 2
    error = capsys.readouterr().err
    assert (f"sparsemac prune: error: cannot resume {checkpoint}: it is a run of another "
            "model, corpus or recipe (recipe.sparsity 0.9 in the checkpoint, 0.8 now)") in error
    assert _digest(checkpoint) == before


def test_resume_from_another_model_is_refused(interrupted, tmp_path):
    output = _copy_of(interrupted, tmp_path)
    before = _digest(output / CHECKPOINT_FILE)
    other = tiny_bert_dir(tmp_path / "other", seed=1)
    with pytest.raises(ValueError, match=r"another model, corpus or recipe \(model '.*tiny' in "
                                         r"the checkpoint, '.*other' now; teacher_sha256 "):
        distill_prune(other, TEXTS, output, RECIPE, resume=True, progress=False)
    assert _digest(output / CHECKPOINT_FILE) == before


def test_unfinished_run_needs_resume(teacher, interrupted):
    before = _digest(interrupted / CHECKPOINT_FILE)
    with pytest.raises(ValueError, match=f"output {interrupted} holds an unfinished run; pass "
                                         "--resume to continue it, or choose another"):
        distill_prune(teacher, TEXTS, interrupted, RECIPE, progress=False)
    assert _digest(interrupted / CHECKPOINT_FILE) == before


def test_output_that_is_not_a_run_is_refused_untouched(teacher, tmp_path):
    output = tmp_path / "busy"
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    for resume in (False, True):
        with pytest.raises(ValueError, match=f"output {output} exists and is not a sparsemac "
                                             "prune run"):
            distill_prune(teacher, TEXTS, output, RECIPE, resume=resume, progress=False)
    assert [p.name for p in output.iterdir()] == ["notes.txt"]


def test_finished_run_is_not_overwritten(teacher, finished):
    output = finished[0]
    before = _digest(output / "model.safetensors")
    with pytest.raises(ValueError, match="already holds a finished run"):
        distill_prune(teacher, TEXTS, output, RECIPE, resume=True, progress=False)
    assert _digest(output / "model.safetensors") == before


def test_time_budget_shorter_than_a_step_fails_up_front(teacher, tmp_path, capsys):
    output = tmp_path / "run"
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    status = main(["prune", "--model", teacher, "--output", str(output), "--texts", str(texts),
                   "--time-budget", "0.001s"])
    assert status == 2
    assert ("sparsemac prune: error: time budget of 0.001 s is too short for one step: a step "
            "takes about") in capsys.readouterr().err
    assert not output.exists()


def test_resume_with_nothing_to_resume_is_refused(teacher, tmp_path):
    for output in (tmp_path / "missing", tmp_path):
        with pytest.raises(ValueError, match=f"--resume: {output} holds no run to resume"):
            distill_prune(teacher, TEXTS, output, RECIPE, resume=True, progress=False)
    assert not (tmp_path / "missing").exists()


def test_threads_must_be_positive(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["prune", "--output", str(tmp_path / "run"), "--threads", "0"])
    assert exit_info.value.code == 2
    assert "expected a whole number of at least 1, not '0'" in capsys.readouterr().err


def test_the_written_model_follows_the_umask(finished):
    output = finished[0]
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.safetensors", "config.json"):
        assert (output / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_time_budget_stops_with_a_checkpoint_that_resumes_exactly(teacher, finished, tmp_path,
                                                                  monkeypatch):
    # A clock that advances one second a reading: each step then looks like a few seconds,
    # deterministically.
    ticks = iter(range(1_000_000))
    monkeypatch.setattr(distill, "_now", lambda: float(next(ticks)))
    output = tmp_path / "run"
    report = distill_prune(teacher, TEXTS, output, RECIPE, checkpoint_every=EVERY,
                           time_budget=20, progress=False)
    assert not report.finished and 0 < report.step < RECIPE.steps
    assert report.layers == [] and report.after is None
    assert (output / CHECKPOINT_FILE).is_file() and not (output / REPORT_FILE).exists()
    monkeypatch.undo()
    resumed = distill_prune(teacher, TEXTS, output, RECIPE, checkpoint_every=EVERY,
                            resume=True, progress=False)
    assert resumed.resumed_from == report.step and resumed.finished
    _assert_same_weights(output, finished[0])


def test_n_m_pattern_is_exact_after_the_final_step(teacher, tmp_path):
    recipe = DistillRecipe(sparsity=0.5, pattern="2:4", steps=6, batch_size=4, prune_every=1)
    report = distill_prune(teacher, TEXTS, tmp_path / "run", recipe, progress=False)
    weights = load_file(tmp_path / "run" / "model.safetensors")
    for layer in report.layers:
        groups = weights[layer.name + ".weight"].reshape(-1, 4)
        assert (groups != 0).sum(dim=1).tolist() == [2] * groups.shape[0], layer.name
    assert report.sparsity == 0.5


@pytest.mark.parametrize("method, pattern", [("wanda", None), ("sparsegpt", "k-aligned")])
def test_calibrated_masks_are_exact_after_the_final_step(teacher, tmp_path, method, pattern):
    recipe = DistillRecipe(method=method, pattern=pattern, sparsity=0.75, steps=4, batch_size=4,
                           prune_every=1)
    report = distill_prune(teacher, TEXTS, tmp_path / "run", recipe,
                           calibration_texts=TASK.calibration.texts + TEXTS[:8], progress=False)
    weights = load_file(tmp_path / "run" / "model.safetensors")
    for layer in report.layers:
        weight = weights[layer.name + ".weight"]
        nonzeros = (weight != 0).sum(dim=1)
        if pattern is None:  # wanda: exactly the layer's count, rows differing by at most one
            assert int(nonzeros.sum()) == weight.numel() - _pruned_count(weight.numel(), 0.75)
            assert int(nonzeros.max() - nonzeros.min()) <= 1
        else:  # every row a multiple of K=8, the layer within K/2 weights of the target
            assert (nonzeros % 8 == 0).all(), layer.name
            assert abs(int(nonzeros.sum()) - 0.25 * weight.numel()) <= 4


@pytest.mark.parametrize("options, message", [
    (dict(sparsity=0.6, pattern="2:4"), "sparsity 0.6 cannot be reached with 2:4: that "
                                        "pattern prunes exactly 0.5"),
    (dict(pattern="3x4"), "unknown pattern '3x4'"),
    (dict(pattern="k-aligned"), "the 'k-aligned' pattern needs a calibrated method (wanda or "
                                "sparsegpt), not 'magnitude'"),
    (dict(method="obs"), "unknown mask method 'obs'; valid: 'magnitude', 'wanda', 'sparsegpt'"),
    (dict(steps=1), "steps must be at least 2"),
    (dict(sparsity=1.0), "sparsity must be between 0 and 1 (exclusive; 0 with a sparse "
                         "activation), not 1.0"),
    (dict(sparsity=0.0), "(exclusive; 0 with a sparse activation), not 0.0"),
    (dict(activation="topk:0"), "topk:F's kept fraction F must be a fraction strictly "
                                "between 0 and 1, not 0.0"),
])
def test_bad_recipes_are_refused(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        DistillRecipe(**options)


def test_calibrated_method_needs_calibration_text(teacher, tmp_path):
    with pytest.raises(ValueError, match="mask method 'wanda' needs calibration texts"):
        distill_prune(teacher, TEXTS, tmp_path / "run", DistillRecipe(method="wanda"),
                      progress=False)
    assert not (tmp_path / "run").exists()


def test_empty_corpus_is_refused(teacher, tmp_path):
    with pytest.raises(ValueError, match="the distillation corpus is empty"):
        distill_prune(teacher, [], tmp_path / "run", RECIPE, progress=False)


def test_a_task_model_is_distilled_into_a_task_model(tmp_path):
    model, _ = tiny_task_model_dir(tmp_path)
    recipe = DistillRecipe(steps=4, batch_size=4, prune_every=1, embedding_weight=0.0,
                           hidden_weight=0.0)
    report = distill_prune(model, TEXTS, tmp_path / "run", recipe, progress=False)
    # The soft-logit loss alone trained it; it is scored on the teacher's held-out split.
    assert report.finished and report.final_loss > 0
    teacher = load_task_model(model)
    assert report.eval_texts == 12
    for fidelity in (report.before, report.after):
        assert fidelity.task is None and fidelity.accuracy.n == 12
        assert fidelity.accuracy.baseline.correct == teacher_correct(teacher)
    student = load_task_model(tmp_path / "run")
    assert student.task == teacher.task
    assert report.sparsity == pytest.approx(0.9, abs=1e-3)
    assert not torch.equal(student.model.classifier.weight, teacher.model.classifier.weight)


def teacher_correct(teacher):
    test = teacher.task.splits().test
    return sum(p == label for p, label in zip(predict(teacher.model, teacher.tokenizer,
                                                      test.texts), test.labels))


# A sparse feed-forward activation ---------------------------------------------------------------

ACTIVATION = DistillRecipe(steps=6, batch_size=4, prune_every=1, activation="topk:0.25")


@pytest.fixture(scope="module")
def sparse_activation_run(teacher, tmp_path_factory):
    """Weights and activation at once, uninterrupted, then interrupted at step 3 and resumed."""
    runs = tmp_path_factory.mktemp("activation")
    report = distill_prune(teacher, TEXTS, runs / "whole", ACTIVATION, checkpoint_every=EVERY,
                           task=TASK, progress=False)
    _interrupt(teacher, runs / "resumed", ACTIVATION)
    return runs, report


def test_a_sparse_activation_run_resumes_and_reports_the_measured_zeros(teacher,
                                                                        sparse_activation_run):
    from sparsemac.sw.ffn_activation import SparseActivation

    runs, report = sparse_activation_run
    with pytest.raises(ValueError, match=r"recipe\.activation 'topk:0\.25' in the checkpoint, "
                                         r"'relu' now"):
        distill_prune(teacher, TEXTS, runs / "resumed", DistillRecipe(
            steps=6, batch_size=4, prune_every=1, activation="relu"), resume=True,
                      progress=False)
    resumed = distill_prune(teacher, TEXTS, runs / "resumed", ACTIVATION,
                            checkpoint_every=EVERY, resume=True, progress=False)
    assert resumed.resumed_from == 2 and resumed.finished
    _assert_same_weights(runs / "resumed", runs / "whole")
    config = json.loads((runs / "whole" / "config.json").read_text())
    assert config["sparsemac_activation"] == {"spec": "topk:0.25", "thresholds": None}
    loaded = load_model(str(runs / "whole")).model
    assert all(isinstance(layer.intermediate.intermediate_act_fn, SparseActivation)
               for layer in loaded.encoder.layer)
    for fidelity in (report.before, report.after):
        measured = fidelity.activations
        assert measured.activation == "topk:0.25" and measured.texts == 30
        assert [layer.name for layer in measured.layers] == [
            "encoder.layer.0.output.dense", "encoder.layer.1.output.dense"]
        assert all(layer.sparsity >= 0.75 for layer in measured.layers)  # 16 of 64 kept
    written = json.loads((runs / "whole" / REPORT_FILE).read_text())
    assert written["recipe"]["activation"] == "topk:0.25"
    assert written["after"]["activations"]["layers"][0]["zeros"] == \
        report.after.activations.layers[0].zeros


@pytest.mark.parametrize("sparsity", ["0.5", "0"])
def test_one_shot_trains_nothing_and_writes_the_model(teacher, tmp_path, capsys, sparsity):
    output = tmp_path / "one-shot"
    status = main(["prune", "--model", teacher, "--output", str(output), "--one-shot",
                   "--activation", "relu", "--sparsity", sparsity, "--batch-size", "4"])
    assert status == 0
    printed = capsys.readouterr().out
    assert f"magnitude to {float(sparsity):.1%} in one shot, activation relu" in printed
    assert "distilled" not in printed and "activation zeros" in printed
    written = json.loads((output / REPORT_FILE).read_text())
    assert written["step"] == 0 and written["finished"] is True
    assert written["before"] == written["after"]
    assert written["after"]["activations"]["activation"] == "relu"
    assert json.loads((output / "config.json").read_text())["sparsemac_activation"]["spec"] \
        == "relu"


def test_a_task_models_layer_table_shows_its_activation_zeros(tmp_path, capsys):
    """A classifier's linears are named ``bert.encoder...``, while the activation zeros are
    counted in its encoder: the table still finds each ``output.dense``'s."""
    model, _ = tiny_task_model_dir(tmp_path)
    status = main(["prune", "--model", model, "--output", str(tmp_path / "run"), "--one-shot",
                   "--activation", "relu", "--sparsity", "0.5", "--batch-size", "4"])
    assert status == 0
    feeds = [f"bert.encoder.layer.{index}.output.dense" for index in range(2)]
    rows = [line.split() for line in capsys.readouterr().out.splitlines()
            if line.split() and line.split()[0] in feeds]
    assert [row[0] for row in rows] == feeds
    assert all("-" not in row for row in rows), rows


@pytest.mark.parametrize("value", ["topk:2", "gelu", "relu:-1"])
def test_a_bad_activation_exits_2_before_any_work(teacher, tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exit_:
        main(["prune", "--model", teacher, "--output", str(tmp_path / "run"), "--activation",
              value])
    assert exit_.value.code == 2
    assert "--activation" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_refuses_another_activation_and_runs_its_own(sparse_activation_run,
                                                                  capsys):
    whole = str(sparse_activation_run[0] / "whole")
    status = main(["bert", "--model", whole, "--backend", "reference", "--activation", "relu"])
    assert status == 2
    assert "carries activation topk:0.25; it cannot be made relu" in capsys.readouterr().err
    assert main(["bert", "--model", whole, "--backend", "reference", "--sparsity", "0",
                 "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["activation"] == "topk:0.25"


def test_a_pruned_start_keeps_its_zeros_while_the_activation_is_distilled(teacher, finished,
                                                                          tmp_path):
    start = finished[0]
    recipe = DistillRecipe(sparsity=0.0, steps=4, batch_size=4, prune_every=1,
                           activation="topk:0.25")
    output = _interrupt(teacher, tmp_path / "weights-first", recipe, init=start)
    resumed = distill_prune(teacher, TEXTS, output, recipe, checkpoint_every=EVERY, resume=True,
                            progress=False, init=start)
    assert resumed.finished and resumed.resumed_from == 2
    pruned = load_file(start / "model.safetensors")
    trained = load_file(output / "model.safetensors")
    for layer in resumed.layers:
        weight = trained[layer.name + ".weight"]
        assert torch.equal(weight == 0, pruned[layer.name + ".weight"] == 0), layer.name
        assert not torch.equal(weight, pruned[layer.name + ".weight"]), layer.name
    assert json.loads((output / "config.json").read_text())["sparsemac_activation"]["spec"] \
        == "topk:0.25"
    with pytest.raises(ValueError, match="init_sha256 None in the checkpoint"):
        distill_prune(teacher, TEXTS, _interrupt(teacher, tmp_path / "from-teacher", recipe),
                      recipe, resume=True, progress=False, init=start)


def test_a_task_model_takes_a_sparse_activation_after_its_weights(tmp_path):
    model, _ = tiny_task_model_dir(tmp_path)
    weights = DistillRecipe(sparsity=0.5, steps=2, batch_size=4, prune_every=1)
    distill_prune(model, TEXTS, tmp_path / "weights", weights, progress=False)
    activation = DistillRecipe(sparsity=0.0, steps=2, batch_size=4, prune_every=1,
                               activation="topk:0.25")
    report = distill_prune(model, TEXTS, tmp_path / "both", activation, init=tmp_path / "weights",
                           progress=False)
    assert report.finished and report.after.accuracy is not None
    assert report.sparsity == pytest.approx(0.5, abs=1e-3)  # the first run's zeros stay
    assert report.after.activations.sparsity >= 0.7
    student = load_task_model(tmp_path / "both")
    assert student.task == load_task_model(model).task
    # The student computes the activation it was distilled with, loaded as a task model too.
    assert model_activation(student.model).spec == "topk:0.25"
    with pytest.raises(ValueError, match="the teacher is a task model, so the start must be"):
        distill_prune(model, TEXTS, tmp_path / "wrong", activation,
                      init=tiny_bert_dir(tmp_path / "plain", seed=0), progress=False)
    assert not (tmp_path / "wrong").exists()
