"""ActivationBuffer: two banks of a token block, K replicated lookups per chunk."""

from dataclasses import dataclass

import numpy as np
import pytest

from helpers import K1T1, K3T1, K4T2, K8T4, STALLS, BlockTestbench, decode, layout_beats, short
from sparsemac.hw.activation_buffer import ActivationBuffer
from sparsemac.hw.config import ArrayConfig
from sparsemac.hw.formats import CoreFormats, Mode


@dataclass(frozen=True)
class Case:
    name: str
    config: ArrayConfig
    cols: int
    blocks: int
    seed: int

    @property
    def id(self):
        return f"{self.name}-{short(self.config)}-cols{self.cols}-seed{self.seed}"


def make_traffic(case):
    """Random activations ``[blocks, cols, T]`` and, per block, 1 to 5 chunks of random columns
    (repeats allowed) and weights; the last chunk of each block has ``block_last``."""
    config, rng = case.config, np.random.default_rng(case.seed)
    lanes = config.lanes
    activations = rng.integers(-128, 128, size=(case.blocks, case.cols, config.token_lanes))
    chunks = []
    for block in range(case.blocks):
        count = int(rng.integers(1, 6))
        for index in range(count):
            chunks.append({"block": block,
                           "columns": [int(c) for c in rng.integers(0, case.cols, lanes)],
                           "values": [int(v) for v in rng.integers(-128, 128, lanes)],
                           "row_last": int(rng.integers(0, 2)),
                           "block_last": int(index == count - 1)})
    return activations, chunks


def ref_operands(activations, chunks):
    """Each chunk's weights with the activations of its columns, in the block it belongs to."""
    return [([int(v) for v in chunk["values"]],
             [[int(a) for a in activations[chunk["block"], column]]
              for column in chunk["columns"]],
             bool(chunk["row_last"]))
            for chunk in chunks]


def run_buffer(case, activations, chunks, fill_idle=0.3, chunk_delay=0, backpressure=STALLS):
    """The operands the buffer returns, and a record of the ``fill`` handshakes."""
    formats = CoreFormats(case.config)
    dut = ActivationBuffer(case.config)
    testbench = BlockTestbench(dut, case.seed)
    testbench.start(formats.job.const({"mode": Mode.SPARSE, "rows": 1, "cols": case.cols,
                                   "token_blocks": case.blocks, "nnz": 0}).as_value().value)
    columns = [[int(a) for a in column] for block in activations for column in block]
    testbench.put(dut.fill, layout_beats(formats.activation_column, columns), idle=fill_idle)
    chunk_beats = layout_beats(formats.chunk, [{key: chunk[key] for key in
                                                ("columns", "values", "row_last", "block_last")}
                                               for chunk in chunks])
    testbench.put(dut.chunks, chunk_beats, delay=chunk_delay)
    testbench.get("operands", dut.operands, len(chunks), backpressure)
    budget = chunk_delay + 4 * (len(columns) + len(chunks)) + 20
    budget = int(budget / (1 - backpressure))
    testbench.record("fill", budget, dut.fill.valid, dut.fill.ready)
    results = testbench.run(budget)
    got = [(list(beat.weights), [list(lane) for lane in beat.activations], bool(beat.row_last))
           for beat in decode(formats.operands, results["operands"])]
    return got, results["fill"]


def check_operands(case, expected, got):
    for index, (want, have) in enumerate(zip(expected, got)):
        assert have == want, f"{case.id}: operands {index} are {have}, expected {want}"
    assert len(got) == len(expected), case.id



CASES = [
    Case("5-blocks", K4T2, 13, 5, 1),
    Case("one-column", K4T2, 1, 4, 2),
    Case("max-columns", K3T1, 64, 4, 3),  # every address bit, and the bank bit above them
    Case("k1-max-columns", K1T1, 8, 5, 4),
    Case("default-shape", K8T4, 40, 3, 5),
    Case("one-block", K8T4, 7, 1, 6),
    # Two lanes a replica, each bank a memory of its own; odd K leaves a one-lane replica.
    Case("dual-port", ArrayConfig(lanes=4, token_lanes=2, max_in_features=64, read_ports=2),
         13, 5, 7),
    Case("dual-port-odd-max-columns", ArrayConfig(lanes=3, token_lanes=1, max_in_features=64,
                                                  read_ports=2), 64, 4, 8),
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_operands_carry_column_activations(case):
    print(f"replay: {case.id}")
    activations, chunks = make_traffic(case)
    got, _ = run_buffer(case, activations, chunks)
    check_operands(case, ref_operands(activations, chunks), got)


@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[6], CASES[7]],
                         ids=lambda case: case.id)
def test_bank_not_overwritten_before_release(case):
    """With ``fill`` always valid and the chunks held back, exactly two blocks load; the third
    waits for bank 0 to be released, so block 0 still reads its own activations."""
    activations, chunks = make_traffic(case)
    withheld = 3 * case.cols + 10
    got, fill = run_buffer(case, activations, chunks, fill_idle=0, chunk_delay=withheld)
    accepted = [bool(valid and ready) for valid, ready in fill]
    assert sum(accepted[:withheld]) == 2 * case.cols, (
        f"{case.id}: {sum(accepted[:withheld])} fill beats taken while no chunk was issued, "
        f"two banks hold {2 * case.cols}")
    assert all(valid for valid, _ in fill[:withheld]), case.id
    check_operands(case, ref_operands(activations, chunks), got)


@pytest.mark.parametrize("case", [Case("dual-port-refill", CASES[6].config, 3, 12, 9),
                                  Case("dual-port-odd-refill", CASES[7].config, 2, 12, 10)],
                         ids=lambda case: case.id)
def test_dual_port_read_held_while_its_bank_refills(case):
    """Short blocks, the loader always ready and the operands mostly refused: a bank is
    refilled while the read of its last chunk still waits to leave the memory."""
    activations, chunks = make_traffic(case)
    got, _ = run_buffer(case, activations, chunks, fill_idle=0, backpressure=0.8)
    check_operands(case, ref_operands(activations, chunks), got)


@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[5], CASES[6],
                                  Case("dual-port-refill", CASES[6].config, 3, 12, 9)],
                         ids=lambda case: case.id)
def test_a_registered_buffer_takes_fill_beats_in_the_same_cycles(case):
    """``registered`` makes ``fill.ready`` a register worked out from the next state: the
    same random traffic (idle fill, back-pressure) meets the same ready in every cycle."""
    activations, chunks = make_traffic(case)
    plain_operands, plain_fill = run_buffer(case, activations, chunks, backpressure=0.5)
    registered = Case(case.name, ArrayConfig(**(case.config.as_dict() | {"registered": 1})),
                      case.cols, case.blocks, case.seed)
    operands, fill = run_buffer(registered, activations, chunks, backpressure=0.5)
    assert fill == plain_fill, registered.id
    assert operands == plain_operands == ref_operands(activations, chunks)
