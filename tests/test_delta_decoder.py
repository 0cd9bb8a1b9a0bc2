"""The delta decoder, alone and in the core: bit-exact and cycle-exact against the models.

Long gaps (escape chains), empty rows, a first column far from 0 and every escape path, with
idle inputs and back-pressure, at throttled rates, on the Amaranth simulator and Verilator.
"""

import random

import numpy as np
import pytest

from helpers import (STALLS, BlockTestbench, decode, layout_beats, random_activations,
                     random_weights, reference, weights_with_row_lengths)
from sparsemac.devices.amaranth import AmaranthDevice
from sparsemac.devices.reference import ReferenceDevice
from sparsemac.devices.verilator import VerilatorDevice
from sparsemac.hw.config import ArrayConfig
from sparsemac.hw.delta_decoder import DeltaDecoder
from sparsemac.hw.formats import ColumnIndex, DeltaCode, Mode
from sparsemac.sim.amaranth_sim import run_core_job
from sparsemac.sim.stalls import StallPattern
from sparsemac.sw.csr import CSRMatrix
from sparsemac.sw.delta_index import DeltaFormatError, DeltaMatrix
from sparsemac.sw.memory import MemoryModel
from sparsemac.sw.packing import pack_job, streamed_row_lengths, unpack_sums
from sparsemac.sw.throttled_cycle_model import throttled_job_cycles

pytestmark = pytest.mark.usefixtures("sim_deadline")

#: 3-bit codes: plain steps up to 7, escapes up to 262 columns, so 1000 columns need chains.
K3D3 = ArrayConfig(lanes=3, token_lanes=2, max_in_features=1024, max_out_features=64,
                   max_token_blocks=8, delta_bits=3)
K8D5 = ArrayConfig(lanes=8, token_lanes=4, max_in_features=512, max_out_features=64,
                   max_token_blocks=8, delta_bits=5)


def _escape_paths(cols):
    """Rows for every path of the code: plain steps, single escapes, chains, empty rows."""
    dense = np.zeros((7, cols), dtype=np.int8)
    dense[0, [0, 7, 8, 9, 10, 11, 12]] = [5, -1, 2, 3, 4, 6, 7]   # full chunks, no escape
    dense[2, cols - 1] = -128                                    # far first column: a chain
    dense[3, [7, 7 + 263]] = [1, 2]                              # an escape of 262
    dense[4, [100, 101, 300, 301, 302]] = [9, 8, 7, 6, 5]        # escapes mid-chunk
    dense[6, :] = np.arange(cols) % 7 + 1                        # a full row, no gap at all
    return CSRMatrix.from_dense(dense)


def _cases(config):
    cols = config.max_in_features - 24
    return {
        "escape-paths": _escape_paths(cols),
        "random-95": random_weights(9, cols, 0.95, seed=1),
        "random-50": random_weights(5, cols, 0.5, seed=2),
        "empty-rows": weights_with_row_lengths((0, 0, 3, 0, 1, 0), cols, seed=3),
        "all-empty": random_weights(3, cols, 1.0, seed=4),
    }


def _chunks(config, coded, rng):
    """The streamer's row-aligned chunks of ``coded`` (dicts for ``formats.coded_chunk``),
    unused lanes holding value 0 and a random code, and the decoded chunks expected."""
    lanes, ends = config.lanes, np.cumsum(coded.row_lengths)
    decoded, weights = coded.decoded()
    given, expected = [], []
    for row, length in enumerate(coded.row_lengths):
        start = ends[row] - length
        for first in range(start, start + max(1, length), lanes):
            take = range(first, min(first + lanes, start + length))
            pad = lanes - len(take)
            last = first + lanes >= start + length
            given.append({
                "columns": [int(coded.codes[i]) for i in take]
                + [rng.randrange(1 << coded.code.bits) for _ in range(pad)],
                "values": [int(coded.values[i]) for i in take] + [0] * pad,
                "row_last": int(last), "block_last": int(last and row == coded.rows - 1)})
            expected.append(([int(decoded[i]) for i in take],
                             [int(weights[i]) for i in take] + [0] * pad, int(last)))
    return given, expected


