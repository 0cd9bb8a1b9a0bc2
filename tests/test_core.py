"""SparseMACCore end to end: bit-exact against the golden model, cycle-exact against the model."""

from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch

from helpers import (HAND_CASES, K1T1, K1T4, K3T2, K8T1, K8T4, STALLS, BlockTestbench,
                     random_weights, reference, short, sparse_activations,
                     weights_with_row_lengths)
from sparsemac.hw.config import ArrayConfig
from sparsemac.hw.core import SparseMACCore
from sparsemac.hw.formats import Mode, Sparsity
from sparsemac.sim.amaranth_sim import run_core_job
from sparsemac.sim.stalls import StallPattern
from sparsemac.sw.csr import CSRMatrix
from sparsemac.sw.cycle_model import dual_job_cycles, dual_row_beats, job_cycles
from sparsemac.sw.packing import beats_to_ints, pack_job, unpack_sums

pytestmark = pytest.mark.usefixtures("sim_deadline")

DUAL = ArrayConfig(lanes=3, token_lanes=2, max_in_features=64, read_ports=2)
SPAN8 = ArrayConfig(lanes=8, token_lanes=4, max_in_features=64, span_rows=1)
SPAN3 = ArrayConfig(lanes=3, token_lanes=2, max_in_features=64, span_rows=1)
#: Empty, length-1 and short rows, rows of exactly K and one past, long rows: every way a chunk
#: may or may not span into the next row, at K = 8 and K = 3.
SPAN_LENGTHS = [0, 5, 0, 12, 37, 0, 3, 1, 1, 2, 9, 8, 16, 17, 1, 0, 7, 2, 30, 4]
#: The dual-sparse mode, at K = 8 and at odd K, and with chunks that span rows (a pairs beat
#: never spans).
SPARSE8 = ArrayConfig(lanes=8, token_lanes=4, max_in_features=64, dual_sparse=1)
SPARSE3 = ArrayConfig(lanes=3, token_lanes=2, max_in_features=64, dual_sparse=1)
SPARSE3_SPAN = ArrayConfig(lanes=3, token_lanes=2, max_in_features=64, span_rows=1,
                           dual_sparse=1)


@dataclass(frozen=True)
class Case:
    name: str
    config: ArrayConfig
    weights: CSRMatrix
    tokens: int
    mode: Mode = Mode.SPARSE
    seed: int = 0
    #: Every activation this value instead of random ones.
    activation: int | None = None
    sparsity: Sparsity = Sparsity.WEIGHTS
    #: The probability of a zero activation.
    zeros: float = 0.0
    #: Tokens whose activations are all zero (no pairs in a DUAL job).
    silent: tuple = ()

    @property
    def id(self):
        dual = f"-dual-zeros{self.zeros}" if self.sparsity == Sparsity.DUAL else ""
        return (f"{self.name}-{self.mode.name.lower()}{dual}-{short(self.config)}"
                f"-{self.weights.rows}x{self.weights.cols}-tok{self.tokens}-seed{self.seed}")

    @property
    def activations(self):
        if self.activation is not None:
            return torch.full((self.tokens, self.weights.cols), self.activation, dtype=torch.int8)
        activations = sparse_activations(self.tokens, self.weights.cols, self.zeros, self.seed)
        activations[list(self.silent)] = 0
        return activations

    def model_cycles(self):
        if self.sparsity == Sparsity.DUAL:
            beats = dual_row_beats(self.weights, self.activations, self.config)
            return dual_job_cycles(int(beats.sum()), self.config)
        return job_cycles(self.weights.row_lengths(), self.weights.cols, self.tokens,
                          self.config, self.mode)


def check_sums(label, got, expected):
    """Equal int32 [tokens, rows]; otherwise name the first differing (token, row)."""
    assert got.shape == expected.shape, f"{label}: shape {got.shape} != {expected.shape}"
    bad = (got != expected).nonzero()
    assert not len(bad), (f"{label}: {len(bad)} sums differ, first at (token, row) = "
                          f"{tuple(bad[0].tolist())}: got {int(got[tuple(bad[0])])}, "
                          f"expected {int(expected[tuple(bad[0])])}")


