"""Design-space sweeps on Dask: rows, agreement with a serial run, resuming, failures, workers
closed mid-sweep, and bad input."""

import argparse
import csv
import dataclasses
import re
import socket
import subprocess
import sys
import threading
import time

import pytest
from distributed import LocalCluster

from sparsemac.bitstreams.build import BuildResult, PlacementResult, ResourceReport
from sparsemac.hw.board_link import design_digest
from sparsemac.hw.config import ArrayConfig
from sparsemac.app import cli
from sparsemac.app.pipelines import pareto_front, simulate, sweep
from sparsemac.app.pipelines.simulate import simulate_layer
from sparsemac.app.pipelines.sweep import (
    COLUMNS, RESULTS_FILE, SweepPoint, expand_points, parse_spec, run_point, run_sweep,
)

pytestmark = pytest.mark.xdist_group("sweep")  # one Dask cluster at a time on 2 cores

QUERY = "encoder.layer.0.attention.self.query"
VALUE = "encoder.layer.0.attention.self.value"

#: 2 configs x 1 layer x (2 methods x 2 sparsities + one N:M) = 10 points.
TINY = {"configs": ["k8t4", "k1t1"], "models": ["minilm"], "layers": [QUERY],
        "methods": ["magnitude", "random", "2:4"], "sparsities": [0.5, 0.9], "seed": 3}

#: Columns that say where and when a point ran, not what it measured.
RUN_COLUMNS = {"worker", "seconds", "finished"}


def spec_of(**changes):
    """TINY with ``changes``; a change to None removes the key."""
    data = {key: value for key, value in {**TINY, **changes}.items() if value is not None}
    return parse_spec(data, source="test.toml")


def patch_pruning(monkeypatch, method, action):
    """Makes the layer points of ``method`` call ``action(sparsity)`` before they prune (the
    workers of the tests' clusters are threads of this process, so they see the patch)."""
    prune_layer = simulate.prune_layer

    def patched(loaded, layer, method, sparsity, **options):
        if method.text == patched_method:
            action(sparsity)
        return prune_layer(loaded, layer, method, sparsity, **options)

    patched_method = method
    monkeypatch.setattr(simulate, "prune_layer", patched)


def measured(row):
    return {name: value for name, value in dataclasses.asdict(row).items()
            if name not in RUN_COLUMNS}


def csv_rows(folder):
    with open(folder / RESULTS_FILE, newline="") as file:
        reader = csv.reader(file)
        assert tuple(next(reader)) == COLUMNS
        return list(reader)


@pytest.fixture(scope="module")
def cluster():
    """Two single-threaded workers in this process: a running cluster to point
    ``--scheduler`` at, that sees the methods a test registers."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster:
        yield cluster


def test_local_cluster_rows_agree_with_a_serial_run(tmp_path):
    spec = spec_of()
    report = run_sweep(spec, tmp_path, workers=2, processes=False)
    points = expand_points(spec)
    assert report.points == report.computed == len(points) == 10
    assert report.skipped == report.failed == 0
    assert len(csv_rows(tmp_path)) == 10
    assert [row.key for row in report.results] == [point.key for point in points]
    assert {row.config for row in report.results} == {"k8t4", "k1t1"}
    assert {(row.method, row.target_sparsity) for row in report.results} == {
        ("magnitude", 0.5), ("magnitude", 0.9), ("random", 0.5), ("random", 0.9), ("2:4", None)}
    assert {row.worker for row in report.results} <= {"0", "1"}
    serial = [run_point(point, spec.digest()) for point in points]
    assert [row.worker for row in serial] == ["local"] * 10
    assert [measured(row) for row in report.results] == [measured(row) for row in serial]
    assert all(path.endswith(".png") and (tmp_path / path.split("/")[-1]).stat().st_size > 10_000
               for path in report.plots)
    assert len(report.plots) == 2


def test_point_agrees_with_sparsemac_simulate(tmp_path):
    """The sweep's cycles and error for one point are those ``sparsemac simulate`` reports."""
    spec = spec_of(configs=["k8t4"], methods=["magnitude"], sparsities=[0.9])
    (point,) = expand_points(spec)
    row = run_point(point)
    expected = simulate_layer("minilm", QUERY, sparsity=0.9, backend="reference", seed=3)
    assert (row.sparse_cycles, row.dense_cycles) == (expected.sparse_cycles,
                                                     expected.dense_cycles)
    assert row.sparsity == expected.sparsity
    assert row.relative_error == pytest.approx(expected.relative_error, rel=1e-6)
    assert row.max_abs_error == pytest.approx(expected.max_abs_error, rel=1e-6)
    assert 0.0 < row.cosine < 1.0 and row.error == ""


