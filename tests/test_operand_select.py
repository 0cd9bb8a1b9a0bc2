"""The operand select of a dual-sparse array: buffer beats broadcast, pairs transposed, and a
DUAL job takes its own pairs rows and no more; with idle inputs and back-pressure."""

import random

import pytest
from amaranth.hdl import Value

from helpers import STALLS, BlockTestbench, decode, layout_beats
from sparsemac.hw.config import ArrayConfig
from sparsemac.hw.formats import CoreFormats, Mode, Sparsity
from sparsemac.hw.operand_select import OperandSelect

pytestmark = pytest.mark.usefixtures("sim_deadline")

K3T2 = ArrayConfig(lanes=3, token_lanes=2, max_in_features=64, dual_sparse=1)
K3T2_SPAN = ArrayConfig(lanes=3, token_lanes=2, max_in_features=64, span_rows=1, dual_sparse=1)


def _job(config, sparsity, rows, blocks):
    return layout_beats(CoreFormats(config).job, [{
        "mode": Mode.SPARSE, "rows": rows, "cols": 8, "token_blocks": blocks, "nnz": 0,
        "sparsity": sparsity}])[0]


def _value(rng):
    return rng.randrange(-128, 128)


def _pairs(config, count, rng):
    """At least ``count`` random pairs beats (dicts for ``formats.pairs``), rows of 1 to 3
    beats, ``row_last`` on a row's last."""
    beats = []
    while len(beats) < count:
        length = rng.randrange(1, 4)
        for index in range(length):
            beats.append({
                "weights": [[_value(rng) for _ in range(config.lanes)]
                            for _ in range(config.token_lanes)],
                "activations": [[_value(rng) for _ in range(config.lanes)]
                                for _ in range(config.token_lanes)],
                "row_last": int(index == length - 1)})
    return beats


def _check(config, given, got, transpose):
    """Each output beat holds its input's operands, a weight per (lane, token)."""
    assert len(got) == len(given)
    for beat, out in zip(given, got):
        for lane in range(config.lanes):
            for token in range(config.token_lanes):
                if transpose:
                    weight = beat["weights"][token][lane]
                    activation = beat["activations"][token][lane]
                else:
                    weight = beat["weights"][lane]
                    activation = beat["activations"][lane][token]
                assert out.weights[lane][token] == weight, (lane, token)
                assert out.activations[lane][token] == activation, (lane, token)
        assert out.row_last == beat["row_last"]
        if config.span_rows:
            assert out.split == beat.get("split", config.lanes)


@pytest.mark.parametrize("config", [K3T2, K3T2_SPAN], ids=["k3t2", "k3t2-span"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_dual_job_takes_its_rows_of_pairs_and_no_more(config, seed):
    """3 rows x 2 blocks: the beats up to the sixth row_last leave transposed, in order; the
    next job's beats, offered at once, wait (the sink would see them otherwise)."""
    rng = random.Random(seed)
    beats = _pairs(config, 30, rng)
    ends = [index for index, beat in enumerate(beats) if beat["row_last"]]
    job_beats = beats[:ends[5] + 1]
    dut = OperandSelect(config)
    testbench = BlockTestbench(dut, seed)
    testbench.start(_job(config, Sparsity.DUAL, rows=3, blocks=2))
    taken = []
    testbench.sim.add_testbench(_offer(dut.pairs, layout_beats(CoreFormats(config).pairs, beats),
                                   rng, taken))
    testbench.get("out", dut.o_stream, len(job_beats))
    results = testbench.run(400)
    _check(config, job_beats, decode(CoreFormats(config).array_operands, results["out"]),
           transpose=True)
    assert taken == [len(job_beats)]


def _offer(stream, beats, rng, taken, cycles=300):
    """A testbench that offers ``beats`` in turn, idle before a beat with probability STALLS,
    for ``cycles`` cycles whether taken or not, then appends the count taken to ``taken``."""
    async def testbench(ctx):
        await ctx.tick()  # the cycle of start
        count = 0
        for _ in range(cycles):
            offered = count < len(beats) and rng.random() >= STALLS
            ctx.set(stream.valid, offered)
            if offered:
                ctx.set(Value.cast(stream.payload), beats[count])
            _, _, ready = await ctx.tick().sample(stream.ready)
            count += offered and ready
        taken.append(count)
    return testbench


@pytest.mark.parametrize("config", [K3T2, K3T2_SPAN], ids=["k3t2", "k3t2-span"])
def test_a_weight_job_passes_the_buffer_through_and_leaves_the_pairs(config):
    rng = random.Random(4)
    formats = CoreFormats(config)
    given = [{"weights": [_value(rng) for _ in range(config.lanes)],
              "activations": [[_value(rng) for _ in range(config.token_lanes)]
                              for _ in range(config.lanes)],
              "row_last": rng.randrange(2),
              **({"split": rng.randrange(config.lanes + 1)} if config.span_rows else {})}
             for _ in range(40)]
    dut = OperandSelect(config)
    testbench = BlockTestbench(dut, 5)
    testbench.start(_job(config, Sparsity.WEIGHTS, rows=3, blocks=2))
    testbench.put(dut.operands, layout_beats(formats.operands, given), delay=1)
    taken = []
    pairs = layout_beats(formats.pairs, _pairs(config, 3, rng))
    testbench.sim.add_testbench(_offer(dut.pairs, pairs, rng, taken))
    testbench.get("out", dut.o_stream, len(given))
    results = testbench.run(400)
    _check(config, given, decode(formats.array_operands, results["out"]), transpose=False)
    assert taken == [0]


def test_only_a_dual_sparse_array_has_one():
    with pytest.raises(ValueError, match="only for a dual-sparse array, not k3t2i64"):
        OperandSelect(ArrayConfig(lanes=3, token_lanes=2, max_in_features=64))

