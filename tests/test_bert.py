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
