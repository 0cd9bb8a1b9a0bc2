"""The devices: tiling over rows, token blocks and columns, back ends against each other, errors."""

import pytest
import torch

from sparsemac.devices import BACKENDS, open_device
from sparsemac.hw.config import ArrayConfig
from sparsemac.hw.formats import Mode, Sparsity
from sparsemac.sw.csr import CSRMatrix
from sparsemac.sw.cycle_model import dual_job_cycles, dual_row_beats, job_cycles, job_tiles
from sparsemac.sw.device import MatmulResult
from sparsemac.sw.golden import AccumulatorOverflowWarning, golden_matmul
from sparsemac.sw.packing import pairs_stream_bytes, weight_stream_bytes

# Small limits so that one layer needs several jobs along both axes.
TILED = ArrayConfig(lanes=4, token_lanes=2, max_in_features=32, max_out_features=3,
                    max_token_blocks=2)
#: A buffer of 16 columns, so that a layer of 45 is three column tiles: 16 + 16 + 13.
NARROW = ArrayConfig.from_key("k2t2i16")


def random_layer(seed, rows, cols, tokens, density):
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randint(-128, 128, (rows, cols), generator=generator, dtype=torch.int8)
    weights[torch.rand(rows, cols, generator=generator) >= density] = 0
    activations = torch.randint(-128, 128, (tokens, cols), generator=generator, dtype=torch.int8)
    return CSRMatrix.from_dense(weights), activations


@pytest.mark.parametrize("mode", list(Mode), ids=lambda mode: mode.name.lower())
def test_reference_tiles_over_rows_and_tokens(mode):
    weights, activations = random_layer(seed=11, rows=7, cols=20, tokens=9, density=0.4)
    result = open_device("reference", TILED).matmul(weights, activations, mode)
    assert isinstance(result, MatmulResult)
    assert torch.equal(result.sums, golden_matmul(weights, activations))
    # 7 rows in jobs of 3 (3 + 3 + 1) times 9 tokens in jobs of 4 (4 + 4 + 1).
    assert result.jobs == 9
    expected = []
    for token_start in range(0, 9, 4):
        tokens = min(4, 9 - token_start)
        for row_start in range(0, 7, 3):
            tile = weights.row_slice(row_start, min(7, row_start + 3))
            expected.append(job_cycles(tile.row_lengths(), 20, tokens, TILED, mode).total)
    assert result.job_cycles == expected
    assert result.cycles == sum(expected)


def test_weight_bytes_count_every_pass():
    weights, activations = random_layer(seed=3, rows=3, cols=20, tokens=4, density=0.3)
    device = open_device("reference", TILED)
    sparse = device.matmul(weights, activations, Mode.SPARSE)
    dense = device.matmul(weights, activations, Mode.DENSE)
    # 4 tokens on 2 token lanes: the weights are streamed twice.
    assert sparse.weight_bytes == 2 * weight_stream_bytes(TILED, weights, Mode.SPARSE)
    assert dense.weight_bytes == 2 * weight_stream_bytes(TILED, weights, Mode.DENSE)


@pytest.mark.parametrize("mode", list(Mode), ids=lambda mode: mode.name.lower())
def test_amaranth_equals_reference_when_tiled(mode):
    weights, activations = random_layer(seed=5, rows=5, cols=9, tokens=5, density=0.5)
    reference = open_device("reference", TILED).matmul(weights, activations, mode)
    amaranth = open_device("amaranth", TILED).matmul(weights, activations, mode)
    assert torch.equal(amaranth.sums, reference.sums)
    assert amaranth.job_cycles == reference.job_cycles


@pytest.mark.parametrize("mode", list(Mode), ids=lambda mode: mode.name.lower())
def test_reference_tiles_over_columns(mode):
    weights, activations = random_layer(seed=21, rows=6, cols=45, tokens=5, density=0.3)
    result = open_device("reference", NARROW).matmul(weights, activations, mode)
    assert torch.equal(result.sums, golden_matmul(weights, activations))
    # Each column tile is a job of its own: its rows' nonzeros within the tile, its own width.
    dense = weights.to_dense()
    expected = [job_cycles((dense[:, start:stop] != 0).sum(dim=1).numpy(), stop - start, 5,
                           NARROW, mode).total
                for start, stop in ((0, 16), (16, 32), (32, 45))]
    assert result.job_cycles == expected
    assert result.activation_bytes == 3 * NARROW.token_lanes * 45  # 5 tokens: 3 blocks of 2
    assert result.output_bytes == 3 * (3 * NARROW.token_lanes * 6 * 4)  # sums of every tile


