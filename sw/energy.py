"""An event-count energy model of the core and its memory.

:func:`energy_events` counts what the core does in a layer from its exact schedule
(:func:`sparsemac.sw.throttled_cycle_model.layer_cycles`): every accepted chunk is one operand
beat of the MAC array, so K x T int8 multiplies, (K - 1) x T adder-tree adds (twice that with
``span_rows``, whose two masked trees both add every beat), T accumulator
updates and K activation lookups of T x 8 bits; every activation column is written into all K
buffer replicas; the bytes streamed in and the sums streamed out cross the chip boundary, from a
DRAM or over the host link as the memory model says, except weights resident on chip
(``onchip``), which are block RAM reads instead. A DUAL layer
(:func:`~sparsemac.sw.throttled_cycle_model.dual_layer_cycles`) issues one multiply per pair it
sends (a nonzero weight by a nonzero activation: the products actually issued; a beat's unused
pairs are zeros), adds and accumulates per beat as a chunk does, reads and writes no buffer, and
streams only its pairs and sums. :func:`energy_of` prices the events with a
per-event table (:func:`load_energy_table`; the default, ``data/energy_horowitz_45nm.json``,
is Horowitz's ISSCC 2014 45 nm table, and a user may supply their own in the same format).

Not counted: the streamer's ring and other registers, control logic and clock (the table has no
figure for them), and activation-buffer reads in cycles without a chunk (the RTL holds its read
enable high every cycle; a gated enable would read exactly the counted lookups).
"""

import json
from dataclasses import dataclass, fields
from pathlib import Path

from ..hw.config import ArrayConfig
from .memory import MemoryModel
from .throttled_cycle_model import DualLayerCycles, LayerCycles

__all__ = ["EnergyEvents", "EnergyTable", "EnergyReport", "DEFAULT_TABLE", "load_energy_table",
           "energy_events", "energy_of"]

#: The default per-event energy table.
DEFAULT_TABLE = Path(__file__).resolve().parent / "data" / "energy_horowitz_45nm.json"


@dataclass(frozen=True)
class EnergyEvents:
    """Counts of the events that cost energy; each field is also a key of an energy table."""
    int8_multiply: int
    tree_add: int
    accumulator_update: int
    block_ram_read_bit: int
    block_ram_write_bit: int
    offchip_byte: int
    link_byte: int


EVENT_NAMES = tuple(field.name for field in fields(EnergyEvents))


@dataclass(frozen=True)
class EnergyTable:
    """Picojoules per event."""
    name: str
    source: str
    #: One float per event (an :class:`EnergyEvents` holding energies, not counts).
    picojoules: EnergyEvents


@dataclass(frozen=True)
class EnergyReport:
    """A layer's events and what they cost."""
    #: The name of the table used.
    table: str
    events: EnergyEvents
    #: Energy per event kind (count times its table entry).
    picojoules: EnergyEvents
    total_pj: float

    @property
    def total_uj(self):
        return self.total_pj * 1e-6

    @property
    def memory_pj(self):
        """The share of off-chip and link bytes."""
        return self.picojoules.offchip_byte + self.picojoules.link_byte


def load_energy_table(path=None):
    """Reads an energy table from JSON.

    Parameters
    ----------
    path : str or Path or None
        A JSON object with ``name``, ``source`` and ``picojoules``, the last mapping every event
        of :class:`EnergyEvents` to a non-negative number; None reads :data:`DEFAULT_TABLE`.

    Returns
    -------
    EnergyTable

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If it is not such a JSON object.
    """
    path = Path(DEFAULT_TABLE if path is None else path)
    try:
        table = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"energy table {path} is not valid JSON: {error}") from error
    if not isinstance(table, dict) or not isinstance(table.get("picojoules"), dict):
        raise ValueError(f"energy table {path} needs a 'picojoules' object")
    energies = table["picojoules"]
    missing = sorted(set(EVENT_NAMES) - set(energies))
    unknown = sorted(set(energies) - set(EVENT_NAMES))
    if missing or unknown:
        raise ValueError(f"energy table {path}: missing events {missing}, unknown events "
                         f"{unknown}; expected exactly {', '.join(EVENT_NAMES)}")
    for name, value in energies.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"energy table {path}: {name} must be a non-negative number of "
                             f"picojoules, not {value!r}")
    return EnergyTable(name=str(table.get("name", path.stem)), source=str(table.get("source", "")),
                       picojoules=EnergyEvents(**{name: float(energies[name])
                                                  for name in EVENT_NAMES}))


def energy_events(layer, config, memory):
    """Counts the energy events of a layer from its exact schedule.

    Parameters
    ----------
    layer : LayerCycles
        Or :class:`DualLayerCycles`.
    config : ArrayConfig
    memory : MemoryModel

    Returns
    -------
    EnergyEvents
    """
    if not isinstance(layer, LayerCycles):
        raise TypeError(f"layer must be a LayerCycles, not {layer!r}")
    if not isinstance(config, ArrayConfig):
        raise TypeError(f"config must be an ArrayConfig, not {config!r}")
    if not isinstance(memory, MemoryModel):
        raise TypeError(f"memory must be a MemoryModel, not {memory!r}")
    lanes, token_lanes = config.lanes, config.token_lanes
    column_bits = token_lanes * config.VALUE_WIDTH
    resident = layer.weight_bytes if memory.weights_on_chip else 0
    crossing = layer.weight_bytes - resident + layer.activation_bytes + layer.output_bytes
    dual = isinstance(layer, DualLayerCycles)
    return EnergyEvents(
        int8_multiply=layer.pairs if dual else layer.chunks * lanes * token_lanes,
        # Chunks that span rows sum each token's lanes in two masked adder trees.
        tree_add=layer.chunks * (lanes - 1) * token_lanes * (2 if config.span_rows else 1),
        accumulator_update=layer.chunks * token_lanes,
        block_ram_read_bit=(0 if dual else layer.chunks * lanes * column_bits) + 8 * resident,
        block_ram_write_bit=layer.fill_beats * lanes * column_bits,
        offchip_byte=0 if memory.over_link else crossing,
        link_byte=crossing if memory.over_link else 0)


def energy_of(events, table):
    """Prices ``events`` with ``table``.

    Parameters
    ----------
    events : EnergyEvents
    table : EnergyTable

    Returns
    -------
    EnergyReport
    """
    energies = {name: getattr(events, name) * getattr(table.picojoules, name)
                for name in EVENT_NAMES}
    return EnergyReport(table=table.name, events=events, picojoules=EnergyEvents(**energies),
                        total_pj=sum(energies.values()))
