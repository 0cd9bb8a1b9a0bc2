"""Memory presets, bandwidth parsing and errors, and the credit rates of a job's streams."""

import math

import pytest

from helpers import random_weights
from sparsemac.hw.config import DEFAULT_CONFIG, ArrayConfig
from sparsemac.hw.formats import Mode
from sparsemac.app.cli import main
from sparsemac.sw.memory import (RATE_ONE, MemoryModel, MemoryModelError, check_fits_onchip,
                                 dual_job_streams, job_streams, memory_preset,
                                 onchip_weight_bytes, parse_bandwidth, stream_rates)
from sparsemac.sw.packing import weight_stream_bytes


def test_presets():
    assert memory_preset("ideal").ideal
    assert memory_preset("onchip").weights_on_chip and memory_preset("onchip").ideal
    uart = memory_preset("uart")
    assert uart.over_link
    assert uart.weight_bytes_per_cycle == uart.activation_bytes_per_cycle == 3e6 / 10 / 60e6
    sdram = memory_preset("ulx3s-sdram")
    # 60 MHz: precharge, activate 2 cycles each, CAS 2, refresh 4; a refresh every 468.75 cycles.
    efficiency = (1 - 6 / 1030) * (1 - 10 / 468.75)
    assert math.isclose(sdram.weight_bytes_per_cycle, 2 * efficiency)
    assert sdram.activation_bytes_per_cycle == sdram.weight_bytes_per_cycle
    assert not sdram.ideal and not sdram.over_link


def test_custom_bandwidth():
    assert parse_bandwidth("2.5") == MemoryModel("custom", 2.5, None,
                                               source="bandwidth given by the user")
    both = parse_bandwidth("24,0.37")
    assert (both.weight_bytes_per_cycle, both.activation_bytes_per_cycle) == (24.0, 0.37)


def test_unknown_preset():
    with pytest.raises(MemoryModelError) as error:
        memory_preset("fast")
    assert str(error.value) == ("unknown memory preset 'fast': choose one of ideal, onchip, "
                                "ulx3s-sdram, uart, or give the bandwidth in bytes per cycle")


@pytest.mark.parametrize("text, message", [
    ("fast", "a bandwidth is WEIGHT[,ACT] bytes per cycle, e.g. 2 or 2,0.5, not 'fast'"),
    ("1,2,3", "a bandwidth is WEIGHT[,ACT] bytes per cycle, e.g. 2 or 2,0.5, not '1,2,3'"),
    ("0", "the weight bandwidth must be a positive, finite number of bytes per cycle, not 0.0"),
    ("-1", "the weight bandwidth must be a positive, finite number of bytes per cycle, not -1.0"),
    ("nan", "the weight bandwidth must be a positive, finite number of bytes per cycle, not nan"),
    ("inf", "the weight bandwidth must be a positive, finite number of bytes per cycle, not inf"),
    ("1,0", "the activation bandwidth must be a positive, finite number of bytes per cycle, "
            "not 0.0"),
    ("1e-9", "the weight bandwidth 1e-09 bytes per cycle is below the credit resolution of "
             "1/65536 byte per cycle"),
])
def test_bad_bandwidth(text, message):
    with pytest.raises(MemoryModelError) as error:
        parse_bandwidth(text)
    assert str(error.value) == message


def test_memory_errors_are_bad_input_for_the_cli(monkeypatch, capsys):
    # The CLI maps ValueError to exit 2; a command that raises MemoryModelError exits 2.
    assert issubclass(MemoryModelError, ValueError)
    from sparsemac.app.commands import build

    def fail(args):
        parse_bandwidth("0")
    monkeypatch.setattr(build, "run", fail)
    assert main(["build"]) == 2
    assert "error: the weight bandwidth must be a positive" in capsys.readouterr().err


def test_stream_rates_share_the_weight_path_by_bytes():
    config = ArrayConfig(lanes=8, token_lanes=4, max_in_features=512)
    streams = job_streams(config, Mode.SPARSE, rows=10, cols=300, nnz=100, blocks=3)
    assert [(s.beats, s.bytes) for s in streams] == [(900, 4), (30, 4), (39, 16), (39, 8),
                                                     (0, 0)]
    rated = stream_rates(MemoryModel("custom", 2.0, 0.5), streams)
    weight_bytes = 30 * 4 + 39 * 24
    assert rated.activations.rate == RATE_ONE // 2
    assert rated.row_pointers.rate == 2 * RATE_ONE * 120 // weight_bytes
    assert rated.columns.rate == 2 * RATE_ONE * 624 // weight_bytes
    assert rated.values.rate == 2 * RATE_ONE * 312 // weight_bytes
    # The row pointers' share is the smallest against their beat: 4 bytes at 0.227 B/cycle.
    assert rated.longest_credit_wait == -(-4 * RATE_ONE // rated.row_pointers.rate) == 18
    dense = stream_rates(MemoryModel("custom", 2.0, None),
                         job_streams(config, Mode.DENSE, rows=10, cols=300, nnz=100, blocks=3))
    assert [s.rate for s in dense] == [0, 0, 0, 2 * RATE_ONE, 0]
    assert [s.beats for s in dense] == [900, 0, 0, 3 * 375, 0]


def test_a_dual_sparse_jobs_pairs_take_the_whole_weight_path():
    config = ArrayConfig(lanes=8, token_lanes=4, max_in_features=512, dual_sparse=1)
    streams = dual_job_streams(config, beats=70)
    # 8 x 4 weights and activations and the row_last bit: 65 bytes a beat.
    assert [(s.beats, s.bytes) for s in streams] == [(0, 4), (0, 4), (0, 16), (0, 8), (70, 65)]
    assert (streams.weight_bytes, streams.activation_bytes) == (70 * 65, 0)
    rated = stream_rates(MemoryModel("custom", 2.0, 0.5), streams)
    assert [s.rate for s in rated] == [0, 0, 0, 0, 2 * RATE_ONE]


def test_onchip_fits_only_a_layer_that_fits():
    # The default build: 141 of 208 block RAMs used, 67 left at 2 KB each.
    assert onchip_weight_bytes(DEFAULT_CONFIG) == 67 * 2048
    small = random_weights(64, 384, 0.9, seed=1)
    check_fits_onchip(memory_preset("onchip"), DEFAULT_CONFIG,
                      weight_stream_bytes(DEFAULT_CONFIG, small))
    check_fits_onchip(memory_preset("ulx3s-sdram"), DEFAULT_CONFIG, 10 ** 9)
    with pytest.raises(MemoryModelError) as error:
        check_fits_onchip(memory_preset("onchip"), DEFAULT_CONFIG, 200_000, "layer 0 FFN")
    assert str(error.value) == (
        "layer 0 FFN has 200000 bytes of weights but the block RAM left beside a K=8 T=4 "
        "in<=4096 array holds 137216: the onchip preset needs a smaller or sparser layer, or "
        "use ulx3s-sdram")
