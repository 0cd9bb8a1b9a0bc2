"""The delta index on the host: encoding, decoding, packing from the layout, refused input."""

import numpy as np
import pytest
import torch

from helpers import random_activations, random_weights
from sparsemac.hw.config import ArrayConfig
from sparsemac.hw.formats import ColumnIndex, CoreFormats, DeltaCode, Mode
from sparsemac.sw.csr import CSRMatrix
from sparsemac.sw.delta_index import DeltaFormatError, DeltaMatrix
from sparsemac.sw.memory import job_streams
from sparsemac.sw.packing import beats_to_ints, pack_job, weight_stream_bytes

K3D3 = ArrayConfig(lanes=3, token_lanes=2, max_in_features=1024, delta_bits=3)


def _matrix(rows, cols):
    """A CSR matrix from ``{row: [(column, value), ...]}``."""
    def build(entries):
        dense = np.zeros((len(entries), cols), dtype=np.int8)
        for row, pairs in entries.items():
            for column, value in pairs:
                dense[row, column] = value
        return CSRMatrix.from_dense(dense)
    return build(rows)


def test_code_constants():
    code = DeltaCode(5)
    assert (code.escape, code.longest_escape) == (31, 286)
    with pytest.raises(ValueError, match="a delta code has 3 to 8 bits, not 9"):
        DeltaCode(9)


def test_encoding_of_every_escape_path():
    """3-bit codes: plain steps 1 to 7, escapes of 7 to 262 columns, chains beyond that."""
    weights = _matrix({
        0: [(0, 5), (7, -1), (8, 2)],  # first column 0, a gap of 6 (the longest plain code)
        1: [],                        # an empty row
        2: [(7, 3)],                  # a gap of exactly 7: one escape of 7, then code 0
        3: [(600, -128)],             # first column far from 0: a chain of escapes
        4: [(262, 1), (263 + 262, 2)],  # gaps of 262, the longest escape, each
    }, 1000)
    coded = DeltaMatrix.from_csr(weights, DeltaCode(3))
    assert list(coded.row_lengths) == [3, 0, 2, 4, 4]
    assert list(coded.codes) == [0, 6, 0, 7, 0, 7, 7, 7, 0, 7, 0, 7, 0]
    # Escape bytes read unsigned: 262 - 7 = 255 is -1; 600 = 262 + 262 + 76, 76 - 7 = 69.
    assert list(coded.values) == [5, -1, 2, 0, 3, -1, -1, 69, -128, -1, 1, -1, 2]
    assert coded.escapes == 6
    assert coded.to_csr() == weights


@pytest.mark.parametrize("bits", [3, 4, 5, 6, 8])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99, 1.0])
def test_round_trip(bits, sparsity):
    weights = random_weights(20, 1000, sparsity, seed=bits)
    coded = DeltaMatrix.from_csr(weights, DeltaCode(bits))
    assert coded.to_csr() == weights
    assert coded.entries == weights.nnz + coded.escapes
    for start, stop in ((0, 20), (3, 9), (5, 5)):
        assert coded.row_slice(start, stop).to_csr() == weights.row_slice(start, stop)


@pytest.mark.parametrize("entries, error", [
    ({"codes": [1, 8]}, "entry 1 has code 8, which does not fit 3 bits"),
    ({"codes": [6, 7], "values": [1, -1]}, "row 0 reaches column 268 at entry 1, past the last "
                                           r"column \(99\): its gaps need more escape entries"),
    ({"row_lengths": [1, 0]}, "the row lengths add up to 1 entries, not the 2 given"),
    ({"values": [1]}, "1 values for 2 codes"),
])
def test_malformed_entries_are_refused(entries, error):
    """A job built by hand whose gaps the format cannot express fails before any device."""
    fields = {"row_lengths": [2, 0], "codes": [1, 2], "values": [1, 2], **entries}
    with pytest.raises(DeltaFormatError, match=error):
        DeltaMatrix(DeltaCode(3), shape=(2, 100), **fields)


def test_row_too_long_for_its_length_beat():
    with pytest.raises(DeltaFormatError, match="a row of 65536 entries does not fit the 16-bit"):
        DeltaMatrix(DeltaCode(8), [65536], np.zeros(65536, np.int64), np.ones(65536, np.int8),
                    (1, 65536))


def test_delta_job_needs_the_decoder():
    weights = random_weights(4, 30, 0.5, seed=1)
    activations = random_activations(2, 30, seed=1)
    with pytest.raises(ValueError, match="the k8t4i64 array has no delta decoder, so its jobs "
                                         "cannot use the delta index: use a config with delta "
                                         "bits, e.g. k8t4i64d5"):
        pack_job(ArrayConfig(max_in_features=64), weights, activations, Mode.SPARSE,
                 ColumnIndex.DELTA)
    with pytest.raises(ValueError, match="the delta index is for sparse jobs"):
        pack_job(K3D3, weights, activations, Mode.DENSE, ColumnIndex.DELTA)
    other = DeltaMatrix.from_csr(weights, DeltaCode(4))
    with pytest.raises(ValueError, match="coded in 4-bit deltas but the .* decodes 3-bit ones"):
        pack_job(K3D3, other, activations, Mode.SPARSE, ColumnIndex.DELTA)


