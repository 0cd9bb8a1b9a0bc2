"""The simulator-speed pipeline (``sparsemac bench``): without cold builds nothing is built."""

from sparsemac.devices import verilator
from sparsemac.hw.config import ArrayConfig
from sparsemac.app.cli import main
from sparsemac.app.pipelines import simulator_speed


def test_no_cold_builds_nothing(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SPARSEMAC_CACHE", str(tmp_path))  # an empty cache: nothing is built
    monkeypatch.setattr(simulator_speed, "LARGE_JOB", (64, 64, 8, 0.9))
    config = ArrayConfig(lanes=2, token_lanes=2, max_in_features=64)
    output = tmp_path / "bench.json"
    assert main(["bench", "--no-cold", "--no-amaranth", "--config", config.key(),
                 "--output", str(output)]) == 0
    captured = capsys.readouterr()
    assert not verilator.is_cached(config)
    assert "k2t2i64: no cached Verilator build and no cold build asked: Verilator skipped" \
        in captured.err
    assert "building" not in captured.err
    assert "cold (empty cache)  skipped" in captured.out and "cached              skipped" \
        in captured.out
    report = simulator_speed.measure_simulator_speed([config], cold=False, amaranth=False)
    [measured] = report.configs
    assert [run.backend for run in measured.runs] == ["reference"]
    assert measured.name == "k2t2i64" and measured.cold_build_s is None
    assert measured.runs[0].cycles > 0 and output.exists()
