"""Shared helpers of the hardware and model tests: seeded cases, the reference, a block testbench.

The stream drivers and sinks are the ones of :mod:`sparsemac.sim.amaranth_sim`;
:class:`BlockTestbench` only wires them to a block, one testbench per stream side, with a watchdog
(``BlockTestbench.run``'s ``max_cycles``) so a block that deadlocks fails its test instead of
hanging it. Test modules import them with ``from helpers import ...`` (pytest puts this folder on
the import path); the fixtures are in conftest.py.
"""

import random
from dataclasses import dataclass

import numpy as np
import torch
from amaranth.hdl import Value
from amaranth.sim import Simulator

from sparsemac.hw.config import ArrayConfig
from sparsemac.hw.formats import Mode
from sparsemac.sim.amaranth_sim import stream_get_all, stream_put_all
from sparsemac.sw.csr import CSRMatrix
from sparsemac.sw.golden import golden_matmul
from sparsemac.sw.task import SplitSizes

__all__ = ["HAND_CASES", "HandCase", "BlockTestbench", "STALLS", "layout_beats", "decode",
           "reference", "random_weights", "random_activations", "sparse_activations",
           "weights_with_row_lengths", "wrap_int32", "short", "tiny_bert_dir", "labelled_rows",
           "write_labelled_csv", "tiny_task_model_dir", "TINY_TASK_SIZES", "K8T4", "K8T1", "K4T2",
           "K3T2", "K3T1", "K2T1", "K1T4", "K1T1", "K32T1"]

#: Idle probability on inputs and back-pressure probability on outputs of every stalled run.
STALLS = 0.3

CLOCK_PERIOD = 1e-8

# Configs small enough for the simulator: 64-column banks (8 for K = 1, T = 1, the minimum).

K8T4 = ArrayConfig(lanes=8, token_lanes=4, max_in_features=64)  # the default, but for the depth
K8T1 = ArrayConfig(lanes=8, token_lanes=1, max_in_features=64)
K4T2 = ArrayConfig(lanes=4, token_lanes=2, max_in_features=64)
K3T2 = ArrayConfig(lanes=3, token_lanes=2, max_in_features=64)
K3T1 = ArrayConfig(lanes=3, token_lanes=1, max_in_features=64)
K2T1 = ArrayConfig(lanes=2, token_lanes=1, max_in_features=64)
K1T4 = ArrayConfig(lanes=1, token_lanes=4, max_in_features=64)
K1T1 = ArrayConfig(lanes=1, token_lanes=1, max_in_features=8)
K32T1 = ArrayConfig(lanes=32, token_lanes=1, max_in_features=64)


def short(config):
    """A config as a test id without spaces: ``K8T4``, with ``i<depth>`` if not 64."""
    depth = "" if config.max_in_features == 64 else f"i{config.max_in_features}"
    return f"K{config.lanes}T{config.token_lanes}{depth}"


# Cases ------------------------------------------------------------------------------------------

def random_weights(rows, cols, sparsity, seed):
    """A seeded int8 CSR matrix whose entries are zero with probability ``sparsity``.

    Kept entries are never zero, so sparsity 0 is fully dense and 1 is all zero.
    """
    rng = np.random.default_rng(seed)
    dense = rng.integers(-128, 128, size=(rows, cols))
    dense[dense == 0] = 1
    dense[rng.random((rows, cols)) < sparsity] = 0
    return CSRMatrix.from_dense(dense.astype(np.int8))


def weights_with_row_lengths(row_lengths, cols, seed):
    """A seeded int8 CSR matrix whose row ``r`` has exactly ``row_lengths[r]`` nonzeros."""
    rng = np.random.default_rng(seed)
    dense = np.zeros((len(row_lengths), cols), dtype=np.int8)
    for row, length in enumerate(row_lengths):
        columns = rng.choice(cols, size=length, replace=False)
        dense[row, columns] = rng.choice([v for v in range(-128, 128) if v], size=length)
    return CSRMatrix.from_dense(dense)


