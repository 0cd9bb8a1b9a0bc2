"""MACArray: K x T products, adder trees and T wrapping int32 accumulators."""

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest

from helpers import (K1T1, K3T2, K4T2, K8T4, K32T1, BlockTestbench, decode, layout_beats, short,
                     wrap_int32)
from sparsemac.hw.config import ArrayConfig
from sparsemac.hw.formats import CoreFormats
from sparsemac.hw.mac_array import MACArray


@dataclass(frozen=True)
class Case:
    name: str
    config: ArrayConfig
    beats: tuple  # of (weights [K], activations [K][T], row_last[, split with span_rows])
    seed: int = 0

    @property
    def id(self):
        return f"{self.name}-{short(self.config)}-seed{self.seed}"


def random_beats(config, rows, max_beats, seed):
    """``rows`` rows of 1 to ``max_beats`` beats of random operands (in a dual-sparse array, a
    weight per lane and token)."""
    rng = np.random.default_rng(seed)
    lanes, tokens = config.lanes, config.token_lanes
    weights = (lanes, tokens) if config.dual_sparse else lanes
    beats = []
    for _ in range(rows):
        count = int(rng.integers(1, max_beats + 1))
        for index in range(count):
            beats.append((rng.integers(-128, 128, weights).tolist(),
                          rng.integers(-128, 128, (lanes, tokens)).tolist(), index == count - 1))
    return tuple(beats)


def constant_row(config, count, weight, activation):
    """One row of ``count`` identical beats: every product is ``weight * activation``."""
    lanes, tokens = config.lanes, config.token_lanes
    beat = ([weight] * lanes, [[activation] * tokens] * lanes)
    return tuple((*beat, index == count - 1) for index in range(count))


def random_span_beats(config, count, seed):
    """``count`` beats of random operands, a random third of them ``row_last``, each with a
    random ``split`` from 0 to K (which a beat that closes no row must ignore)."""
    rng = np.random.default_rng(seed)
    lanes, tokens = config.lanes, config.token_lanes
    return tuple((rng.integers(-128, 128, lanes).tolist(),
                  rng.integers(-128, 128, (lanes, tokens)).tolist(), bool(rng.random() < 0.4),
                  int(rng.integers(0, lanes + 1))) for _ in range(count - 1)) + (
        ([1] * lanes, [[-128] * tokens] * lanes, True, lanes),)


def ref_sums(case):
    """Per row, per token: the wrapped int32 sum of its beats' products; on a row_last beat
    with a ``split``, only the lanes below it, the others beginning the next row."""
    lanes, tokens = case.config.lanes, case.config.token_lanes
    sums, row = [], [0] * tokens
    for weights, activations, row_last, *split in case.beats:
        split = split[0] if split and row_last else lanes
        if not case.config.dual_sparse:
            weights = [[w] * tokens for w in weights]
        products = [[w[token] * a[token] for w, a in zip(weights, activations)]
                    for token in range(tokens)]
        for token in range(tokens):
            row[token] += sum(products[token][:split])
        if row_last:
            sums.append([wrap_int32(total) for total in row])
            row = [sum(products[token][split:]) for token in range(tokens)]
    return sums


def rtl_sums(case, idle=0.3, backpressure=0.3):
    formats = CoreFormats(case.config)
    dut = MACArray(case.config)
    testbench = BlockTestbench(dut, case.seed)
    payloads = [{"weights": w, "activations": a, "row_last": int(last),
                 **({"split": split[0]} if split else {})}
                for w, a, last, *split in case.beats]
    testbench.put(dut.operands, layout_beats(formats.array_operands, payloads), idle=idle)
    rows = sum(1 for beat in case.beats if beat[2])
    testbench.get("sums", dut.sums, rows, backpressure=backpressure)
    testbench.record("sums_valid", 4 * len(case.beats) + 40, dut.sums.valid)
    results = testbench.run(4 * len(case.beats) + 40)
    sums = [list(beat) for beat in decode(formats.sums, results["sums"])]
    return sums, [valid for (valid,) in results["sums_valid"]]



