"""What the board design of an :class:`~sparsemac.hw.config.ArrayConfig` takes on an ECP5.

:func:`estimate_resources` predicts, from the config alone and before any synthesis, the
DP16KD block RAMs and MULT18X18D multipliers of the board design (the core behind its UART host
link, :class:`~sparsemac.hw.board_top.BoardTop`), and roughly its logic cells:

* **Multipliers**: one MULT18X18D per int8 product, K x T, and one more when T is not a power
  of two: the host link's reply length, sums beats x 4T bytes, is then a true product.
* **Block RAM**: every memory of the design, mapped as Yosys' ``memory_libmap`` maps it: onto
  DP16KD block RAMs in their cheapest aspect ratio (16384 x 1 ... 512 x 36; at most 18 bits
  wide when both ports read), or onto LUT RAM (16 x 4 cells, one copy per read port) where that
  costs less (Yosys' costs: 128 a block RAM, 4 a LUT RAM cell). The memories are the K
  activation buffer replicas (``2 * max_in_features`` words of 8T bits; with
  ``read_ports == 2``, K/2 pairs of one-bank memories of ``max_in_features`` words), the
  host link's stream FIFOs, five and the ``pairs`` one with ``dual_sparse``
  (:func:`~sparsemac.hw.link_formats.fifo_depth` beats less the one in the output register), and
  its 1024-byte receive buffer. Of the column FIFO Yosys keeps only
  ``16 (K - 1) + log2(max_in_features)`` bits a beat: the bits above the column address in the
  last lane feed nothing (measured on six syntheses, see docs/architecture.md).
* **Logic cells** (TRELLIS_COMB: LUT4s and carry halves) are a least-squares fit,
  ``2000 + 70 K^2 + 100 K T + 390 K``, to six syntheses (K = 2 to 16, T = 1 to 8): the
  streamer's ring multiplexers grow with K^2, the adder trees and accumulators with K x T; two
  read ports add the bank multiplexer, ``16 K T``; chunks that span rows (``span_rows``) add
  ``46 K T + 165``, the second masked adder tree of each token and the streamer's span decision
  (fitted to k4t2i512 and k8t4 against their syntheses without it: +533 and +1 630). Its error on
  those was within 11 %; treat it as +-15 %.

A dual-sparse config (``dual_sparse``) adds the ``pairs`` FIFO of the host link to the memories
and, to the logic, the operand select's row counters and control, 380 cells whatever K and T
(the core alone, Yosys ``synth_ecp5``: k4t2i512 3 292 -> 3 673, k8t4i512 9 683 -> 10 063; its
pairs register, 16 K T + 1 flip-flops, and the multiplexers in front of the multipliers cost no
further cells there), and the link's pairs path, about three cells a bit of a pairs beat (the
beat assembly's byte enables and the FIFO's read side; the board designs, Yosys alone, k4t2i512
5 297 -> 5 960 and k8t4i512 11 443 -> 13 264 logic cells, for 129- and 513-bit beats: +663 and
+1 821 where the model adds 767 and 1 919). No multiplier.

With ``registered`` the skid buffers at the core's edges add a multiplexer cell per payload bit
of the streams they carry (the data inputs and ``sums``; k4t3i512, Yosys alone: 5 558 -> 5 811
logic cells, +253 for 220 kept bits), and their two registers a bit; the multipliers' operand
and product registers sit in the MULT18X18D blocks, so the product registers leave the fabric.
A registered array's K x T term is 68 cells, not 100: its two routed builds, k8t8i1024p2r1
(15 588) and k4t32i512r1 (14 764), give 69 and 68 where the plain fit overshot them by 13 and
28 %; on k4t3i512r1 (Yosys alone, 5 739) the refit predicts 5 737. Why a registered product
costs fewer cells is not measured apart.

:func:`estimate_timing` predicts, as roughly, what place and route of the board design on the
LFE5U-85F gives: an Fmax and whether it routes at all, from the estimated logic alone. Its fit
and how it did on the recorded builds are in its docstring.

The board totals live with the boards (:mod:`sparsemac.hw.boards`), the check that a config
fits with the build flow (:func:`sparsemac.bitstreams.build.check_fits`).
"""

from dataclasses import dataclass

from amaranth.hdl import Shape

from .boards import BOARDS, DEFAULT_BOARD
from .config import check_config
from .link_formats import MAX_PAYLOAD, LinkFormats, fifo_depth, layout_bytes
from .mac_array import SUMS_QUEUE_DEPTH