def random_activations(tokens, cols, seed):
    """Seeded int8 activations ``[tokens, cols]`` over the whole int8 range."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(-128, 128, (tokens, cols), generator=generator, dtype=torch.int8)


def sparse_activations(tokens, cols, zeros, seed):
    """Seeded int8 activations ``[tokens, cols]``, each zero with probability ``zeros``,
    the others over the whole int8 range (the inputs of a dual-sparse job)."""
    activations = random_activations(tokens, cols, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    activations[torch.rand((tokens, cols), generator=generator) < zeros] = 0
    return activations


def wrap_int32(value):
    """A Python integer reduced to int32 two's complement, as the accumulators do."""
    return (value + (1 << 31)) % (1 << 32) - (1 << 31)


def reference(weights, activations):
    """The bit-exact result of a layer: the golden model, int32 ``[tokens, rows]``."""
    return golden_matmul(weights, activations)


@dataclass(frozen=True)
class HandCase:
    """A job whose cycle count was worked out by hand from the schedule in sw/cycle_model.py."""
    #: The test id.
    name: str
    #: The array the job runs on.
    config: ArrayConfig
    #: Nonzeros of each weight row.
    row_lengths: tuple
    #: Input columns.
    cols: int
    #: Tokens of the job.
    tokens: int
    #: Sparse or dense.
    mode: Mode
    #: The count on ``done``, worked out by hand.
    cycles: int
    #: Cycles issuing chunks, by hand (:class:`~sparsemac.sw.cycle_model.CycleBreakdown`).
    issue: int
    #: Cycles waiting for activations, by hand.
    load_stall: int
    #: Cycles waiting for the streamer's first chunk beyond the first load, by hand.
    fill: int


#: The derivations, in schedule terms (cycle 0 accepts the job; block j loads cols cycles):
HAND_CASES = [
    # Load column 0 in cycle 1, bank readable in 2; the streamer takes its first word and row
    # pointer in cycle 1 and hands over the first chunk in 3; issue 3, sums in 3 + 5.
    HandCase("1x1x1-one-nonzero", K8T4, (1,), 1, 1, Mode.SPARSE, 8, 1, 1, 1),
    # An empty row is timed like any other: its length comes from the same row pointer.
    HandCase("1x1x1-empty", K8T4, (0,), 1, 1, Mode.SPARSE, 8, 1, 1, 1),
    HandCase("1x1x1-dense", K8T4, (1,), 1, 1, Mode.DENSE, 8, 1, 1, 1),
    # Rows of 10 and 3: 2 + 1 = 3 issues a block; 3 blocks of 16-column loads dominate.
    # Issue starts 17, 33, 49 (each right after its load); 49 + 3 - 1 + 5 = 56.
    HandCase("load-bound-3-blocks", K8T4, (10, 3), 16, 9, Mode.SPARSE, 56, 9, 42, 0),
    # K=2, 3 rows of 4: 6 issues a block against 4-cycle loads. Issue starts 5, 11, 17 (block 2
    # loads only after block 0 has issued, cycles 11-14); 17 + 6 - 1 + 5 = 27.
    HandCase("compute-bound-3-blocks", K2T1, (4, 4, 4), 4, 3, Mode.SPARSE, 27, 18, 4, 0),
    # Dense 2 x 5 at K=2: 3 issues a row, 6 a block; load 1-5, issue 6-11, sums 11 + 5 = 16.
    HandCase("dense-2x5", K2T1, (5, 5), 5, 1, Mode.DENSE, 16, 6, 5, 0),
]


# Layouts ----------------------------------------------------------------------------------------

def layout_beats(layout, payloads):
    """Each payload (a dict or list for ``layout.const``) as the integer a stream carries."""
    return [layout.const(payload).as_value().value for payload in payloads]


def decode(layout, beats):
    """Stream beats (integers) as ``layout`` views, fields read as Python values."""
    return [layout.from_bits(beat) for beat in beats]


# Block testbench --------------------------------------------------------------------------------

