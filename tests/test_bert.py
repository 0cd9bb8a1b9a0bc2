"""``sparsemac bert`` under a memory model: each layer's cycles and energy for one inference."""

import json

from sparsemac.sw.cli import main


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
