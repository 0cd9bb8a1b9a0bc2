"""The throttled cycle model against the RTL: Verilator and Amaranth runs fed by credit buckets.

Rates are fractions of what the core can take at most: one column and value word per cycle
(3K bytes, K in dense mode) on the weight path, one activation column (T bytes) per cycle. The
Verilator configs keep ``max_in_features`` small so each builds in about a minute.
"""

import dataclasses
import random

import numpy as np
import pytest
import torch

from helpers import (K3T2, random_activations, random_weights, sparse_activations,
                     weights_with_row_lengths)
from sparsemac.devices.amaranth import AmaranthDevice
from sparsemac.devices.reference import ReferenceDevice
from sparsemac.devices.verilator import VerilatorDevice
from sparsemac.hw.config import ArrayConfig
from sparsemac.hw.formats import Mode, Sparsity
from sparsemac.sim.amaranth_sim import run_core_job
from sparsemac.sim.cocotb.cases import build_case
from sparsemac.sw.cycle_model import dual_row_beats, job_cycles
from sparsemac.sw.memory import MemoryModel, job_streams, memory_preset
from sparsemac.sw.packing import pack_job
from sparsemac.sw.throttled_cycle_model import (layer_cycles, replay_schedule,
                                                throttled_dual_job_cycles, throttled_job_cycles)

SPAN3 = dataclasses.replace(K3T2, span_rows=1)
CONFIGS = {f"K{k}": ArrayConfig(lanes=k, token_lanes=4, max_in_features=512,
                                max_out_features=64, max_token_blocks=8) for k in (1, 3, 8)}
#: Chunks that span rows, odd K (tests/test_verilator.py runs the same build).
CONFIGS["K5S"] = ArrayConfig(lanes=5, token_lanes=4, max_in_features=512, max_out_features=64,
                             max_token_blocks=8, span_rows=1)

#: Fractions of the full rate: ideal, half, quarter, an odd one and a very slow one.
FRACTIONS = {"ideal": None, "half": 0.5, "quarter": 0.25, "odd": 0.37, "slow": 0.05}


def _memory(config, mode, fraction, activations=True):
    if fraction is None:
        return None
    words = 3 * config.lanes if mode == Mode.SPARSE else config.lanes
    return MemoryModel("custom", fraction * words,
                       fraction * config.token_lanes if activations else None)


def _cases(config):
    """Random jobs and real MiniLM slices (90 % query, 80 % intermediate) for ``config``."""
    rng = random.Random(12)
    cases = [build_case(name, config, rng).weights for name in ("minilm_query",
                                                                "minilm_intermediate")]
    cases[1] = cases[1].row_slice(0, 16)
    cases += [random_weights(12, 99, 0.9, seed=1), random_weights(9, 40, 0.0, seed=2),
              weights_with_row_lengths((0, 3, 0, 25, 9, 0, 1), 30, seed=3)]
    return cases


@pytest.fixture(scope="module", params=list(CONFIGS))
def device(request):
    with VerilatorDevice(CONFIGS[request.param]) as device:
        yield device


@pytest.mark.parametrize("mode", [Mode.SPARSE, Mode.DENSE], ids=["sparse", "dense"])
@pytest.mark.parametrize("fraction", list(FRACTIONS))
def test_verilator_matches_model(device, fraction, mode):
    config = device.config
    for index, weights in enumerate(_cases(config)):
        tokens = 2 * config.token_lanes + 1 + index
        activations = random_activations(tokens, weights.cols, seed=index)
        for throttle_activations in (True, False):
            memory = _memory(config, mode, FRACTIONS[fraction], throttle_activations)
            device.memory = memory
            result = device.run_job(weights, activations, mode)
            model = throttled_job_cycles(weights.row_lengths(), weights.cols, tokens, config,
                                         mode, memory)
            assert result.cycles == model.cycles, (index, throttle_activations)
            assert model.cycles >= model.compute_cycles


#: Skid buffers on every input (``ArrayConfig.registered``): a throttled beat reaches the core a
#: cycle after its bucket offers it.
REGISTERED = dataclasses.replace(K3T2, registered=1)
REGISTERED_SPAN = dataclasses.replace(SPAN3, registered=1)


@pytest.mark.parametrize("config", [K3T2, SPAN3, REGISTERED, REGISTERED_SPAN],
                         ids=["K3T2", "K3T2-span", "K3T2-registered", "K3T2-span-registered"])