def test_a_calibrated_method_is_swept_as_sparsemac_simulate_runs_it():
    """wanda, which ``--method`` takes, is a sweep method too: pruned on the built-in
    calibration text, on a copy of the model, so the points that share it are unchanged."""
    spec = spec_of(configs=["k8t4"], methods=["wanda"], sparsities=[0.5])
    assert spec.methods == ("wanda",)
    (point,) = expand_points(spec)
    shared = sweep.worker._loaded_model("minilm", 3, "none").model.get_submodule(QUERY).weight
    shared = shared.clone()
    row = run_point(point)
    assert row.error == ""
    expected = simulate_layer("minilm", QUERY, sparsity=0.5, method="wanda",
                              backend="reference", seed=3)
    assert (row.sparse_cycles, row.dense_cycles) == (expected.sparse_cycles,
                                                     expected.dense_cycles)
    assert row.sparsity == expected.sparsity
    assert row.relative_error == pytest.approx(expected.relative_error, rel=1e-6)
    loaded = sweep.worker._loaded_model("minilm", 3, "none")
    assert loaded.model.get_submodule(QUERY).weight.equal(shared)


def test_rerun_computes_nothing_and_a_new_value_only_its_points(tmp_path, cluster):
    address = cluster.scheduler_address
    first = run_sweep(spec_of(), tmp_path, scheduler=address, plots=False)
    before = (tmp_path / RESULTS_FILE).read_bytes()
    again = run_sweep(spec_of(), tmp_path, scheduler=address, plots=False)
    assert (again.computed, again.skipped) == (0, 10)
    assert (tmp_path / RESULTS_FILE).read_bytes() == before
    assert [measured(row) for row in again.results] == [measured(row) for row in first.results]
    grown = run_sweep(spec_of(sparsities=[0.5, 0.7, 0.9]), tmp_path, scheduler=address,
                      plots=False)
    assert (grown.computed, grown.skipped) == (4, 10)  # 0.7 for 2 methods x 2 configs
    assert (tmp_path / RESULTS_FILE).read_bytes().startswith(before)
    assert len(csv_rows(tmp_path)) == 14


def test_interrupted_sweep_resumes(tmp_path, cluster):
    address = cluster.scheduler_address
    full = run_sweep(spec_of(), tmp_path, scheduler=address, plots=False)
    lines = (tmp_path / RESULTS_FILE).read_text().splitlines(keepends=True)
    # Stopped after 3 rows, in the middle of the 4th.
    (tmp_path / RESULTS_FILE).write_text("".join(lines[:4]) + lines[4][:40])
    resumed = run_sweep(spec_of(), tmp_path, scheduler=address, plots=False)
    assert (resumed.computed, resumed.skipped) == (7, 3)
    rows = csv_rows(tmp_path)
    assert sorted(row[0] for row in rows) == sorted(row.key for row in full.results)
    assert [measured(row) for row in resumed.results] == [measured(row) for row in full.results]


