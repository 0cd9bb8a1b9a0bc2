"""The memory system that feeds the core: bytes per cycle on the weight and activation paths.

A :class:`MemoryModel` says how many bytes per core cycle reach the core's weight streams (row
pointers, column words and value words together) and its activation stream. The simulated
devices and the throttled cycle model turn it into one *credit rate* per input stream with
:func:`stream_rates`, and all of them follow the one credit scheme defined here:

* every input stream has a byte bucket, a fixed-point integer in units of 2**-16 byte
  (:data:`RATE_ONE` is one byte), empty in the cycle in which the job is accepted;
* a stream offers its next beat (``valid``) in a cycle exactly when it has beats left and its
  bucket holds a whole beat (``bytes per beat * RATE_ONE``); a beat taken at a clock edge
  removes those credits;
* at every clock edge, after that, the bucket gains the stream's rate and is clipped to one
  beat: a stream holds at most one beat ready, so credit unused while the core is busy with
  something else is lost, as a memory with a one-beat output register loses it;
* a rate of 0 means an unthrottled stream: valid whenever beats are left.

The weight path's rate is shared out over its streams in proportion to the bytes each carries
in the job (a DMA reading the three CSR arrays interleaved), so no stream starves another.
Python (:mod:`sparsemac.sim.amaranth_sim`, :mod:`sparsemac.sw.throttled_cycle_model`) and C++
(``devices/verilator_harness.cpp``, ``Feed``) implement exactly this arithmetic.

Presets (:func:`memory_preset`): ``ideal``, ``onchip``, ``ulx3s-sdram``, ``uart``; or
``WEIGHT[,ACT]`` bytes per cycle (:func:`parse_bandwidth`).
"""

import math
from dataclasses import dataclass

from ..hw.config import ArrayConfig
from ..hw.board_link import DEFAULT_BAUD, DEFAULT_CLOCK_HZ
from ..hw.boards import BOARDS, DEFAULT_BOARD
from ..hw.formats import ColumnIndex, CoreFormats, DeltaCode, Mode, Sparsity
from ..hw.link_formats import layout_bytes
from ..hw.resources import BLOCK_RAM_BYTES, estimate_resources
from ..hw.errors import InputError

__all__ = ["MemoryModelError", "MemoryModel", "StreamRate", "JobStreams", "RATE_ONE",
           "PRESETS", "memory_preset", "parse_bandwidth", "job_streams", "dual_job_streams",
           "stream_rates", "packed_stream_rates", "check_fits_onchip", "onchip_weight_bytes"]

#: Fixed-point scale of a credit rate: 2**16 units are one byte.
RATE_FRACTION_BITS = 16
RATE_ONE = 1 << RATE_FRACTION_BITS

#: A UART byte is 10 bits on the wire: start bit, 8 data bits, stop bit.
UART_BITS_PER_BYTE = 10

#: The ULX3S SDRAM: AS4C32M16SB (Alliance Memory), 16-bit data bus, 8192 rows of 1024 columns
#: per bank. Timings from its data sheet (-6/-7 speed grades), rounded up to 60 MHz cycles.
SDRAM_BUS_BYTES = 2
SDRAM_PAGE_WORDS = 1024
SDRAM_REFRESH_INTERVAL_S = 64e-3 / 8192  # 8192 refreshes per 64 ms: one every 7.8 us
SDRAM_T_RP_S = 18e-9    # precharge
SDRAM_T_RCD_S = 18e-9   # activate to read
SDRAM_T_RFC_S = 60e-9   # refresh cycle
SDRAM_CAS_LATENCY = 2   # cycles, allowed up to 100 MHz


def _sdram_efficiency(clock_hz=DEFAULT_CLOCK_HZ):
    """Fraction of SDRAM cycles that carry data when streaming long sequential bursts.

    Each page (1024 words) costs one precharge, one activate and the CAS latency; each refresh
    (one per 7.8 us) costs a precharge, the refresh itself, an activate and the CAS latency.
    This assumes every stream reads whole pages from its own bank, so page changes of one
    stream do not close another's row: the best a simple controller can do, not a measured
    figure (the design has no SDRAM controller yet).
    """
    cycle = 1 / clock_hz
    precharge, activate = math.ceil(SDRAM_T_RP_S / cycle), math.ceil(SDRAM_T_RCD_S / cycle)
    refresh = math.ceil(SDRAM_T_RFC_S / cycle)
    page_overhead = precharge + activate + SDRAM_CAS_LATENCY
    refresh_overhead = precharge + refresh + activate + SDRAM_CAS_LATENCY
    refresh_interval = SDRAM_REFRESH_INTERVAL_S * clock_hz
    return ((1 - page_overhead / (SDRAM_PAGE_WORDS + page_overhead))
            * (1 - refresh_overhead / refresh_interval))