@pytest.mark.parametrize("name", list(_cases(K3D3)))
@pytest.mark.parametrize("stalls", [0.0, STALLS], ids=["ideal", "stalled"])
def test_decoder_alone(name, stalls):
    """Columns of used lanes, values with escapes zeroed, chunk for chunk, two jobs in a row."""
    config, seed = K3D3, 5
    coded = DeltaMatrix.from_csr(_cases(config)[name], DeltaCode(config.delta_bits))
    decoder = DeltaDecoder(config)
    formats = decoder.formats
    given, expected = _chunks(config, coded, random.Random(seed))
    testbench = BlockTestbench(decoder, seed)
    testbench.start(formats.job.const({"index": ColumnIndex.DELTA}).as_value().value)
    testbench.put(decoder.i_stream, layout_beats(formats.coded_chunk, given), idle=stalls, delay=1)
    testbench.get("chunks", decoder.o_stream, len(given), stalls)
    results = testbench.run(20 * len(given) + 100)
    for number, (chunk, (columns, values, last)) in enumerate(
            zip(decode(formats.chunk, results["chunks"]), expected)):
        assert [int(c) for c in chunk.columns][:len(columns)] == columns, f"chunk {number}"
        assert [int(v) for v in chunk.values] == values, f"chunk {number}"
        assert int(chunk.row_last) == last


def test_decoder_needs_delta_bits():
    with pytest.raises(ValueError, match="k3t2i1024o64b8 has no delta decoder: set "
                                         "ArrayConfig.delta_bits"):
        DeltaDecoder(ArrayConfig(lanes=3, token_lanes=2, max_in_features=1024,
                                 max_out_features=64, max_token_blocks=8))


def _memory(config, fraction):
    """A custom memory at ``fraction`` of a CSR job's full weight rate (3K bytes a cycle)."""
    return MemoryModel("custom", fraction * 3 * config.lanes, fraction * config.token_lanes)


@pytest.mark.parametrize("name", list(_cases(K3D3)))
def test_core_amaranth_exact(name):
    """Ideal, stalled and throttled runs of delta jobs on the Amaranth core."""
    config = K3D3
    weights, activations = _cases(config)[name], random_activations(5, config.max_in_features
                                                                     - 24, seed=6)
    packed = pack_job(config, weights, activations, Mode.SPARSE, ColumnIndex.DELTA)
    lengths = streamed_row_lengths(config, weights, ColumnIndex.DELTA)
    expected = reference(weights, activations)
    for stalls in (StallPattern(), StallPattern(idle=STALLS, backpressure=STALLS, seed=7)):
        run = run_core_job(config, packed, stalls)
        assert np.array_equal(unpack_sums(config, run.sums, weights.rows, 5), expected)
        ideal = throttled_job_cycles(lengths, weights.cols, 5, config, Mode.SPARSE, None,
                                     ColumnIndex.DELTA).cycles
        assert run.cycles == ideal if not stalls.idle else run.cycles >= ideal
    memory = _memory(config, 0.37)
    device = AmaranthDevice(config, memory=memory)
    result = device.run_job(weights, activations, Mode.SPARSE, ColumnIndex.DELTA)
    model = ReferenceDevice(config, memory=memory).run_job(weights, activations, Mode.SPARSE,
                                                           ColumnIndex.DELTA)
    assert np.array_equal(result.sums, expected) and result.cycles == model.cycles


@pytest.fixture(scope="module")
def verilator():
    with VerilatorDevice(K8D5) as device:
        yield device


@pytest.mark.parametrize("fraction", [None, 0.5, 0.25, 0.37], ids=str)
def test_core_verilator_exact(verilator, fraction):
    """K=8 with 5-bit codes on Verilator: every case, both indices, at each rate."""
    config = verilator.config
    memory = None if fraction is None else _memory(config, fraction)
    verilator.memory = memory
    model = ReferenceDevice(config, memory=memory)
    for name, weights in _cases(config).items():
        activations = random_activations(9, weights.cols, seed=8)
        for index in ColumnIndex:
            got = verilator.run_job(weights, activations, Mode.SPARSE, index)
            want = model.run_job(weights, activations, Mode.SPARSE, index)
            assert np.array_equal(got.sums, want.sums), f"{name} {index}"
            assert got.cycles == want.cycles, f"{name} {index}: {got.cycles} != {want.cycles}"


def test_malformed_job_fails_before_the_device(verilator):
    """A job built by hand whose gaps its escapes do not cover, or coded for another decoder,
    is refused before the device runs a cycle."""
    with pytest.raises(DeltaFormatError, match="row 0 reaches column 571 at entry 1, past the "
                                               r"last column \(487\)"):
        DeltaMatrix(DeltaCode(5), [3], [31, 31, 0], [-1, -1, 1], (1, 488))
    before = verilator.clock_cycles
    coded = DeltaMatrix.from_csr(random_weights(2, 10, 0.5, 1), DeltaCode(4))
    with pytest.raises(ValueError, match="coded in 4-bit deltas but the k8t4i512o64b8d5 array "
                                         "decodes 5-bit ones"):
        verilator.run_job(coded, random_activations(1, 10, 1), Mode.SPARSE, ColumnIndex.DELTA)
    assert verilator.clock_cycles == before
