"""``sparsemac simulate``: the default MiniLM job on Verilator, the reference fast path, and the
errors a user gets for bad input."""

import csv
import json

import pytest

from sparsemac.app.cli import main
from sparsemac.hw.config import ArrayConfig
from sparsemac.app.pipelines import simulate

REQUIRED_KEYS = {
    "sparsity", "tokens", "sparse_cycles", "dense_cycles", "speedup", "ideal_speedup",
    "bit_exact", "max_abs_error", "sim_cycles_per_s", "wall_s", "backend", "config", "model",
    "layer", "seed", "efficiency", "weight_bytes_sparse", "weight_bytes_dense",
    "cycle_model_match",
}


def run_simulate(capsys, *argv):
    """Runs ``sparsemac simulate ARGV`` in-process: (exit status, stdout, stderr)."""
    status = main(["simulate", *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def check_report(report, backend):
    assert REQUIRED_KEYS <= report.keys()
    assert report["backend"] == backend
    assert report["model"] == "minilm"
    assert report["layer"] == simulate.DEFAULT_LAYER
    assert report["bit_exact"] is True
    assert report["cycle_model_match"] is True
    assert report["sparsity"] == pytest.approx(0.9, abs=0.005)
    assert 5 < report["speedup"] <= report["ideal_speedup"]
    assert report["efficiency"] == pytest.approx(report["speedup"] / report["ideal_speedup"])
    assert report["weight_bytes_sparse"] < report["weight_bytes_dense"]
    assert report["config"]["lanes"] == 8 and report["config"]["token_lanes"] == 4


def test_default_job_on_verilator(capsys):
    status, out, err = run_simulate(capsys, "--json")
    assert status == 0, err
    report = json.loads(out)  # exactly one JSON object: progress went to stderr
    check_report(report, "verilator")
    assert report["sim_cycles_per_s"] > 0
    assert "[sparsemac]" in err


def test_reference_backend_and_table(capsys):
    status, out, err = run_simulate(capsys, "--json", "--backend", "reference")
    assert status == 0, err
    check_report(json.loads(out), "reference")

    status, out, err = run_simulate(capsys, "--backend", "reference", "--method", "2:4")
    assert status == 0, err
    assert "speedup" in out and "achieved 50.00%" in out


def test_board_estimate_from_the_committed_manifest(capsys):
    from sparsemac.bitstreams.build import committed_folder, link_wire_bytes, read_manifest

    manifest = read_manifest(committed_folder("ulx3s-85f"))
    status, out, err = run_simulate(capsys, "--json", "--backend", "reference",
                                    "--board", "ulx3s-85f")
    assert status == 0, err
    report = json.loads(out)
    # Without --config, --board estimates for the config the board's bitstream is built for.
    # (A manifest written before a config field existed lacks it: the field's default.)
    assert ArrayConfig(**report["config"]) == ArrayConfig(**manifest["config"])
    board = report["board"]
    assert board["clock_mhz"] * 1e6 == manifest["clock_hz"]
    for mode in ("sparse", "dense"):
        estimate = board[mode]
        assert estimate["compute_s"] == report[f"{mode}_cycles"] / manifest["clock_hz"]
        assert estimate["total_s"] == estimate["compute_s"] + estimate["link_s"]
    # The link carries the weights, the activations and the sums; sparse streams fewer bytes.
    assert board["sparse"]["link_s"] < board["dense"]["link_s"]
    assert board["sparse"]["link_s"] > link_wire_bytes(report["weight_bytes_sparse"]) * 10 / (
        manifest["baud"])


def test_board_estimate_refuses_another_config(capsys):
    status, _, err = run_simulate(capsys, "--backend", "reference", "--board", "ulx3s-85f",
                                  "--lanes", "8")
    assert status == 2
    assert "built for K=4 T=32 in<=512 registered, not K=8 T=32" in err
    assert "--config k4t32i512r1" in err


def test_fpga_backend_needs_a_port(capsys):
    status, _, err = run_simulate(capsys, "--backend", "fpga")
    assert status == 2 and "--backend fpga needs --port" in err
    status, _, err = run_simulate(capsys, "--backend", "fpga", "--port", "/dev/no-such-board")
    assert status == 1 and "cannot open serial port '/dev/no-such-board'" in err


@pytest.mark.parametrize("method, sparsity", [("2:4", "0.6"), ("sparsegpt-1:4", "0.5")])
def test_a_sparsity_the_pattern_cannot_reach_is_refused_before_any_work(capsys, method,
                                                                         sparsity):
    status, out, err = run_simulate(capsys, "--backend", "reference", "--method", method,
                                    "--sparsity", sparsity)
    pattern = method.rpartition("-")[2]
    assert status == 2 and out == ""
    assert f"error: sparsity {sparsity} cannot be reached with {pattern}" in err
    assert "loading" not in err


def test_an_nm_method_takes_its_own_sparsity_or_none(capsys):
    for extra in ([], ["--sparsity", "0.5"]):
        status, out, err = run_simulate(capsys, "--backend", "reference", "--method", "2:4",
                                        "--json", *extra)
        assert status == 0, err
        report = json.loads(out)
        # 2:4 prunes half; a weight that quantises to zero adds a little
        assert report["target_sparsity"] is None and 0.5 <= report["sparsity"] < 0.5001


def test_unknown_layer_lists_valid_names(capsys):
    status, _, err = run_simulate(capsys, "--backend", "reference", "--layer",
                                  "encoder.layer.0.nonsense")
    assert status == 2
    assert "encoder.layer.0.nonsense" in err and "encoder.layer.0.intermediate.dense" in err


def test_layer_wider_than_the_array_is_tiled(capsys):
    status, out, err = run_simulate(capsys, "--json", "--backend", "reference",
                                    "--max-in-features", "256")
    assert status == 0, err
    report = json.loads(out)
    assert report["jobs"] == 2  # 384 input features: column tiles of 256 and 128
    assert report["bit_exact"] is True and report["cycle_model_match"] is True


@pytest.mark.parametrize("sparsity", ["1.5", "-0.1", "lots"])
def test_sparsity_out_of_range(capsys, sparsity):
    with pytest.raises(SystemExit) as exit_info:
        run_simulate(capsys, "--backend", "reference", "--sparsity", sparsity)
    assert exit_info.value.code == 2
    assert "sparsity must be" in capsys.readouterr().err


# Options are checked before any work -------------------------------------------------------------

def test_fst_into_a_missing_folder_is_refused_before_the_run(capsys, tmp_path):
    path = tmp_path / "no-such-folder" / "run.fst"
    status, out, err = run_simulate(capsys, "--fst", str(path))
    assert status == 2 and out == ""
    assert f"folder {str(path.parent)!r} does not exist" in err
    assert "[sparsemac]" not in err  # nothing was loaded, built or run
    assert not path.parent.exists()


def test_fst_over_the_size_limit_is_refused_unless_raised(capsys, tmp_path):
    path = tmp_path / "run.fst"
    # The default job: 32 617 + 295 301 cycles, about 78 MB at the measured rate.
    cycles = 32_617 + 295_301
    estimate = simulate.estimate_fst_bytes(cycles, simulate.DEFAULT_CONFIG)
    assert estimate == cycles * simulate.FST_BYTES_PER_CYCLE
    status, _, err = run_simulate(capsys, "--fst", str(path), "--fst-limit", "0.05")
    assert status == 2
    assert (f"the waveform of {cycles:,} cycles would be about {estimate / 1e9:.2f} GB, over "
            "the 0.05 GB limit: raise it with --fst-limit") in err
    assert "opening the verilator device" not in err and not path.exists()


def test_the_fst_limit_scales_with_the_array():
    large = simulate.ArrayConfig(lanes=16, token_lanes=8)
    assert simulate.estimate_fst_bytes(1000, large) == 4 * simulate.estimate_fst_bytes(
        1000, simulate.DEFAULT_CONFIG)
    assert simulate.DEFAULT_FST_LIMIT == 1_000_000_000


@pytest.mark.parametrize("method, message", [
    ("foo", "unknown pruning method 'foo'; valid methods are 'magnitude', 'random' or an 'N:M'"),
    ("n:m", "pruning method 'n:m' does not say which pattern: write it as N:M, e.g. '2:4'"),
    ("4:2", "N:M pruning needs 1 <= n <= m, got n=4, m=2"),
])
def test_a_bad_method_is_refused_before_any_device(capsys, method, message):
    with pytest.raises(SystemExit) as exit_info:
        run_simulate(capsys, "--method", method)  # default backend: verilator
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "[sparsemac]" not in err
    with pytest.raises(ValueError, match="does not say which pattern"):
        simulate.simulate_layer(method="n:m", backend="reference")


def test_csv_report_matches_the_json(capsys, tmp_path):
    path = tmp_path / "simulate.csv"
    status, out, err = run_simulate(capsys, "--json", "--backend", "reference", "--csv",
                                    str(path))
    assert status == 0, err
    report = json.loads(out)
    with path.open() as file:
        [row] = list(csv.DictReader(file))
    assert row["config"] == "k8t4" and row["layer"] == report["layer"]
    for key in ("sparse_cycles", "dense_cycles", "weight_bytes_sparse", "tokens"):
        assert int(row[key]) == report[key]
    assert row["bit_exact"] == "True"

    status, _, err = run_simulate(capsys, "--backend", "reference", "--csv",
                                  str(tmp_path / "missing" / "x.csv"))
    assert status == 2 and "does not exist" in err and "[sparsemac]" not in err


def test_config_is_spelled_one_way(capsys):
    status, _, err = run_simulate(capsys, "--backend", "reference", "--board", "ulx3s-85f",
                                  "--config", "k4t4")
    assert status == 2 and "built for K=4 T=32" in err and "--config k4t32i512r1" in err
    with pytest.raises(SystemExit) as exit_info:
        run_simulate(capsys, "--config", "k8-t4")
    assert exit_info.value.code == 2
    assert "write k<lanes>t<token lanes>" in capsys.readouterr().err


# Memory models ---------------------------------------------------------------------------------

def test_memory_preset_counts_the_bytes(capsys):
    status, out, err = run_simulate(capsys, "--json", "--backend", "reference",
                                    "--memory", "ulx3s-sdram")
    assert status == 0, err
    report = json.loads(out)
    memory = report["memory"]
    assert memory["memory"]["name"] == "ulx3s-sdram"
    # The devices ran throttled: their cycles are the memory-bound ones, above compute-bound.
    assert memory["sparse"]["cycles"] == report["sparse_cycles"]
    assert memory["dense"]["cycles"] == report["dense_cycles"]
    assert memory["sparse"]["compute_cycles"] < report["sparse_cycles"]
    assert memory["sparse"]["bound"] == memory["dense"]["bound"] == "weights"
    assert memory["speedup"] == pytest.approx(report["speedup"])
    assert 0 < memory["sparse"]["energy_pj"] < memory["dense"]["energy_pj"]
    assert report["cycle_model_match"] is True


def test_bandwidth_is_a_custom_memory(capsys):
    status, out, err = run_simulate(capsys, "--json", "--backend", "reference",
                                    "--bandwidth", "4,2")
    assert status == 0, err
    memory = json.loads(out)["memory"]["memory"]
    assert (memory["name"], memory["weight_bytes_per_cycle"],
            memory["activation_bytes_per_cycle"]) == ("custom", 4.0, 2.0)


@pytest.mark.parametrize("argv, message", [
    (["--memory", "fast"], "error: unknown memory preset 'fast'"),
    (["--bandwidth", "0"], "error: the weight bandwidth must be a positive, finite number"),
    (["--memory", "uart", "--backend", "fpga", "--port", "/dev/null"],
     "error: memory uart needs a simulated backend"),
    (["--memory", "onchip", "--backend", "reference"],
     "error: encoder.layer.0.intermediate.dense (sparse mode) has 183096 bytes of weights but "
     "the block RAM left beside a K=8 T=4 in<=4096 array holds 137216"),
])
def test_bad_memory(capsys, argv, message):
    status, out, err = run_simulate(capsys, *argv)
    assert status == 2
    assert message in err
    assert "opening the" not in err  # refused before any device work


def test_memory_and_bandwidth_are_exclusive(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_simulate(capsys, "--memory", "uart", "--bandwidth", "2")
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_board_estimate_counts_the_memory(capsys):
    status, out, err = run_simulate(capsys, "--json", "--backend", "reference", "--board",
                                    "ulx3s-85f", "--memory", "ulx3s-sdram")
    assert status == 0, err
    report = json.loads(out)
    board, clock_hz = report["board"], report["board"]["clock_mhz"] * 1e6
    assert board["memory"] == "ulx3s-sdram"
    for mode in ("sparse", "dense"):
        cycles = report["memory"][mode]
        assert board[mode]["compute_s"] == cycles["cycles"] / clock_hz
        assert board[mode]["compute_s"] > cycles["compute_cycles"] / clock_hz
    status, out, err = run_simulate(capsys, "--backend", "reference", "--board", "ulx3s-85f",
                                    "--memory", "ulx3s-sdram")
    assert "fed by memory ulx3s-sdram" in out


# Calibrated methods --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def calibration_file(tmp_path_factory):
    """Eight short texts: calibration is then quick, and apart from the built-in task."""
    path = tmp_path_factory.mktemp("calibration") / "calibration.txt"
    path.write_text("\n".join(f"Sentence {i} about lamps, stairs and the sea at night."
                              for i in range(8)) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("backend", ["reference", "verilator"])
@pytest.mark.parametrize("method, sparsity, target", [
    ("sparsegpt-k-aligned", "0.75", 0.75), ("wanda-2:4", "0.5", None)])


def test_calibrated_methods_stay_bit_exact_and_cycle_exact(capsys, calibration_file, backend,
                                                            method, sparsity, target):
    status, out, err = run_simulate(
        capsys, "--json", "--backend", backend, "--method", method, "--sparsity", sparsity,
        "--tokens", "8", "--calibration", str(calibration_file))
    assert status == 0, err
    report = json.loads(out)
    assert report["method"] == method and report["target_sparsity"] == target
    assert report["bit_exact"] is True and report["cycle_model_match"] is True
    assert report["sparse_cycles"] == report["predicted_sparse_cycles"]
    # K-aligned: 1536 x 384 keeps 147,456 weights, a multiple of K=8; 2:4 keeps half. int8
    # rounding may zero a few more.
    kept = 1 - (target or 0.5)
    assert 1 - kept <= report["sparsity"] < 1 - kept + 0.002
    # Every row of a K-aligned layer fills its chunks of K: the speedup is the ideal one but
    # for each job's fixed start and drain.
    if target:
        assert report["efficiency"] > 0.97


def test_calibrated_pruning_uses_the_calibration_text(calibration_file, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text("A completely different text.\nAnd another one, longer than that.\n",
                     encoding="utf-8")
    reports = [simulate.simulate_layer(method="wanda", sparsity=0.5, backend="reference",
                                       tokens=4, calibration=path)
               for path in (calibration_file, calibration_file, other)]
    assert reports[0].sparse_cycles == reports[1].sparse_cycles
    assert reports[0].relative_error == reports[1].relative_error  # seeded, deterministic
    assert reports[0].relative_error != reports[2].relative_error


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"  \n\n", "the file is empty (or only whitespace)"),
    (b"caf\xe9\n", "not UTF-8 (byte 0xe9 on line 1): save it as UTF-8"),
])
def test_a_bad_calibration_file_is_refused_before_any_model(capsys, tmp_path, content, message):
    path = tmp_path / "calibration.txt"
    if content is not None:
        path.write_bytes(content)
    status, _, err = run_simulate(capsys, "--method", "sparsegpt", "--calibration", str(path))
    assert status == 2
    assert f"sparsemac simulate: error: {path}: {message}" in err
    assert "[sparsemac]" not in err  # nothing loaded, no device opened


def test_calibration_text_needs_a_calibrated_method(capsys, calibration_file):
    status, _, err = run_simulate(capsys, "--calibration", str(calibration_file))
    assert status == 2
    assert ("calibration text is for wanda and sparsegpt; method magnitude takes none"
            in err)


@pytest.mark.parametrize("method, message", [
    ("wanda-3", "method 'wanda-3': after wanda- comes an N:M pattern with 1 <= N <= M "
                "(e.g. wanda-2:4) or 'k-aligned', not '3'"),
    ("obs", "unknown pruning method 'obs'; valid methods are 'magnitude', 'random' or an 'N:M' "
            "string such as '2:4'; or a calibrated one: wanda, sparsegpt, each optionally with "
            "-N:M or -k-aligned (e.g. sparsegpt-2:4)"),
])
def test_a_bad_calibrated_method_is_refused(capsys, method, message):
    with pytest.raises(SystemExit) as exit_info:
        run_simulate(capsys, "--method", method)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("target, message", [
    ("{tmp}", "cannot write the CSV report '{tmp}': it is a folder"),
    ("{tmp}/a-file/out.csv", "cannot write the CSV report '{tmp}/a-file/out.csv': "
                             "'{tmp}/a-file' is a file, not a folder"),
])
def test_a_csv_path_that_cannot_be_written_is_refused_before_the_run(capsys, tmp_path, target,
                                                                     message):
    (tmp_path / "a-file").write_text("kept")
    status, out, err = run_simulate(capsys, "--backend", "reference", "--csv",
                                    target.format(tmp=tmp_path))
    assert status == 2 and out == ""
    assert f"sparsemac simulate: error: {message.format(tmp=tmp_path)}" in err
    assert "loading" not in err and (tmp_path / "a-file").read_text() == "kept"


def test_a_failed_csv_write_keeps_the_printed_report(capsys):
    status, out, err = run_simulate(capsys, "--backend", "reference", "--csv", "/dev/full")
    assert status == 2
    assert "Summary" in out and "bit-exact" in out
    assert ("sparsemac simulate: error: cannot write the CSV report '/dev/full': No space left "
            "on device; the report is printed above") in err


def test_the_csv_report_says_where_it_went(capsys, tmp_path):
    path = tmp_path / "simulate.csv"
    status, _, err = run_simulate(capsys, "--backend", "reference", "--csv", str(path))
    assert status == 0 and path.is_file()
    assert f"CSV report written to {path}" in err


@pytest.mark.parametrize("limit", ["-1", "0", "nan", "x"])
def test_a_fst_limit_that_is_not_positive_is_refused(capsys, limit):
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", "--fst-limit", limit])
    assert exit_info.value.code == 2
    assert f"expected a positive number, not '{limit}'" in capsys.readouterr().err


def test_the_job_section_names_the_whole_config(capsys):
    status, out, err = run_simulate(capsys, "--backend", "reference", "--config", "k8t4s1")
    assert status == 0, err
    assert "k8t4s1: K=8 T=4 in<=4096 spanning rows" in out


def test_an_output_layer_receives_the_sparse_activations(capsys):
    from sparsemac.sw.activation_sparsity import parse_activation
    from sparsemac.sw.models import capture_linear_input, load_model
    from sparsemac.sw.quantisation import quantise_activations

    layer = "encoder.layer.1.output.dense"
    report = simulate.simulate_layer(layer=layer, backend="reference", activation="topk:0.1")
    assert report.activation == "topk:0.1" and report.passed
    kept = parse_activation("topk:0.1").kept(1536)
    assert report.activation_sparsity >= 1 - kept / 1536
    assert report.joint_ideal_speedup == pytest.approx(
        1 / ((1 - report.sparsity) * (1 - report.activation_sparsity)))
    dense = quantise_activations(capture_linear_input(load_model("minilm"), layer),
                                 "token").values
    assert float((dense == 0).float().mean()) < 0.2  # GELU's own zeros, for contrast
    assert main(["simulate", "--backend", "reference", "--layer", layer, "--activation",
                 "relu", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["activation"] == "relu" and printed["activation_sparsity"] > 0.5


def test_an_activation_for_a_layer_it_does_not_feed_is_refused(capsys):
    assert main(["simulate", "--backend", "reference", "--activation", "topk:0.1"]) == 2
    assert ("error: --activation topk:0.1 changes the inputs of the feed-forward output "
            "linears only (encoder.layer.0.output.dense ...), not of "
            "encoder.layer.0.intermediate.dense") in capsys.readouterr().err
