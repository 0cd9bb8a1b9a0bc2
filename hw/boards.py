"""The supported boards and their FPGAs' resource totals: the one place these facts live.

The build flow (:mod:`sparsemac.bitstreams.build`) checks a design against a board's totals and
builds its own config; the host's memory model (:mod:`sparsemac.sw.memory`) counts the block
RAM a board leaves for weights. Both read them here.
"""

from dataclasses import dataclass

from .config import ArrayConfig

__all__ = ["BOARDS", "DEFAULT_BOARD", "Board"]


@dataclass(frozen=True)
class Board:
    """A supported board: its amaranth-boards platform, the device's resource totals, and the
    array config its committed bitstream is built for (``bitstreams/<board>/``)."""
    #: The board's name, also its folder under ``bitstreams/`` and ``--board``'s value.
    name: str
    #: The amaranth-boards platform class that describes its pins.
    platform: str
    #: The FPGA's part name, e.g. ``LFE5U-85F``.
    device: str
    #: The FPGA's resources, under nextpnr's utilisation names: ``lut4`` (TRELLIS_COMB logic
    #: cells), ``ff`` (flip-flops), ``dsp`` (MULT18X18D multipliers), ``bram`` (DP16KD).
    totals: dict
    #: The array config of its committed bitstream.
    config: ArrayConfig
    #: The clock its committed bitstream runs at (the PLL's output), Hz: what ``sparsemac
    #: build`` constrains a build for the board to unless told otherwise.
    clock_hz: int
    #: nextpnr's placement algorithm of its committed bitstream: what ``sparsemac build``
    #: places a build for the board with unless told otherwise.
    placer: str

    def make_platform(self):
        """A fresh amaranth-boards platform object for this board."""
        import amaranth_boards.ulx3s as ulx3s_boards   # the only family of boards here
        return getattr(ulx3s_boards, self.platform)()


BOARDS = {
    # 128 multipliers (K = 4 lanes of T = 32 tokens) with registered edges (r1): four times
    # the default array's 32, 128 of the device's 156 DSP blocks. It routed at 90.29 MHz
    # (nextpnr's static placer, seed 1: 9 minutes for the whole build) and runs at 90 MHz, a
    # clock the PLL makes and 3 Mbaud divides exactly. docs/results.md has the builds behind
    # this choice.
    "ulx3s-85f": Board(name="ulx3s-85f", platform="ULX3S_85F_Platform", device="LFE5U-85F",
                       totals={"lut4": 83640, "ff": 83640, "dsp": 156, "bram": 208},
                       config=ArrayConfig(lanes=4, token_lanes=32, max_in_features=512,
                                          registered=1),
                       clock_hz=90_000_000, placer="static"),
}

#: The board a command means when it names none (``--backend fpga``, ``sparsemac build``).
DEFAULT_BOARD = "ulx3s-85f"