def test_failing_point_is_recorded_and_the_others_finish(tmp_path, cluster, monkeypatch,
                                                          capsys):
    def boom(sparsity):
        raise RuntimeError(f"boom at {sparsity}")

    patch_pruning(monkeypatch, "random", boom)
    (tmp_path / "spec.toml").write_text(
        f'configs = ["k8t4"]\nmodels = ["minilm"]\nlayers = ["{QUERY}"]\n'
        'methods = ["magnitude", "random"]\nsparsities = [0.5, 0.9]\n')
    status = cli.main(["sweep", str(tmp_path / "spec.toml"), "--output", str(tmp_path / "out"),
                       "--scheduler", cluster.scheduler_address])
    assert status == 1
    out = capsys.readouterr().out
    assert "4 (0 done before, 4 computed now, 2 failed)" in out
    assert "RuntimeError: boom at 0.9" in out
    rows = {(row[COLUMNS.index("method")], row[COLUMNS.index("target_sparsity")]):
            row for row in csv_rows(tmp_path / "out")}
    assert len(rows) == 4
    for sparsity in ("0.5", "0.9"):
        assert (rows["random", sparsity][COLUMNS.index("error")]
                == f"RuntimeError: boom at {sparsity}")
        assert rows["random", sparsity][COLUMNS.index("sparse_cycles")] == ""
        assert rows["magnitude", sparsity][COLUMNS.index("error")] == ""
        assert int(rows["magnitude", sparsity][COLUMNS.index("sparse_cycles")]) > 0


