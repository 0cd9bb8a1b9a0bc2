"""What the host and the board design share about the board link, beside its wire format.

:mod:`~sparsemac.hw.link_formats` holds the frames and the FIFO depths
(:func:`~sparsemac.hw.link_formats.fifo_depth`); this module holds the board's clock and UART
rate and the design hash that names the gateware behind a bitstream. The host compares the hash
in a board's identification word with :func:`design_hash` of its config; ``sparsemac build
--check`` compares it with the one in the build manifest.

The hash follows the elaborated design, not its Python sources: it is the hash of the RTLIL of
:class:`~sparsemac.hw.board_top.BoardTop` with source locations stripped, built with a
placeholder hash of 0 (the identification word carries the hash, so the real design cannot
hash itself). A comment or docstring edit leaves it unchanged; any change to the logic, the
config or the protocol version changes it.
"""

import functools
import hashlib
import re
from dataclasses import dataclass

from amaranth.back import rtlil

from .board_top import BoardTop
from .boards import BOARDS, DEFAULT_BOARD
from .config import check_config

__all__ = ["DEFAULT_CLOCK_HZ", "DEFAULT_BAUD", "DesignDigest", "design_digest", "design_hash"]

#: A ``sync`` clock of the board design the ECP5 PLL makes from the 25 MHz oscillator (x 12/5)
#: and 3 Mbaud divides exactly (20 cycles/bit): the clock the design hash elaborates at, a
#: sweep's build constraint unless it names one, and the core clock of the SDRAM model
#: (:mod:`sparsemac.sw.memory`). A board's committed bitstream runs at its own clock,
#: :attr:`sparsemac.hw.boards.Board.clock_hz`.
DEFAULT_CLOCK_HZ = 60_000_000
#: The UART rate of the board link: the FT231X on the ULX3S runs up to 3 Mbaud.
DEFAULT_BAUD = 3_000_000

#: Name of the top module in the hashed RTLIL (submodules are ``sparsemac_board.link`` ...).
HASHED_TOP = "sparsemac_board"

_SOURCE_LOCATION = re.compile(r"^\s*attribute \\src .*\n", re.MULTILINE)
_MODULE = re.compile(r"^module \\(\S+)\n.*?^end\n", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class DesignDigest:
    """The hash of a board design and of each of its RTLIL modules."""
    #: The 64-bit design hash (what the identification word reports).
    value: int
    #: RTLIL module name (``sparsemac_board.link.receiver`` ...) -> 16 hex digits of its hash.
    modules: dict

    @property
    def hex(self):
        """:attr:`value` as 16 hex digits, as manifests and messages spell it."""
        return f"{self.value:016x}"

    def changed_modules(self, old_modules):
        """The modules that differ from ``old_modules`` (a :attr:`modules` dict of another
        digest): changed, added (``+name``) or removed (``-name``), sorted by name."""
        names = sorted(set(self.modules) | set(old_modules))
        return [("+" if name not in old_modules else "-" if name not in self.modules else "")
                + name for name in names if self.modules.get(name) != old_modules.get(name)]


def _digest(text):
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@functools.cache
def design_digest(config):
    """The :class:`DesignDigest` of the board design of ``config``.

    The design is :class:`~sparsemac.hw.board_top.BoardTop` at :data:`DEFAULT_CLOCK_HZ` and
    :data:`DEFAULT_BAUD` with design hash 0, elaborated for the default board's platform (so
    what is built only for its FPGA, such as a registered array's DSP blocks, is hashed too) and
    converted to RTLIL without its ``src`` attributes. Computed once per config and process
    (elaborating the default config takes seconds).

    Raises
    ------
    TypeError
        If ``config`` is not an :class:`~sparsemac.hw.config.ArrayConfig`.
    """
    check_config(config)
    top = BoardTop(config, clock_hz=DEFAULT_CLOCK_HZ, baud=DEFAULT_BAUD, design_hash=0)
    platform = BOARDS[DEFAULT_BOARD].make_platform()
    text = _SOURCE_LOCATION.sub("", rtlil.convert(top, name=HASHED_TOP, platform=platform))
    modules = {match.group(1): _digest(match.group(0)) for match in _MODULE.finditer(text)}
    return DesignDigest(value=int(_digest(text), 16), modules=modules)


def design_hash(config):
    """The 64-bit hash naming the board design of ``config`` (:func:`design_digest`).

    Tool versions are left out on purpose: a bitstream built by another nextpnr is the same
    design.
    """
    return design_digest(config).value
