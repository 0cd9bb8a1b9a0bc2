"""Packing: job beats laid out exactly as hw/formats.py says, sums unpacked, clear errors."""

import dataclasses

import numpy as np
import pytest
import torch
from amaranth.hdl import Shape

from helpers import (K3T2, K8T4, decode, layout_beats, random_activations, random_weights,
                     short, sparse_activations, weights_with_row_lengths)
from sparsemac.hw.config import DEFAULT_CONFIG, ArrayConfig
from sparsemac.hw.formats import ColumnIndex, CoreFormats, Mode, Sparsity
from sparsemac.hw.link_formats import layout_bytes
from sparsemac.sw.packing import beats_to_ints, pack_job, unpack_sums



def test_default_beat_widths():
    """Bits of each payload of the default config, and the bytes a beat takes on the bus."""
    formats = CoreFormats(DEFAULT_CONFIG)
    widths = {name: Shape.cast(getattr(formats, name)).width
              for name in ("job", "activation_column", "row_pointer", "column_word",
                           "value_word", "sums", "cycles")}
    assert widths == {"job": 81, "activation_column": 32, "row_pointer": 32, "column_word": 128,
                      "value_word": 64, "sums": 128, "cycles": 48}
    assert {name: layout_bytes(getattr(formats, name)) for name in widths} == {
        "job": 11, "activation_column": 4, "row_pointer": 4, "column_word": 16,
        "value_word": 8, "sums": 16, "cycles": 6}