def test_worker_closed_during_the_sweep_loses_and_duplicates_no_row(tmp_path, monkeypatch):
    patch_pruning(monkeypatch, "magnitude", lambda sparsity: time.sleep(0.3))
    spec = spec_of(methods=["magnitude"], sparsities=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    table = tmp_path / RESULTS_FILE
    closed = []

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster:
        def close_one_worker():
            while not table.exists() or len(table.read_text().splitlines()) < 3:
                time.sleep(0.05)
            name, worker = next(iter(cluster.workers.items()))
            cluster.sync(worker.close)
            closed.append(name)

        closer = threading.Thread(target=close_one_worker, daemon=True)
        closer.start()
        report = run_sweep(spec, tmp_path, scheduler=cluster.scheduler_address, plots=False)
        closer.join(timeout=10)
        assert len(cluster.scheduler.workers) == 1
    assert closed
    assert report.computed == 12 and report.failed == 0
    keys = [row[0] for row in csv_rows(tmp_path)]
    assert sorted(keys) == sorted(point.key for point in expand_points(spec))
    assert len(rows_done_after := csv_rows(tmp_path)) == 12 == len(set(keys))
    assert all(row[COLUMNS.index("sparse_cycles")] for row in rows_done_after)


def test_scheduler_stopped_mid_sweep_keeps_rows_and_a_rerun_finishes(tmp_path, monkeypatch):
    patch_pruning(monkeypatch, "magnitude", lambda sparsity: time.sleep(0.3))
    spec = spec_of(configs=["k8t4"], methods=["magnitude"],
                   sparsities=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    table = tmp_path / RESULTS_FILE
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                           dashboard_address=":0")

    def stop_the_cluster():
        while not table.exists() or len(table.read_text().splitlines()) < 3:
            time.sleep(0.05)
        cluster.close()

    threading.Thread(target=stop_the_cluster, daemon=True).start()
    with pytest.raises(RuntimeError, match=r"\d of 6 points were cancelled \(did the Dask "
                                           r"scheduler stop\?\): run the same sweep again"):
        run_sweep(spec, tmp_path, scheduler=cluster.scheduler_address, plots=False)
    written = len(csv_rows(tmp_path))
    assert 2 <= written < 6
    report = run_sweep(spec, tmp_path, workers=2, processes=False, plots=False)
    assert (report.skipped, report.computed, report.failed) == (written, 6 - written, 0)
    assert sorted(row[0] for row in csv_rows(tmp_path)) == sorted(
        point.key for point in expand_points(spec))


def test_rows_of_another_spec_or_design_are_kept(tmp_path, cluster, monkeypatch):
    address = cluster.scheduler_address
    run_sweep(spec_of(), tmp_path, scheduler=address, plots=False)
    before = (tmp_path / RESULTS_FILE).read_bytes()
    # Another design: its hash, as the on-disk cache of design hashes would give it.
    monkeypatch.setattr(sweep.points, "_design_hash", lambda config: "00c0ffee00c0ffee")
    report = run_sweep(spec_of(), tmp_path, scheduler=address, plots=False)
    assert (report.computed, report.skipped) == (10, 0)
    assert (tmp_path / RESULTS_FILE).read_bytes().startswith(before)
    rows = csv_rows(tmp_path)
    hashes = [row[COLUMNS.index("design_hash")] for row in rows]
    assert hashes[10:] == ["00c0ffee00c0ffee"] * 10 and "00c0ffee00c0ffee" not in hashes[:10]
    assert {row.design_hash for row in report.results} == {"00c0ffee00c0ffee"}


def test_table_of_other_columns_is_refused_untouched(tmp_path):
    (tmp_path / RESULTS_FILE).write_text("key,speed\nabc,1\n")
    with pytest.raises(ValueError, match="has other columns than this version of sparsemac"):
        run_sweep(spec_of(), tmp_path, workers=1, processes=False)
    assert (tmp_path / RESULTS_FILE).read_text() == "key,speed\nabc,1\n"


def test_verified_point_is_bit_exact_on_verilator(tmp_path):
    spec = spec_of(configs=["k8t4"], methods=["2:4"], sparsities=None,
                   verify={"sample": 1, "seed": 5}, tokens=[5])
    (point,) = expand_points(spec)
    assert point.verify
    row = run_point(point)
    assert row.error == ""
    assert row.bit_exact is True and row.cycles_match is True
    assert row.tokens_run == 5


def test_build_points_call_the_board_build_outside_the_committed_folder(monkeypatch):
    spec = spec_of(build={"seeds": [1, 7], "clock_mhz": 90, "time_limit_minutes": 30})
    points = expand_points(spec)
    builds = [point for point in points if point.kind == "build"]
    k8t4, k1t1 = spec.configs
    assert [(point.config, point.build_seed, point.board) for point in builds] == [
        (k8t4, 1, "ulx3s-85f"), (k8t4, 7, "ulx3s-85f"), (k1t1, 1, "ulx3s-85f"),
        (k1t1, 7, "ulx3s-85f")]
    assert points[:10] == expand_points(spec_of())
    calls = []

    def fake_build(config, board, output, *, clock_hz, seed, time_limit, router, placer, log):
        calls.append((config, board, output, clock_hz, seed, time_limit, router, placer))
        resources = ResourceReport(lut4=1234, ff=567, dsp=32, bram=141, totals={},
                                   fmax_mhz=75.1, constraint_mhz=90.0, critical_from="a",
                                   critical_to="b", critical_ns=13.3)
        return BuildResult(bitstream=None, manifest=None, report=None, resources=resources,
                           seconds=1.0)

    monkeypatch.setattr("sparsemac.bitstreams.build.build_bitstream", fake_build)
    monkeypatch.setattr("sparsemac.app.pipelines.sweep.worker.bert_base_cycles",
                        lambda config: 7_510_000)
    row = run_point(builds[1])
    assert row.error == ""
    assert (row.lut4, row.ff, row.dsp, row.bram, row.fmax_mhz) == (1234, 567, 32, 141, 75.1)
    assert (row.clock_mhz, row.critical_ns, row.critical_path) == (90, 13.3, "a -> b")
    assert (row.bert_base_cycles, row.bert_base_s) == (7_510_000, 7_510_000 / 75.1e6)
    ((config, board, output, clock_hz, seed, time_limit, router, placer),) = calls
    assert (config, board, clock_hz, seed, time_limit, router, placer) == (
        ArrayConfig(), "ulx3s-85f", 90_000_000, 7, 1800.0, "router1", "heap")
    assert "sweep-builds" in str(output) and "bitstreams/ulx3s" not in str(output)
    # The time limit is not part of a point's key; the clock is, unless it is the default.
    assert builds[1].key == dataclasses.replace(builds[1], time_limit_s=None).key
    assert builds[1].key != dataclasses.replace(builds[1], clock_mhz=60.0).key
    assert dataclasses.replace(builds[1], clock_mhz=60.0).key == \
        dataclasses.replace(builds[1], clock_mhz=None).key
    # The router and placer are, unless they are nextpnr's defaults; the build folder is
    # named by the key, so builds with other algorithms do not share one.
    assert builds[1].key != dataclasses.replace(builds[1], router="router2").key
    assert builds[1].key != dataclasses.replace(builds[1], placer="static").key
    assert builds[1].key in str(output)
    assert row.routed is True
    (routed2,) = [point for point in expand_points(spec_of(build={"seeds": [1],
                                                                  "router": "router2",
                                                                  "placer": "static"}))
                  if point.kind == "build"][:1]
    assert (routed2.router, routed2.placer) == ("router2", "static")


def test_build_points_that_do_not_route_call_the_placement(monkeypatch):
    """``route = false``: each build point is placed only; its row says so, and its key is
    not a routed build's."""
    spec = spec_of(build={"seeds": [3], "clock_mhz": 90, "route": False})
    (build,) = [point for point in expand_points(spec) if point.kind == "build"][:1]
    assert build.key != dataclasses.replace(build, route=True).key
    calls = []

    def fake_place(config, board, *, clock_hz, seed, time_limit, placer, log):
        calls.append((config, board, clock_hz, seed, time_limit, placer))
        resources = ResourceReport(lut4=15685, ff=11014, dsp=128, bram=73, totals={},
                                   fmax_mhz=56.35, constraint_mhz=90.0)
        return PlacementResult(resources=resources, seconds=1.0, config=config.key())

    monkeypatch.setattr("sparsemac.bitstreams.build.place_design", fake_place)
    monkeypatch.setattr("sparsemac.bitstreams.build.build_bitstream", None)
    monkeypatch.setattr("sparsemac.app.pipelines.sweep.worker.bert_base_cycles",
                        lambda config: 8_881_776)
    row = run_point(build)
    assert row.error == "" and row.routed is False
    assert (row.dsp, row.fmax_mhz, row.critical_ns, row.critical_path) == (128, 56.35, None, "")
    assert row.bert_base_s == 8_881_776 / 56.35e6
    assert calls == [(ArrayConfig(), "ulx3s-85f", 90_000_000, 3, None, "heap")]


def test_pareto_front():
    point = argparse.Namespace
    items = [point(x=1, y=5), point(x=2, y=3), point(x=2, y=4), point(x=3, y=3),
             point(x=4, y=1), point(x=5, y=2)]
    assert [(items[index].x, items[index].y) for index in pareto_front(items, "x", "y")] == [
        (1, 5), (2, 3), (4, 1)]


def test_point_key_follows_every_parameter_and_the_design_hash():
    base = SweepPoint(kind="layer", config=ArrayConfig(), design_hash="0" * 16, model="minilm",
                      layer=QUERY, method="magnitude", sparsity=0.5)
    changed = [dataclasses.replace(base, **{name: value}) for name, value in (
        ("config", ArrayConfig(lanes=4)), ("design_hash", "1" * 16), ("model", "bert-base"),
        ("layer", VALUE), ("method", "random"), ("sparsity", 0.6), ("tokens", 8), ("seed", 1),
        ("verify", True))]
    keys = {point.key for point in [base, *changed]}
    assert len(keys) == 1 + len(changed)
    assert dataclasses.replace(base).key == base.key


@pytest.mark.parametrize("changes, message", [
    ({"colours": ["red"]}, "test.toml: unknown key 'colours': a spec has activations, build, "
                           "configs, layers, methods, models, seed, sparsities, tokens, verify"),
    ({"configs": []}, "test.toml: axis 'configs' is empty: give it at least one value"),
    ({"sparsities": []}, "test.toml: axis 'sparsities' is empty"),
    ({"configs": ["k9"]}, "test.toml: config 'k9': write k<lanes>t<token lanes>, optionally "
                          "followed by i<max in features>"),
    ({"configs": [{"lanes": 8, "colour": 1}]},
     "test.toml: unknown config field 'colour': ArrayConfig has lanes, token_lanes"),
    ({"configs": ["k8t4", {"lanes": 8, "token_lanes": 4}]},
     "test.toml: axis 'configs' names one array config twice: K=8 T=4 in<=4096, K=8 T=4"),
    ({"configs": [{"lanes": 64}]}, "ArrayConfig.lanes must be from 1 to 32, not 64"),
    ({"methods": ["wanda?"]}, "test.toml: unknown pruning method 'wanda?'; valid methods are "
                              "'magnitude', 'random' or an 'N:M' string"),
    ({"methods": ["n:m"]}, "test.toml: pruning method 'n:m' does not say which pattern"),
    ({"methods": ["4:2"]}, "N:M pruning needs 1 <= n <= m, got n=4, m=2"),
    ({"sparsities": [0.5, 1.5]}, "sparsities must be numbers from 0 to 1, not 1.5"),
    ({"sparsities": [0.5, 0.5]}, "axis 'sparsities' repeats a value"),
    ({"tokens": [1]}, "tokens must be integers of 2 or more, not 1"),
    ({"methods": ["2:4"]}, "'sparsities' is set but every method is N:M"),
    ({"verify": {"sample": 0}}, "[verify] sample must be 1 or more"),
    ({"verify": {"samples": 2}}, "unknown key 'samples' in [verify]: it takes sample, seed"),
    ({"build": {"seeds": []}}, "[build] needs seeds, a non-empty list"),
    ({"build": {"seeds": [1], "board": "icebreaker"}}, "unknown board 'icebreaker'"),
    ({"build": {"seeds": [1], "clock_mhz": 0}}, "[build] clock_mhz must be a positive number"),
    ({"build": {"seeds": [1], "time_limit_minutes": -5}},
     "[build] time_limit_minutes must be a positive number, not -5"),
    ({"build": {"seeds": [1], "route": "no"}}, "[build] route must be true or false, not 'no'"),
    ({"build": {"seeds": [1], "router": "fast"}},
     "[build] router must be one of router1, router2, not 'fast'"),
    ({"build": {"seeds": [1], "route": False, "router": "router2"}},
     "[build] router is for routed builds: drop it, or route = false"),
    ({"build": {"seeds": [1], "placer": "fast"}},
     "[build] placer must be one of heap, sa, static, not 'fast'"),
])
def test_bad_spec(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        spec_of(**changes)


@pytest.mark.parametrize("changes, error, message", [
    ({"models": ["gpt-9"]}, ValueError, "unknown model spec 'gpt-9'"),
    ({"models": ["./no/such/dir"]}, FileNotFoundError, "does not exist"),
    ({"layers": ["encoder.layer.9.attention.self.query"]}, ValueError, "no module"),
    ({"verify": {"sample": 11}}, ValueError,
     "[verify] sample is 11 but the sweep has only 10 layer points"),
])
def test_bad_model_or_layer_before_any_work(changes, error, message):
    with pytest.raises(error, match=re.escape(message)):
        expand_points(spec_of(**changes))


def test_all_layers_expand_to_every_encoder_linear():
    points = expand_points(spec_of(layers="all", configs=["k8t4"], methods=["2:4"],
                                   sparsities=None))
    assert len(points) == 36
    assert points[0].layer == QUERY and points[-1].layer == "encoder.layer.5.output.dense"


def write_spec(folder, text):
    path = folder / "spec.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text, message", [
    ('configs = ["k8t4"]\nmodels = ["minilm"]\nlayers = []\nmethods = ["2:4"]\n',
     "spec.toml: axis 'layers' is empty"),
    ('configs = ["k8t4"\n', "spec.toml: not a TOML file"),
    ('configs = ["k8t4"]\nmodels = ["minilm"]\nlayers = ["x"]\nmethods = ["2:4"]\n'
     'memory = ["ideal"]\n', "unknown key 'memory'"),
])
def test_cli_bad_spec_exits_2_before_any_work(tmp_path, capsys, text, message):
    status = cli.main(["sweep", write_spec(tmp_path, text), "--output", str(tmp_path / "out")])
    assert status == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_unreachable_scheduler_exits_2_within_seconds(tmp_path, capsys):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.perf_counter()
    status = cli.main(["sweep", write_spec(tmp_path, "configs = []\n"), "--output",
                       str(tmp_path / "out"), "--scheduler", f"tcp://127.0.0.1:{port}"])
    elapsed = time.perf_counter() - started
    assert status == 2
    err = capsys.readouterr().err
    assert (f"no Dask scheduler answers at 'tcp://127.0.0.1:{port}' (Connection refused)"
            in err)
    assert "Traceback" not in err and "Exception ignored" not in err
    assert elapsed < sweep.CONNECT_TIMEOUT_S
    assert not (tmp_path / "out").exists()


#: How long the fake server holds a connection: a client without a timeout of its own would wait
#: for it, one with the probe's timeout ends long before, even on a loaded machine.
HELD_S = 20 * sweep.CONNECT_TIMEOUT_S


@pytest.mark.parametrize("answer", [b"HTTP/1.0 400 Bad Request\r\n\r\n" * 4, b""],
                         ids=["bytes", "silence"])
def test_cli_a_server_that_speaks_no_dask_is_one_error_line(tmp_path, answer):
    """A listening loopback server that is no Dask scheduler, whether it answers bytes or keeps
    silent: exit 2 within seconds and one error line, the whole of stderr until the process
    ends (a Client that failed to connect printed a traceback when it was collected)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    port = server.getsockname()[1]
    done = threading.Event()

    def serve():
        while not done.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            with connection:
                connection.sendall(answer)
                done.wait(HELD_S)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        command = [sys.executable, "-m", "sparsemac.app.cli", "sweep",
                   write_spec(tmp_path, "configs = []\n"), "--output", str(tmp_path / "out"),
                   "--scheduler", f"tcp://127.0.0.1:{port}"]
        started = time.perf_counter()
        ran = subprocess.run(command, capture_output=True, text=True, timeout=60)
        elapsed = time.perf_counter() - started
    finally:
        done.set()
        thread.join()
        server.close()
    assert ran.returncode == 2
    err = ran.stderr.strip().splitlines()
    assert len(err) == 1, ran.stderr
    assert err[0].startswith(f"sparsemac sweep: error: no Dask scheduler answers at "
                             f"'tcp://127.0.0.1:{port}' within {sweep.CONNECT_TIMEOUT_S} s")
    assert ran.stdout == ""
    # The probe's own timeout, beside the start of Python and the import of Dask.
    assert elapsed < HELD_S / 2
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("address", ["127.0.0.1", "tcp://127.0.0.1:99999", "http://x:1",
                                     "tcp://:8786", "tcp://127.0.0.1:1 extra"])


def test_cli_malformed_scheduler_is_refused_at_once(tmp_path, capsys, address):
    started = time.perf_counter()
    status = cli.main(["sweep", write_spec(tmp_path, "configs = []\n"), "--output",
                       str(tmp_path / "out"), "--scheduler", address])
    assert status == 2 and time.perf_counter() - started < 1
    assert f"--scheduler {address!r} is not a scheduler address" in capsys.readouterr().err


def test_cli_output_under_a_file_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "a-file").write_text("kept")
    status = cli.main(["sweep", write_spec(tmp_path, "configs = []\n"), "--output",
                       str(tmp_path / "a-file" / "sub")])
    assert status == 2
    assert f"'{tmp_path}/a-file' is a file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "a-file").read_text() == "kept"


def test_cli_local_cluster_options_need_no_scheduler(tmp_path, capsys):
    status = cli.main(["sweep", write_spec(tmp_path, ""), "--output", str(tmp_path / "out"),
                       "--scheduler", "tcp://127.0.0.1:1", "--workers", "2"])
    assert status == 2
    assert ("--workers and --threads-per-worker size the local cluster"
            in capsys.readouterr().err)


def test_output_folder_in_use_is_refused(tmp_path):
    held = sweep.table._ResultsTable(tmp_path)
    try:
        with pytest.raises(ValueError, match=f"another sweep is writing to {tmp_path}"):
            run_sweep(spec_of(), tmp_path, workers=1, processes=False)
    finally:
        held.close()


def test_design_hashes_are_kept_on_disk(tmp_path, monkeypatch):
    # A rerun elaborates no design: the hash comes from the cache, keyed by the gateware.
    monkeypatch.setenv("SPARSEMAC_CACHE", str(tmp_path))
    config = ArrayConfig.from_key("k2t2i512")
    first = sweep.points._design_hash(config)
    assert first == design_digest(config).hex

    def elaborate(_config):
        raise AssertionError("the design was elaborated again")

    monkeypatch.setattr(sweep.points, "design_digest", elaborate)
    assert sweep.points._design_hash(config) == first
    [cached] = (tmp_path / "design-hashes").iterdir()
    assert cached.name.startswith("k2t2i512-")


def test_an_activation_axis_makes_points_of_the_layers_it_feeds():
    output = "encoder.layer.0.output.dense"
    spec = spec_of(configs=["k8t4"], methods=["magnitude"], sparsities=[0.9],
                   layers=[QUERY, output], activations=["none", "TOPK:0.1"])
    assert spec.activations == ("none", "topk:0.1")
    points = expand_points(spec)
    assert [(point.layer, point.activation) for point in points] == [
        (QUERY, "none"), (output, "none"), (output, "topk:0.1")]
    # GELU's points keep their keys; another activation is another point.
    assert points[0].key == dataclasses.replace(points[0], activation="none").key
    assert points[1].key != points[2].key
    gelu, sparse = run_point(points[1]), run_point(points[2])
    expected = simulate_layer("minilm", output, sparsity=0.9, backend="reference", seed=3,
                              activation="topk:0.1")
    assert sparse.error == "" and sparse.activation == "topk:0.1"
    assert sparse.sparse_cycles == expected.sparse_cycles
    assert sparse.activation_sparsity == pytest.approx(expected.activation_sparsity)
    assert sparse.activation_sparsity >= 0.9 > 0.2 > gelu.activation_sparsity
    assert sparse.joint_ideal_speedup == pytest.approx(expected.joint_ideal_speedup)
    with pytest.raises(ValueError, match=re.escape("test.toml: activation 'gelu' is not one "
                                                   "of: none, relu")):
        spec_of(activations=["gelu"])


@pytest.mark.slow
def test_a_builds_bert_base_cycles_are_what_the_bert_command_counts():
    from sparsemac.app.pipelines.bert import measure_bert
    from sparsemac.app.pipelines.sweep.worker import BERT_BASE_WORKLOAD, bert_base_cycles

    config = ArrayConfig.from_key("k8t8i1024p2")
    report = measure_bert(BERT_BASE_WORKLOAD["model"], backend="reference", config=config,
                          sparsity=BERT_BASE_WORKLOAD["sparsity"],
                          tokens=BERT_BASE_WORKLOAD["tokens"], seed=BERT_BASE_WORKLOAD["seed"])
    assert bert_base_cycles(config) == report.sparse_cycles
