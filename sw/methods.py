"""The pruning-method grammar: what a user may write wherever a pruning method is asked for.

A method is a *kind*, how the weights are scored, and a *pattern*, which weights may go:

- ``magnitude`` and ``random``: unstructured, the smallest ``|w|`` or uniformly at random;
- ``N:M`` such as ``2:4``: magnitude within every group of M consecutive inputs, keeping N;
- ``wanda`` and ``sparsegpt``: calibrated on text (:mod:`sparsemac.sw.calibration`), optionally
  followed by ``-N:M`` or ``-k-aligned`` (every row keeps a multiple of the array's K).

:func:`parse_method` is the one parser: the command line (``--method``), sweep specs and the
library's functions all take its :class:`PruningMethod`, and :data:`METHOD_HELP` and its error
messages are written from the same names. This module imports nothing heavy, so ``--help`` and
a spec's check need no torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..hw.errors import InputError

__all__ = ["CALIBRATED_KINDS", "K_ALIGNED", "KINDS", "METHOD_HELP", "NM_TOLERANCE",
           "PruningMethod", "parse_method", "parse_pattern", "pattern_nm"]

#: How weights are scored, in the order help and errors list them.
KINDS = ("magnitude", "random", "wanda", "sparsegpt")
#: The kinds that score on calibration text, and so take a pattern after a ``-``.
CALIBRATED_KINDS = ("wanda", "sparsegpt")
#: The pattern name of K-aligned pruning: every row keeps a multiple of the array's K weights.
K_ALIGNED = "k-aligned"
#: Two sparsities closer than this are the same N:M ratio (``1 - n/m`` is inexact in binary).
NM_TOLERANCE = 1e-9

_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")
# The unstructured kinds that a user names by their word alone.
_PLAIN_KINDS = tuple(kind for kind in KINDS if kind not in CALIBRATED_KINDS)
# The bare "n:m" of the API, whose pattern comes from separate n and m arguments.
_BARE_NM = "n:m"
_EXAMPLE = f"{CALIBRATED_KINDS[-1]}-2:4"

#: How a method is written, for the help of every command that takes one.
METHOD_HELP = (f"{', '.join(_PLAIN_KINDS)}, N:M such as 2:4, or calibrated on text: "
               f"{', '.join(CALIBRATED_KINDS)}, each optionally with -N:M or -{K_ALIGNED} "
               f"(rows keep multiples of K), e.g. {_EXAMPLE}")


def _valid_forms(bare_nm):
    plain = [repr(kind) for kind in _PLAIN_KINDS] + ([repr(_BARE_NM)] if bare_nm else [])
    return (f"{', '.join(plain)} or an 'N:M' string such as '2:4'; or a calibrated one: "
            f"{', '.join(CALIBRATED_KINDS)}, each optionally with -N:M or -{K_ALIGNED} "
            f"(e.g. {_EXAMPLE})")


def _check_nm(n, m):
    for name, value in (("n", n), ("m", m)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an integer, not {value!r}")
    if not 1 <= n <= m:
        raise InputError(f"N:M pruning needs 1 <= n <= m, got n={n}, m={m}")


def pattern_nm(pattern: str | None) -> tuple[int, int] | None:
    """``(n, m)`` of an ``"N:M"`` pattern (spaces around the numbers allowed), else None."""
    match = _NM.match(pattern) if isinstance(pattern, str) else None
    return (int(match[1]), int(match[2])) if match else None


def parse_pattern(pattern: str | None) -> str | None:
    """The canonical text of a pattern: None (unstructured), ``"N:M"`` or ``"k-aligned"``.

    Raises
    ------
    ValueError
        If `pattern` is none of these, or an N:M pattern has not ``1 <= N <= M``.
    """
    if pattern is None or pattern == K_ALIGNED:
        return pattern
    nm = pattern_nm(pattern)
    if nm is None:
        raise InputError(f"unknown pattern {pattern!r}: use None (unstructured), an 'N:M' "
                         f"string such as '2:4', or {K_ALIGNED!r}")
    if not 1 <= nm[0] <= nm[1]:
        raise InputError(f"pattern {pattern!r} needs 1 <= N <= M")
    return f"{nm[0]}:{nm[1]}"


@dataclass(frozen=True)
class PruningMethod:
    """A pruning method, parsed and valid; it compares by its kind and pattern.

    Raises
    ------
    ValueError
        If the kind is unknown, the pattern invalid (:func:`parse_pattern`), or the kind cannot
        take the pattern: ``random`` takes none, ``magnitude`` no ``k-aligned``.
    """

    #: How weights are scored: one of :data:`KINDS`.
    kind: str
    #: Which weights may go: None (anywhere), a canonical ``"N:M"`` such as ``"2:4"`` (N of
    #: every M consecutive inputs stay) or :data:`K_ALIGNED`; other spellings are normalised.
    pattern: str | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise InputError(f"unknown pruning method kind {self.kind!r}; valid: "
                             f"{', '.join(map(repr, KINDS))}")
        object.__setattr__(self, "pattern", parse_pattern(self.pattern))
        if self.pattern == K_ALIGNED and not self.calibrated:
            raise InputError(f"the {K_ALIGNED!r} pattern needs a calibrated method "
                             f"({' or '.join(CALIBRATED_KINDS)}), not {self.kind!r}")
        if self.pattern is not None and self.kind == "random":
            raise InputError(f"random pruning takes no pattern, not {self.pattern!r}")

    @property
    def calibrated(self) -> bool:
        """Whether the method scores on calibration text (and so needs some)."""
        return self.kind in CALIBRATED_KINDS

    @property
    def nm(self) -> tuple[int, int] | None:
        """``(n, m)`` of an N:M pattern, else None."""
        return pattern_nm(self.pattern)

    @property
    def fixes_sparsity(self) -> bool:
        """Whether the pattern is N:M, whose ``1 - N/M`` is then the only sparsity."""
        return self.nm is not None

    @property
    def fixed_sparsity(self) -> float | None:
        """``1 - N/M`` of an N:M pattern, else None (the sparsity is free)."""
        return None if self.nm is None else 1 - self.nm[0] / self.nm[1]

    @property
    def text(self) -> str:
        """The canonical way to write the method, which :func:`parse_method` reads back."""
        if self.calibrated:
            return self.kind + ("" if self.pattern is None else f"-{self.pattern}")
        return self.pattern or self.kind

    def __str__(self):
        return self.text


def parse_method(method: str | PruningMethod, *, nm: tuple[int, int] | None = None
                 ) -> PruningMethod:
    """The :class:`PruningMethod` that `method` names; a PruningMethod is returned as it is.

    Parameters
    ----------
    method : str or PruningMethod
        ``magnitude``, ``random``, ``N:M`` (``2:4``), ``wanda`` or ``sparsegpt``, the last two
        optionally followed by ``-N:M`` or ``-k-aligned``. Spaces around it are ignored.
    nm : tuple of int, optional
        The pattern of the API's bare ``"n:m"``. Without it ``"n:m"`` is refused: what a user
        writes must spell its pattern.

    Raises
    ------
    TypeError
        If `method` is not a string, or a number of `nm` not an integer.
    ValueError
        If the method is unknown (the message lists every valid form), or its pattern invalid.
    """
    if isinstance(method, PruningMethod):
        return method
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, not {method!r}")
    text = method.strip()
    if text == _BARE_NM:
        if nm is None:
            raise InputError(f"pruning method {_BARE_NM!r} does not say which pattern: write "
                             "it as N:M, e.g. '2:4'")
        _check_nm(*nm)
        return PruningMethod("magnitude", f"{nm[0]}:{nm[1]}")
    parsed = pattern_nm(text)
    if parsed is not None:
        _check_nm(*parsed)
        return PruningMethod("magnitude", text)
    if text in _PLAIN_KINDS:
        return PruningMethod(text)
    kind, dash, pattern = text.partition("-")
    if kind not in CALIBRATED_KINDS:
        raise InputError(f"unknown pruning method {method!r}; valid methods are "
                         f"{_valid_forms(nm is not None)}")
    if not dash:
        return PruningMethod(kind)
    try:
        return PruningMethod(kind, pattern)
    except ValueError:
        raise InputError(f"method {method!r}: after {kind}- comes an N:M pattern with "
                         f"1 <= N <= M (e.g. {kind}-2:4) or {K_ALIGNED!r}, not {pattern!r}"
                         ) from None
