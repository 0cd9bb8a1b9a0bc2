"""The checker: every output beat against the model, bit for bit, and the cycle count.

It needs no simulator, so it is unit-tested on its own (``tests/test_regress.py``) with a
deliberately wrong expectation. Beats are integers, the raw payload bits; a mismatch is
reported field by field, decoded with the payload's Amaranth layout from ``hw/formats.py``.
"""

import itertools
import re
from dataclasses import dataclass

from amaranth.lib import data

__all__ = ["Expected", "Mismatch", "ScoreboardError", "Scoreboard"]


@dataclass(frozen=True)
class Expected:
    """One expected output beat."""
    #: The payload bits.
    value: int
    #: What the beat is, for reports: e.g. ``"block 1 (tokens 4-7), row 5"``.
    where: str
    #: Bits that must match; None means all of them. Lets a model leave don't-care fields (e.g. the
    #: column of an unused lane) unchecked.
    mask: int | None = None


@dataclass(frozen=True)
class Mismatch:
    """A beat that differs from its expectation (or is missing or extra)."""
    #: Position of the beat in the stream, from 0.
    index: int
    #: What the beat is, as its :class:`Expected` says, or ``"extra beat"``.
    where: str
    #: ``(field, expected, actual)`` for each differing field; None for a missing side.
    fields: tuple[tuple[str, int | None, int | None], ...]

    def describe(self, stream, lane_name="lane"):
        shown = ", ".join(f"{_label(path, lane_name)}: expected {expected}, got {actual}"
                          for path, expected, actual in self.fields)
        return f"{stream} beat {self.index} ({self.where}): {shown}"


def _label(path, lane_name):
    """``"[2]"`` (an element of an array payload) as ``"token lane 2"``; fields by path."""
    element = re.fullmatch(r"\[(\d+)\]", path)
    if element:
        return f"{lane_name} {element[1]}"
    return path.lstrip(".") or "payload"


class ScoreboardError(AssertionError):
    """The DUT's output differs from the model; the message names the first bad beat."""


def _leaves(value, path=""):
    """``(path, int)`` for every scalar field of a layout :class:`~amaranth.lib.data.Const`."""
    if not isinstance(value, data.Const):
        yield path, value
        return
    layout = value.shape()
    if isinstance(layout, data.ArrayLayout):
        for index in range(layout.length):
            yield from _leaves(value[index], f"{path}[{index}]")
    else:
        for name, _ in layout:
            yield from _leaves(value[name], f"{path}.{name}")


def _decode(layout, bits):
    if isinstance(layout, data.Layout):
        return layout.from_bits(bits)
    return bits


class Scoreboard:
    """Compares the beats of one output stream with the model's, in order.

    Parameters
    ----------
    stream : str
        The stream's name, for reports.
    layout : amaranth Layout or Shape
        The payload's layout (``CoreFormats(config).sums`` etc.), used to decode mismatches.
    expected : list of Expected
    lane_name : str
        What the top-level index of an array payload is called in reports (``"token lane"``
        for sums, ``"lane"`` otherwise).

    Attributes
    ----------
    mismatches : list of Mismatch
        Every difference found so far, in stream order.
    received : int
    """

    def __init__(self, stream, layout, expected, lane_name="lane"):
        self.stream = stream
        self.layout = layout
        self.expected = list(expected)
        self.lane_name = lane_name
        self.mismatches = []
        self.received = 0
        self.cycle_errors = []

    def check(self, actual):
        """Checks the next beat, ``actual`` (its payload bits as an unsigned integer)."""
        index = self.received
        self.received += 1
        if index >= len(self.expected):
            self.mismatches.append(Mismatch(index, "extra beat", (("", None, actual),)))
            return
        expected = self.expected[index]
        mask = expected.mask
        if mask is None:
            if actual == expected.value:
                return
        elif (actual ^ expected.value) & mask == 0:
            return
        want = _leaves(_decode(self.layout, expected.value))
        got = _leaves(_decode(self.layout, actual))
        care = (_leaves(_decode(self.layout, mask)) if mask is not None
                else itertools.repeat((None, True)))
        fields = tuple((path, e, a) for (path, e), (_, a), (_, c) in zip(want, got, care)
                       if c and e != a)
        self.mismatches.append(Mismatch(index, expected.where, fields))

    def check_cycles(self, actual, expected, exact):
        """Checks a reported cycle count: equal to the model's with ideal streams (``exact``),
        at least the model's when streams stall."""
        if (actual != expected) if exact else (actual < expected):
            relation = "==" if exact else ">="
            self.cycle_errors.append(f"cycle count {actual}, cycle model says {relation} "
                                     f"{expected} ({actual - expected:+d})")

    def finish(self):
        """Raises :class:`ScoreboardError` unless every expected beat came, all matching.

        The message shows the first mismatching beat in full, then how many more there are.
        """
        problems = list(self.cycle_errors)
        if self.mismatches:
            first = self.mismatches[0].describe(self.stream, self.lane_name)
            more = len(self.mismatches) - 1
            problems.insert(0, f"first mismatch: {first}"
                            + (f" (and {more} more mismatching beats)" if more else ""))
        if self.received < len(self.expected):
            missing = self.expected[self.received]
            problems.append(f"{self.stream}: got {self.received} of {len(self.expected)} "
                            f"beats; first missing is beat {self.received} ({missing.where})")
        if problems:
            raise ScoreboardError("; ".join(problems))