@pytest.mark.parametrize("mode", list(Mode), ids=lambda mode: mode.name.lower())
def test_amaranth_equals_reference_over_columns(mode):
    weights, activations = random_layer(seed=22, rows=3, cols=37, tokens=3, density=0.4)
    reference = open_device("reference", NARROW).matmul(weights, activations, mode)
    amaranth = open_device("amaranth", NARROW).matmul(weights, activations, mode)
    assert reference.jobs == 3
    assert torch.equal(amaranth.sums, reference.sums)
    assert amaranth.job_cycles == reference.job_cycles


def test_column_tiles_wrap_like_one_accumulator():
    # 131 080 products of (-128) x (-128) = 2**31 + 2**17: past int32 only in the tiles' total.
    config = ArrayConfig(lanes=8, token_lanes=1, max_in_features=32768)
    weights = CSRMatrix.from_dense(torch.full((1, 131_080), -128, dtype=torch.int8))
    activations = torch.full((1, 131_080), -128, dtype=torch.int8)
    result = open_device("reference", config).matmul(weights, activations)
    assert result.jobs == 5
    assert result.sums.item() == -(1 << 31) + (1 << 17)
    with pytest.warns(AccumulatorOverflowWarning):
        assert torch.equal(result.sums, golden_matmul(weights, activations))


def test_shape_mismatch_is_refused():
    weights, _ = random_layer(seed=1, rows=2, cols=8, tokens=1, density=1.0)
    activations = torch.zeros((3, 7), dtype=torch.int8)
    with pytest.raises(ValueError, match="7 features but the weights have 8"):
        open_device("reference", TILED).matmul(weights, activations)


def test_float_activations_are_refused():
    weights, _ = random_layer(seed=1, rows=2, cols=8, tokens=1, density=1.0)
    with pytest.raises(TypeError, match="int8"):
        open_device("reference", TILED).matmul(weights, torch.zeros((3, 8)))


def test_unknown_backend_lists_the_choices():
    with pytest.raises(ValueError, match="choose one of " + ", ".join(BACKENDS)):
        open_device("quantum")


#: TILED with the dual-sparse mode; NARROW's column tiles likewise.
TILED_DUAL = ArrayConfig.from_key(TILED.key() + "a1")
NARROW_DUAL = ArrayConfig.from_key("k2t2i16a1")


@pytest.mark.parametrize("config", [TILED_DUAL, NARROW_DUAL], ids=["rows-tokens", "columns"])
def test_dual_sparse_matmul_tiles_like_weight_only(config):
    """A DUAL layer is split into the same jobs; its sums are the golden ones, each job's
    cycles the DUAL model's, its bytes the pairs'; the Amaranth core agrees job for job."""
    weights, activations = random_layer(seed=13, rows=7, cols=45, tokens=9, density=0.5)
    activations[torch.rand(activations.shape, generator=torch.Generator().manual_seed(14))
                < 0.6] = 0
    results = [open_device(backend, config).matmul(weights, activations,
                                                   sparsity=Sparsity.DUAL)
               for backend in ("reference", "amaranth")]
    weight_only = open_device("reference", config).matmul(weights, activations)
    for result in results:
        assert torch.equal(result.sums, golden_matmul(weights, activations))
        assert result.job_cycles == results[0].job_cycles
        assert result.jobs == weight_only.jobs and result.activation_bytes == 0
    tiles = list(job_tiles(7, 45, 9, config))
    blocks = [activations[tile.token_start:tile.token_stop, tile.col_start:tile.col_stop]
              for tile in tiles]
    assert results[0].job_cycles == [
        dual_job_cycles(int(dual_row_beats(tile.weights(weights), block, config).sum()),
                        config).total
        for tile, block in zip(tiles, blocks)]
    assert results[0].weight_bytes == sum(
        pairs_stream_bytes(config, tile.weights(weights), block)
        for tile, block in zip(tiles, blocks))
    assert results[0].cycles < weight_only.cycles


def test_dual_sparse_without_the_mode_is_refused_before_any_job(monkeypatch):
    """Device.matmul refuses before it runs a job, for every back end (a simulator's run_job
    would refuse too, in pack_job, before its build or simulation)."""
    device = open_device("reference", TILED)
    weights, activations = random_layer(seed=15, rows=3, cols=8, tokens=2, density=0.5)
    monkeypatch.setattr(device, "run_job", lambda *args: pytest.fail("a job was run"))
    with pytest.raises(ValueError, match=r"k4t2i32o3b2 array has no dual-sparse mode.*"
                                         r"k4t2i32o3b2a1"):
        device.matmul(weights, activations, sparsity=Sparsity.DUAL)
    with pytest.raises(ValueError, match="neither dense nor delta"):
        open_device("reference", TILED_DUAL).matmul(weights, activations, Mode.DENSE,
                                                    sparsity=Sparsity.DUAL)
