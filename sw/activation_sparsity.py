"""How the feed-forward intermediate of a BERT is made sparse: the one grammar of ``--activation``.

Each encoder layer computes ``output.dense(act(intermediate.dense(h)))`` with ``act`` = GELU.
GELU leaves most of its inputs (73-81 % on MiniLM) small and negative, so after int8 quantisation
only a few of the activations entering ``output.dense`` are exactly zero. An
:class:`ActivationSpec` says what replaces GELU there, so that many of them are:

======================  =====================================================================
``none``                GELU as trained (the default)
``relu``                ReLU: every input <= 0 becomes 0
``relu:T``              ReLU with threshold ``T >= 0``: every input <= T becomes 0, the others
                        pass unchanged
``relu@S``              ReLU whose threshold is calibrated per layer on calibration text, so
                        that a fraction ``S`` in (0, 1) of the dense model's inputs fall at or
                        below it (never below 0: at least plain ReLU's zeros)
``topk:F``              k-winner-take-all after GELU: per token, the ``k = ceil(F * width)``
                        largest activations are kept (exactly k positions, ties broken
                        arbitrarily), the others become 0; ``F`` in (0, 1)
======================  =====================================================================

This module imports nothing heavy: ``--help`` and option parsing read it. The torch module
that applies a spec is :mod:`sparsemac.sw.ffn_activation`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..hw.errors import InputError

__all__ = ["KINDS", "ACTIVATION_HELP", "ActivationSpecError", "ActivationMismatchError",
           "ActivationSpec", "NONE", "parse_activation", "agreed_activation"]

#: The kinds of activation, in the order the help lists them.
KINDS = ("none", "relu", "topk")

#: What each spelling means, for the help of every command that takes ``--activation``.
ACTIVATION_HELP = ("feed-forward activation entering each output.dense: none (GELU, the "
                   "default), relu, relu:T (inputs <= T >= 0 become 0), relu@S (threshold "
                   "calibrated per layer on calibration text so that a fraction S of inputs "
                   "become 0), topk:F (per token keep the ceil(F x width) largest of GELU's "
                   "outputs, 0 < F < 1)")

_NUMBER = r"([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|[-+]?\.\d+(?:[eE][-+]?\d+)?)"
_FORMS = {
    "relu": re.compile(r"relu"),
    "relu:": re.compile(rf"relu:{_NUMBER}"),
    "relu@": re.compile(rf"relu@{_NUMBER}"),
    "topk:": re.compile(rf"topk:{_NUMBER}"),
}
# A fraction times a width such as 0.1 x 1530 lands a rounding error above a whole number:
# products this close to one count as that number.
_WHOLE = 1e-9


class ActivationSpecError(InputError):
    """An ``--activation`` value that is not in the grammar, or out of range (exit status 2)."""


class ActivationMismatchError(ActivationSpecError):
    """A model or checkpoint carries one activation and another was asked for (exit status 2)."""


@dataclass(frozen=True)
class ActivationSpec:
    """A parsed ``--activation`` value; equal specs compare equal, whatever their spelling.

    Build one with :func:`parse_activation`; ``str(spec)`` is its canonical text, which
    checkpoints and reports record.
    """

    #: One of :data:`KINDS`.
    kind: str = "none"
    #: ``relu``: inputs at or below it become 0 (0.0 for plain ReLU; None for ``relu@S``, whose
    #: per-layer thresholds are calibrated).
    threshold: float | None = None
    #: ``relu@S``: the fraction of calibration inputs at or below each layer's threshold.
    target: float | None = None
    #: ``topk``: the fraction of each token's activations kept.
    keep: float | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ActivationSpecError(f"unknown activation kind {self.kind!r}; valid: "
                                      f"{', '.join(KINDS)}")
        given = {name for name in ("threshold", "target", "keep")
                 if getattr(self, name) is not None}
        allowed = {"none": [set()], "relu": [{"threshold"}, {"target"}],
                   "topk": [{"keep"}]}[self.kind]
        if given not in allowed:
            raise ActivationSpecError(f"{self.kind} takes {' or '.join(map(_fields, allowed))}, "
                                      f"not {_fields(given)}")
        if self.threshold is not None and not (math.isfinite(self.threshold)
                                               and self.threshold >= 0):
            raise ActivationSpecError(f"a ReLU threshold must be a finite number >= 0, not "
                                      f"{self.threshold!r}")
        for name in ("target", "keep"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value < 1.0:
                raise ActivationSpecError(f"{_MEANING[name]} must be a fraction strictly "
                                          f"between 0 and 1, not {value!r}")

    def __str__(self):
        # repr: the shortest text that parses back to the same float.
        if self.kind == "relu":
            if self.target is not None:
                return f"relu@{self.target!r}"
            return "relu" if self.threshold == 0.0 else f"relu:{self.threshold!r}"
        if self.kind == "topk":
            return f"topk:{self.keep!r}"
        return "none"

    @property
    def sparse(self) -> bool:
        """Whether GELU is replaced at all."""
        return self.kind != "none"

    @property
    def calibrated(self) -> bool:
        """Whether the thresholds are calibrated on text (``relu@S``)."""
        return self.target is not None

    def kept(self, width: int) -> int:
        """``topk``: activations kept per token of `width` features, ``ceil(keep * width)``
        (at least 1, at most `width`).

        Raises
        ------
        ActivationSpecError
            If the spec is not ``topk`` or `width` is below 1.
        """
        if self.kind != "topk":
            raise ActivationSpecError(f"{self} keeps no fixed number of activations")
        if width < 1:
            raise ActivationSpecError(f"a token has at least one activation, not {width!r}")
        return min(width, max(1, math.ceil(self.keep * width - _WHOLE)))


_MEANING = {"target": "relu@S's target sparsity S", "keep": "topk:F's kept fraction F"}


def _fields(names):
    return " and ".join(sorted(names)) or "no value"


#: The default: GELU as trained.
NONE = ActivationSpec()


def parse_activation(text: str | ActivationSpec) -> ActivationSpec:
    """Parse an ``--activation`` value (see the module's table).

    Parameters
    ----------
    text : str or ActivationSpec
        ``none``, ``relu``, ``relu:T``, ``relu@S`` or ``topk:F``, case and surrounding blanks
        ignored. A spec is returned as it is.

    Returns
    -------
    ActivationSpec

    Raises
    ------
    ActivationSpecError
        If `text` is none of the forms, or a number is out of its range; the message lists
        the forms.
    """
    if isinstance(text, ActivationSpec):
        return text
    if not isinstance(text, str):
        raise ActivationSpecError(f"an activation spec is text, not {type(text).__name__}")
    spelt = text.strip().lower()
    if spelt == "none":
        return NONE
    for form, pattern in _FORMS.items():
        match = pattern.fullmatch(spelt)
        if match is None:
            continue
        value = float(match[1]) if match.groups() else 0.0
        if form in ("relu", "relu:"):
            return ActivationSpec("relu", threshold=value)
        if form == "relu@":
            return ActivationSpec("relu", target=value)
        return ActivationSpec("topk", keep=value)
    raise ActivationSpecError(f"activation {text!r} is not one of: none, relu, relu:T (T >= 0), "
                              "relu@S (0 < S < 1), topk:F (0 < F < 1)")


def agreed_activation(carried: str | ActivationSpec, asked: str | ActivationSpec | None,
                      where: str) -> ActivationSpec:
    """The activation to run a model with that carries `carried`, when `asked` is requested.

    Parameters
    ----------
    carried : str or ActivationSpec
        What the model or checkpoint was made with.
    asked : str, ActivationSpec or None
        What the caller asks for; None takes `carried`.
    where : str
        Names the model or checkpoint in the message.

    Returns
    -------
    ActivationSpec

    Raises
    ------
    ActivationMismatchError
        If both are given and differ: a model trained or saved with one activation is not
        silently run with another.
    ActivationSpecError
        If either does not parse.
    """
    carried = parse_activation(carried)
    if asked is None:
        return carried
    asked = parse_activation(asked)
    if asked != carried:
        raise ActivationMismatchError(f"{where} carries activation {carried}, but {asked} was "
                                      f"asked for: leave the option out to use {carried}, or "
                                      "start from a model without it")
    return carried