#: Data cycles per SDRAM cycle when streaming (about 0.973 at 60 MHz): see _sdram_efficiency.
SDRAM_EFFICIENCY = _sdram_efficiency()



class MemoryModelError(InputError):
    """A memory preset or bandwidth that cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class MemoryModel:
    """Bytes per core cycle on the weight and activation paths."""
    #: The preset name, or ``custom``.
    name: str
    #: Bytes per core cycle on the weight path (row pointers, columns and values); None for a path
    #: that keeps every stream valid (no limit).
    weight_bytes_per_cycle: float | None
    #: Bytes per core cycle on the activation path; None for no limit.
    activation_bytes_per_cycle: float | None
    #: The weights are resident in block RAM (``onchip``): the layer must fit.
    weights_on_chip: bool = False
    #: Off-chip bytes travel over the host link rather than from a DRAM (``uart``).
    over_link: bool = False
    #: Where the figures come from.
    source: str = ""

    def __post_init__(self):
        for path in ("weight", "activation"):
            value = getattr(self, f"{path}_bytes_per_cycle")
            _check_bandwidth(value, path, allow_none=True)

    @property
    def ideal(self):
        """True when no stream is throttled."""
        return self.weight_bytes_per_cycle is None and self.activation_bytes_per_cycle is None

    def describe(self):
        """A short text, e.g. ``ulx3s-sdram (weights 1.95 B/cycle, activations 1.95 B/cycle)``."""
        def rate(value):
            return "unlimited" if value is None else f"{value:.4g} B/cycle"
        return (f"{self.name} (weights {rate(self.weight_bytes_per_cycle)}, "
                f"activations {rate(self.activation_bytes_per_cycle)})")


def _check_bandwidth(value, path, allow_none=False):
    if value is None and allow_none:
        return
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value)
            or value <= 0 or math.isinf(value)):
        raise MemoryModelError(f"the {path} bandwidth must be a positive, finite number of bytes "
                               f"per cycle, not {value!r}")
    if round(value * RATE_ONE) < 1:
        raise MemoryModelError(f"the {path} bandwidth {value!r} bytes per cycle is below the "
                               f"credit resolution of 1/{RATE_ONE} byte per cycle")


_SDRAM_RATE = SDRAM_BUS_BYTES * SDRAM_EFFICIENCY
_UART_RATE = DEFAULT_BAUD / UART_BITS_PER_BYTE / DEFAULT_CLOCK_HZ

#: The named presets.
PRESETS = {
    "ideal": MemoryModel("ideal", None, None, source="every stream valid in every cycle"),
    "onchip": MemoryModel(
        "onchip", None, None, weights_on_chip=True,
        source="weights resident in spare block RAM, read at a full word per cycle; only for a "
               "layer that fits"),
    "ulx3s-sdram": MemoryModel(
        "ulx3s-sdram", _SDRAM_RATE, _SDRAM_RATE,
        source=f"ULX3S 16-bit SDRAM (AS4C32M16SB) at the {DEFAULT_CLOCK_HZ / 1e6:g} MHz core "
               f"clock, {SDRAM_EFFICIENCY:.3f} of its peak after page changes and refresh "
               "(data-sheet timings); each path is given the whole rate"),
    "uart": MemoryModel(
        "uart", _UART_RATE, _UART_RATE, over_link=True,
        source=f"the host UART at {DEFAULT_BAUD} baud, {UART_BITS_PER_BYTE} bits per byte, "
               f"against the {DEFAULT_CLOCK_HZ / 1e6:g} MHz core clock"),
}


def memory_preset(name):
    """The memory model of a named preset.

    Parameters
    ----------
    name : str
        ``ideal``, ``onchip``, ``ulx3s-sdram`` or ``uart`` (:data:`PRESETS`).

    Returns
    -------
    MemoryModel
        ``PRESETS[name]`` itself (memory models are frozen, so sharing it is safe).

    Raises
    ------
    MemoryModelError
        If ``name`` is not a preset.
    """
    if name not in PRESETS:
        raise MemoryModelError(f"unknown memory preset {name!r}: choose one of "
                               f"{', '.join(PRESETS)}, or give the bandwidth in bytes per cycle")
    return PRESETS[name]


def parse_bandwidth(text):
    """A ``custom`` memory model from ``WEIGHT[,ACT]`` bytes per core cycle.

    Parameters
    ----------
    text : str
        One or two positive numbers separated by a comma: the weight path's bytes per cycle
        and, optionally, the activation path's (the activation path is unthrottled when omitted).

    Returns
    -------
    MemoryModel

    Raises
    ------
    MemoryModelError
        If ``text`` is not one or two numbers, or a number is not a usable bandwidth.
    """
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = None
    if values is None or len(values) > 2:
        raise MemoryModelError(f"a bandwidth is WEIGHT[,ACT] bytes per cycle, e.g. 2 or 2,0.5, "
                               f"not {text!r}")
    for path, value in zip(("weight", "activation"), values):
        _check_bandwidth(value, path)
    return MemoryModel("custom", values[0], values[1] if len(values) == 2 else None,
                       source="bandwidth given by the user")


@dataclass(frozen=True)
class StreamRate:
    """One input stream of a job under a memory model."""
    #: Beats in the whole job.
    beats: int
    #: Bytes per beat.
    bytes: int
    #: Credits gained per cycle in units of 1/RATE_ONE byte; 0 for an unthrottled stream.
    rate: int = 0

    @property
    def total_bytes(self):
        return self.beats * self.bytes


@dataclass(frozen=True)
class JobStreams:
    """The input streams of one job, in the order of ``CoreStreams.data_inputs``."""
    #: The activation columns of every token block.
    activations: StreamRate
    #: The CSR row end pointers (a delta job's row lengths); none in dense mode.
    row_pointers: StreamRate
    #: The column index words (a delta job's codes); none in dense mode.
    columns: StreamRate
    #: The weight value words.
    values: StreamRate
    #: The pairs of a DUAL job (a dual-sparse array), weight traffic; no beats in other jobs.
    pairs: StreamRate = StreamRate(0, 0)

    NAMES = ("activations", "row_pointers", "columns", "values", "pairs")

    def __iter__(self):
        return iter(getattr(self, name) for name in self.NAMES)

    @property
    def weight_streams(self):
        """The streams of the weight path, which share its rate."""
        return self.row_pointers, self.columns, self.values, self.pairs

    @property
    def weight_bytes(self):
        return sum(stream.total_bytes for stream in self.weight_streams)

    @property
    def activation_bytes(self):
        return self.activations.total_bytes

    @property
    def longest_credit_wait(self):
        """The most cycles any stream waits to earn one beat's credit (0 if unthrottled)."""
        return max((-(-stream.bytes * RATE_ONE // stream.rate) for stream in self
                    if stream.rate), default=0)


def job_streams(config, mode, rows, cols, nnz, blocks, index=ColumnIndex.CSR):
    """Beats and bytes per beat of each input stream of a job, from the wire formats.

    Parameters
    ----------
    config : ArrayConfig
    mode : Mode
    rows, cols : int
    nnz : int
        Nonzeros of the matrix, or entries of a delta job (ignored in dense mode, which
        streams ``rows * cols`` weights).
    blocks : int
        Token blocks.
    index : ColumnIndex
        A delta job sends 16-bit row lengths and delta words in place of row pointers and
        column words.

    Returns
    -------
    JobStreams
        Unthrottled (every rate 0).
    """
    if not isinstance(config, ArrayConfig):
        raise TypeError(f"config must be an ArrayConfig, not {config!r}")
    formats = CoreFormats(config)
    sparse = Mode(mode) == Mode.SPARSE
    words = -(-(nnz if sparse else rows * cols) // config.lanes)
    row_pointer, column_word = formats.row_pointer, formats.column_word
    if sparse and ColumnIndex(index) == ColumnIndex.DELTA:
        row_pointer, column_word = DeltaCode.row_length, formats.delta_word
    return JobStreams(
        activations=StreamRate(blocks * cols, layout_bytes(formats.activation_column)),
        row_pointers=StreamRate(blocks * rows if sparse else 0, layout_bytes(row_pointer)),
        columns=StreamRate(blocks * words if sparse else 0, layout_bytes(column_word)),
        values=StreamRate(blocks * words, layout_bytes(formats.value_word)))


def dual_job_streams(config, beats):
    """The input streams of a DUAL job of ``beats`` pairs beats: the pairs alone.

    Parameters
    ----------
    config : ArrayConfig
        Dual-sparse.
    beats : int
        The sum of :func:`~sparsemac.sw.cycle_model.dual_row_beats`.

    Returns
    -------
    JobStreams
        Unthrottled.
    """
    formats = CoreFormats(config)
    idle = [StreamRate(0, layout_bytes(layout)) for layout in (
        formats.activation_column, formats.row_pointer, formats.column_word, formats.value_word)]
    return JobStreams(*idle, pairs=StreamRate(beats, layout_bytes(formats.pairs)))


def _path_rates(bytes_per_cycle, streams):
    """Shares a path's rate over ``streams`` in proportion to their bytes (0 = unthrottled)."""
    if bytes_per_cycle is None:
        return [0] * len(streams)
    path_rate = round(bytes_per_cycle * RATE_ONE)
    total = sum(stream.total_bytes for stream in streams)
    return [max(1, path_rate * stream.total_bytes // total) if stream.beats else 0
            for stream in streams]


def stream_rates(memory, streams):
    """The credit rate of every input stream of a job under ``memory``.

    Parameters
    ----------
    memory : MemoryModel
    streams : JobStreams
        From :func:`job_streams`.

    Returns
    -------
    JobStreams
        ``streams`` with their rates set.
    """
    if not isinstance(memory, MemoryModel):
        raise TypeError(f"memory must be a MemoryModel, not {memory!r}")
    weights = streams.weight_streams
    (activation_rate,) = _path_rates(memory.activation_bytes_per_cycle, [streams.activations])
    weight_rates = _path_rates(memory.weight_bytes_per_cycle, weights)
    return JobStreams(
        StreamRate(streams.activations.beats, streams.activations.bytes, activation_rate),
        *(StreamRate(stream.beats, stream.bytes, rate)
          for stream, rate in zip(weights, weight_rates)))


def packed_stream_rates(config, packed, memory):
    """The streams of a packed job with their rates under ``memory`` (None: unthrottled).

    Parameters
    ----------
    config : ArrayConfig
    packed : PackedJob
    memory : MemoryModel or None

    Returns
    -------
    JobStreams
    """
    if packed.sparsity == Sparsity.DUAL:
        streams = dual_job_streams(config, len(packed.pairs))
    else:
        streams = job_streams(config, packed.mode, packed.rows, packed.cols, packed.nnz,
                              packed.token_blocks, packed.index)
    return streams if memory is None else stream_rates(memory, streams)


def onchip_weight_bytes(config):
    """Bytes of weights the spare block RAMs of the default board's FPGA (the ULX3S's ECP5-85F)
    hold next to an array of ``config``.

    The board design (activation buffer and host link) takes the block RAMs
    :func:`~sparsemac.hw.resources.estimate_resources` predicts; the rest holds weights at
    :data:`~sparsemac.hw.resources.BLOCK_RAM_BYTES` each.
    """
    used = estimate_resources(config).block_rams
    return max(0, BOARDS[DEFAULT_BOARD].totals["bram"] - used) * BLOCK_RAM_BYTES


def check_fits_onchip(memory, config, layer_weight_bytes, layer="the layer"):
    """Raises :class:`MemoryModelError` if ``memory`` keeps weights on chip and they do not fit.

    Parameters
    ----------
    memory : MemoryModel
    config : ArrayConfig
    layer_weight_bytes : int
        Bytes of one pass over the layer's weights in the mode it runs.
    layer : str
        Named in the message.
    """
    if not memory.weights_on_chip:
        return
    room = onchip_weight_bytes(config)
    if layer_weight_bytes > room:
        raise MemoryModelError(
            f"{layer} has {layer_weight_bytes} bytes of weights but the block RAM left beside a "
            f"{config.describe()} array holds {room}: the onchip preset needs a smaller or "
            "sparser layer, or use ulx3s-sdram")
