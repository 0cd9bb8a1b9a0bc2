"""The ``verilator`` back end against the reference and Amaranth back ends, and its build cache.

Every test but one shares one small config (K=4, T=2, 64 inputs, at most 16 rows and 3 token
blocks a job, so bigger layers are split into several jobs, wider ones into column tiles): one
Verilator build for the whole file, plus its FST-tracing variant for the waveform test, an odd
K=5 T=3 build and its dual-port-buffer, dual-sparse and registered variants, and a K=5 T=4
build whose chunks span rows (the one tests/test_throttled_cycle_model.py runs too).
"""

import re
import shutil

import numpy as np
import pytest
import torch

from helpers import (random_activations, random_weights, sparse_activations,
                     weights_with_row_lengths)
from sparsemac.devices import verilator as verilator_backend
from sparsemac.devices.amaranth import AmaranthDevice
from sparsemac.devices.reference import ReferenceDevice
from sparsemac.devices.verilator import VerilatorDevice, build_library
from sparsemac.hw.config import ArrayConfig
from sparsemac.hw.formats import CoreStreams, Mode, Sparsity
from sparsemac.sw.csr import CSRMatrix
from sparsemac.sw.device import DeviceError

SMALL = ArrayConfig(lanes=4, token_lanes=2, max_in_features=64, max_out_features=16,
                    max_token_blocks=3)
#: Odd K > 1 and odd T: the adder tree has an unpaired input, lanes pad words of 5.
ODD = ArrayConfig(lanes=5, token_lanes=3, max_in_features=64, max_out_features=16,
                  max_token_blocks=3)
#: Two read lanes a buffer replica; odd K, so one replica serves a single lane.
DUAL = ArrayConfig(lanes=5, token_lanes=3, max_in_features=64, max_out_features=16,
                   max_token_blocks=3, read_ports=2)
#: Chunks that span rows, odd K: the build of tests/test_throttled_cycle_model.py's K5S.
SPAN = ArrayConfig(lanes=5, token_lanes=4, max_in_features=512, max_out_features=64,
                   max_token_blocks=8, span_rows=1)
#: The dual-sparse mode, odd K: pairs beats of 5 lanes x 3 tokens.
DUAL_SPARSE = ArrayConfig(lanes=5, token_lanes=3, max_in_features=64, max_out_features=16,
                          max_token_blocks=3, dual_sparse=1)
#: The same with chunks that span rows, skid buffers on the core's edges and registered
#: multipliers (``registered``): every mode through the timing structure.
REGISTERED = ArrayConfig(lanes=5, token_lanes=3, max_in_features=64, max_out_features=16,
                         max_token_blocks=3, span_rows=1, dual_sparse=1, registered=1)


@pytest.fixture(scope="module")
def verilator():
    with VerilatorDevice(SMALL) as device:
        yield device


