"""CSRWeightStreamer: CSR words in, row-aligned chunks of K (column, value) pairs out."""

from dataclasses import dataclass

import numpy as np
import pytest

from helpers import (K1T1, K3T1, K4T2, K8T4, BlockTestbench, decode, layout_beats, random_weights,
                     short, weights_with_row_lengths)
from sparsemac.hw.config import ArrayConfig
from sparsemac.hw.csr_streamer import CSRWeightStreamer
from sparsemac.hw.formats import CoreFormats, Mode
from sparsemac.sw.cycle_model import pass_chunks

SPAN4 = ArrayConfig(lanes=4, token_lanes=2, max_in_features=64, span_rows=1)
SPAN3 = ArrayConfig(lanes=3, token_lanes=1, max_in_features=64, span_rows=1)
#: Row lengths that make a K = 3 or 4 chunk span, or not, every way: empty and length-1 rows
#: (nothing to spare), rows ending exactly at K (no room), rows begun fresh.
SPAN_LENGTHS = [0, 5, 0, 6, 9, 0, 3, 1, 1, 2, 5, 4, 7, 8, 1, 0, 2, 2, 13, 4]

#: Written into the padding lanes of the last word of every pass: they must never come out.
PAD_VALUE, PAD_COLUMN = 0x55, 0x3F


@dataclass(frozen=True)
class Case:
    name: str
    config: ArrayConfig
    weights: object  # CSRMatrix
    blocks: int
    mode: Mode = Mode.SPARSE
    seed: int = 0

    @property
    def id(self):
        return f"{self.name}-{short(self.config)}-{self.mode.name}-seed{self.seed}"


def _words(elements, lanes, pad):
    """``elements`` cut into words of ``lanes``, the last one filled up with ``pad``."""
    elements = [int(e) for e in elements]
    elements += [pad] * (-len(elements) % lanes)
    return [elements[i:i + lanes] for i in range(0, len(elements), lanes)]


def stream_beats(case):
    """The streamer's three input streams for ``case``, built from the layouts in
    hw/formats.py (padding lanes hold garbage rather than pack_job's zeros)."""
    formats, lanes, weights = CoreFormats(case.config), case.config.lanes, case.weights
    if case.mode == Mode.DENSE:
        values = weights.to_dense().numpy().reshape(-1)
        return [], [], layout_beats(formats.value_word,
                                    _words(values, lanes, PAD_VALUE)) * case.blocks
    pointers = [int(p) for p in weights.indptr[1:]] * case.blocks
    columns = layout_beats(formats.column_word, _words(weights.indices, lanes, PAD_COLUMN))
    values = layout_beats(formats.value_word, _words(weights.data, lanes, PAD_VALUE))
    return pointers, columns * case.blocks, values * case.blocks


