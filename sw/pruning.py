"""Weight pruning for the sparse MAC array: one-shot masks, whole-model pruning and the
gradual (cubic schedule) pruner.

A mask is a ``torch.bool`` tensor of the weight's shape with ``True`` where the weight is kept.
Every method is deterministic: magnitude ties are broken by flat index (the earlier weight is
pruned first) and random pruning draws from a ``torch.Generator`` seeded by the caller.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from .methods import NM_TOLERANCE, PruningMethod, parse_method
from ..hw.errors import InputError

__all__ = [
    "DEFAULT_BERT_PATTERNS",
    "GradualPruner",
    "LayerPruneReport",
    "LayerWeights",
    "choose_masks",
    "conv1d_class",
    "cubic_sparsity",
    "global_magnitude_masks",
    "keep_all_but_lowest",
    "layer_prune_report",
    "matching_linears",
    "prune_mask",
    "prune_model",
    "require_linears",
]

#: Regular expressions (``re.search``) matching the qualified names of the six linears of each
#: BERT encoder layer, with or without a prefix such as ``bert.``.
DEFAULT_BERT_PATTERNS = (
    r"(^|\.)encoder\.layer\.\d+\.attention\.self\.(query|key|value)$",
    r"(^|\.)encoder\.layer\.\d+\.attention\.output\.dense$",
    r"(^|\.)encoder\.layer\.\d+\.intermediate\.dense$",
    r"(^|\.)encoder\.layer\.\d+\.output\.dense$",
)

# Unstructured magnitude pruning, the one method of global scope and gradual pruning.
_MAGNITUDE = PruningMethod("magnitude")
# ``.0.`` or a final ``.0`` of a qualified name: the index of a layer in a stack of layers.
_LAYER_INDEX = re.compile(r"\.\d+(?=\.|$)")
# A qualified name up to its first layer index (the head), e.g. ``transformer.layer.`` of
# ``transformer.layer.3.ffn.lin1``.
_REPEATED_PREFIX = re.compile(r"^(.*?\.|)\d+\.")


def _check_weight(weight, what="weight"):
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, not {type(weight).__name__}")
    if weight.dim() != 2:
        raise InputError(f"{what} must be 2-D (out_features, in_features), "
                         f"got shape {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise TypeError(f"{what} must be a floating-point tensor, got {weight.dtype}")
    if not bool(torch.isfinite(weight).all()):
        # NaN has no place in a magnitude order, so no mask could be exact.
        raise InputError(f"{what} contains NaN or infinite values")


def _check_sparsity(sparsity):
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise TypeError(f"sparsity must be a number in [0, 1], not {sparsity!r}")
    if not 0.0 <= sparsity <= 1.0:
        raise InputError(f"sparsity must be in [0, 1], not {sparsity!r}")


def _prune_count(sparsity, numel):
    # Python's round() is half-to-even: the documented "round(sparsity * numel)".
    return int(round(sparsity * numel))


def keep_all_but_lowest(scores, count):
    """Mask of a flat score vector pruning its ``count`` lowest scores, ties by position.

    A selection finds the threshold in linear time instead of a full sort: BERT-base's 85 M
    weights then take well under a second instead of half a minute.
    """
    values = scores.detach().cpu().numpy()
    keep = np.ones(values.size, dtype=bool)
    if count >= values.size:
        keep[:] = False
    elif count > 0:
        threshold = np.partition(values, count - 1)[count - 1]
        below = values < threshold
        # Of scores equal to the threshold, the lower positions are pruned first.
        ties = np.flatnonzero(values == threshold)[:count - int(below.sum())]
        keep[below] = False
        keep[ties] = False
    return torch.from_numpy(keep).to(scores.device)


def prune_mask(weight: torch.Tensor, sparsity: float | None,
               method: str | PruningMethod = "magnitude", *, n: int = 2, m: int = 4,
               seed: int | None = None) -> torch.Tensor:
    """The keep-mask of one weight matrix.

    Parameters
    ----------
    weight : torch.Tensor
        Floating-point ``(out_features, in_features)`` matrix. It is not modified.
    sparsity : float or None
        Fraction of weights to remove, in [0, 1]. ``"magnitude"`` and ``"random"`` remove exactly
        ``round(sparsity * weight.numel())`` weights (Python rounding, half to even). For N:M
        pruning the structure fixes the sparsity, so this must be None or equal ``1 - n/m``;
        any other value is a mistake and raises rather than being silently ignored.
    method : str or PruningMethod
        As :func:`~sparsemac.sw.methods.parse_method` reads it, not calibrated.
        ``"magnitude"``: remove the smallest ``|w|``; of equal magnitudes the one with the lower
        flat (row-major) index is removed first. ``"random"``: remove uniformly at random,
        reproducibly from ``seed``. ``"n:m"``: in each group of ``m`` consecutive weights along
        the input (last) dimension keep the ``n`` largest ``|w|`` (ties keep the lower index).
        A string ``"N:M"`` such as ``"2:4"`` means ``"n:m"`` with those numbers, which then take
        precedence over the ``n`` and ``m`` arguments.
    n, m : int
        The N:M pattern, used by ``"n:m"`` only.
    seed : int or None
        Seed of the ``torch.Generator`` for ``"random"``; required there, ignored elsewhere.

    Returns
    -------
    torch.Tensor
        ``torch.bool`` tensor of ``weight``'s shape, True where the weight is kept.

    Raises
    ------
    TypeError
        If ``weight`` is not a floating-point tensor or ``sparsity`` is not a number.
    ValueError
        If ``weight`` is not 2-D or not finite, ``sparsity`` is outside [0, 1] (or missing, or
        inconsistent with N:M), the method is unknown or calibrated, ``"random"`` has no seed,
        or ``in_features`` is not a multiple of ``m``.
    """
    _check_weight(weight)
    method = parse_method(method, nm=(n, m))
    if method.calibrated:
        raise InputError(f"{method} prunes on calibration text: use "
                         "sparsemac.sw.calibration.prune_calibrated")
    if method.nm is not None:
        return _nm_mask(weight, sparsity, *method.nm)
    if sparsity is None:
        raise InputError(f"method {method.text!r} needs a sparsity in [0, 1], got None")
    _check_sparsity(sparsity)
    count = _prune_count(sparsity, weight.numel())
    if method.kind == "magnitude":
        flat = keep_all_but_lowest(weight.detach().abs().flatten(), count)
    else:
        if seed is None:
            raise InputError("random pruning needs a seed so that the mask is reproducible")
        generator = torch.Generator().manual_seed(seed)
        flat = torch.ones(weight.numel(), dtype=torch.bool)
        flat[torch.randperm(weight.numel(), generator=generator)[:count]] = False
        flat = flat.to(weight.device)
    return flat.view(weight.shape)


def _nm_mask(weight, sparsity, n, m):
    if sparsity is not None:
        _check_sparsity(sparsity)
        if abs(sparsity - (1 - n / m)) > NM_TOLERANCE:
            raise InputError(f"{n}:{m} pruning has sparsity {1 - n / m!r}; pass that or None, "
                             f"not {sparsity!r}")
    rows, cols = weight.shape
    if cols % m:
        raise InputError(f"{n}:{m} pruning needs in_features to be a multiple of {m}, "
                         f"got {cols}")
    groups = weight.detach().abs().reshape(rows, cols // m, m)
    # Stable descending sort keeps the lower index of equal magnitudes.
    keep = torch.sort(groups, dim=-1, descending=True, stable=True).indices[..., :n]
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(-1, keep, True)
    return mask.view(rows, cols)


def _global_masks(weights, sparsity, scores=None):
    """Masks pruning the globally lowest scores (default ``|w|``) of a list of matrices."""
    if scores is None:
        scores = [w.detach().abs() for w in weights]
    flat = torch.cat([s.flatten() for s in scores]) if scores else torch.zeros(0)
    keep = keep_all_but_lowest(flat, _prune_count(sparsity, flat.numel()))
    masks, start = [], 0
    for weight in weights:
        masks.append(keep[start:start + weight.numel()].view(weight.shape))
        start += weight.numel()
    return masks


def global_magnitude_masks(weights: dict[str, torch.Tensor] | Sequence[torch.Tensor],
                           sparsity: float) -> dict[str, torch.Tensor] | list[torch.Tensor]:
    """Keep-masks from one magnitude threshold over several matrices.

    Exactly ``round(sparsity * total)`` weights are removed, where ``total`` counts the weights
    of all matrices. Of equal magnitudes, the weight that comes first (in the order of the
    matrices, then by flat index) is removed first.

    Parameters
    ----------
    weights : dict of str to torch.Tensor, or sequence of torch.Tensor
        Floating-point 2-D matrices, all on one device.
    sparsity : float
        Fraction of all weights to remove, in [0, 1].

    Returns
    -------
    dict or list of torch.Tensor
        ``torch.bool`` masks in the same structure: a dict with the same keys for a dict, else a
        list in the same order.

    Raises
    ------
    TypeError, ValueError
        As :func:`prune_mask` for each matrix and for ``sparsity``.
    """
    _check_sparsity(sparsity)
    if isinstance(weights, dict):
        names, tensors = list(weights), list(weights.values())
    else:
        names, tensors = None, list(weights)
    for index, weight in enumerate(tensors):
        _check_weight(weight, f"weights[{names[index] if names else index!r}]")
    masks = _global_masks(tensors, sparsity)
    return dict(zip(names, masks)) if names is not None else masks


def choose_masks(weights: Sequence[torch.Tensor], sparsity: float | None,
                 method: str | PruningMethod = "magnitude", *, scope: str = "local",
                 seed: int | None = None, n: int = 2, m: int = 4
                 ) -> tuple[list[torch.Tensor], float | None]:
    """The keep-masks of several weight matrices: the one place a pruning decision is made.

    :func:`prune_model`, model offload, :meth:`OffloadedLinear.from_linear
    <sparsemac.sw.offloaded_linear.OffloadedLinear.from_linear>` and the simulate pipeline all
    call this.

    Parameters
    ----------
    weights : sequence of torch.Tensor
        Floating-point 2-D matrices; not modified.
    sparsity, method, n, m
        As in :func:`prune_mask`.
    scope : {"local", "global"}
        ``"local"``: every matrix reaches the sparsity on its own. ``"global"``: one magnitude
        threshold over all of them (magnitude method only).
    seed : int or None
        For random pruning: matrix ``i`` gets ``seed + i``, so that matrices of equal shape get
        different masks.

    Returns
    -------
    masks : list of torch.Tensor
        ``torch.bool``, one per matrix, True where the weight is kept.
    target : float or None
        The sparsity aimed at: ``1 - n/m`` for N:M pruning, else ``sparsity``.

    Raises
    ------
    TypeError, ValueError
        As :func:`prune_mask`; or if the scope is unknown, or global with another method.
    """
    method = parse_method(method, nm=(n, m))
    _check_scope(scope, method)
    weights = list(weights)
    if scope == "global":
        return global_magnitude_masks(weights, sparsity), sparsity
    masks = [prune_mask(weight, sparsity, method, seed=None if seed is None else seed + index)
             for index, weight in enumerate(weights)]
    return masks, (method.fixed_sparsity if method.fixes_sparsity else sparsity)


@dataclass
class LayerWeights:
    """The weights of one linear layer, as pruned: what every per-layer report starts with."""

    #: Qualified module name, e.g. ``encoder.layer.0.attention.self.query``.
    name: str
    #: ``(out_features, in_features)``.
    shape: tuple[int, int]
    #: Nonzero weights.
    nnz: int

    @property
    def sparsity(self) -> float:
        """Fraction of zero weights; weights that were already zero count too."""
        numel = self.shape[0] * self.shape[1]
        return 1.0 - self.nnz / numel if numel else 0.0


@dataclass
class LayerPruneReport(LayerWeights):
    """What pruning did to one linear layer (:class:`LayerWeights`, and what was asked)."""

    #: The sparsity asked for (``1 - n/m`` for N:M; the global target for global scope).
    sparsity_target: float


def matching_linears(model: nn.Module, patterns: Iterable[str] = DEFAULT_BERT_PATTERNS,
                     kinds: tuple[type, ...] = (nn.Linear,)) -> list[tuple[str, nn.Module]]:
    """The linear modules whose qualified name matches a pattern, in module order.

    Parameters
    ----------
    model : nn.Module
    patterns : iterable of str
        Regular expressions tried with ``re.search`` against each qualified module name.
    kinds : tuple of type
        The module classes that count as linears (:func:`conv1d_class` adds GPT-2's).

    Returns
    -------
    list of (str, nn.Module)
        Possibly empty.

    Raises
    ------
    re.error
        If a pattern is not a valid regular expression.
    """
    compiled = [re.compile(p) for p in patterns]
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, kinds) and any(p.search(name) for p in compiled)]


def require_linears(model: nn.Module, patterns: Iterable[str] = DEFAULT_BERT_PATTERNS,
                    kinds: tuple[type, ...] = (nn.Linear,)) -> list[tuple[str, nn.Module]]:
    """:func:`matching_linears`, refusing a model where nothing matches with what it has instead.

    Parameters
    ----------
    model, patterns, kinds
        As in :func:`matching_linears`.

    Returns
    -------
    list of (str, nn.Module)
        At least one.

    Raises
    ------
    ValueError
        If no module matches. The message gives the patterns, the model's layers of `kinds`
        (layer indices folded into ``<i>``), how to choose them with ``patterns=`` (with an
        example), and names any ``Conv1D`` layers that `kinds` leaves out as unsupported here.
    """
    patterns = tuple(patterns)  # read twice: to match and for the error message
    linears = matching_linears(model, patterns, kinds)
    if linears:
        return linears
    kind_names = " or ".join("nn.Linear" if kind is nn.Linear else kind.__name__
                             for kind in kinds)
    found = [name for name, module in model.named_modules() if isinstance(module, kinds)]
    chosen = ("the default patterns (DEFAULT_BERT_PATTERNS: the encoder linears of a BERT)"
              if patterns == DEFAULT_BERT_PATTERNS else f"the patterns {list(patterns)!r}")
    message = f"no {kind_names} of this {type(model).__name__} matches {chosen}"
    if found:
        message += (f". Its {kind_names} layers ({len(found)}): {_folded_names(found)}. "
                    "Choose the ones to use with patterns= (regular expressions searched in "
                    f"each name), e.g. patterns=[{_example_pattern(found)!r}]")
    else:
        message += f": it has no {kind_names} layer"
    conv1d = conv1d_class()
    skipped = [name for name, module in model.named_modules()
               if conv1d is not None and conv1d not in kinds and isinstance(module, conv1d)]
    if skipped:
        message += (f". Its {len(skipped)} Conv1D layers ({_folded_names(skipped)}) are not "
                    "supported here: transformers' Conv1D (GPT-2) stores its weight transposed, "
                    "(in_features, out_features), and this takes nn.Linear weights only")
    raise InputError(message)


def conv1d_class() -> type | None:
    """transformers' ``Conv1D``, the linear of GPT-2 whose weight is ``(in, out)``, or None.

    None when transformers has not been imported: no model can hold one then, and pruning does
    not import transformers (seconds) for a check that cannot succeed.
    """
    return getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)


def _folded_names(names, limit=8):
    """``a.<i>.b, c`` for names ``a.0.b, a.1.b, c``: layer indices folded, order kept."""
    folded = list(dict.fromkeys(_LAYER_INDEX.sub(".<i>", name) for name in names))
    shown = ", ".join(folded[:limit])
    return shown + (f" (+{len(folded) - limit} more)" if len(folded) > limit else "")


def _example_pattern(names):
    """A pattern for the repeated layers' linears (``^h\\.\\d+\\.``), or for the first name."""
    heads = [match.group(1) for match in map(_REPEATED_PREFIX.match, names) if match]
    if not heads:
        return "^" + re.escape(names[0]) + "$"
    # The most common head is the stack of layers; \d+ stands for every layer of it.
    head = max(dict.fromkeys(heads), key=heads.count)
    return "^" + re.escape(head) + r"\d+\."


def layer_prune_report(name, weight, target):
    """The :class:`LayerPruneReport` of ``weight`` as it stands, against ``target`` sparsity."""
    return LayerPruneReport(name=name, shape=tuple(weight.shape),
                            nnz=int(torch.count_nonzero(weight)), sparsity_target=float(target))


def _check_scope(scope, method):
    if scope not in ("local", "global"):
        raise InputError(f"scope must be 'local' or 'global', not {scope!r}")
    if scope == "global" and method != _MAGNITUDE:
        raise InputError(f"global scope needs the 'magnitude' method, not {method.text!r}")


def prune_model(model: nn.Module, sparsity: float | None,
                method: str | PruningMethod = "magnitude",
                scope: str = "local", patterns: Iterable[str] = DEFAULT_BERT_PATTERNS,
                seed: int | None = None, n: int = 2, m: int = 4) -> list[LayerPruneReport]:
    """Prune the matching linears of a model in place (``weight.data *= mask``).

    Parameters
    ----------
    model : nn.Module
    sparsity : float or None
        As in :func:`prune_mask`; with global scope, the fraction of all matched weights.
    method : str
        As in :func:`prune_mask`. Random pruning gives layer ``i`` the seed ``seed + i`` so that
        layers of equal shape get different masks.
    scope : {"local", "global"}
        ``"local"``: every layer reaches the sparsity on its own. ``"global"``: one magnitude
        threshold over all matched layers (magnitude method only).
    patterns : iterable of str
        Regular expressions selecting the linears by qualified name (see
        :func:`matching_linears`); biases are never pruned.
    seed : int or None
        For random pruning.
    n, m : int
        For N:M pruning.

    Returns
    -------
    list of LayerPruneReport
        One per pruned layer, in module order.

    Raises
    ------
    ValueError
        If no linear matches, the scope is unknown or global with another method than
        magnitude, or as :func:`prune_mask`.
    """
    linears = require_linears(model, patterns)
    masks, target = choose_masks([linear.weight for _, linear in linears], sparsity, method,
                                 scope=scope, seed=seed, n=n, m=m)
    reports = []
    with torch.no_grad():
        for (name, linear), mask in zip(linears, masks):
            linear.weight.mul_(mask)
            reports.append(layer_prune_report(name, linear.weight, target))
    return reports


def cubic_sparsity(step: int, initial_sparsity: float, final_sparsity: float, begin_step: int,
                   end_step: int, frequency: int = 1) -> float:
    """The gradual pruning schedule of Zhu & Gupta (2017), "To prune, or not to prune".

    ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))**3`` with ``t0 = begin_step``,
    ``n * dt = end_step - begin_step`` and ``dt = frequency``. The sparsity only changes at
    pruning steps ``t0 + k * dt``: between them it holds the value of the last one. Before
    ``begin_step`` it is ``s_i``; from ``end_step`` on it is ``s_f``.

    Parameters
    ----------
    step : int
        The training step t.
    initial_sparsity, final_sparsity : float
        ``s_i`` and ``s_f``, in [0, 1].
    begin_step, end_step : int
        First pruning step and the step at which ``s_f`` is reached; ``begin_step < end_step``.
    frequency : int
        ``dt``, steps between pruning steps, at least 1.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        If a sparsity is outside [0, 1], ``begin_step >= end_step`` or ``frequency < 1``.
    """
    _check_schedule(initial_sparsity, final_sparsity, begin_step, end_step, frequency)
    if step < begin_step:
        return float(initial_sparsity)
    if step >= end_step:
        return float(final_sparsity)
    last_pruning_step = begin_step + (step - begin_step) // frequency * frequency
    remaining = 1 - (last_pruning_step - begin_step) / (end_step - begin_step)
    # The same formula written from s_i, so that it is exactly s_i at begin_step and the float
    # rounding cannot make the schedule dip below s_i or step backwards.
    done = 1 - remaining * remaining * remaining
    return float(initial_sparsity + (final_sparsity - initial_sparsity) * done)


def _check_schedule(initial_sparsity, final_sparsity, begin_step, end_step, frequency):
    _check_sparsity(initial_sparsity)
    _check_sparsity(final_sparsity)
    if not begin_step < end_step:
        raise InputError(f"begin_step ({begin_step!r}) must be before end_step ({end_step!r})")
    if frequency < 1:
        raise InputError(f"frequency must be at least 1, not {frequency!r}")


class GradualPruner:
    """Gradual magnitude pruning on the cubic schedule of :func:`cubic_sparsity`.

    Call :meth:`step` once per training step (before the forward pass) and :meth:`apply_masks`
    after every ``optimizer.step()``, so that pruned weights stay zero while the rest train.
    Each new mask only ever removes weights that the previous mask kept (pruned weights rank
    below every kept one), so weights once pruned stay pruned while the sparsity grows.

    Parameters
    ----------
    model : nn.Module
    final_sparsity : float
    begin_step, end_step : int
    frequency : int
        As in :func:`cubic_sparsity`.
    initial_sparsity : float
        Sparsity at ``begin_step``.
    method : str
        Only ``"magnitude"``: random or N:M masks cannot grow gradually by a schedule.
    scope : {"local", "global"}
        Per-layer or one threshold over all matched layers, as :func:`prune_model`.
    patterns : iterable of str
        Which linears to prune, as :func:`prune_model`.

    Attributes
    ----------
    masks : dict of str to torch.Tensor
        The current keep-mask of each pruned layer by qualified name; empty before the first
        pruning step.
    sparsity : float or None
        The sparsity of the last pruning step, None before the first.

    Raises
    ------
    ValueError
        If the schedule is invalid, the method or scope unknown, or no linear matches.
    """

    def __init__(self, model: nn.Module, final_sparsity: float, begin_step: int, end_step: int,
                 frequency: int = 1, initial_sparsity: float = 0.0, method: str = "magnitude",
                 scope: str = "local", patterns: Iterable[str] = DEFAULT_BERT_PATTERNS):
        _check_schedule(initial_sparsity, final_sparsity, begin_step, end_step, frequency)
        if method not in ("magnitude", _MAGNITUDE):
            raise InputError(f"gradual pruning supports only the 'magnitude' method, "
                             f"not {str(method)!r}")
        _check_scope(scope, _MAGNITUDE)
        self.linears = require_linears(model, patterns)
        self.final_sparsity = final_sparsity
        self.initial_sparsity = initial_sparsity
        self.begin_step = begin_step
        self.end_step = end_step
        self.frequency = frequency
        self.scope = scope
        self.masks: dict[str, torch.Tensor] = {}
        self.sparsity: float | None = None

    def is_pruning_step(self, step: int) -> bool:
        """Whether :meth:`step` recomputes the masks at ``step``."""
        if step == self.end_step:
            return True
        return (self.begin_step <= step < self.end_step
                and (step - self.begin_step) % self.frequency == 0)

    def step(self, step: int) -> float | None:
        """At a pruning step, recompute the masks at the scheduled sparsity and apply them.

        Parameters
        ----------
        step : int
            The training step.

        Returns
        -------
        float or None
            The sparsity applied, or None if ``step`` is not a pruning step.
        """
        if not self.is_pruning_step(step):
            return None
        sparsity = cubic_sparsity(step, self.initial_sparsity, self.final_sparsity,
                                  self.begin_step, self.end_step, self.frequency)
        weights = [linear.weight.detach() for _, linear in self.linears]
        scores = [self._scores(name, weight)
                  for (name, _), weight in zip(self.linears, weights)]
        if self.scope == "global":
            masks = _global_masks(weights, sparsity, scores)
        else:
            masks = [keep_all_but_lowest(s.flatten(), _prune_count(sparsity, s.numel()))
                     .view(s.shape) for s in scores]
        self.masks = {name: mask for (name, _), mask in zip(self.linears, masks)}
        self.sparsity = sparsity
        self.apply_masks()
        return sparsity

    def _scores(self, name, weight):
        scores = weight.abs()
        if name in self.masks:
            # -1 ranks previously pruned weights below every kept one, however small.
            scores = scores.masked_fill(~self.masks[name], -1.0)
        return scores

    def apply_masks(self) -> None:
        """Zero the pruned weights again (call after every optimiser step)."""
        with torch.no_grad():
            for name, linear in self.linears:
                if name in self.masks:
                    linear.weight.mul_(self.masks[name])