@pytest.mark.parametrize("fraction", ["half", "odd"])
@pytest.mark.parametrize("mode", [Mode.SPARSE, Mode.DENSE], ids=["sparse", "dense"])
def test_amaranth_matches_model(fraction, mode, config):
    weights = weights_with_row_lengths((5, 0, 1, 7, 3, 2, 2, 9, 1, 4), 20, seed=4)
    activations = random_activations(5, 20, seed=5)
    memory = _memory(config, mode, FRACTIONS[fraction])
    run = run_core_job(config, pack_job(config, weights, activations, mode), memory=memory)
    model = throttled_job_cycles(weights.row_lengths(), 20, 5, config, mode, memory)
    assert run.cycles == model.cycles
    assert model.cycles > model.compute_cycles


#: The dual-sparse mode, odd K; the Verilator build of tests/test_verilator.py.
DUAL_SPARSE = ArrayConfig(lanes=5, token_lanes=3, max_in_features=64, max_out_features=16,
                          max_token_blocks=3, dual_sparse=1)


def _dual_memories(config):
    """Pairs rates from a beat a cycle down to one every 20 cycles, an odd one between."""
    beat = 2 * config.lanes * config.token_lanes + 1
    return [None] + [MemoryModel("custom", fraction * beat, 1.0)
                     for fraction in (1.0, 0.5, 0.37, 0.05)]


@pytest.mark.parametrize("backend, registered", [("amaranth", 0), ("verilator", 0),
                                                ("amaranth", 1)])
def test_dual_sparse_jobs_match_the_model_at_every_rate(backend, registered):
    """A DUAL job's pairs are the weight path's only stream: at every rate the core's count is
    the model's, ``beats x w + 4`` (``+ 1 + 7`` throttled through the skid buffer of a registered
    array)."""
    config = dataclasses.replace(DUAL_SPARSE, registered=registered)
    weights = weights_with_row_lengths((5, 0, 1, 7, 3, 2, 2, 9, 1, 4), 20, seed=8)
    activations = sparse_activations(5, 20, 0.5, seed=9)
    beats = int(dual_row_beats(weights, activations, config).sum())
    device_class = AmaranthDevice if backend == "amaranth" else VerilatorDevice
    for memory in _dual_memories(config):
        device = device_class(config, memory=memory)
        result = device.run_job(weights, activations, sparsity=Sparsity.DUAL)
        model = throttled_dual_job_cycles(beats, 10, 5, config, memory)
        expected = ReferenceDevice(config, memory=memory).run_job(
            weights, activations, sparsity=Sparsity.DUAL)
        assert result.cycles == model.cycles == expected.cycles, memory
        assert model.cycles >= max(model.compute_cycles, model.weight_transfer_cycles)
        # K x T weights and activations, then the row_last bit in a byte of its own.
        assert model.weight_bytes == beats * (2 * config.lanes * config.token_lanes + 1)
        device.close()


@pytest.mark.parametrize("config", [SPAN3, REGISTERED_SPAN], ids=["span", "span-registered"])
def test_amaranth_matches_model_while_the_first_row_waits_for_its_pointer(config):
    """A spanning streamer takes its first row into its row registers when the row's pointer
    comes; at a slow rate the ring is full long before, so nothing else moves then."""
    weights = weights_with_row_lengths((20, 20), 20, seed=6)
    activations = random_activations(1, 20, seed=7)
    memory = _memory(config, Mode.SPARSE, FRACTIONS["slow"], activations=False)
    run = run_core_job(config, pack_job(config, weights, activations), memory=memory)
    assert run.cycles == throttled_job_cycles(weights.row_lengths(), 20, 1, config,
                                              memory=memory).cycles


def test_amaranth_device_takes_a_memory():
    weights = random_weights(4, 12, 0.5, seed=10)
    activations = random_activations(3, 12, seed=11)
    memory = MemoryModel("custom", 1.3, 0.9)
    result = AmaranthDevice(K3T2, memory=memory).run_job(weights, activations)
    assert result.cycles == throttled_job_cycles(weights.row_lengths(), 12, 3, K3T2,
                                                 memory=memory).cycles


