"""``sparsemac compare``: a tiny speed-accuracy front checked against independent figures, the
front and best-point rules on constructed points, and bad input."""

import copy
import csv
import json

import numpy as np
import pytest

from helpers import tiny_bert_dir, tiny_task_model_dir

from sparsemac.hw.config import DEFAULT_CONFIG
from sparsemac.hw.formats import ColumnIndex, Mode
from sparsemac.app.cli import main
from sparsemac.app.commands import compare as command
from sparsemac.sw.csr import CSRMatrix
from sparsemac.sw.finetune import load_task_model, predict, score_predictions
from sparsemac.sw.model_offload import matmul_cycles
from sparsemac.sw.models import load_model
from sparsemac.app.pipelines import compare, pareto_front
from sparsemac.app.pipelines.compare import FrontPoint, best_within
from sparsemac.sw.pruning import DEFAULT_BERT_PATTERNS, matching_linears, prune_model
from sparsemac.sw.quantisation import quantise_model, quantise_weights
from sparsemac.sw.stats import compare_paired
from sparsemac.sw.task import (SplitSizes, embed_splits, evaluate_embeddings, load_labelled,
                               model_embedder, task_splits)

TRAIN, TEST, WORKLOAD = 24, 12, 2
SIZES = SplitSizes(train=TRAIN, test=TEST)


@pytest.fixture(scope="module")
def tiny_front(tmp_path_factory):
    """``sparsemac compare --json`` over 2 methods x 2 sparsities on a tiny task."""
    output = tmp_path_factory.mktemp("front")
    # Plain int8, so that the independent evaluations below need no SmoothQuant of their own.
    argv = ["compare", "--json", "--methods", "magnitude,random", "--sparsities", "0.5,0.9",
            "--smoothing", "none",
            "--train", str(TRAIN), "--test", str(TEST), "--workload", str(WORKLOAD),
            "--output", str(output)]
    status = main(argv)
    return status, output