def _one_nonzero(rows, cols):
    dense = np.zeros((rows, cols), dtype=np.int8)
    dense[rows // 2, cols - 1] = -128
    return CSRMatrix.from_dense(dense)


# name: (weights, tokens, activation seed)
CASES = {
    "sparse-90": (random_weights(12, 40, 0.9, seed=1), 5, 11),
    "sparse-50": (random_weights(9, 64, 0.5, seed=2), 6, 12),
    "full-rows": (random_weights(5, 17, 0.0, seed=3), 4, 13),
    "tiled-rows-and-tokens": (random_weights(40, 33, 0.8, seed=4), 13, 14),
    "tiled-columns": (random_weights(20, 150, 0.7, seed=9), 5, 21),
    "empty-rows": (weights_with_row_lengths((0, 3, 0, 0, 9, 0), 20, seed=5), 3, 15),
    "all-zero": (CSRMatrix.from_dense(np.zeros((7, 10), dtype=np.int8)), 2, 16),
    "one-nonzero": (_one_nonzero(6, 64), 1, 17),
    "tokens-not-multiple-of-T": (random_weights(3, 8, 0.3, seed=6), 7, 18),
    "one-by-one": (random_weights(1, 1, 0.0, seed=7), 1, 19),
}


@pytest.mark.parametrize("mode", [Mode.SPARSE, Mode.DENSE], ids=["sparse", "dense"])
@pytest.mark.parametrize("name", CASES)
def test_verilator_matches_reference(verilator, name, mode):
    weights, tokens, seed = CASES[name]
    activations = random_activations(tokens, weights.cols, seed)
    expected = ReferenceDevice(SMALL).matmul(weights, activations, mode)
    result = verilator.matmul(weights, activations, mode)
    assert torch.equal(result.sums, expected.sums)
    assert result.job_cycles == expected.job_cycles
    if name == "tiled-rows-and-tokens":
        assert result.jobs == 3 * 3  # 40 rows in tiles of 16, 13 tokens in jobs of 6
    if name == "tiled-columns":
        assert result.jobs == 2 * 3  # 20 rows in tiles of 16, 150 columns: 64 + 64 + 22


@pytest.mark.parametrize("mode", [Mode.SPARSE, Mode.DENSE], ids=["sparse", "dense"])
@pytest.mark.parametrize("config", [ODD, DUAL, SPAN],
                         ids=["odd-lanes", "dual-port-buffer", "spanning-rows"])
def test_other_configs_match_reference(config, mode):
    with VerilatorDevice(config) as device:
        for name, (weights, tokens, seed) in CASES.items():
            activations = random_activations(tokens, weights.cols, seed)
            expected = ReferenceDevice(config).matmul(weights, activations, mode)
            result = device.matmul(weights, activations, mode)
            assert torch.equal(result.sums, expected.sums), name
            assert result.job_cycles == expected.job_cycles, name


@pytest.mark.parametrize("config, zeros", [
    (DUAL_SPARSE, 0.0), (DUAL_SPARSE, 0.7), (DUAL_SPARSE, 1.0), (REGISTERED, 0.7)],
    ids=["dense-inputs", "70%-zero", "all-zero", "registered-70%-zero"])
def test_dual_sparse_matches_reference(config, zeros):
    """Every case as a DUAL job on a dual-sparse core, and its weight-only and dense jobs on the
    same core: the sums of all three and the cycles of each equal the reference's."""
    with VerilatorDevice(config) as device:
        reference = ReferenceDevice(config)
        for name, (weights, tokens, seed) in CASES.items():
            activations = sparse_activations(tokens, weights.cols, zeros, seed)
            for mode, sparsity in ((Mode.SPARSE, Sparsity.DUAL), (Mode.SPARSE, Sparsity.WEIGHTS),
                                   (Mode.DENSE, Sparsity.WEIGHTS)):
                expected = reference.matmul(weights, activations, mode, sparsity=sparsity)
                result = device.matmul(weights, activations, mode, sparsity=sparsity)
                label = f"{name} {mode.name} {sparsity.name}"
                assert torch.equal(result.sums, expected.sums), label
                assert result.job_cycles == expected.job_cycles, label
                assert result.weight_bytes == expected.weight_bytes, label


def test_amaranth_matches_verilator(verilator):
    weights = weights_with_row_lengths((5, 0, 9, 2), 12, seed=8)
    activations = random_activations(3, 12, seed=20)
    for mode in (Mode.SPARSE, Mode.DENSE):
        expected = AmaranthDevice(SMALL).run_job(weights, activations, mode)
        result = verilator.run_job(weights, activations, mode)
        assert torch.equal(result.sums, expected.sums)
        assert result.cycles == expected.cycles


def test_watchdog_fails_instead_of_hanging_and_device_recovers(verilator):
    weights, tokens, seed = CASES["sparse-90"]
    activations = random_activations(tokens, weights.cols, seed)
    # The pipeline drain has cycles in which no stream moves: a 1-cycle watchdog trips there.
    verilator.max_idle_cycles = 1
    try:
        with pytest.raises(DeviceError, match="stalled"):
            verilator.run_job(weights, activations)
    finally:
        verilator.max_idle_cycles = verilator_backend.DEFAULT_MAX_IDLE_CYCLES
    expected = ReferenceDevice(SMALL).run_job(weights, activations)
    result = verilator.run_job(weights, activations)
    assert torch.equal(result.sums, expected.sums) and result.cycles == expected.cycles


def test_fst_waveform_written(tmp_path):
    path = tmp_path / "job.fst"
    weights, tokens, seed = CASES["empty-rows"]
    with VerilatorDevice(SMALL, fst_path=path) as device:
        result = device.run_job(weights, random_activations(tokens, weights.cols, seed))
    assert result.cycles > 0
    assert path.stat().st_size > 0


def test_second_build_is_a_cache_hit(verilator):
    first = build_library(SMALL)
    mtime = first.path.stat().st_mtime_ns
    second = build_library(SMALL)
    assert second.cached and second.path == first.path == verilator.build.path
    assert second.path.stat().st_mtime_ns == mtime


def test_missing_compiler_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEMAC_CACHE", str(tmp_path))
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which",
                        lambda tool, *args, **kwargs: None if tool == "g++"
                        else real_which(tool, *args, **kwargs))
    with pytest.raises(DeviceError, match=r"g\+\+.*apt-get install g\+\+"):
        VerilatorDevice(SMALL)


def test_harness_input_enum_follows_the_core_signature():
    """harness.cpp numbers the input streams itself: its enum must list a dual-sparse core's
    data inputs in the order the back end passes them, and a core without pairs must have the
    same ones but that last."""
    text = verilator_backend.HARNESS.read_text()
    enum = re.search(r"enum \{ (SM_ACTIVATIONS[^}]*) \};", text)
    assert enum, "harness.cpp has no input stream enum"
    names = CoreStreams(DUAL_SPARSE).data_inputs
    assert enum.group(1).split(", ") == [f"SM_{name.upper()}" for name in names] + ["SM_INPUTS"]
    assert CoreStreams(SMALL).data_inputs == names[:-1]
    fields = dict(verilator_backend._JobStats._fields_)
    assert fields["inputs_left"]._length_ == len(names)