@pytest.mark.parametrize("registered", [0, 1], ids=["direct", "registered"])
@pytest.mark.parametrize("span", [0, 1], ids=["rows", "spans"])
@pytest.mark.parametrize("lanes", [1, 3, 8])
def test_replay_matches_the_closed_form_with_ideal_streams(lanes, span, registered):
    rng = np.random.default_rng(lanes)
    for _ in range(100):
        config = ArrayConfig(lanes=lanes, token_lanes=int(rng.choice([1, 4])),
                             max_in_features=128, span_rows=span, registered=registered)
        rows, cols = int(rng.integers(1, 20)), int(rng.integers(1, 129))
        tokens = int(rng.integers(1, 6 * config.token_lanes))
        # Rows of up to 3K nonzeros half the time, so spans are frequent.
        longest = cols if rng.random() < 0.5 else min(cols, 3 * lanes)
        lengths = rng.integers(0, longest + 1, rows) * (rng.random(rows) < 0.7)
        for mode in (Mode.SPARSE, Mode.DENSE):
            nnz = int(lengths.sum())
            streams = job_streams(config, mode, rows, cols, nnz, -(-tokens // config.token_lanes))
            replay = replay_schedule(lengths, cols, tokens, config, mode, streams)
            closed = job_cycles(lengths, cols, tokens, config, mode)
            assert (replay.cycles, replay.chunks) == (closed.total, closed.issue)
            fast = throttled_job_cycles(lengths, cols, tokens, config, mode).schedule
            assert fast == replay


def test_bound_names_the_limit():
    config = CONFIGS["K8"]
    weights = random_weights(40, 300, 0.9, seed=6)
    ideal = throttled_job_cycles(weights.row_lengths(), 300, 8, config)
    assert ideal.bound == "compute" and ideal.cycles == ideal.compute_cycles
    assert (ideal.weight_transfer_cycles, ideal.activation_transfer_cycles) == (0, 0)
    starved = throttled_job_cycles(weights.row_lengths(), 300, 8, config,
                                   memory=MemoryModel("custom", 0.5, None))
    assert starved.bound == "weights"
    assert starved.cycles >= starved.weight_transfer_cycles > starved.compute_cycles
    slow_activations = throttled_job_cycles(weights.row_lengths(), 300, 8, config,
                                            memory=MemoryModel("custom", 100.0, 0.05))
    assert slow_activations.bound == "activations"


def test_layer_cycles_sums_the_driver_jobs():
    # 40 rows at 64 per job and 40 tokens at 32 per job: two jobs over the tokens.
    config = CONFIGS["K3"]
    weights = random_weights(40, 50, 0.8, seed=7)
    memory = memory_preset("ulx3s-sdram")
    layer = layer_cycles(weights, 40, config, Mode.SPARSE, memory)
    jobs = [throttled_job_cycles(weights.row_lengths(), 50, tokens, config, Mode.SPARSE, memory)
            for tokens in (32, 8)]
    assert layer.jobs == 2
    assert layer.cycles == sum(job.cycles for job in jobs)
    assert layer.chunks == sum(job.schedule.chunks for job in jobs)
    assert layer.weight_bytes == sum(job.weight_bytes for job in jobs)


def test_layer_cycles_counts_column_tiles():
    # 1100 columns at 512 per job: tiles of 512, 512 and 76, each a job of its own width.
    config = CONFIGS["K3"]
    weights = random_weights(10, 1100, 0.9, seed=8)
    memory = memory_preset("ulx3s-sdram")
    layer = layer_cycles(weights, 6, config, Mode.SPARSE, memory)
    dense = weights.to_dense()
    jobs = [throttled_job_cycles((dense[:, start:stop] != 0).sum(dim=1).numpy(), stop - start, 6,
                                 config, Mode.SPARSE, memory)
            for start, stop in ((0, 512), (512, 1024), (1024, 1100))]
    assert layer.jobs == 3
    assert layer.cycles == sum(job.cycles for job in jobs)
    assert layer.fill_beats == 2 * 1100  # 6 tokens on 4 token lanes: two blocks of each tile


@pytest.mark.parametrize("preset", ["ulx3s-sdram", "uart"])
def test_verilator_under_a_preset_matches_reference_device(preset):
    # The whole flow: ReferenceDevice and VerilatorDevice given the same preset agree; at the
    # UART's 0.005 bytes per cycle a row pointer waits 4096 cycles for its credit.
    config = CONFIGS["K3"]
    weights = random_weights(20, 64, 0.9, seed=8)
    activations = random_activations(10, 64, seed=9)
    memory = memory_preset(preset)
    with VerilatorDevice(config, memory=memory) as verilator:
        result = verilator.matmul(weights, activations)
    expected = ReferenceDevice(config, memory=memory).matmul(weights, activations)
    assert torch.equal(result.sums, expected.sums)
    assert result.job_cycles == expected.job_cycles


def test_replay_of_streams_that_cannot_feed_the_job_says_where_it_stuck():
    """Streams with fewer beats than the job needs: the compiled replay stops, not hangs."""
    config = CONFIGS["K3"]
    streams = job_streams(config, Mode.SPARSE, 2, 10, 6, 1)
    short = dataclasses.replace(streams, values=dataclasses.replace(streams.values, beats=1))
    with pytest.raises(RuntimeError, match=r"the cycle model's replay is stuck in cycle \d+: no "
                                           "stream can move and none is waiting for credit"):
        replay_schedule(np.array([3, 3]), 10, 2, config, Mode.SPARSE, short)