class BlockTestbench:
    """One block in the Amaranth simulator, a testbench per stream side.

    Parameters
    ----------
    dut : wiring.Component
    seed : int
        Seeds every idle and back-pressure pattern, so a failure replays exactly.
    """

    def __init__(self, dut, seed):
        self.dut = dut
        self.seed = seed
        self.sim = Simulator(dut)
        self.sim.add_clock(CLOCK_PERIOD)
        self._rng = random.Random(seed)
        self._expected = {}
        self.results = {}

    def put(self, stream, beats, idle=STALLS, delay=0):
        """Drive ``beats`` on ``stream`` after ``delay`` cycles, idle before a beat with
        probability ``idle``."""
        rng = random.Random(self._rng.random())

        async def testbench(ctx):
            if delay:
                await ctx.tick().repeat(delay)
            await stream_put_all(ctx, stream, beats, rng, idle)
        self.sim.add_testbench(testbench, background=True)

    def get(self, name, stream, count, backpressure=STALLS):
        """Collect ``count`` beats of ``stream`` into ``results[name]``."""
        rng = random.Random(self._rng.random())
        self._expected[name] = count

        async def testbench(ctx):
            self.results[name] = await stream_get_all(ctx, stream, count, rng, backpressure)
        self.sim.add_testbench(testbench)

    def start(self, job):
        """Pulse the block's ``start`` for one cycle with ``job`` (an integer) on ``job``."""
        async def testbench(ctx):
            ctx.set(Value.cast(self.dut.job), job)
            ctx.set(self.dut.start, 1)
            await ctx.tick()
            ctx.set(self.dut.start, 0)
        self.sim.add_testbench(testbench)

    def record(self, name, cycles, *signals):
        """Sample ``signals`` at each clock edge into the list ``results[name]``, for at most
        ``cycles`` edges or until the sinks are done."""
        samples = self.results[name] = []

        async def testbench(ctx):
            for _ in range(cycles):
                _, _, *values = await ctx.tick().sample(*signals)
                samples.append(tuple(values))
        self.sim.add_testbench(testbench, background=True)

    def run(self, max_cycles):
        """Run until every sink is done; fail if one is still waiting after ``max_cycles``."""
        async def watchdog(ctx):
            for _ in range(max_cycles):  # not tick().repeat(): it warns when closed early
                await ctx.tick()
            waiting = {name: count for name, count in self._expected.items()
                       if name not in self.results}
            raise AssertionError(f"seed {self.seed}: sinks still waiting after {max_cycles} "
                                 f"cycles (name: beats expected) {waiting}: a deadlock or lost "
                                 "beats")
        self.sim.add_testbench(watchdog, background=True)
        self.sim.run()
        return self.results


def tiny_bert_dir(path, seed):
    """A 2-layer BERT of hidden size 32 with MiniLM's vocabulary and tokenizer, saved as a
    checkpoint directory at `path`; returns the path as a model spec.

    Dropout stays on (0.1), so resuming a training run must restore the random state too.
    """
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel

    from sparsemac.sw.models import load_model

    torch.manual_seed(seed)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    model = BertModel(config, add_pooling_layer=False)
    path.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              path / "model.safetensors")
    config.to_json_file(path / "config.json")
    load_model("minilm").tokenizer.save_pretrained(str(path))
    return str(path)


#: The splits of :func:`tiny_task_model_dir`: 12 test (all held out), 24 train, 2 calibration.
TINY_TASK_SIZES = SplitSizes(train=24, test=12, calibration=2, held_out=12)


_WORDS = {"positive": "lovely great happy", "negative": "awful sad terrible",
          "neutral": "the a some"}


def labelled_rows(count, labels=tuple(_WORDS)):
    """`count` distinct (text, label) rows cycling through `labels`; the three sentiment labels
    come with words that tell them apart."""
    return [(f"{_WORDS.get(labels[i % len(labels)], labels[i % len(labels)])} tweet number {i}",
             labels[i % len(labels)])
            for i in range(count)]


def write_labelled_csv(path, rows):
    """A UTF-8 CSV of (text, label) rows with its header; returns the path as a string."""
    import csv

    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return str(path)


def tiny_task_model_dir(folder):
    """A task model fine-tuned for 2 steps from a :func:`tiny_bert_dir` on 60 labelled rows
    written into `folder`; returns ``(model directory, CSV path)``."""
    from sparsemac.sw.finetune import FinetuneRecipe, finetune

    data = write_labelled_csv(folder / "tiny.csv", labelled_rows(60))
    base = tiny_bert_dir(folder / "base", seed=0)
    finetune(base, folder / "task", FinetuneRecipe(steps=2, batch_size=4, max_tokens=16),
             data=data, sizes=TINY_TASK_SIZES, progress=False)
    return str(folder / "task"), data