__all__ = ["BLOCK_RAM_ASPECTS", "BLOCK_RAM_BYTES", "LOGIC_ERROR", "MemoryEstimate",
           "ResourceEstimate", "estimate_resources", "map_memory", "FMAX_ERROR",
           "ROUTES_UP_TO", "HOPELESS_ABOVE", "ROUTED_MULTIPLIERS_UP_TO", "TimingEstimate",
           "estimate_timing"]

#: The DP16KD's (depth, width) aspect ratios: 18 Kbit each, the 36-bit one as a simple dual port.
BLOCK_RAM_ASPECTS = ((16384, 1), (8192, 2), (4096, 4), (2048, 9), (1024, 18), (512, 36))
#: Bytes of data one DP16KD holds: a byte a word in its 9-bit-wide aspect (the ninth bit is
#: parity), 2048.
BLOCK_RAM_BYTES = next(depth for depth, width in BLOCK_RAM_ASPECTS if width == 9)
#: Yosys' mapping costs (share/lattice/brams_16kd.txt and lutrams_trellis.txt).
_BLOCK_RAM_COST = 128
_LUT_RAM_COST = 4
_LUT_RAM_DEPTH, _LUT_RAM_WIDTH = 16, 4
#: The logic fit's coefficients: constant, K^2, K x T, K (see the module docstring).
_LOGIC_FIT = (2000, 70, 100, 390)
#: The K x T coefficient of a registered array (``ArrayConfig.registered``) in place of the
#: fit's: least squares on its two routed builds, k8t8i1024p2r1 (15 588 cells) and k4t32i512r1
#: (14 764), which give 69 and 68 (see the module docstring).
_REGISTERED_PRODUCTS = 68
#: Chunks that span rows: logic cells per multiplier (the second adder tree and its masks) and
#: for the streamer (see the module docstring).
_SPAN_FIT = (46, 165)
#: The dual-sparse mode: logic cells of the operand select, and of the host link per bit of a
#: pairs beat (see the module docstring).
_DUAL_SPARSE_LOGIC = 380
_PAIRS_LINK_CELLS_PER_BIT = 3
#: The relative error to allow the logic estimate.
LOGIC_ERROR = 0.15
#: The Fmax fit: critical path in ns = ``A + B u^2``, ``u`` the estimated logic cells over the
#: device's (see :func:`estimate_timing`).
_PATH_FIT = (12.08, 53.64)
#: ``A`` for a registered array (``ArrayConfig.registered``), whose edges cut the chain behind
#: the plain ``A``: the mean over its two routed builds, ``k8t8i1024p2r1`` at 88.83 MHz
#: (u = 0.185) and ``k4t32i512r1`` at 81.18 MHz (u = 0.177).
_REGISTERED_FIXED_NS = 10.03
#: The relative error to allow the Fmax estimate: the fit's worst on the recorded builds is 7 %,
#: and the placement seed alone moves Fmax by about 6 %.
FMAX_ERROR = 0.10
#: Logic utilisation up to which every recorded build routed, and above which none did.
ROUTES_UP_TO = 0.25
HOPELESS_ABOVE = 0.40
#: The most multipliers a build routed with here within 40 minutes: of the builds of 128,
#: ``k16t8i512`` and two designs of ``k4t32i512r1`` at 90 MHz were still congested after 40 to
#: 60 minutes of routing and a third, at 75 MHz, routed in 52, so past this a small design is
#: ``unknown``, not ``routes``.
ROUTED_MULTIPLIERS_UP_TO = 64
_BUFFER = "activation buffer"


@dataclass(frozen=True)
class MemoryEstimate:
    """One memory of the design and what it maps onto."""
    #: What the memory holds, e.g. ``activation buffer`` or ``sums FIFO``.
    name: str
    #: How many identical copies the design has.
    count: int
    #: Words of one copy.
    depth: int
    #: Bits a word.
    width: int
    #: DP16KD of one copy (0 if it is LUT RAM).
    block_rams: int
    #: 16 x 4 LUT RAM cells of one copy (0 if it is block RAM).
    lut_ram_cells: int


