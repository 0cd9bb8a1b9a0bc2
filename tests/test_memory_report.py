"""The memory report of a layer, sparse against dense, and its roofline plot."""

import json
from types import SimpleNamespace

import pytest

from helpers import random_weights, sparse_activations
from sparsemac.hw.config import ArrayConfig
from sparsemac.hw.formats import ColumnIndex, DeltaCode, Mode
from sparsemac.sw.energy import energy_events, energy_of, load_energy_table
from sparsemac.sw.delta_index import DeltaMatrix
from sparsemac.sw.memory import MemoryModelError, memory_preset, onchip_weight_bytes
from sparsemac.sw.memory_report import ModelMemoryReport, memory_report, plot_roofline
from sparsemac.sw.throttled_cycle_model import dual_layer_cycles
from sparsemac.sw.throttled_cycle_model import layer_cycles

CONFIG = ArrayConfig(lanes=8, token_lanes=4, max_in_features=512)


def test_report_compares_sparse_and_dense_under_the_memory():
    weights = random_weights(48, 384, 0.9, seed=1)
    memory = memory_preset("ulx3s-sdram")
    report = memory_report(weights, 16, CONFIG, memory, layer="ffn")
    for mode, result in ((Mode.SPARSE, report.sparse), (Mode.DENSE, report.dense)):
        cycles = layer_cycles(weights, 16, CONFIG, mode, memory)
        assert result.cycles == cycles
        assert result.energy == energy_of(energy_events(cycles, CONFIG, memory),
                                          load_energy_table())
    assert report.sparse.macs == weights.nnz * 16
    assert report.dense.macs == 48 * 384 * 16
    assert report.speedup == report.dense.cycles.cycles / report.sparse.cycles.cycles
    assert report.compute_speedup == (report.dense.cycles.compute_cycles
                                      / report.sparse.cycles.compute_cycles)
    # Bound by bytes: the speedup with the memory counted is far below the compute speedup.
    assert report.sparse.cycles.bound == report.dense.cycles.bound == "weights"
    assert report.speedup < report.compute_speedup
    passes = 4
    assert report.bytes_per_nonzero == (48 * 4 + -(-weights.nnz // 8) * 8 * 3) / weights.nnz
    assert report.sparse.cycles.weight_bytes == passes * (48 * 4 + -(-weights.nnz // 8) * 24)
    document = json.loads(json.dumps(report.as_json()))
    assert document["sparse"]["bound"] == "weights"
    assert document["energy_ratio"] == report.energy_ratio
    text = "\n".join(title for title, _, _ in report.sections())
    assert "ffn under ulx3s-sdram" in text


def test_onchip_refuses_a_layer_that_does_not_fit():
    weights = random_weights(400, 384, 0.1, seed=2)
    with pytest.raises(MemoryModelError) as error:
        memory_report(weights, 4, CONFIG, memory_preset("onchip"), layer="big")
    stream = 400 * 4 + -(-weights.nnz // 8) * 24
    assert str(error.value) == (
        f"big (sparse mode) has {stream} bytes of weights but the block RAM left beside a K=8 "
        f"T=4 in<=512 array holds {onchip_weight_bytes(CONFIG)}: the onchip preset needs a "
        "smaller or sparser layer, or use ulx3s-sdram")
    # A layer whose sparse weights fit but whose dense baseline does not is refused too.
    sparse = random_weights(1000, 384, 0.9, seed=2)
    with pytest.raises(MemoryModelError) as error:
        memory_report(sparse, 4, CONFIG, memory_preset("onchip"), layer="big")
    assert str(error.value).startswith(f"big (dense mode) has {1000 * 384} bytes of weights")


def test_roofline_png(tmp_path):
    memory = memory_preset("ulx3s-sdram")
    reports = [memory_report(random_weights(16, 64, sparsity, seed=3), 8, CONFIG, memory,
                             layer=f"s{sparsity}") for sparsity in (0.5, 0.9)]
    path = tmp_path / "roofline.png"
    plot_roofline(reports, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError):
        plot_roofline([], path)


def test_model_report_totals_its_layers():
    memory = memory_preset("ulx3s-sdram")
    reports = tuple(memory_report(random_weights(rows, 128, 0.8, seed=rows), 5, CONFIG, memory,
                                  layer=f"layer{rows}") for rows in (16, 40))
    model = ModelMemoryReport(reports)
    for mode in ("sparse", "dense"):
        assert model.cycles[mode] == sum(getattr(r, mode).cycles.cycles for r in reports)
        assert model.compute_cycles[mode] == sum(getattr(r, mode).cycles.compute_cycles
                                                 for r in reports)
        assert model.energy_pj[mode] == sum(getattr(r, mode).energy.total_pj for r in reports)
    document = json.loads(json.dumps(model.as_json()))
    assert document["speedup"] == model.cycles["dense"] / model.cycles["sparse"]
    assert document["energy_ratio"] == model.energy_pj["sparse"] / model.energy_pj["dense"]
    assert [layer["layer"] for layer in document["layers"]] == ["layer16", "layer40"]
    [(title, header, rows)] = model.sections()
    assert title.startswith("Under ulx3s-sdram (weights 1.946 B/cycle")
    assert [row[0] for row in rows] == ["layer16", "layer40", "inference"]
    assert rows[-1][2] == f"{document['speedup']:.2f}x"


def test_delta_index_report_counts_its_bytes_and_escapes():
    """The delta index's report: fewer bytes per nonzero, its entries (escapes included) in
    the chunk count, and the same dense side."""
    config = ArrayConfig(lanes=8, token_lanes=4, max_in_features=512, delta_bits=5)
    weights = random_weights(48, 384, 0.9, seed=1)
    memory = memory_preset("ulx3s-sdram")
    csr = memory_report(weights, 16, config, memory, layer="ffn")
    delta = memory_report(weights, 16, config, memory, layer="ffn", index=ColumnIndex.DELTA)
    coded = DeltaMatrix.from_csr(weights, DeltaCode(5))
    words = -(-coded.entries // 8)
    assert delta.sparse.cycles.weight_bytes == 4 * (48 * 2 + words * (5 + 8))
    assert delta.bytes_per_nonzero == (48 * 2 + words * 13) / weights.nnz
    assert delta.sparse.cycles.compute_cycles == layer_cycles(
        weights, 16, config, Mode.SPARSE, None, ColumnIndex.DELTA).compute_cycles
    assert delta.dense == csr.dense
    assert delta.sparse.cycles.cycles < csr.sparse.cycles.cycles
    assert json.loads(json.dumps(delta.as_json()))["index"] == "delta"


def test_recorded_calls_under_a_memory(monkeypatch):
    """compare --memory: every recorded call of every layer, sparse and dense, each distinct
    job replayed once."""
    from sparsemac.sw import throttled_cycle_model
    from sparsemac.sw.memory_report import recorded_memory_cycles

    weights = [random_weights(24, 64, 0.8, seed) for seed in (1, 2)]
    report = SimpleNamespace(layers=[SimpleNamespace(name=f"l{i}", call_tokens=[5, 9])
                                     for i in range(2)],
                             modules=[SimpleNamespace(weights=w) for w in weights])
    memory = memory_preset("ulx3s-sdram")
    expected = [sum(layer_cycles(w, tokens, CONFIG, mode, memory).cycles
                    for w in weights for tokens in (5, 9)) for mode in (Mode.SPARSE, Mode.DENSE)]
    throttled_cycle_model._cached_replay.cache_clear()
    replays = []
    original = throttled_cycle_model.replay_schedule
    monkeypatch.setattr(throttled_cycle_model, "replay_schedule",
                        lambda *args: replays.append(args) or original(*args))
    assert list(recorded_memory_cycles(report, CONFIG, memory)) == expected
    # Two layers of one shape share their dense jobs: 4 sparse and 2 dense replays.
    assert len(replays) == 6
    too_big = SimpleNamespace(layers=report.layers[:1], modules=[SimpleNamespace(
        weights=random_weights(2000, 512, 0.0, seed=3))])
    with pytest.raises(MemoryModelError, match=r"l0 \(sparse mode\) has \d+ bytes of weights"):
        recorded_memory_cycles(too_big, CONFIG, memory_preset("onchip"))


def test_a_dual_layer_follows_its_activations():
    config = ArrayConfig.from_key("k4t2i64a1")
    memory = memory_preset("ulx3s-sdram")
    weights = random_weights(12, 40, 0.7, seed=3)
    activations = sparse_activations(6, 40, 0.8, seed=4)
    dual = memory_report(weights, 6, config, memory, activations=activations)
    alone = memory_report(weights, 6, config, memory)
    assert dual.sparse.cycles == dual_layer_cycles(weights, activations, config, memory)
    assert dual.sparse.macs == dual.sparse.cycles.pairs < alone.sparse.macs
    assert dual.dense == alone.dense
    assert dual.sparse.energy.total_pj < alone.sparse.energy.total_pj