def run_case(case, stalls):
    """The core's sums as int32 [tokens, rows] and its cycle count."""
    packed = pack_job(case.config, case.weights, case.activations, case.mode,
                      sparsity=case.sparsity)
    run = run_core_job(case.config, packed, stalls)
    return unpack_sums(case.config, run.sums, case.weights.rows, case.tokens), run.cycles



CASES = [
    Case(f"sparsity-{sparsity}", K8T4, random_weights(8, 37, sparsity, seed), 9, seed=seed)
    for sparsity, seed in ((0.0, 1), (0.5, 2), (0.9, 3), (0.99, 4), (1.0, 5))
] + [
    Case("empty-first-last-rows", K8T4,
         weights_with_row_lengths([0, 5, 0, 12, 37, 0, 3, 0], 37, 6), 6, seed=6),
    Case("dense-row-among-sparse", K8T4,
         weights_with_row_lengths([2, 1, 4, 37, 0, 3, 1, 2], 37, 7), 9, seed=7),
    Case("one-nonzero", K8T4, weights_with_row_lengths([0, 0, 0, 0, 0, 0, 0, 1], 37, 8), 5, seed=8),
    Case("cols-not-multiple-of-k", K8T4, random_weights(6, 13, 0.5, 9), 4, seed=9),
    Case("cols-below-k", K8T4, random_weights(5, 5, 0.4, 22), 6, seed=22),
    Case("max-cols", K8T4, random_weights(3, 64, 0.8, 10), 9, seed=10),
    Case("t1", K8T1, random_weights(6, 20, 0.5, 11), 3, seed=11),
    Case("k1-compute-bound", K1T4, random_weights(5, 12, 0.5, 12), 13, seed=12),
    Case("k3", K3T2, random_weights(7, 23, 0.5, 13), 7, seed=13),
    Case("k1t1", K1T1, random_weights(4, 8, 0.3, 14), 3, seed=14),
    Case("5-blocks-load-bound", K8T4, weights_with_row_lengths([1, 0], 40, 15), 20, seed=15),
    Case("extremes", K8T4, CSRMatrix.from_dense(np.full((4, 37), -128, np.int8)), 5,
         activation=-128),
    Case("dense-mode", K8T4, random_weights(8, 37, 0.5, 16), 9, Mode.DENSE, seed=16),
    Case("dense-mode-cols-below-k", K8T4, random_weights(5, 3, 0.5, 23), 6, Mode.DENSE, seed=23),
    Case("dense-mode-all-zero", K8T4, random_weights(4, 9, 1.0, 17), 4, Mode.DENSE, seed=17),
    Case("dense-mode-k3", K3T2, random_weights(5, 11, 0.3, 18), 5, Mode.DENSE, seed=18),
    Case("dense-mode-k1t1", K1T1, random_weights(3, 5, 0.5, 19), 2, Mode.DENSE, seed=19),
    Case("dense-mode-t1", K8T1, random_weights(4, 20, 0.9, 20), 3, Mode.DENSE, seed=20),
    # Two read lanes a replica (odd K: the last replica serves one); load-bound, so the loader
    # writes each bank as soon as its last chunk is read.
    Case("dual-port-load-bound", DUAL, weights_with_row_lengths([1, 0], 40, 24), 11, seed=24),
    Case("dual-port", DUAL, random_weights(7, 23, 0.5, 25), 7, seed=25),
    Case("dual-port-dense-mode", DUAL, random_weights(5, 11, 0.3, 26), 5, Mode.DENSE, seed=26),
    # Chunks that span rows: compute-bound jobs of several passes, so the spans and the pass
    # boundaries (which no chunk crosses) set the cycle count.
    Case("span-edge-rows", SPAN8, weights_with_row_lengths(SPAN_LENGTHS, 37, 27), 9, seed=27),
    Case("span-edge-rows-k3", SPAN3, weights_with_row_lengths(SPAN_LENGTHS, 37, 28), 7, seed=28),
    Case("span-sparsity-0.9", SPAN8, random_weights(24, 64, 0.9, 29), 9, seed=29),
    Case("span-sparsity-0.5-k3", SPAN3, random_weights(9, 23, 0.5, 30), 5, seed=30),
    Case("span-extremes", SPAN3, CSRMatrix.from_dense(np.full((5, 7), -128, np.int8)), 3,
         activation=-128),
    Case("span-dense-mode", SPAN3, random_weights(5, 11, 0.3, 31), 5, Mode.DENSE, seed=31),
    # Fewer columns than the streamer's fill: its first chunk sets the count.
    Case("span-cols-below-3", SPAN8, random_weights(5, 2, 0.3, 32), 6, seed=32),
    Case("span-one-row", SPAN3, weights_with_row_lengths([9], 20, 33), 5, seed=33),
    # K = 1 never has room to span, but still takes each row into its row registers.
    Case("span-k1", ArrayConfig(lanes=1, token_lanes=4, max_in_features=64, span_rows=1),
         weights_with_row_lengths([0, 3, 1, 2, 0, 5], 12, 34), 5, seed=34),
]
DUAL = Sparsity.DUAL
DUAL_SPARSE_CASES = [
    # Skipping zero activations per token: rows whose tokens need different beat counts, empty
    # rows, a token without a single pair, no pairs at all, the int8 extremes.
    Case("dual-90-70", SPARSE8, random_weights(12, 64, 0.9, 35), 9, seed=35, zeros=0.7,
         sparsity=DUAL),
    Case("dual-50-50-k3", SPARSE3, random_weights(9, 23, 0.5, 36), 7, seed=36, zeros=0.5,
         sparsity=DUAL),
    Case("dual-dense-inputs", SPARSE8, random_weights(6, 37, 0.5, 37), 5, seed=37,
         sparsity=DUAL),
    Case("dual-empty-rows", SPARSE3, weights_with_row_lengths([0, 5, 0, 12, 23, 0, 3, 0], 23, 38),
         6, seed=38, zeros=0.4, sparsity=DUAL),
    Case("dual-silent-tokens", SPARSE8, random_weights(7, 30, 0.3, 39), 6, seed=39, zeros=0.5,
         silent=(1, 4), sparsity=DUAL),
    Case("dual-all-zero-activations", SPARSE3, random_weights(5, 11, 0.3, 40), 5, seed=40,
         zeros=1.0, sparsity=DUAL),
    Case("dual-extremes", SPARSE3, CSRMatrix.from_dense(np.full((4, 7), -128, np.int8)), 3,
         activation=-128, sparsity=DUAL),
    Case("dual-span", SPARSE3_SPAN, weights_with_row_lengths(SPAN_LENGTHS, 37, 41), 5, seed=41,
         zeros=0.6, sparsity=DUAL),
    Case("dual-k1", ArrayConfig(lanes=1, token_lanes=3, max_in_features=64, dual_sparse=1),
         random_weights(4, 9, 0.4, 42), 4, seed=42, zeros=0.5, sparsity=DUAL),
]
CASES += DUAL_SPARSE_CASES + [
    # The weight path of a dual-sparse array, through the operand select.
    replace(case, sparsity=Sparsity.WEIGHTS) for case in DUAL_SPARSE_CASES[:4]] + [
    Case("dual-array-dense-mode", SPARSE3, random_weights(5, 11, 0.3, 43), 5, Mode.DENSE,
         seed=43, zeros=0.5),
]


