"""The energy model: event counts against handshakes counted on Amaranth runs, tables, prices."""

import dataclasses
import json

import pytest
from amaranth.hdl import Value

from helpers import (K3T2, K4T2, decode, random_activations, random_weights,
                     sparse_activations, weights_with_row_lengths)
from sparsemac.hw.core import SparseMACCore
from sparsemac.hw.formats import CoreFormats, Mode, Sparsity
from sparsemac.sim.amaranth_sim import run_core_job
from sparsemac.sw.energy import (DEFAULT_TABLE, EnergyEvents, energy_events, energy_of,
                                 load_energy_table)
from sparsemac.sw.memory import MemoryModel, memory_preset
from sparsemac.sw.packing import beats_to_ints, pack_job
from sparsemac.sw.throttled_cycle_model import dual_layer_cycles, layer_cycles


class ObservedCore(SparseMACCore):
    """The core with its blocks kept as attributes, so a testbench can watch inner streams."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        self.activation_buffer = m.submodules.activation_buffer
        self.mac_array = m.submodules.mac_array
        return m


def _handshake_counter(counts, names=("chunks", "operands", "activations", "row_pointers",
                                       "columns", "values", "sums")):
    """A monitor that counts every handshake of the named inner and input streams of the core
    (``chunks`` and ``operands`` are the activation buffer's and the MAC array's inputs)."""
    def monitor(core):
        inner = {"chunks": core.activation_buffer.chunks, "operands": core.mac_array.operands}
        streams = {name: inner[name] if name in inner else getattr(core, name)
                   for name in names}
        signals = [signal for stream in streams.values() for signal in (stream.valid,
                                                                         stream.ready)]

        async def testbench(ctx):
            async for _, _, *values in ctx.tick().sample(*signals):
                for index, name in enumerate(streams):
                    counts[name] += values[2 * index] & values[2 * index + 1]
        return testbench
    return monitor


def _payload_bytes(stream):
    return (Value.cast(stream.payload).shape().width + 7) // 8


JOBS = {
    "sparse-ideal": (K3T2, weights_with_row_lengths((5, 0, 1, 7, 3, 0), 20, 1), 5,
                     Mode.SPARSE, memory_preset("ideal")),
    "sparse-throttled": (K4T2, random_weights(6, 30, 0.8, seed=2), 7, Mode.SPARSE,
                         MemoryModel("custom", 3.3, 0.7)),
    "dense-throttled": (K3T2, random_weights(4, 11, 0.5, seed=3), 3, Mode.DENSE,
                        MemoryModel("custom", 1.1, None)),
    "sparse-uart": (K3T2, random_weights(3, 9, 0.5, seed=4), 2, Mode.SPARSE,
                    MemoryModel("uart-like", 0.4, 0.2, over_link=True)),
    "sparse-onchip": (K4T2, random_weights(5, 16, 0.7, seed=5), 4, Mode.SPARSE,
                      memory_preset("onchip")),
}


@pytest.mark.parametrize("name", JOBS)
def test_event_counts_match_an_amaranth_run(name):
    config, weights, tokens, mode, memory = JOBS[name]
    activations = random_activations(tokens, weights.cols, seed=6)
    counts = dict.fromkeys(("chunks", "operands", "activations", "row_pointers", "columns",
                            "values", "sums"), 0)
    core = ObservedCore(config)
    run = run_core_job(config, pack_job(config, weights, activations, mode),
                       memory=memory, core=core,
                       monitor=_handshake_counter(counts))
    layer = layer_cycles(weights, tokens, config, mode, memory)
    assert layer.cycles == run.cycles
    assert (layer.chunks, layer.fill_beats, layer.words, layer.row_pointers) == (
        counts["chunks"], counts["activations"], counts["values"], counts["row_pointers"])

    lanes, token_lanes = config.lanes, config.token_lanes
    crossing = sum(counts[name] * _payload_bytes(getattr(core, name))
                   for name in ("activations", "row_pointers", "columns", "values", "sums"))
    resident = 0
    if memory.weights_on_chip:
        resident = sum(counts[name] * _payload_bytes(getattr(core, name))
                       for name in ("row_pointers", "columns", "values"))
    expected = EnergyEvents(
        int8_multiply=counts["operands"] * lanes * token_lanes,
        tree_add=counts["operands"] * (lanes - 1) * token_lanes,
        accumulator_update=counts["operands"] * token_lanes,
        block_ram_read_bit=counts["operands"] * lanes * token_lanes * 8 + 8 * resident,
        block_ram_write_bit=counts["activations"] * lanes * token_lanes * 8,
        offchip_byte=0 if memory.over_link else crossing - resident,
        link_byte=crossing if memory.over_link else 0)
    assert energy_events(layer, config, memory) == expected


def test_default_table_is_horowitz():
    table = load_energy_table()
    assert table.name == "Horowitz 45 nm"
    assert "ISSCC 2014" in table.source
    assert table.picojoules.int8_multiply == 0.2
    assert table.picojoules.block_ram_read_bit == 20 / 64
    assert table.picojoules.offchip_byte == 1950 / 8


def test_energy_of_prices_every_event():
    events = EnergyEvents(int8_multiply=10, tree_add=5, accumulator_update=2,
                          block_ram_read_bit=64, block_ram_write_bit=32, offchip_byte=3,
                          link_byte=1)
    report = energy_of(events, load_energy_table())
    expected = 10 * 0.2 + 5 * 0.1 + 2 * 0.1 + 96 * 20 / 64 + 4 * 1950 / 8
    assert report.total_pj == pytest.approx(expected)
    assert report.memory_pj == pytest.approx(4 * 1950 / 8)


def test_user_table(tmp_path):
    table = json.loads(DEFAULT_TABLE.read_text())
    table["name"] = "mine"
    table["picojoules"]["offchip_byte"] = 0
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(table))
    mine = load_energy_table(path)
    assert (mine.name, mine.picojoules.offchip_byte) == ("mine", 0.0)


@pytest.mark.parametrize("change, message", [
    (lambda t: t["picojoules"].pop("link_byte"),
     "missing events ['link_byte'], unknown events []"),
    (lambda t: t["picojoules"].update(sram=1),
     "missing events [], unknown events ['sram']"),
    (lambda t: t["picojoules"].update(tree_add=-1),
     "tree_add must be a non-negative number of picojoules, not -1"),
    (lambda t: t.pop("picojoules"), "needs a 'picojoules' object"),
])
def test_bad_table(tmp_path, change, message):
    table = json.loads(DEFAULT_TABLE.read_text())
    change(table)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(table))
    with pytest.raises(ValueError) as error:
        load_energy_table(path)
    assert message in str(error.value)


def test_a_table_that_is_not_utf8_names_the_file_and_the_option(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes('{"picojoules": {"µ": 1}}'.encode("latin-1"))
    with pytest.raises(ValueError, match=f"energy table {path} \\(--energy-table\\) is not "
                                         "UTF-8 text"):
        load_energy_table(path)
def test_dual_sparse_event_counts_match_an_amaranth_run():
    """A DUAL job: a multiply per pair sent with a nonzero product, a tree and an accumulator
    update per operand beat the MAC array takes, no buffer traffic, the pairs and sums bytes."""
    config = dataclasses.replace(K3T2, dual_sparse=1)
    memory = MemoryModel("custom", 5.3, None)
    weights = weights_with_row_lengths((5, 0, 1, 7, 3, 0), 20, 7)
    activations = sparse_activations(5, 20, 0.6, seed=8)
    counts = dict.fromkeys(("operands", "pairs", "sums"), 0)
    core = ObservedCore(config)
    packed = pack_job(config, weights, activations, sparsity=Sparsity.DUAL)
    run = run_core_job(config, packed, memory=memory, core=core,
                       monitor=_handshake_counter(counts, ("operands", "pairs", "sums")))
    layer = dual_layer_cycles(weights, activations, config, memory)
    assert (layer.cycles, layer.chunks, layer.fill_beats) == (run.cycles, counts["pairs"], 0)
    beats = decode(CoreFormats(config).pairs, beats_to_ints(packed.pairs))
    products = sum(bool(beat.weights[token][lane]) and bool(beat.activations[token][lane])
                   for beat in beats for token in range(config.token_lanes)
                   for lane in range(config.lanes))
    crossing = sum(counts[name] * _payload_bytes(getattr(core, name)) for name in ("pairs", "sums"))
    assert energy_events(layer, config, memory) == EnergyEvents(
        int8_multiply=products,
        tree_add=counts["operands"] * (config.lanes - 1) * config.token_lanes,
        accumulator_update=counts["operands"] * config.token_lanes,
        block_ram_read_bit=0, block_ram_write_bit=0, offchip_byte=crossing, link_byte=0)
