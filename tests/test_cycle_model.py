"""The cycle model: hand-checked schedules, its breakdown, and the 90 % BERT-base FFN speed-up.

``pytest -s tests/test_cycle_model.py -k bert`` prints the figures quoted in
docs/architecture.md.
"""

import numpy as np
import pytest
import torch

from helpers import HAND_CASES, K8T4
from sparsemac.hw.config import DEFAULT_CONFIG, ArrayConfig
from sparsemac.hw.formats import Mode
from sparsemac.sw.cycle_model import (ChunkSlice, JobTile, dual_job_cycles, dual_row_beats,
                                      dual_row_lengths, issue_cycles_per_block, job_cycles,
                                      job_tiles, pass_chunks, span_carries, token_blocks)
from sparsemac.sw.csr import CSRMatrix
from sparsemac.sw.pruning import prune_mask



def breakdown_sum(breakdown):
    return breakdown.issue + breakdown.load_stall + breakdown.fill + breakdown.drain


@pytest.mark.parametrize("hand", HAND_CASES, ids=lambda hand: hand.name)
def test_hand_checked_cases(hand):
    got = job_cycles(hand.row_lengths, hand.cols, hand.tokens, hand.config, hand.mode)
    assert (got.total, got.issue, got.load_stall, got.fill, got.drain) == (
        hand.cycles, hand.issue, hand.load_stall, hand.fill, 5), f"{hand.name}: {got}"


def test_issue_cycles_per_block():
    config = ArrayConfig(lanes=4, token_lanes=1, max_in_features=64)
    # max(1, ceil(n / 4)) for 0, 1, 4, 5, 8, 9 nonzeros: 1 + 1 + 1 + 2 + 2 + 3.
    assert issue_cycles_per_block([0, 1, 4, 5, 8, 9], 9, config) == 10
    # Dense mode ignores the lengths: 6 rows of ceil(9 / 4) = 3.
    assert issue_cycles_per_block([0, 1, 4, 5, 8, 9], 9, config, Mode.DENSE) == 18
    assert [token_blocks(tokens, K8T4) for tokens in (1, 4, 5, 8, 9)] == [1, 1, 2, 2, 3]


#: Worked out by hand at K = 8 (see test_span_carries_by_hand).
SPAN_LENGTHS = [0, 5, 0, 12, 37, 0, 3, 1, 1, 2, 9, 8, 16, 17, 1, 0, 7, 2, 30, 4]


def test_span_carries_by_hand():
    # Row 1 (5) spans nothing: row 2 is empty. Row 3 (12): 8, then 4 left, filled with 4 of
    # row 4 (37), whose 33 are 4 chunks of 8 and 1 left; row 5 is empty. Row 6 (3) and 7 (1)
    # are followed by rows of 1: nothing to spare (never a row's last entry). Row 8 (1) takes
    # 1 of row 9 (2), whose last one takes 7 of row 10 (9); its 2 left take 6 of row 11 (8),
    # whose 2 left take 6 of row 12 (16); its 10 are 8 + 2, and 6 of row 13 (17), whose 11
    # are 8 + 3; row 14 (1) has nothing to spare. Row 16 (7) takes 1 of row 17 (2), whose
    # last one takes 7 of row 18 (30); its 23 are 2 x 8 + 7, and 1 of row 19 (4).
    carries = [0, 0, 0, 0, 4, 0, 0, 0, 0, 1, 7, 6, 6, 6, 0, 0, 0, 1, 7, 1]
    assert span_carries(SPAN_LENGTHS, 8).tolist() == carries
    span = ArrayConfig(lanes=8, token_lanes=4, max_in_features=64, span_rows=1)
    # Rows 10, 13 and 18 need a chunk less: 29 rather than 32.
    assert issue_cycles_per_block(SPAN_LENGTHS, 37, K8T4) == 32
    assert issue_cycles_per_block(SPAN_LENGTHS, 37, span) == 29
    # Dense mode never spans.
    assert issue_cycles_per_block(SPAN_LENGTHS, 37, span, Mode.DENSE) == 20 * 5
    # One token block: issue from cycle 38 (after the 37-cycle load), the issues, the drain.
    assert job_cycles(SPAN_LENGTHS, 37, 4, span).total == 38 + 29 - 1 + 5
    assert job_cycles(SPAN_LENGTHS, 37, 4, K8T4).total == 38 + 32 - 1 + 5
    # With 2 columns the load is shorter than the fill: the first chunk of a spanning sparse
    # job is ready in cycle 4 (its first row is taken into the row registers first), not 3.
    assert job_cycles([1, 2], 2, 1, span).total == 4 + 2 - 1 + 5
    assert job_cycles([1, 2], 2, 1, span, Mode.DENSE).total == 3 + 2 - 1 + 5