@pytest.mark.parametrize("config", [K3T2, K8T4], ids=short)
@pytest.mark.parametrize("mode", list(Mode), ids=lambda mode: mode.name.lower())
def test_packed_beats_decode_to_the_job(config, mode):
    """Every stream's beats, decoded with the hardware layouts, give back the job."""
    formats, lanes, token_lanes = CoreFormats(config), config.lanes, config.token_lanes
    weights, activations = random_weights(7, 23, 0.6, 1), random_activations(9, 23, 2)
    packed = pack_job(config, weights, activations, mode)
    blocks = 5 if token_lanes == 2 else 3
    streamed = weights.nnz if mode == Mode.SPARSE else 7 * 23
    words = -(-streamed // lanes)

    job = formats.job.from_bits(packed.job)
    assert (Mode(job.mode), job.rows, job.cols, job.token_blocks, job.nnz) == (
        mode, 7, 23, blocks, streamed)
    assert (packed.token_blocks, packed.nnz, packed.tokens) == (blocks, streamed, 9)

    assert packed.activations.shape == (blocks * 23, token_lanes)
    padded = np.zeros((blocks * token_lanes, 23), dtype=np.int64)
    padded[:9] = activations.numpy()
    got = [list(beat) for beat in decode(formats.activation_column,
                                         beats_to_ints(packed.activations))]
    assert got == [padded[b * token_lanes:(b + 1) * token_lanes, c].tolist()
                   for b in range(blocks) for c in range(23)]

    assert packed.values.shape == (blocks * words, lanes)
    values = [v for beat in decode(formats.value_word, beats_to_ints(packed.values)) for v in beat]
    stream = weights.data if mode == Mode.SPARSE else weights.to_dense().numpy().reshape(-1)
    pass_values = list(stream) + [0] * (words * lanes - streamed)
    assert values == pass_values * blocks

    if mode == Mode.DENSE:
        assert packed.row_pointers.size == packed.columns.size == 0
        assert packed.weight_bytes == packed.values.size
        return
    assert packed.row_pointers.shape == (blocks * 7, 4)
    assert beats_to_ints(packed.row_pointers) == list(weights.indptr[1:]) * blocks
    assert packed.columns.shape == (blocks * words, 2 * lanes)
    columns = [c for beat in decode(formats.column_word, beats_to_ints(packed.columns))
               for c in beat]
    assert columns == (list(weights.indices) + [0] * (words * lanes - streamed)) * blocks
    assert packed.weight_bytes == blocks * (7 * 4 + words * lanes * 3)


@pytest.mark.parametrize("config, rows, tokens", [(K8T4, 5, 9), (K8T4, 1, 4), (K3T2, 3, 1)],
                         ids=["K8T4-partial-block", "K8T4-one-row", "K3T2-one-token"])
def test_unpack_sums_round_trip(config, rows, tokens):
    """Sums laid out with the ``sums`` layout, one beat per row per block, unpack to
    [tokens, rows] int32; the padding token lanes are dropped."""
    token_lanes = config.token_lanes
    blocks = -(-tokens // token_lanes)
    generator = torch.Generator().manual_seed(rows)
    padded = torch.randint(-(1 << 31), (1 << 31) - 1, (blocks * token_lanes, rows),
                           generator=generator, dtype=torch.int64)
    payloads = [padded[b * token_lanes:(b + 1) * token_lanes, r].tolist()
                for b in range(blocks) for r in range(rows)]
    width = layout_bytes(CoreFormats(config).sums)
    beats = np.array([list(beat.to_bytes(width, "little"))
                      for beat in layout_beats(CoreFormats(config).sums, payloads)], np.uint8)
    got = unpack_sums(config, beats, rows, tokens)
    assert got.dtype == torch.int32 and tuple(got.shape) == (tokens, rows)
    assert torch.equal(got, padded[:tokens].to(torch.int32))


def test_unpack_sums_rejects_wrong_beat_count():
    with pytest.raises(ValueError, match=r"expected 6 sums beats of 16 bytes.*\(5, 16\)"):
        unpack_sums(K8T4, np.zeros((5, 16), np.uint8), rows=3, tokens=5)
    with pytest.raises(ValueError, match=r"16 bytes.*\(6, 8\)"):
        unpack_sums(K8T4, np.zeros((6, 8), np.uint8), rows=3, tokens=5)


WEIGHTS = random_weights(4, 10, 0.5, 3)


@pytest.mark.parametrize("config, weights, activations, error, match", [
    (K8T4, WEIGHTS, random_activations(3, 10, 4).to(torch.int16), TypeError, "int8.*int16"),
    (K8T4, WEIGHTS, random_activations(3, 10, 4).numpy(), TypeError, "int8"),
    (K8T4, WEIGHTS, random_activations(3, 11, 4), ValueError, "11 features.*10 input"),
    (K8T4, WEIGHTS, random_activations(1, 10, 4)[0], ValueError, "2-D"),
    (K8T4, random_weights(2, 65, 0.5, 5), random_activations(2, 65, 6), ValueError,
     "65 input features.*at most 64.*max_in_features >= 65"),
    (ArrayConfig(max_in_features=64, max_out_features=3), WEIGHTS, random_activations(2, 10, 7),
     ValueError, "1 to 3 rows, not 4"),
    (ArrayConfig(max_in_features=64, token_lanes=2, max_token_blocks=2), WEIGHTS,
     random_activations(5, 10, 8), ValueError, "1 to 4 tokens, not 5"),
    (K8T4, WEIGHTS.to_dense(), random_activations(2, 10, 9), TypeError, "CSRMatrix"),
    ("K=8", WEIGHTS, random_activations(2, 10, 9), TypeError, "ArrayConfig"),
], ids=["int16-activations", "numpy-activations", "feature-mismatch", "1d-activations",
        "too-many-input-features", "too-many-rows", "too-many-tokens", "dense-weights",
        "config-type"])
def test_pack_job_errors(config, weights, activations, error, match):
    with pytest.raises(error, match=match):
        pack_job(config, weights, activations)


DUAL_K3 = ArrayConfig(lanes=3, token_lanes=2, max_in_features=64, dual_sparse=1)


@pytest.mark.parametrize("config", [DUAL_K3, dataclasses.replace(K8T4, dual_sparse=1)],
                         ids=short)
def test_pairs_beats_decode_to_each_tokens_pairs(config):
    """A DUAL job's beats, decoded with the hardware layouts: per token block and row, the
    row's beats hold each token's pairs of a nonzero weight and its nonzero activation in
    column order, zeros after them, ``row_last`` on the last; no other stream has beats."""
    formats, lanes, token_lanes = CoreFormats(config), config.lanes, config.token_lanes
    weights = weights_with_row_lengths([0, 5, 9, 1, 14, 0, 3], 23, 10)
    activations = sparse_activations(7, 23, 0.6, 11)
    activations[3] = 0  # a token without a pair
    packed = pack_job(config, weights, activations, sparsity=Sparsity.DUAL)
    job = formats.job.from_bits(packed.job)
    assert (job.sparsity, job.mode, job.rows, job.token_blocks) == (
        Sparsity.DUAL, Mode.SPARSE, 7, -(-7 // token_lanes))
    assert all(getattr(packed, name).size == 0
               for name in ("activations", "row_pointers", "columns", "values"))
    beats = iter(decode(formats.pairs, beats_to_ints(packed.pairs)))
    dense, tokens = weights.to_dense().numpy(), activations.numpy()
    padded = np.zeros((job.token_blocks * token_lanes, 23), dtype=np.int8)
    padded[:7] = tokens
    for block in range(job.token_blocks):
        for row in range(7):
            expected = [[(int(dense[row, col]), int(padded[token, col])) for col in range(23)
                         if dense[row, col] and padded[token, col]]
                        for token in range(block * token_lanes, (block + 1) * token_lanes)]
            count = max(1, -(-max(len(pairs) for pairs in expected) // lanes))
            got = [[] for _ in range(token_lanes)]
            for index in range(count):
                beat = next(beats)
                assert beat.row_last == (index == count - 1)
                for token in range(token_lanes):
                    got[token] += [(int(beat.weights[token][lane]),
                                    int(beat.activations[token][lane])) for lane in range(lanes)]
            for token in range(token_lanes):
                padding = [(0, 0)] * (count * lanes - len(expected[token]))
                assert got[token] == expected[token] + padding, (block, row, token)
    assert next(beats, None) is None
    assert packed.weight_bytes == packed.pairs.size == len(packed.pairs) * layout_bytes(
        formats.pairs)


@pytest.mark.parametrize("config, mode, index, match", [
    (K8T4, Mode.SPARSE, ColumnIndex.CSR, r"k8t4i64 array has no dual-sparse mode.*k8t4i64a1"),
    (DUAL_K3, Mode.DENSE, ColumnIndex.CSR, "neither dense nor delta"),
    (ArrayConfig(max_in_features=64, delta_bits=5, dual_sparse=1), Mode.SPARSE,
     ColumnIndex.DELTA, "neither dense nor delta"),
], ids=["no-dual-sparse-mode", "dense", "delta"])
def test_dual_sparse_job_errors(config, mode, index, match):
    with pytest.raises(ValueError, match=match):
        pack_job(config, WEIGHTS, random_activations(2, 10, 9), mode, index, Sparsity.DUAL)