def _registered(case):
    return replace(case, name=f"registered-{case.name}",
                   config=replace(case.config, registered=1))


#: Skid buffers on the core's edges and registered multipliers (``ArrayConfig.registered``):
#: compute- and load-bound, dense, dual-port, spanning, DUAL and the weight path of a
#: dual-sparse array, empty rows, K = 1.
REGISTERED_CASES = [_registered(case) for case in CASES if case.name in (
    "sparsity-0.5", "empty-first-last-rows", "cols-below-k", "k1-compute-bound", "k3",
    "5-blocks-load-bound", "dense-mode-k3", "dual-port", "span-edge-rows-k3", "span-k1",
    "span-cols-below-3", "dual-50-50-k3", "dual-empty-rows", "dual-span", "dual-k1",
    "dual-array-dense-mode")]
CASES += REGISTERED_CASES


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_ideal_streams_bit_and_cycle_exact(case):
    print(f"replay: {case.id}")
    got, cycles = run_case(case, StallPattern())
    check_sums(case.id, got, reference(case.weights, case.activations))
    model = case.model_cycles()
    assert cycles == model.total, f"{case.id}: core counted {cycles} cycles, model {model}"


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_stalled_streams_bit_exact(case):
    stalls = StallPattern(idle=STALLS, backpressure=STALLS, seed=case.seed)
    print(f"replay: {case.id} {stalls}")
    got, cycles = run_case(case, stalls)
    check_sums(f"{case.id} {stalls}", got, reference(case.weights, case.activations))
    model = case.model_cycles()
    assert cycles >= model.total, f"{case.id}: {cycles} cycles with stalls < ideal {model}"