def test_pass_chunks_by_hand():
    # K = 3, rows of 7, 4, 5, 2, 0, 6 entries at offsets 0, 7, 11, 16, 18, 18.
    chunks = pass_chunks([7, 4, 5, 2, 0, 6], 3, span=True)
    assert chunks == [
        ChunkSlice(0, 0, 3, 3, False), ChunkSlice(0, 3, 6, 3, False),
        ChunkSlice(0, 6, 9, 1, True),     # 1 of row 0, 2 of row 1 (4, all but its last)
        ChunkSlice(1, 9, 12, 2, True),    # 2 of row 1, 1 of row 2
        ChunkSlice(2, 12, 15, 3, False),
        ChunkSlice(2, 15, 17, 1, True),   # 1 of row 2, 1 of row 3 (2: all but its last)
        ChunkSlice(3, 17, 18, 3, True),   # row 4 is empty: nothing to carry
        ChunkSlice(4, 18, 18, 3, True),
        ChunkSlice(5, 18, 21, 3, False), ChunkSlice(5, 21, 24, 3, True)]
    assert span_carries([7, 4, 5, 2, 0, 6], 3).tolist() == [0, 2, 1, 1, 0, 0]
    span = ArrayConfig(lanes=3, token_lanes=1, max_in_features=64, span_rows=1)
    assert issue_cycles_per_block([7, 4, 5, 2, 0, 6], 7, span) == len(chunks) == 10
    without = pass_chunks([7, 4, 5, 2, 0, 6], 3)
    assert len(without) == 11 and all(chunk.split == 3 for chunk in without)


def test_span_counts_match_the_enumeration():
    rng = np.random.default_rng(3)
    for lanes in (1, 2, 5, 8):
        config = ArrayConfig(lanes=lanes, token_lanes=1, max_in_features=64, span_rows=1)
        for _ in range(50):
            lengths = rng.integers(0, 3 * lanes + 2, int(rng.integers(1, 30)))
            chunks = pass_chunks(lengths, lanes, span=True)
            assert issue_cycles_per_block(lengths, 64, config) == len(chunks)
            # Every entry once, in order; a chunk holds at most K and closes at most one row.
            assert [chunk.start for chunk in chunks[1:]] == [chunk.stop for chunk in chunks[:-1]]
            assert chunks[-1].stop == lengths.sum()
            assert all(chunk.stop - chunk.start <= lanes for chunk in chunks)
            assert sum(chunk.row_last for chunk in chunks) == len(lengths)


def random_jobs(count, seed):
    """Seeded (row lengths, cols, tokens) within the small config."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        cols = int(rng.integers(1, K8T4.max_in_features + 1))
        rows = int(rng.integers(1, 20))
        yield rng.integers(0, cols + 1, rows), cols, int(rng.integers(1, 40))


@pytest.mark.parametrize("mode", list(Mode), ids=lambda mode: mode.name.lower())
def test_breakdown_adds_up(mode):
    for lengths, cols, tokens in random_jobs(200, seed=1):
        got = job_cycles(lengths, cols, tokens, K8T4, mode)
        assert got.total == breakdown_sum(got), (lengths, cols, tokens, got)
        assert got.issue == token_blocks(tokens, K8T4) * issue_cycles_per_block(
            lengths, cols, K8T4, mode)
        assert min(got.load_stall, got.fill) >= 0 and got.load_stall >= cols and got.drain == 5


def test_dense_never_faster_than_sparse():
    for lengths, cols, tokens in random_jobs(200, seed=2):
        sparse = job_cycles(lengths, cols, tokens, K8T4, Mode.SPARSE).total
        dense = job_cycles(lengths, cols, tokens, K8T4, Mode.DENSE).total
        assert dense >= sparse, (lengths, cols, tokens, dense, sparse)


def test_monotonic_in_nonzeros():
    """Adding a nonzero to any row never makes a job faster; filling a matrix up one nonzero at
    a time ends at the dense mode's count."""
    rng = np.random.default_rng(3)
    for lengths, cols, tokens in random_jobs(20, seed=3):
        lengths = np.zeros_like(lengths)
        previous = job_cycles(lengths, cols, tokens, K8T4).total
        while (lengths < cols).any():
            lengths[rng.choice(np.flatnonzero(lengths < cols))] += 1
            total = job_cycles(lengths, cols, tokens, K8T4).total
            assert total >= previous, (lengths, cols, tokens, total, previous)
            previous = total
        assert previous == job_cycles(lengths, cols, tokens, K8T4, Mode.DENSE).total