def test_the_tiny_front_exits_0_and_writes_its_files(tiny_front):
    status, output = tiny_front
    assert status == 0
    summary = json.loads((output / "compare.json").read_text())
    with (output / "compare.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [row["label"] for row in rows] == [point["label"] for point in summary["points"]] == [
        "float", "int8", "magnitude 0.5", "magnitude 0.9", "random 0.5", "random 0.9"]
    assert (output / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cycles_equal_the_cycle_model_of_the_pruned_weights(tiny_front):
    _, output = tiny_front
    summary = json.loads((output / "compare.json").read_text())
    loaded = load_model("minilm")
    splits = task_splits(load_labelled(), sizes=SIZES)
    batch = loaded.tokenizer(splits.test.texts[:WORKLOAD], padding=True, return_tensors="pt")
    tokens = batch["input_ids"].numel()  # one call per layer: every padded token
    assert summary["workload"] == {"texts": WORKLOAD, "tokens": batch["input_ids"].shape[1]}
    for point in summary["points"][1:]:
        model = copy.deepcopy(loaded.model)
        if point["kind"] == "pruned":
            prune_model(model, point["sparsity_target"], point["method"], seed=0)
        csrs = [CSRMatrix.from_dense(quantise_weights(linear.weight.detach()).values)
                for _, linear in matching_linears(model)]
        sparse = sum(matmul_cycles(csr, tokens, DEFAULT_CONFIG, Mode.SPARSE) for csr in csrs)
        dense = sum(matmul_cycles(csr, tokens, DEFAULT_CONFIG, Mode.DENSE) for csr in csrs)
        assert (point["sparse_cycles"], point["dense_cycles"]) == (sparse, dense)
        assert point["speedup"] == dense / sparse
        assert point["sparsity"] == 1 - sum(csr.nnz for csr in csrs) / sum(
            csr.rows * csr.cols for csr in csrs)
        assert point["host_equals_device"] is True
    float_point = summary["points"][0]
    assert float_point["sparse_cycles"] == float_point["dense_cycles"] == dense
    assert float_point["speedup"] == 1.0


def test_accuracies_equal_an_independent_evaluation(tiny_front):
    _, output = tiny_front
    summary = json.loads((output / "compare.json").read_text())
    loaded = load_model("minilm")
    splits = task_splits(load_labelled(), sizes=SIZES)
    dense = embed_splits(model_embedder(loaded.model, loaded.tokenizer), splits)
    model = copy.deepcopy(loaded.model)
    prune_model(model, 0.5, "magnitude")
    quantise_model(model, DEFAULT_BERT_PATTERNS, granularity="token")
    task = evaluate_embeddings(dense, model_embedder(model, loaded.tokenizer), splits)
    point = summary["points"][2]
    assert point["label"] == "magnitude 0.5"
    assert (point["accuracy"], point["accuracy_dense_probe"]) == (
        task.accuracy, task.accuracy_dense_probe)
    assert point["cosine"] == pytest.approx(task.cosine, abs=1e-12)
    assert point["knn_agreement"] == task.knn_agreement
    assert summary["dense_accuracy"] == summary["points"][0]["accuracy"] == task.dense_accuracy


def test_the_report_front_and_best_follow_their_rules(tiny_front):
    _, output = tiny_front
    summary = json.loads((output / "compare.json").read_text())
    points = summary["points"]
    dominated = {i for i, a in enumerate(points) for j, b in enumerate(points)
                 if i != j and b["speedup"] >= a["speedup"] and b["accuracy"] >= a["accuracy"]
                 and (b["speedup"], b["accuracy"]) != (a["speedup"], a["accuracy"])}
    assert set(summary["front"]) == set(range(len(points))) - dominated
    floor = summary["dense_accuracy"] - 0.01
    for method, index in summary["best"].items():
        candidates = [i for i, p in enumerate(points) if p["method"] == method
                      and p["accuracy"] >= floor - 1e-9]
        assert index == (max(candidates, key=lambda i: points[i]["speedup"])
                         if candidates else None)


def _point(method, speedup, accuracy, kind="pruned"):
    return FrontPoint(method=method, kind=kind, model="m", sparsity_target=0.5, sparsity=0.5,
                      sparse_cycles=100, dense_cycles=int(100 * speedup), speedup=speedup,
                      sparse_weight_bytes=1, dense_weight_bytes=1, accuracy=accuracy,
                      accuracy_dense_probe=accuracy, cosine=1.0, knn_agreement=1.0,
                      host_equals_device=True, seconds=0.0)


def test_pareto_front_on_constructed_points():
    points = [_point("float", 1.0, 0.70, "float"), _point("int8", 1.01, 0.69, "int8"),
              _point("a", 2.0, 0.70), _point("a", 5.0, 0.65), _point("b", 4.0, 0.60),
              _point("b", 5.0, 0.65), _point("c", 9.0, 0.50)]
    # float is beaten by a 2.0 (as accurate, faster); int8 by both; b 4.0 by a 5.0; the second
    # of two equal points (b 5.0) goes.
    assert pareto_front(points, "speedup", "accuracy", maximise=True) == [2, 3, 6]


def test_best_within_one_point_on_constructed_points():
    points = [_point("float", 1.0, 0.707, "float"), _point("int8", 1.01, 0.702, "int8"),
              _point("a", 2.0, 0.700), _point("a", 5.0, 0.697), _point("a", 9.0, 0.6969),
              _point("b", 9.0, 0.60), _point("c", 3.0, 0.71), _point("c", 2.5, 0.72)]
    # Exactly one point below float (0.697 = 0.707 - 0.01) counts; 0.6969 does not.
    assert best_within(points, 0.707) == {"int8": 1, "a": 3, "b": None, "c": 6}
    assert best_within(points, 0.707, within=2.0) == {"int8": 1, "a": 4, "b": None, "c": 6}


def test_help_defaults_agree_with_the_pipeline():
    assert command.DEFAULT_METHODS.split(",") == list(compare.DEFAULT_METHODS)
    assert [float(s) for s in command.DEFAULT_SPARSITIES.split(",")] == list(
        compare.DEFAULT_SPARSITIES)
    assert (command.DEFAULT_TRAIN, command.DEFAULT_TEST, command.DEFAULT_WORKLOAD) == (
        compare.DEFAULT_SIZES.train, compare.DEFAULT_SIZES.test, compare.DEFAULT_WORKLOAD)


@pytest.mark.parametrize("argv, message", [
    (["--calibration", "{tmp}/missing.txt"], "{tmp}/missing.txt: no such file"),
    (["--checkpoints", "{tmp}/nowhere"], "checkpoint {tmp}/nowhere: no such directory"),
    (["--workload", "50", "--test", "40"], "the workload must be 1 to 40 test texts"),
    (["--data", "{tmp}/empty.csv"], "{tmp}/empty.csv: the file is empty"),
    (["--index", "delta"], "the k8t4 array has no delta decoder"),
])
def test_bad_input_exits_2_before_any_model(capsys, tmp_path, argv, message):
    (tmp_path / "empty.csv").write_text("")
    argv = [arg.format(tmp=tmp_path) for arg in argv]
    assert main(["compare", "--output", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err
    assert f"sparsemac compare: error: {message.format(tmp=tmp_path)}" in err
    assert "float model" not in err and not (tmp_path / "out").exists()


def test_a_bad_method_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--methods", "magnitude,sparsegpt-5:4"])
    assert exit_info.value.code == 2
    assert "after sparsegpt- comes an N:M pattern" in capsys.readouterr().err


@pytest.mark.parametrize("index", list(ColumnIndex))
def test_other_configs_and_a_memory_model_count_the_same_calls(tmp_path, index):
    from sparsemac.hw.config import ArrayConfig
    from sparsemac.sw.memory import memory_preset
    from sparsemac.sw.throttled_cycle_model import layer_cycles

    delta_bits = 5 if index == ColumnIndex.DELTA else 0
    first = ArrayConfig(delta_bits=delta_bits)
    small = ArrayConfig(lanes=4, token_lanes=4, delta_bits=delta_bits)
    memory = memory_preset("ulx3s-sdram")
    report = compare.measure_front(["magnitude"], [0.9], configs=(first, small), sizes=SIZES,
                                   workload=WORKLOAD, memory=memory, output=tmp_path, index=index)
    loaded = load_model("minilm")
    splits = task_splits(load_labelled(), sizes=SIZES)
    tokens = loaded.tokenizer(splits.test.texts[:WORKLOAD], padding=True,
                              return_tensors="pt")["input_ids"].numel()
    model = copy.deepcopy(loaded.model)
    prune_model(model, 0.9, "magnitude")
    csrs = [CSRMatrix.from_dense(quantise_weights(linear.weight.detach()).values)
            for _, linear in matching_linears(model)]
    point = report.points[2]
    assert point.label == "magnitude 0.9"
    assert list(point.by_config) == [first.key(), small.key()]
    for config in (first, small):
        cycles = point.by_config[config.key()]
        for mode in ("sparse", "dense"):
            kind = Mode.SPARSE if mode == "sparse" else Mode.DENSE
            assert cycles[f"{mode}_cycles"] == sum(
                matmul_cycles(csr, tokens, config, kind, index) for csr in csrs)
            assert cycles[f"memory_{mode}_cycles"] == sum(
                layer_cycles(csr, tokens, config, kind, memory, index).cycles for csr in csrs)
    assert point.by_config[first.key()]["sparse_cycles"] == point.sparse_cycles
    assert report.index == index.name.lower()
    if index == ColumnIndex.DELTA:  # fewer bytes a nonzero: fewer memory-bound cycles than CSR
        assert point.by_config[first.key()]["memory_sparse_cycles"] < sum(
            layer_cycles(csr, tokens, first, Mode.SPARSE, memory).cycles for csr in csrs)
    titles = [title for title, _, _ in report.sections()]
    assert any(title.startswith("Cycles on every config") for title in titles)


def test_an_output_under_a_file_is_refused_before_any_model(capsys, tmp_path):
    (tmp_path / "a-file").write_text("kept")
    assert main(["compare", "--output", str(tmp_path / "a-file" / "cmp")]) == 2
    err = capsys.readouterr().err
    assert f"'{tmp_path}/a-file' is a file, not a folder" in err
    assert "float model" not in err and (tmp_path / "a-file").read_text() == "kept"


def test_a_truncated_checkpoint_is_refused_before_any_point(capsys, tmp_path):
    checkpoint = tmp_path / "truncated"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text('{"model_type": "bert", "hidden')
    assert main(["compare", "--output", str(tmp_path / "out"), "--checkpoints",
                 str(checkpoint)]) == 2
    err = capsys.readouterr().err
    assert "config.json" in err and "float model" not in err
    assert not (tmp_path / "out").exists()


def test_no_method_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--methods", " , "])
    assert exit_info.value.code == 2
    assert "--methods names no method" in capsys.readouterr().err


def test_methods_none_asks_for_the_float_and_int8_rows_only():
    import argparse
    from sparsemac.app.commands.compare import add_arguments
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args(["--methods", "none"]).methods == []
    assert parser.parse_args([]).smoothing == 0.6
    assert parser.parse_args(["--smoothing", "None"]).smoothing is None


def test_best_within_reads_the_drop_interval_of_task_points():
    baseline = np.ones(400, dtype=bool)
    close, far = baseline.copy(), baseline.copy()
    close[:1] = False   # a drop of 0.25 points: its interval stays below 1 point
    far[:3] = False     # 0.75 points, but the interval's upper end passes 1 point
    points = [_point("float", 1.0, 1.0, "float"),
              _paired(_point("a", 2.0, 0.9975), compare_paired(baseline, close, seed=0)),
              _paired(_point("a", 3.0, 0.9925), compare_paired(baseline, far, seed=0))]
    assert points[2].paired.drop_interval.high > 0.01 > points[2].paired.drop
    assert best_within(points, 1.0) == {"a": 1}


def _paired(point, paired):
    point.paired = paired
    point.interval = paired.candidate.interval
    return point


@pytest.fixture(scope="module")
def task_front(tmp_path_factory):
    """``compare`` of a tiny task model: float, int8 and magnitude 50 %."""
    folder = tmp_path_factory.mktemp("task")
    model, data = tiny_task_model_dir(folder)
    report = compare.measure_front(["magnitude"], [0.5], model=model, data=data, workload=2,
                                   output=folder / "front")
    return model, data, report


def test_a_task_model_is_scored_with_intervals_and_paired_drops(task_front):
    model, data, report = task_front
    assert report.evaluation == compare.TASK_MODEL and report.data["test"] == 12
    assert report.bootstrap == {"seed": 0, "resamples": 10000, "level": 0.95}
    assert [point.label for point in report.points] == ["float", "int8", "magnitude 0.5"]
    float_point, int8_point, pruned = report.points
    assert float_point.paired is None and float_point.interval is not None
    assert all(point.host_equals_device for point in report.points[1:])
    # Independently: the task model, pruned and quantised on the host, scored on its test split.
    task = load_task_model(model)
    test = task.task.splits(data).test
    baseline = predict(task.model, task.tokenizer, test.texts)
    quantised = copy.deepcopy(task.model)
    prune_model(quantised, 0.5, "magnitude")
    quantise_model(quantised, DEFAULT_BERT_PATTERNS, granularity="token")
    expected = score_predictions(test.labels, predict(quantised, task.tokenizer, test.texts),
                                 baseline, seed=0)
    assert pruned.accuracy == expected.accuracy.accuracy
    assert pruned.interval == expected.accuracy.interval and pruned.paired == expected.paired
    assert float_point.accuracy == report.dense_accuracy == score_predictions(
        test.labels, baseline).accuracy.accuracy
    title = report.sections()[0][0]
    assert "task model: its own accuracy on 12 held-out test texts" in title
    assert "drop 95 % interval" in report.sections()[0][1]
    for method, index in report.best.items():
        within = [i for i, p in enumerate(report.points) if p.method == method
                  and p.paired is not None and 100 * p.paired.drop_interval.high <= 1]
        assert index == (max(within, key=lambda i: report.points[i].speedup) if within
                         else None)


def test_models_of_the_other_kind_are_refused(task_front, tmp_path, capsys):
    model, data, _ = task_front
    base = tiny_bert_dir(tmp_path / "base", seed=1)
    assert main(["compare", "--model", model, "--data", data, "--checkpoints", base,
                 "--output", str(tmp_path / "a")]) == 2
    assert "is not a fine-tuned task model" in capsys.readouterr().err
    assert main(["compare", "--model", base, "--checkpoints", model, "--output",
                 str(tmp_path / "b")]) == 2
    assert "is a fine-tuned task model" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_sparse_activation_reaches_the_device_and_the_host_alike(tmp_path):
    report = compare.measure_front(["magnitude"], [0.5], sizes=SIZES, workload=WORKLOAD,
                                   output=tmp_path, activation="topk:0.1")
    float_point, int8, pruned = report.points
    assert report.activation == "topk:0.1"
    assert float_point.activation == "none" and float_point.activation_sparsity == 0.0
    assert int8.label == "int8 topk:0.1" and pruned.label == "magnitude 0.5 topk:0.1"
    for point in (int8, pruned):
        assert point.activation == "topk:0.1"
        # 6 of 36 linears take the feed-forward activations, 90 % zero: at least 0.9 / 6 of all
        assert point.activation_sparsity > 0.15
        assert point.joint_ideal_speedup > 1 / (1 - point.sparsity)
        assert point.host_equals_device  # the host's int8 path sees the same zeros
    written = json.loads((tmp_path / "compare.json").read_text())
    assert written["points"][2]["activation_sparsity"] == pruned.activation_sparsity