@pytest.mark.parametrize("hand", HAND_CASES, ids=lambda hand: hand.name)
def test_hand_checked_cycle_counts(hand):
    """The cycle counts worked out by hand in helpers.HAND_CASES, on the RTL itself."""
    case = Case(hand.name, hand.config, weights_with_row_lengths(hand.row_lengths, hand.cols, 0),
                hand.tokens, hand.mode)
    got, cycles = run_case(case, StallPattern())
    check_sums(case.id, got, reference(case.weights, case.activations))
    assert cycles == hand.cycles, f"{case.id}: core counted {cycles}, by hand {hand.cycles}"


@pytest.mark.parametrize("stalls", [0.0, STALLS], ids=["ideal", "stalled"])
@pytest.mark.parametrize("config, names", [
    (K8T4, ("sparsity-0.5", "dense-mode", "empty-first-last-rows")),
    # DUAL after DUAL, then weight-only jobs, then DUAL again: the operand select switches.
    (SPARSE3, ("dual-50-50-k3", "dual-empty-rows", "dual-array-dense-mode", "dual-50-50-k3",
               "dual-all-zero-activations")),
    # The next job's data wait in the skid buffers while the last one drains.
    (replace(K8T4, registered=1), ("registered-sparsity-0.5", "registered-5-blocks-load-bound",
                                   "registered-empty-first-last-rows")),
    (replace(SPARSE3, registered=1), ("registered-dual-50-50-k3", "registered-dual-empty-rows",
                                      "registered-dual-array-dense-mode",
                                      "registered-dual-50-50-k3")),
], ids=["weights", "dual-sparse", "registered-weights", "registered-dual-sparse"])
def test_jobs_back_to_back(stalls, config, names):
    """Several jobs on one core (odd block counts, mode and sparsity switches): each is exact,
    so no state leaks from one job into the next."""
    jobs = [next(case for case in CASES if case.name == name and case.config == config)
            for name in names]
    core = SparseMACCore(config)
    testbench = BlockTestbench(core, seed=21)
    packed = [pack_job(config, job.weights, job.activations, job.mode, sparsity=job.sparsity)
              for job in jobs]
    testbench.put(core.job, [p.job for p in packed], idle=stalls)
    for name in core.signature.data_inputs:
        beats = [beat for p in packed for beat in beats_to_ints(getattr(p, name))]
        testbench.put(getattr(core, name), beats, idle=stalls)
    testbench.get("sums", core.sums, sum(p.token_blocks * p.rows for p in packed), stalls)
    testbench.get("done", core.done, len(jobs), stalls)
    results = testbench.run(5000)
    sums = np.array([list(beat.to_bytes(4 * config.token_lanes, "little"))
                     for beat in results["sums"]], dtype=np.uint8)
    for job, p, cycles in zip(jobs, packed, results["done"]):
        beats, sums = sums[:p.token_blocks * p.rows], sums[p.token_blocks * p.rows:]
        check_sums(f"seed 21 stalls {stalls} {job.id}",
                   unpack_sums(config, beats, p.rows, p.tokens),
                   reference(job.weights, job.activations))
        if not stalls:
            assert cycles == job.model_cycles().total, f"{job.id}: {cycles} cycles"