def test_streamer_fill_shows_only_when_the_load_is_short():
    # 1 column: the bank is readable in cycle 2 but the first chunk comes in cycle 3.
    assert job_cycles([0, 1], 1, 1, K8T4).fill == 1
    assert job_cycles([0, 1], 1, 1, K8T4).total == job_cycles([1, 1], 1, 1, K8T4).total
    # 8 columns: the load ends in cycle 8, long after the streamer is ready.
    assert job_cycles([0, 1], 8, 1, K8T4).fill == 0


@pytest.mark.parametrize("kwargs, match", [
    ({"row_lengths": []}, "rows"),
    ({"cols": 0}, "columns"),
    ({"cols": 65}, "65"),
    ({"tokens": 0}, "tokens"),
    ({"row_lengths": [3, 11]}, "row lengths"),
    ({"row_lengths": [-1]}, "row lengths"),
])
def test_rejects_jobs_outside_the_config(kwargs, match):
    job = {"row_lengths": [1], "cols": 10, "tokens": 1, "config": K8T4} | kwargs
    with pytest.raises(ValueError, match=match):
        job_cycles(**job)


def test_rejects_a_config_of_another_type():
    with pytest.raises(TypeError, match="ArrayConfig"):
        job_cycles([1], 1, 1, "K=8")


def pruned_row_lengths(rows, cols, sparsity, seed):
    """Row lengths of a normal ``rows x cols`` weight magnitude-pruned to ``sparsity``."""
    weight = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    return prune_mask(weight, sparsity).sum(dim=1).numpy()


BERT_FFN = [("intermediate 768->3072", 3072, 768), ("output 3072->768", 768, 3072)]


@pytest.mark.parametrize("name, rows, cols", BERT_FFN, ids=["intermediate", "output"])
def test_bert_base_ffn_90_percent_speedup(name, rows, cols):
    """The headline: 90 % magnitude-pruned BERT-base FFN linears, 128 tokens, default config,
    at least 8x fewer cycles than the dense mode."""
    lengths = pruned_row_lengths(rows, cols, 0.9, seed=0)
    assert lengths.sum() == round(0.1 * rows * cols)
    sparse = job_cycles(lengths, cols, 128, DEFAULT_CONFIG, Mode.SPARSE)
    dense = job_cycles(lengths, cols, 128, DEFAULT_CONFIG, Mode.DENSE)
    speedup = dense.total / sparse.total
    print(f"\n{name} ({rows}x{cols}, 90 % pruned, {lengths.mean():.1f} nonzeros/row, 128 tokens,"
          f" {DEFAULT_CONFIG.describe()}): dense {dense.total} cycles, sparse {sparse.total} "
          f"cycles ({sparse}), speed-up {speedup:.2f}x")
    assert speedup >= 8, f"{name}: dense {dense.total} / sparse {sparse.total} = {speedup:.2f}"