CASES = [
    Case("random", config, random_beats(config, 12, 5, seed), seed)
    for config, seed in ((K4T2, 11), (K3T2, 12), (K1T1, 13), (K8T4, 14))
] + [
    Case("one-beat-rows", K4T2, random_beats(K4T2, 20, 1, 15), 15),
    Case("extremes", K8T4, constant_row(K8T4, 3, -128, -128) + constant_row(K8T4, 2, -128, 127)
         + constant_row(K8T4, 1, 127, -128), 16),
    # 127 * 127 * 32 per beat: past 2**31 - 1 after 4162 beats, so the sum wraps negative;
    # the next row must start again from zero.
    Case("overflow-positive", K32T1, constant_row(K32T1, 4200, 127, 127)
         + constant_row(K32T1, 2, 1, 1), 17),
    # -128 * 127 * 32 per beat: below -2**31 after 4097 beats, so the sum wraps positive.
    Case("overflow-negative", K32T1, constant_row(K32T1, 4200, -128, 127), 18),
] + [
    # Segmented reduction: every split, odd K, K = 1.
    Case("span", dataclasses.replace(config, span_rows=1), random_span_beats(config, 60, seed),
         seed) for config, seed in ((K4T2, 21), (K3T2, 22), (K1T1, 23), (K8T4, 24))
] + [
    # A weight per multiplier (the dual-sparse mode): every token lane its own products.
    Case("dual-sparse", dataclasses.replace(config, dual_sparse=1),
         random_beats(dataclasses.replace(config, dual_sparse=1), 12, 4, seed), seed)
    for config, seed in ((K3T2, 25), (K8T4, 26), (K1T1, 27))
]
#: Registered multipliers (``ArrayConfig.registered``): rows, spans and dual-sparse products.
REGISTERED = [dataclasses.replace(CASES[index], name=f"registered-{CASES[index].name}",
                                  config=dataclasses.replace(CASES[index].config, registered=1))
              for index in (0, 1, 4, 5, 9, 10, 13)]
CASES += REGISTERED


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_sums_match_wrapped_reference(case):
    print(f"replay: {case.id}")
    expected = ref_sums(case)
    got, _ = rtl_sums(case)
    for row, (want, have) in enumerate(zip(expected, got)):
        assert have == want, f"{case.id}: row {row} sums {have}, expected {want}"
    assert len(got) == len(expected), case.id


def test_overflow_cases_do_wrap():
    """The overflow cases really leave the int32 range (so they test the wrap)."""
    for case in (case for case in CASES if case.name.startswith("overflow")):
        exact = sum(sum(w * a[0] for w, a in zip(weights, acts)) for weights, acts, _ in
                    case.beats[:4200])
        assert not -(1 << 31) <= exact < (1 << 31), case.id
        assert ref_sums(case)[0][0] != exact, case.id


def test_latency_and_no_bubble_between_rows():
    """With ideal streams, single-beat rows accepted in cycles 0 to 15 leave as sums in cycles
    3 to 18 (three register stages), one row per cycle with no gap."""
    case = Case("throughput", K4T2, random_beats(K4T2, 16, 1, 19), 19)
    sums, valid = rtl_sums(case, idle=0, backpressure=0)
    assert sums == ref_sums(case)
    # Sample i is sums.valid in cycle i, the cycle before clock edge i + 1.
    assert valid[:3] == [0, 0, 0] and valid[3:19] == [1] * 16, valid


@pytest.mark.parametrize("base", [K4T2, K8T4], ids=short)
def test_registered_arrays_add_three_stages(base):
    """With ``registered`` the operands pass a fanout stage and the multipliers' operand
    registers, and the products a register in the logic: the same rows leave three cycles
    later, still one per cycle (K8T4: two copies of each weight)."""
    config = dataclasses.replace(base, registered=1)
    case = Case("throughput", config, random_beats(config, 16, 1, 19), 19)
    sums, valid = rtl_sums(case, idle=0, backpressure=0)
    assert sums == ref_sums(case)
    assert valid[:6] == [0] * 6 and valid[6:22] == [1] * 16, valid


def test_registered_array_queues_rows_under_back_pressure():
    """With ``registered`` the pipeline never holds: a slow ``sums`` sink fills the queue of
    sums, ``operands.ready`` goes low before it overflows, and no row is lost or changed."""
    config = dataclasses.replace(K4T2, registered=1)
    case = Case("queue", config, random_beats(config, 40, 1, 31), 31)
    formats = CoreFormats(config)
    dut = MACArray(config)
    testbench = BlockTestbench(dut, case.seed)
    testbench.put(dut.operands, layout_beats(formats.array_operands, [
        {"weights": w, "activations": a, "row_last": int(last)} for w, a, last in case.beats]))
    testbench.get("sums", dut.sums, 40, backpressure=0.9)
    testbench.record("ready", 600, dut.operands.ready)
    results = testbench.run(600)
    assert [list(beat) for beat in decode(formats.sums, results["sums"])] == ref_sums(case)
    ready = [value for (value,) in results["ready"]]
    assert 0 in ready and ready[0] == 1, "the queue never filled: the test proves nothing"