def ref_chunks(case):
    """Expected chunks as (columns, values, row_last, block_last, split); in sparse mode
    ``columns`` has only the used lanes (the others are don't-care), in dense mode all K lanes.
    ``split`` is K without ``span_rows``."""
    config, weights = case.config, case.weights
    lanes, dense = config.lanes, weights.to_dense().numpy()
    if case.mode == Mode.SPARSE and config.span_rows:
        return span_ref_chunks(case) * case.blocks
    chunks = []
    for _ in range(case.blocks):
        for row in range(weights.rows):
            if case.mode == Mode.DENSE:
                columns, values = list(range(weights.cols)), list(dense[row])
            else:
                span = slice(weights.indptr[row], weights.indptr[row + 1])
                columns, values = list(weights.indices[span]), list(weights.data[span])
            count = max(1, -(-len(values) // lanes))
            for chunk in range(count):
                lane_values = [int(v) for v in values[chunk * lanes:(chunk + 1) * lanes]]
                if case.mode == Mode.DENSE:
                    lane_columns = [(chunk * lanes + lane) % config.max_in_features
                                    for lane in range(lanes)]
                else:
                    lane_columns = [int(c) for c in columns[chunk * lanes:(chunk + 1) * lanes]]
                last = chunk == count - 1
                chunks.append((lane_columns, lane_values + [0] * (lanes - len(lane_values)),
                               last, last and row == weights.rows - 1, lanes))
    return chunks


def span_ref_chunks(case):
    """The chunks of one sparse pass of a ``span_rows`` array, from the schedule of
    :func:`~sparsemac.sw.cycle_model.pass_chunks` (tests/test_cycle_model.py checks it by
    hand)."""
    lanes, weights = case.config.lanes, case.weights
    chunks = []
    for chunk in pass_chunks(weights.row_lengths(), lanes, span=True):
        values = [int(v) for v in weights.data[chunk.start:chunk.stop]]
        chunks.append(([int(c) for c in weights.indices[chunk.start:chunk.stop]],
                       values + [0] * (lanes - len(values)), chunk.row_last,
                       chunk.row_last and chunk.row == weights.rows - 1, chunk.split))
    return chunks


def rtl_chunks(case, expected):
    """Run ``case`` through the streamer with idle inputs and a stalling sink."""
    config = case.config
    formats = CoreFormats(config)
    dut = CSRWeightStreamer(config)
    testbench = BlockTestbench(dut, case.seed)
    pointers, columns, values = stream_beats(case)
    rows, cols = case.weights.shape
    nnz = rows * cols if case.mode == Mode.DENSE else case.weights.nnz
    testbench.start(formats.job.const({"mode": case.mode, "rows": rows, "cols": cols,
                                   "token_blocks": case.blocks, "nnz": nnz}).as_value().value)
    for stream, beats in ((dut.row_pointers, pointers), (dut.columns, columns),
                          (dut.values, values)):
        testbench.put(stream, beats)
    testbench.get("chunks", dut.chunks, len(expected))
    testbench.record("busy", 40 * len(expected) + 20, dut.busy)
    results = testbench.run(40 * len(expected) + 20)
    got = []
    for chunk, (columns, *_) in zip(decode(formats.chunk, results["chunks"]), expected):
        split = chunk.split if config.span_rows else config.lanes
        got.append(([chunk.columns[lane] for lane in range(len(columns))], list(chunk.values),
                    bool(chunk.row_last), bool(chunk.block_last), split))
    return got, results["busy"]



CASES = [
    # Rows of 0..9 nonzeros at K=4: whole words, a row across words, several chunks per row.
    Case("lengths-0-to-9", K4T2, weights_with_row_lengths([0, 1, 4, 5, 9, 3, 8, 2], 30, 1), 3),
    Case("first-last-empty", K4T2, weights_with_row_lengths([0, 6, 0, 0, 7, 0], 20, 2), 2),
    Case("all-empty", K4T2, weights_with_row_lengths([0, 0, 0], 10, 3), 3),
    Case("one-nonzero", K8T4, weights_with_row_lengths([0, 0, 1, 0, 0], 40, 4), 2),
    Case("full-rows", K3T1, weights_with_row_lengths([13, 13, 13], 13, 5), 2),
    Case("k1", K1T1, weights_with_row_lengths([3, 0, 1, 2], 8, 6), 3),
    Case("1x1", K8T4, weights_with_row_lengths([1], 1, 7), 1),
    Case("dense", K4T2, random_weights(5, 10, 0.5, 8), 3, Mode.DENSE),
    Case("dense-k3", K3T1, random_weights(4, 7, 0.3, 9), 2, Mode.DENSE),
    Case("dense-cols-past-max", K8T4, random_weights(3, 61, 0.5, 10), 2, Mode.DENSE),
    # Chunks that span rows: empty, length-1, short and long rows, several passes (no chunk
    # spans a pass boundary), at K = 4 and the odd K = 3.
    Case("span-edge-rows", SPAN4, weights_with_row_lengths(SPAN_LENGTHS, 30, 11), 3),
    Case("span-edge-rows-k3", SPAN3, weights_with_row_lengths(SPAN_LENGTHS, 30, 12), 2),
    Case("span-random-0.9", SPAN4, random_weights(12, 60, 0.9, 13), 3, seed=13),
    Case("span-dense", SPAN3, random_weights(4, 7, 0.3, 14), 2, Mode.DENSE),
    # One and two rows a pass: the last row of a pass is also the first.
    Case("span-one-row", SPAN4, weights_with_row_lengths([9], 20, 15), 3),
    Case("span-two-rows", SPAN3, weights_with_row_lengths([4, 5], 20, 16), 3),
] + [
    Case(f"random-{sparsity}", config, random_weights(8, 40, sparsity, seed), 3, seed=seed)
    for config in (K4T2, K3T1, K8T4)
    for sparsity, seed in ((0.5, 100 + config.lanes), (0.9, 200 + config.lanes),
                           (0.0, 300 + config.lanes))
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_chunks_match_csr_rows(case):
    print(f"replay: {case.id}")
    expected = ref_chunks(case)
    got, busy = rtl_chunks(case, expected)
    for index, (want, have) in enumerate(zip(expected, got)):
        assert have == want, f"{case.id}: chunk {index} is {have}, expected {want}"
    assert len(got) == len(expected)
    # busy rises after start and has fallen when the last chunk is taken.
    assert busy[1] == (1,) and busy[-1] == (0,), f"{case.id}: busy {busy[:2]} ... {busy[-1]}"


@pytest.mark.parametrize("case", CASES[:4], ids=lambda case: case.id)
def test_chunk_counts_per_row(case):
    """Independently of the contents: max(1, ceil(n / K)) chunks per row, per pass."""
    expected = ref_chunks(case)
    got, _ = rtl_chunks(case, expected)
    counts, count = [], 0
    for _, _, row_last, *_ in got:
        count += 1
        if row_last:
            counts.append(count)
            count = 0
    lengths = np.tile(case.weights.row_lengths(), case.blocks)
    assert counts == [max(1, -(-int(n) // case.config.lanes)) for n in lengths], case.id
    block_lasts = [index for index, chunk in enumerate(got) if chunk[3]]
    assert len(block_lasts) == case.blocks and block_lasts[-1] == len(got) - 1, case.id