def test_job_tiles_split_tokens_rows_and_columns():
    config = ArrayConfig(lanes=2, token_lanes=2, max_in_features=16, max_out_features=4,
                         max_token_blocks=2)
    tiles = list(job_tiles(5, 40, 6, config))
    # Tokens 4 + 2, rows 4 + 1, columns 16 + 16 + 8 (the last ragged), columns innermost.
    assert tiles[:4] == [JobTile(0, 4, 0, 4, 0, 16), JobTile(0, 4, 0, 4, 16, 32),
                         JobTile(0, 4, 0, 4, 32, 40), JobTile(0, 4, 4, 5, 0, 16)]
    assert len(tiles) == 2 * 2 * 3 and tiles[-1] == JobTile(4, 6, 4, 5, 32, 40)
    with pytest.raises(ValueError, match="at least one row, column and token, not 5 rows, "
                                         "0 columns and 6 tokens"):
        list(job_tiles(5, 0, 6, config))


def test_a_tile_holds_its_columns_nonzeros():
    dense = torch.tensor([[1, 0, 2, 3, 0], [0, 0, 0, 0, 4], [5, 6, 0, 0, 7]], dtype=torch.int8)
    weights = CSRMatrix.from_dense(dense)
    tile = JobTile(0, 1, 1, 3, 1, 4)
    assert tile.row_lengths(weights).tolist() == [0, 1]
    assert torch.equal(tile.weights(weights).to_dense(), dense[1:3, 1:4])


def test_dual_row_beats_by_hand():
    """K = 2, T = 2, 3 tokens (two blocks, the second padded with a token without pairs).

    Row 0 has weights in columns 0, 1, 3, 4; row 1 none; row 2 one in column 2. Token 0's
    activations are nonzero in columns 0, 1, 3; token 1's in 4; token 2's in 2 and 3.
    Pairs (row x token): row 0 has 3, 1, 1; row 2 has 0, 0, 1. Block 0: row 0 takes
    ceil(3 / 2) = 2 beats, row 1 (empty) and row 2 (no pairs) one each; block 1: one each.
    A job of 2 + 1 + 1 + 1 + 1 + 1 = 7 beats takes 7 + 4 = 11 cycles: the beats in cycles 1 to
    7, the last sums 4 cycles later.
    """
    config = ArrayConfig(lanes=2, token_lanes=2, max_in_features=8, dual_sparse=1)
    dense = np.zeros((3, 5), dtype=np.int8)
    dense[0, [0, 1, 3, 4]] = [1, -2, 3, -4]
    dense[2, 2] = 5
    activations = np.zeros((3, 5), dtype=np.int8)
    activations[0, [0, 1, 3]] = 7
    activations[1, 4] = -1
    activations[2, [2, 3]] = 9
    weights = CSRMatrix.from_dense(dense)
    assert dual_row_lengths(weights, activations, config).tolist() == [
        [3, 0, 0], [1, 0, 0], [1, 0, 1], [0, 0, 0]]
    beats = dual_row_beats(weights, torch.from_numpy(activations), config)
    assert beats.tolist() == [[2, 1, 1], [1, 1, 1]]
    cycles = dual_job_cycles(int(beats.sum()), config)
    assert (cycles.total, cycles.issue, cycles.load_stall, cycles.fill, cycles.drain) == (
        11, 7, 0, 0, 4)
    assert breakdown_sum(cycles) == cycles.total
    with pytest.raises(ValueError, match="at least one pairs beat, not 0"):
        dual_job_cycles(0, config)


def test_dual_sparse_is_never_slower_to_issue_than_weight_only():
    """A row's pairs per token are at most its nonzeros, so a DUAL pass issues at most as many
    beats as a weight-only pass issues chunks (without spanning)."""
    config = ArrayConfig(lanes=8, token_lanes=4, max_in_features=64, dual_sparse=1)
    rng = np.random.default_rng(3)
    for sparsity in (0.0, 0.5, 0.9):
        dense = rng.integers(-128, 128, size=(20, 64)).astype(np.int8)
        dense[rng.random(dense.shape) < sparsity] = 0
        weights = CSRMatrix.from_dense(dense)
        activations = rng.integers(-3, 4, size=(9, 64)).astype(np.int8)
        beats = dual_row_beats(weights, activations, config)
        chunks = issue_cycles_per_block(weights.row_lengths(), 64, config)
        assert (beats.sum(axis=1) <= chunks).all()