def test_packing_follows_the_layouts():
    """Row lengths, codes and values as the formats lay them out, and the byte counts."""
    weights = random_weights(5, 300, 0.9, seed=4)
    activations = random_activations(3, 300, seed=4)
    coded = DeltaMatrix.from_csr(weights, DeltaCode(3))
    packed = pack_job(K3D3, weights, activations, Mode.SPARSE, ColumnIndex.DELTA)
    formats = CoreFormats(K3D3)
    blocks = packed.token_blocks
    assert packed.nnz == coded.entries and packed.index == ColumnIndex.DELTA
    assert packed.row_pointers.shape == (blocks * 5, 2)
    assert beats_to_ints(packed.row_pointers)[:5] == list(coded.row_lengths)
    words = -(-coded.entries // 3)
    assert packed.columns.shape == (blocks * words, 2)  # 3 lanes x 3 bits in 2 bytes
    codes = list(coded.codes) + [0] * (3 * words - coded.entries)
    expected = [formats.delta_word.const(codes[i:i + 3]).as_value().value
                for i in range(0, 3 * words, 3)]
    assert beats_to_ints(packed.columns)[:words] == expected
    job = formats.job.from_bits(packed.job)
    assert (job.index, job.nnz) == (ColumnIndex.DELTA, coded.entries)
    streams = job_streams(K3D3, Mode.SPARSE, 5, 300, coded.entries, 1, ColumnIndex.DELTA)
    assert streams.weight_bytes == 5 * 2 + words * (2 + 3)
    assert weight_stream_bytes(K3D3, weights, Mode.SPARSE, ColumnIndex.DELTA) == (
        streams.weight_bytes)
    assert packed.weight_bytes == blocks * streams.weight_bytes


def test_csr_job_on_a_decoder_config_says_csr():
    weights = random_weights(4, 30, 0.5, seed=2)
    packed = pack_job(K3D3, weights, random_activations(2, 30, seed=2))
    job = CoreFormats(K3D3).job.from_bits(packed.job)
    assert job.index == ColumnIndex.CSR and packed.columns.shape[1] == 6


def test_golden_of_a_delta_job_is_the_csr_result():
    weights = random_weights(6, 500, 0.95, seed=3)
    activations = torch.full((2, 500), -128, dtype=torch.int8)
    coded = DeltaMatrix.from_csr(weights, DeltaCode(3))
    assert torch.equal(activations.int() @ coded.to_csr().to_dense().int().T,
                       activations.int() @ weights.to_dense().int().T)


@pytest.mark.parametrize("command", ["simulate", "bert"])
def test_cli_refuses_the_delta_index_without_the_decoder(command, capsys):
    """``--index delta`` on a config without the decoder: exit 2 before any model or device."""
    from sparsemac.app.cli import main

    status = main([command, "--backend", "reference", "--config", "k8t4", "--index", "delta"])
    err = capsys.readouterr().err
    assert status == 2
    assert ("the k8t4 array has no delta decoder, so its jobs cannot use the delta index: use a "
            "config with delta bits, e.g. k8t4d5") in err
    assert "loading" not in err


@pytest.mark.parametrize("backend", ["reference", "verilator"])
def test_column_tiles_stream_their_own_deltas(backend):
    """A layer three column tiles wide (the last ragged) on a delta-decoder array: each tile's
    deltas count from its own first column, sums add up bit-exact and the cycles are the
    throttled model's, with long gaps and an empty row inside the tiles."""
    from sparsemac.devices import open_device
    from sparsemac.sw.golden import golden_matmul
    from sparsemac.sw.throttled_cycle_model import layer_cycles

    config = ArrayConfig.from_key("k4t2i64d5")
    dense = random_weights(20, 150, 0.85, seed=3).to_dense()
    dense[3] = 0
    dense[5, :64] = 0
    dense[5, [0, 63]] = 7    # a 63-column gap inside the first tile: an escape entry
    weights = CSRMatrix.from_dense(dense)
    activations = random_activations(7, 150, seed=4)
    device = open_device(backend, config)
    result = device.matmul(weights, activations, index=ColumnIndex.DELTA)
    assert result.jobs == 3
    assert torch.equal(result.sums, golden_matmul(weights, activations))
    assert result.cycles == layer_cycles(weights, 7, config, index=ColumnIndex.DELTA).cycles
