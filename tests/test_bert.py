"""``sparsemac bert`` under a memory model: each layer's cycles and energy for one inference."""

import json

from helpers import tiny_task_model_dir

from sparsemac.app.cli import main
from sparsemac.sw.finetune import read_task_info


def run_bert(capsys, *argv):
    """Runs ``sparsemac bert ARGV`` in-process: (exit status, stdout, stderr)."""
    status = main(["bert", "--backend", "reference", "--tokens", "4", *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_ideal_memory_figures_are_the_compute_bound_ones(capsys):
    status, out, err = run_bert(capsys, "--json")
    assert status == 0, err
    report = json.loads(out)
    memory = report["memory"]
    assert memory["memory"]["name"] == "ideal"
    assert len(memory["layers"]) == len(report["layers"]) == 36
    assert memory["cycles"] == memory["compute_cycles"]
    for mode in ("sparse", "dense"):
        assert memory["cycles"][mode] == sum(layer[mode]["cycles"] for layer in memory["layers"])
    assert all(layer["tokens"] == 4 for layer in memory["layers"])
    assert 0 < memory["energy_pj"]["sparse"] < memory["energy_pj"]["dense"]


def test_the_cycles_are_those_of_the_one_sentence(capsys):
    # The exact cycle model of each layer for the sentence's tokens: the similarity-ranking
    # sentences that run afterwards must not add to the device's counters.
    status, out, err = run_bert(capsys, "--json")
    assert status == 0, err
    report = json.loads(out)
    assert report["ranking_agreement"] is not None  # the ranking did run
    for layer, memory in zip(report["layers"], report["memory"]["layers"]):
        assert layer["sparse_cycles"] == memory["sparse"]["cycles"], layer["name"]
    assert report["sparse_cycles"] == report["memory"]["compute_cycles"]["sparse"]


def test_the_summary_is_printed_last(capsys):
    status, out, err = run_bert(capsys)
    assert status == 0, err
    assert out.rstrip().splitlines()[-1].lstrip().startswith("wall time")


def test_a_layer_that_does_not_fit_onchip_is_refused_before_the_run(capsys):
    status, out, err = run_bert(capsys, "--memory", "onchip")
    assert status == 2 and out == ""
    assert ("error: encoder.layer.0.attention.self.query (dense mode) has 147456 bytes of "
            "weights but the block RAM left beside a K=8 T=4 in<=4096 array holds 137216") in err
    assert "reference run" not in err


def test_a_calibrated_method_runs_the_whole_model(capsys, tmp_path):
    calibration = tmp_path / "calibration.txt"
    calibration.write_text("The lamp is lit at dusk.\nA ship passes in the night.\n",
                           encoding="utf-8")
    status, out, err = run_bert(capsys, "--json", "--method", "wanda-k-aligned",
                                "--sparsity", "0.75", "--calibration", str(calibration))
    assert status == 0, err
    report = json.loads(out)
    assert report["method"] == "wanda-k-aligned" and report["sparsity"] == 0.75
    for layer in report["layers"]:  # each layer keeps a multiple of K=8 nearest a quarter
        rows, cols = layer["shape"]
        assert layer["nnz"] <= 8 * round(rows * cols / 4 / 8)
        assert layer["nnz"] > 0.99 * rows * cols / 4


def test_a_missing_calibration_file_is_refused(capsys, tmp_path):
    missing = tmp_path / "nothing.txt"
    status, out, err = run_bert(capsys, "--method", "sparsegpt", "--calibration", str(missing))
    assert status == 2 and out == ""
    assert f"sparsemac bert: error: {missing}: no such file" in err
    assert "[sparsemac]" not in err


def test_the_delta_index_runs_the_whole_model_with_its_bytes_and_cycles(capsys):
    """``--index delta``: every layer's sparse jobs and weight bytes are the delta index's, and
    the memory figures follow it."""
    from sparsemac.hw.config import ArrayConfig
    from sparsemac.hw.formats import ColumnIndex, Mode
    from sparsemac.sw.csr import CSRMatrix
    from sparsemac.sw.memory import memory_preset
    from sparsemac.sw.models import load_model
    from sparsemac.sw.packing import weight_stream_bytes
    from sparsemac.sw.pruning import matching_linears, prune_model
    from sparsemac.sw.quantisation import quantise_weights
    from sparsemac.sw.throttled_cycle_model import layer_cycles

    # Plain int8, so that the independent CSR below needs no SmoothQuant of its own.
    status, out, err = run_bert(capsys, "--json", "--config", "k8t4d5", "--index", "delta",
                                "--memory", "ulx3s-sdram", "--smoothing", "none")
    assert status == 0, err
    report = json.loads(out)
    config = ArrayConfig.from_key("k8t4d5")
    model = load_model("minilm").model
    prune_model(model, 0.9, "magnitude")
    csrs = [CSRMatrix.from_dense(quantise_weights(linear.weight.detach()).values)
            for _, linear in matching_linears(model)]
    assert report["sparse_weight_bytes"] == sum(
        weight_stream_bytes(config, csr, Mode.SPARSE, ColumnIndex.DELTA) for csr in csrs)
    assert report["sparse_weight_bytes"] < sum(
        weight_stream_bytes(config, csr, Mode.SPARSE) for csr in csrs)
    memory = memory_preset("ulx3s-sdram")
    for layer, csr in zip(report["memory"]["layers"], csrs, strict=True):
        assert layer["sparse"]["cycles"] == layer_cycles(csr, 4, config, Mode.SPARSE, memory,
                                                         ColumnIndex.DELTA).cycles
    assert report["index"] == "delta"
    text = run_bert(capsys, "--config", "k8t4d5", "--index", "delta", "--smoothing", "none")[1]
    assert f"{report['sparse_weight_bytes']:,} DELTA vs" in text


def test_a_task_model_reports_its_accuracy_with_intervals(capsys, tmp_path):
    model, data = tiny_task_model_dir(tmp_path)
    status, out, err = run_bert(capsys, "--model", model, "--sparsity", "0.5", "--json")
    assert status == 0, err
    report = json.loads(out)
    task = report["task"]
    # The task model's held-out test split, scored float and offloaded on the same items.
    test = read_task_info(model).splits().test
    assert task["n"] == len(test) == 12 and task["seed"] == 0
    baseline, candidate = task["baseline"], task["candidate"]
    assert baseline["interval"]["low"] <= baseline["correct"] / 12 <= baseline["interval"]["high"]
    assert task["baseline_only"] - task["candidate_only"] == (baseline["correct"]
                                                              - candidate["correct"])
    assert len(report["layers"]) == 12  # the tiny encoder's linears; the head stays on the host
    status, out, err = run_bert(capsys, "--model", model, "--sparsity", "0.5")
    assert "task accuracy" in out and "accuracy drop" in out and "McNemar exact p" in out


def test_a_dual_sparse_run_counts_the_activation_zeros_everywhere(capsys):
    # Under ideal memory the cycle and energy model of each layer equals the device's count:
    # for the dual layers, that is the DUAL jobs' schedule of the activations they received.
    status, out, err = run_bert(capsys, "--json", "--config", "k8t4a1", "--activation",
                                "topk:0.1")
    assert status == 0, err
    report = json.loads(out)
    dual = [layer for layer in report["layers"] if layer["dual"]]
    assert [layer["name"] for layer in dual] == [f"encoder.layer.{index}.output.dense"
                                                 for index in range(6)]
    for layer, memory in zip(report["layers"], report["memory"]["layers"]):
        assert layer["sparse_cycles"] == memory["sparse"]["cycles"], layer["name"]
    assert report["sparse_cycles"] < report["weight_only_cycles"] < report["dense_cycles"]
    assert report["memory"]["energy_pj"]["sparse"] < report["memory"]["energy_pj"]["dense"]


def test_smoothquant_is_the_default_and_none_turns_it_off(capsys):
    # The default migrates with the built-in calibration text and keeps MiniLM closer to float
    # than plain int8 on the same sentence; the weights' zeros (and so the cycles) are the same.
    status, out, err = run_bert(capsys, "--json", "--sparsity", "0")
    assert status == 0, err
    smoothed = json.loads(out)
    status, out, err = run_bert(capsys, "--json", "--sparsity", "0", "--smoothing", "none")
    assert status == 0, err
    plain = json.loads(out)
    assert smoothed["smoothing"] == 0.6 and plain["smoothing"] is None
    assert smoothed["embedding_cosine"] > plain["embedding_cosine"]
    status, out, _ = run_bert(capsys, "--sparsity", "0", "--smoothing", "0.3")
    assert status == 0 and "SmoothQuant alpha 0.3," in out