def map_memory(name, depth, width, count=1, read_ports=1):
    """The :class:`MemoryEstimate` of ``count`` memories of ``depth`` words of ``width`` bits
    with one write and ``read_ports`` read ports: block RAM in its cheapest aspect ratio (the
    36-bit one only as a simple dual port), or LUT RAM where Yosys' costs make that cheaper."""
    aspects = BLOCK_RAM_ASPECTS if read_ports == 1 else BLOCK_RAM_ASPECTS[:-1]
    block_rams = min(-(-depth // ram_depth) * -(-width // ram_width)
                     for ram_depth, ram_width in aspects)
    cells = read_ports * -(-depth // _LUT_RAM_DEPTH) * -(-width // _LUT_RAM_WIDTH)
    if cells * _LUT_RAM_COST < block_rams * _BLOCK_RAM_COST:
        return MemoryEstimate(name, count, depth, width, 0, cells)
    return MemoryEstimate(name, count, depth, width, block_rams, 0)


@dataclass(frozen=True)
class ResourceEstimate:
    """What the board design of a config takes on an ECP5."""
    #: MULT18X18D: the K x T of the array, and one in the host link when T is not a power of two.
    multipliers: int
    #: TRELLIS_COMB, a fit good to about :data:`LOGIC_ERROR`.
    logic_cells: int
    #: Every memory of the design, each with what it maps onto.
    memories: tuple[MemoryEstimate, ...]

    @property
    def block_rams(self):
        """DP16KD of all memories."""
        return sum(memory.count * memory.block_rams for memory in self.memories)

    @property
    def buffer_block_rams(self):
        """DP16KD of the activation buffer alone."""
        return sum(memory.count * memory.block_rams for memory in self.memories
                   if memory.name == _BUFFER)


def estimate_resources(config):
    """Predicts the board design's block RAMs, multipliers and logic for ``config``.

    Parameters
    ----------
    config : ArrayConfig

    Returns
    -------
    ResourceEstimate
    """
    config = check_config(config)
    formats = LinkFormats(config)
    width = config.token_lanes * config.VALUE_WIDTH
    if config.read_ports == 1:
        memories = [map_memory(_BUFFER, 2 * config.max_in_features, width, count=config.lanes)]
    else:
        # A one-lane replica (odd K) reads through one port only.
        pairs, single = divmod(config.lanes, 2)
        memories = [map_memory(_BUFFER, config.max_in_features, width, count=2 * pairs,
                               read_ports=2)]
        if single:
            memories.append(map_memory(_BUFFER, config.max_in_features, width, count=2))
    beat_widths = {}
    for opcode, name in formats.fifo_streams.items():
        beat_widths[name] = Shape.cast(formats.beats[opcode]).width
        if name == "columns":
            beat_widths[name] -= config.COLUMN_WIDTH - config.column_address_width
        # SyncFIFOBuffered keeps one beat in its output register, the rest in its memory.
        memories.append(map_memory(f"{name} FIFO", fifo_depth(formats.beat_bytes(opcode)) - 1,
                                   beat_widths[name]))
    memories.append(map_memory("sums FIFO", fifo_depth(formats.sums_bytes) - 1,
                               8 * layout_bytes(formats.core.sums)))
    memories.append(map_memory("receive buffer", MAX_PAYLOAD, 8))
    multipliers = config.multipliers + int(config.token_lanes & (config.token_lanes - 1) != 0)
    constant, squares, products, lanes = _LOGIC_FIT
    if config.registered:
        products = _REGISTERED_PRODUCTS
    logic = (constant + squares * config.lanes ** 2 + products * config.multipliers
             + lanes * config.lanes)
    if config.read_ports == 2:
        # The bank multiplexer after the memories, about two cells a bit (measured: +102 on
        # k4t2i1024).
        logic += 2 * config.lanes * width
    if config.span_rows:
        per_multiplier, streamer = _SPAN_FIT
        logic += per_multiplier * config.multipliers + streamer
    if config.dual_sparse:
        logic += (_DUAL_SPARSE_LOGIC
                  + _PAIRS_LINK_CELLS_PER_BIT * Shape.cast(formats.core.pairs).width)
    if config.registered:
        logic += sum(beat_widths.values()) + Shape.cast(formats.core.sums).width
        memories.append(map_memory("sums queue", SUMS_QUEUE_DEPTH,
                                   Shape.cast(formats.core.sums).width))
    return ResourceEstimate(multipliers=multipliers, logic_cells=logic,
                            memories=tuple(memories))


@dataclass(frozen=True)
class TimingEstimate:
    """What place and route of a config's board design on the LFE5U-85F is likely to give."""
    #: The estimated logic cells over the device's: what the fit is in.
    utilisation: float
    #: The predicted Fmax of the core clock, good to about :data:`FMAX_ERROR`.
    fmax_mhz: float
    #: ``routes`` (utilisation at most :data:`ROUTES_UP_TO`: every build that small routed),
    #: ``unknown`` (no build between) or ``hopeless`` (above :data:`HOPELESS_ABOVE`: the one
    #: build there stayed congested through 25 minutes of routing with either router).
    routability: str

    @property
    def fmax_class(self):
        """``90 MHz``, ``75 MHz`` or ``below 75 MHz``: the highest of the board's clocks (90 MHz,
        and 75 MHz, the next below it that the PLL makes and 3 Mbaud divides) the predicted
        Fmax reaches."""
        return next((f"{goal} MHz" for goal in (90, 75) if self.fmax_mhz >= goal),
                    "below 75 MHz")

    def worth_building(self, clock_mhz):
        """Whether a build at ``clock_mhz`` has a chance: not hopeless to route, and the top of
        the Fmax estimate's error band reaches the clock."""
        return (self.routability != "hopeless"
                and self.fmax_mhz * (1 + FMAX_ERROR) >= clock_mhz)


def estimate_timing(config, logic_cells=None):
    """Predicts the Fmax and the routability of ``config``'s board design on the ULX3S-85F.

    The critical path is fitted as ``12.08 + 53.64 u^2`` ns, ``u`` the logic cells of
    :func:`estimate_resources` over the LFE5U-85F's 83 640: a fixed depth of logic (at the
    recorded builds, the ready/valid chain across the core's edges or the streamer's row-end
    arithmetic) plus routing that grows quickly as the design spreads over the die. Least squares
    on the recorded builds (docs/results.md), as predicted against measured Fmax: ``k8t4`` 75.0
    against 70.05 and 74.35 MHz (two seeds), ``k8t8i1024p2`` 69.9 against 68.69 and 75.38,
    ``k8t8i1024p2s1`` 65.8 against 67.71, and ``k16t8i512`` 42.2 against the 41.9 its placement
    estimated: within 7 %. Not fitted and missed: the early ``k8t8i2048`` and ``k16t4i2048``,
    stopped after 12 minutes at placement estimates of about 31 and 27 MHz, where it predicts 70
    and 49 MHz.

    Routability is read off ``u`` and the multipliers: up to 0.25 (``k8t4`` 0.15,
    ``k8t8i1024p2`` 0.20, ``k8t8i1024p2s1`` 0.24) every build routed, though ``k8t8i1024p2``
    took up to an hour of routing; ``k16t8i512`` (0.47) did not route. ``u`` misses what wide T
    costs in wiring: ``k4t32i512r1`` (0.23, 128 multipliers) placed at an estimated 54.95 MHz,
    not 67.5, and had a fifth of its arcs unrouted when its one-hour build stopped (and a
    second design of it a third after 40 minutes), so above
    :data:`ROUTED_MULTIPLIERS_UP_TO` multipliers a config is at best ``unknown``.

    A ``registered`` config keeps the spread term and has a fixed depth of its own, 10.03 ns,
    the mean of what its two routed builds need: ``k8t8i1024p2r1`` at 88.83 MHz (9.41 ns;
    predicted 84.2 MHz, 5 % low) and ``k4t32i512r1`` at 81.18 MHz (10.64 ns, its host link's
    reply path; predicted 85.4 MHz, 5 % high). The plain fit had predicted 69.2 MHz for the
    first: the chain the skid buffers cut was 3.2 ns of its path. A later design of
    ``k4t32i512r1`` (the reply path registered) routed at 90.29 MHz with nextpnr's static
    placer (seed 1; 82.87 with seed 2): 5.4 % above the prediction, not refitted. A few builds
    are all this rests on, and the seed alone moves a build by 6 to 9 %.

    The logic estimate counts what place and route counts (nextpnr's TRELLIS_COMB); Yosys alone
    reports fewer (k4t32i512r1: 13 069 against nextpnr's 14 764), so a synthesis
    (:func:`sparsemac.bitstreams.build.synthesise`, minutes against a place and route's hour)
    is a lower bound for ``logic_cells``, not a better estimate of it.

    Parameters
    ----------
    config : ArrayConfig
    logic_cells : int or None
        The design's logic cells, if known; by default :func:`estimate_resources`'.

    Returns
    -------
    TimingEstimate
    """
    if logic_cells is None:
        logic_cells = estimate_resources(config).logic_cells
    utilisation = logic_cells / BOARDS[DEFAULT_BOARD].totals["lut4"]
    fixed, spread = _PATH_FIT
    if config.registered:
        fixed = _REGISTERED_FIXED_NS
    if utilisation <= ROUTES_UP_TO and config.multipliers <= ROUTED_MULTIPLIERS_UP_TO:
        routability = "routes"
    elif utilisation <= HOPELESS_ABOVE:
        routability = "unknown"
    else:
        routability = "hopeless"
    return TimingEstimate(utilisation=utilisation,
                          fmax_mhz=1000 / (fixed + spread * utilisation ** 2),
                          routability=routability)
