"""Calibrated one-shot pruning: Wanda and SparseGPT, unstructured, N:M or K-aligned.

Both methods look at what each linear actually receives on calibration text. For a linear with
weight ``W`` (``rows x cols``) and calibration inputs ``X`` (``tokens x cols``) they use
``H = X^T X`` (:class:`InputStatistics`):

- ``wanda`` (Sun et al. 2023) scores ``|W_ij| * ||X_j||`` and compares the scores within each
  output row;
- ``sparsegpt`` (Frantar and Alistarh 2023) prunes column by column, in blocks, and after each
  column updates the row's remaining weights with the optimal-brain-surgeon correction from the
  dampened Hessian ``H + d * mean(diag H) * I``, so the row's output on the calibration inputs
  moves as little as possible. Done in float, before int8 quantisation.

Patterns (`pattern`):

- None: unstructured. Wanda prunes ``round(sparsity * rows * cols)`` weights of a layer, shared
  out over the rows as evenly as possible (rows differ by at most one weight; the rows that
  prune one more are those whose next weight scores lowest). SparseGPT picks its mask within
  each column block over all rows at once, as in the paper; the layer's count is shared out over
  the blocks by largest remainder, so the layer total is exactly the same.
- ``"N:M"``, e.g. ``"2:4"``: every group of M consecutive inputs of a row keeps N weights. Its
  sparsity is ``1 - N/M``; asking for another one is an error.
- ``"k-aligned"``: every row keeps a multiple of the array's K (``lanes``) nonzeros, so no
  chunk of K weights that the array issues per cycle is half empty. The layer keeps
  ``K * round((1 - sparsity) * rows * cols / K)`` weights: the multiple of K nearest the exact
  count, so its sparsity is within ``K / 2`` weights of the target; rows differ by at most one
  chunk, given to the rows whose next chunk scores highest. SparseGPT then picks its mask over
  whole rows (one block) before reconstructing.

:func:`prune_calibrated` prunes a model's linears in order. Linears that read the same tensor
(a BERT layer's query, key and value) form a group; each group's inputs are captured with
forward hooks from the model as pruned so far, so later layers are calibrated on what the
already-pruned earlier layers produce. Nothing is random: the same model and text give the same
weights, bit for bit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .methods import K_ALIGNED, NM_TOLERANCE, parse_pattern, pattern_nm
from .pruning import DEFAULT_BERT_PATTERNS, keep_all_but_lowest, matching_linears
from ..hw.errors import InputError, RunFailure

__all__ = [
    "DEFAULT_BLOCKSIZE", "DEFAULT_DAMPENING", "PRUNERS",
    "CalibratedLayer", "CalibrationReport", "InputStatistics",
    "activation_absmax", "capture_group_inputs", "check_pattern",
    "prune_calibrated",
    "reconstruction_error", "sparsegpt_prune", "wanda_prune",
]

#: Columns SparseGPT updates (and, unstructured, picks its mask) at a time.
DEFAULT_BLOCKSIZE = 128
#: SparseGPT's dampening, as a fraction of the mean diagonal of ``X^T X``.
DEFAULT_DAMPENING = 0.01



@dataclass
class InputStatistics:
    """What a linear received on the calibration text."""

    #: ``X^T X`` in float64, ``cols x cols``, over every real (non-padding) token.
    hessian: torch.Tensor
    #: Rows of ``X``.
    tokens: int

    @classmethod
    def from_inputs(cls, inputs: torch.Tensor) -> InputStatistics:
        """Statistics of inputs ``X`` of shape ``(tokens, cols)``."""
        x = inputs.detach().to(torch.float64)
        return cls(hessian=x.T @ x, tokens=x.shape[0])

    @property
    def column_norms(self) -> torch.Tensor:
        """``||X_j||_2`` of every input column, float64."""
        return self.hessian.diagonal().clamp(min=0).sqrt()


@dataclass
class CalibratedLayer:
    """One pruned linear."""

    #: Qualified module name, e.g. ``encoder.layer.0.attention.self.query``.
    name: str
    #: ``(out_features, in_features)``.
    shape: tuple[int, int]
    #: Fraction of zero weights after pruning.
    sparsity: float
    #: Nonzero weights after pruning.
    nnz: int
    #: ``||X (W' - W)^T|| / ||X W^T||`` on the calibration inputs (Frobenius norms): how far the
    #: pruned layer's output moved.
    relative_error: float
    #: Time to capture the inputs and prune.
    seconds: float


@dataclass
class CalibrationReport:
    """What :func:`prune_calibrated` did."""

    #: The calibrated method's kind: ``"wanda"`` or ``"sparsegpt"``.
    method: str
    #: The sparsity asked for (``1 - N/M`` for an N:M pattern).
    sparsity_target: float
    #: None (unstructured), ``"N:M"`` or ``"k-aligned"``.
    pattern: str | None
    #: The array's K that ``"k-aligned"`` rows keep multiples of.
    lanes: int
    #: Calibration texts fed.
    calibration_texts: int
    #: Real (non-padding) tokens those texts made.
    calibration_tokens: int
    #: In the order they were pruned.
    layers: list[CalibratedLayer]
    #: Wall time of the whole pruning, captures included.
    seconds: float
    #: The keep-mask of each pruned linear.
    masks: dict[str, torch.Tensor] = field(repr=False)

    @property
    def sparsity(self) -> float:
        """Fraction of zero weights over every pruned linear."""
        total = sum(layer.shape[0] * layer.shape[1] for layer in self.layers)
        return 1.0 - sum(layer.nnz for layer in self.layers) / total


# Patterns ------------------------------------------------------------------------------------

def check_pattern(sparsity: float | None, pattern: str | None, lanes: int,
                  cols: int | None = None) -> tuple[float, tuple[int, int] | None]:
    """Validate a sparsity and pattern; return the sparsity and ``(n, m)`` for N:M.

    Parameters
    ----------
    sparsity : float or None
        In [0, 1]; None only for N:M, which fixes it.
    pattern : {None, "N:M", "k-aligned"}
    lanes : int
        The array's K.
    cols : int, optional
        A layer's input width, checked against M or K when given.

    Returns
    -------
    sparsity : float
    nm : tuple of int or None

    Raises
    ------
    ValueError
        If the sparsity is outside [0, 1], missing, or not what an N:M pattern gives; if the
        pattern is unknown; or if `cols` is not a multiple of M (N:M) or K (K-aligned).
    """
    nm = pattern_nm(parse_pattern(pattern))
    if nm is not None:
        exact = 1 - nm[0] / nm[1]
        if sparsity is None:
            sparsity = exact
        elif abs(sparsity - exact) > NM_TOLERANCE:
            raise InputError(f"sparsity {sparsity!r} cannot be reached with {pattern}: that "
                             f"pattern prunes exactly {exact!r}; pass that or None")
        if cols is not None and cols % nm[1]:
            raise InputError(f"{pattern} needs in_features to be a multiple of {nm[1]}, "
                             f"got {cols}")
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) \
            or not 0.0 <= sparsity <= 1.0:
        raise InputError(f"sparsity must be a number in [0, 1], not {sparsity!r}")
    if isinstance(lanes, bool) or not isinstance(lanes, int) or lanes < 1:
        raise InputError(f"lanes must be a positive integer, not {lanes!r}")
    if pattern == K_ALIGNED and cols is not None and cols % lanes:
        raise InputError(f"K-aligned pruning needs in_features to be a multiple of K={lanes}, "
                         f"got {cols}")
    return float(sparsity), nm


def _row_budget_mask(scores: torch.Tensor, sparsity: float, unit: int) -> torch.Tensor:
    """Keep the best-scoring weights of each row; every row keeps a multiple of `unit`.

    The layer keeps ``unit * round((1 - sparsity) * numel / unit)`` weights, spread over the
    rows as evenly as possible; the rows that keep one unit more are those whose next unit
    scores highest (ties: the lower row). Within a row, of equal scores the lower index is kept.
    """
    rows, cols = scores.shape
    kept_units = round((rows * cols - round(sparsity * rows * cols)) / unit)
    base, extra = divmod(kept_units, rows)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    counts = torch.full((rows,), base * unit, dtype=torch.long)
    if extra:
        ranked = torch.gather(scores, 1, order)
        gain = ranked[:, base * unit:(base + 1) * unit].sum(dim=1)
        counts[torch.sort(gain, descending=True, stable=True).indices[:extra]] += unit
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(cols).expand(rows, cols).contiguous())
    return ranks < counts.unsqueeze(1)


def _nm_keep(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    rows, cols = scores.shape
    groups = scores.reshape(rows, cols // m, m)
    keep = torch.sort(groups, dim=-1, descending=True, stable=True).indices[..., :n]
    return torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True).view(rows, cols)


def _apportion(total: int, sizes: Sequence[int]) -> list[int]:
    """Split `total` in proportion to `sizes` into integers summing exactly to it."""
    whole = sum(sizes)
    shares = [total * size / whole for size in sizes]
    counts = [int(share) for share in shares]
    # Largest remainder first; ties to the earlier part.
    order = sorted(range(len(sizes)), key=lambda i: (counts[i] - shares[i], i))
    for i in order[:total - sum(counts)]:
        counts[i] += 1
    return counts


# Pruners -------------------------------------------------------------------------------------

def _check_layer(weight, statistics):
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 \
            or not weight.is_floating_point():
        raise InputError(f"weight must be a 2-D float tensor, not {weight!r:.60}")
    if tuple(statistics.hessian.shape) != (weight.shape[1],) * 2:
        raise InputError(f"statistics are of {statistics.hessian.shape[0]} input features, the "
                         f"weight has {weight.shape[1]}")


def wanda_prune(weight: torch.Tensor, statistics: InputStatistics, sparsity: float | None, *,
                pattern: str | None = None, lanes: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune by ``|W_ij| * ||X_j||``, compared within each output row.

    Parameters
    ----------
    weight : torch.Tensor
        ``(rows, cols)`` float weight; not modified.
    statistics : InputStatistics
        Of the layer's calibration inputs.
    sparsity : float or None
        As :func:`check_pattern`.
    pattern : {None, "N:M", "k-aligned"}
        See the module docstring.
    lanes : int
        The array's K, for ``"k-aligned"``.

    Returns
    -------
    weight : torch.Tensor
        ``weight * mask``, same dtype.
    mask : torch.Tensor
        Bool keep-mask.

    Raises
    ------
    ValueError
        As :func:`check_pattern`, or if shapes disagree.
    """
    _check_layer(weight, statistics)
    sparsity, nm = check_pattern(sparsity, pattern, lanes, weight.shape[1])
    scores = weight.detach().abs().to(torch.float64) * statistics.column_norms.unsqueeze(0)
    if nm:
        mask = _nm_keep(scores, *nm)
    else:
        mask = _row_budget_mask(scores, sparsity, lanes if pattern == K_ALIGNED else 1)
    return weight.detach() * mask, mask


def sparsegpt_prune(weight: torch.Tensor, statistics: InputStatistics, sparsity: float | None,
                    *, pattern: str | None = None, lanes: int = 8,
                    blocksize: int = DEFAULT_BLOCKSIZE, dampening: float = DEFAULT_DAMPENING
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune with SparseGPT's row-wise optimal-brain-surgeon reconstruction.

    Parameters
    ----------
    weight, statistics, sparsity, pattern, lanes
        As :func:`wanda_prune`. Input columns that were always zero score lowest, so they are
        pruned first.
    blocksize : int
        Columns per lazy-update block (and per mask choice when unstructured).
    dampening : float
        Added to the diagonal of ``X^T X`` as a fraction of its mean, so it inverts.

    Returns
    -------
    weight : torch.Tensor
        The reconstructed weight, zero where pruned, in ``weight``'s dtype.
    mask : torch.Tensor
        Bool keep-mask.

    Raises
    ------
    ValueError
        As :func:`check_pattern`, if shapes disagree, or `blocksize` < 1 or `dampening` <= 0.
    """
    _check_layer(weight, statistics)
    rows, cols = weight.shape
    sparsity, nm = check_pattern(sparsity, pattern, lanes, cols)
    if blocksize < 1 or dampening <= 0:
        raise InputError(f"need blocksize >= 1 and dampening > 0, got {blocksize!r}, "
                         f"{dampening!r}")
    w = weight.detach().to(torch.float64).clone()
    hessian = statistics.hessian.clone()
    dead = hessian.diagonal() == 0
    hessian[dead, dead] = 1.0
    w[:, dead] = 0.0
    hessian.diagonal().add_(dampening * hessian.diagonal().mean())
    # Upper Cholesky factor of H^-1: row i holds the OBS update of the columns after i.
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(hessian)),
                                 upper=True)
    diagonal = hinv.diagonal()
    pruned = torch.zeros(rows, cols, dtype=torch.bool)
    if nm is None and pattern == K_ALIGNED:
        # The K-aligned budget is per whole row: choose it once, over all columns.
        pruned = ~_row_budget_mask(w.pow(2) / diagonal.pow(2), sparsity, lanes)
    starts = list(range(0, cols, blocksize))
    if nm is None and pattern is None:
        total = round(sparsity * rows * cols)
        counts = _apportion(total, [rows * min(blocksize, cols - s) for s in starts])
    for block, start in enumerate(starts):
        end = min(start + blocksize, cols)
        w1, h1 = w[:, start:end].clone(), hinv[start:end, start:end]
        errors = torch.zeros_like(w1)
        if nm is None and pattern is None:
            scores = (w1.pow(2) / diagonal[start:end].pow(2)).flatten()
            pruned[:, start:end] = ~keep_all_but_lowest(scores, counts[block]).view(w1.shape)
        for i in range(end - start):
            if nm and i % nm[1] == 0:
                scores = w1[:, i:i + nm[1]].pow(2) / h1.diagonal()[i:i + nm[1]].pow(2)
                pruned[:, start + i:start + i + nm[1]] = ~_nm_keep(scores, *nm)
            column = w1[:, i]
            kept = column.masked_fill(pruned[:, start + i], 0.0)
            error = (column - kept) / h1[i, i]
            w1[:, i:] -= error.unsqueeze(1) * h1[i, i:].unsqueeze(0)
            w1[:, i] = kept
            errors[:, i] = error
        w[:, start:end] = w1
        w[:, end:] -= errors @ hinv[start:end, end:]
    mask = ~pruned
    return (w * mask).to(weight.dtype), mask


#: Calibrated methods by name: ``prune(weight, statistics, sparsity, *, pattern, lanes)``.
PRUNERS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "wanda": wanda_prune,
    "sparsegpt": sparsegpt_prune,
}


def reconstruction_error(original: torch.Tensor, pruned: torch.Tensor,
                         statistics: InputStatistics) -> float:
    """``||X (pruned - original)^T||_F / ||X original^T||_F`` on the calibration inputs.

    Returns
    -------
    float
        0 for an identical weight; NaN if the original's output is zero.
    """
    h = statistics.hessian
    delta = (pruned.detach().to(torch.float64) - original.detach().to(torch.float64))
    base = original.detach().to(torch.float64)
    numerator = float(((delta @ h) * delta).sum())
    denominator = float(((base @ h) * base).sum())
    return float(np.sqrt(max(numerator, 0.0) / denominator)) if denominator else float("nan")


# Whole models --------------------------------------------------------------------------------

class _Captured(Exception):
    """Stops a forward pass once the group's inputs are in."""


def capture_group_inputs(model: nn.Module, linears: Sequence[tuple[str, nn.Linear]],
                         inputs: dict, token_mask: torch.Tensor
                         ) -> tuple[list[str], InputStatistics]:
    """Run `model` until the first of `linears` and those reading the same tensor have run.

    Parameters
    ----------
    model : nn.Module
        Called as ``model(**inputs)``.
    linears : sequence of (str, nn.Linear)
        The linears still to prune, in the order they run.
    inputs : dict
        The model's keyword inputs (a tokenizer's batch).
    token_mask : torch.Tensor
        Bool ``[batch, seq]``, True at real tokens: padding is left out of the statistics.

    Returns
    -------
    names : list of str
        The group: the first linear that ran, and every other listed one that received the
        very same input tensor.
    statistics : InputStatistics
        Of that input, real tokens only.

    Raises
    ------
    RuntimeError
        If none of `linears` runs.
    """
    by_module = {id(linear): name for name, linear in linears}
    group: list[str] = []
    seen: list[torch.Tensor] = []

    def hook(module, args):
        name = by_module.get(id(module))
        if name is None:
            return
        if seen and args[0] is not seen[0]:
            raise _Captured
        seen.append(args[0])
        group.append(name)

    handles = [linear.register_forward_pre_hook(hook) for _, linear in linears]
    try:
        with torch.no_grad():
            model(**inputs)
    except _Captured:
        pass
    finally:
        for handle in handles:
            handle.remove()
    if not seen:
        raise RunFailure("none of the linears to prune ran in the model's forward pass")
    x = seen[0]
    tokens = x[token_mask] if x.dim() == 3 else x
    return group, InputStatistics.from_inputs(tokens.reshape(-1, x.shape[-1]))


def prune_calibrated(model: nn.Module, tokenizer, method: str, sparsity: float | None,
                     calibration_texts: Sequence[str], *, pattern: str | None = None,
                     lanes: int = 8, patterns: Iterable[str] = DEFAULT_BERT_PATTERNS,
                     blocksize: int = DEFAULT_BLOCKSIZE, dampening: float = DEFAULT_DAMPENING,
                     progress: bool = False) -> CalibrationReport:
    """Prune a model's linears in place, in order, each calibrated on the pruned model so far.

    Parameters
    ----------
    model : nn.Module
        A Hugging Face BERT (any model taking the tokenizer's batch), float.
    tokenizer : transformers.PreTrainedTokenizerFast
    method : {"wanda", "sparsegpt"}
    sparsity : float or None
        Fraction of each linear's weights to remove; None or ``1 - N/M`` with an N:M pattern.
    calibration_texts : sequence of str
        Fed as one padded batch; padding tokens do not count. Keep them apart from evaluation
        text (:func:`~sparsemac.sw.task.task_splits` gives a calibration split).
    pattern : {None, "N:M", "k-aligned"}
    lanes : int
        The array's K, for ``"k-aligned"``.
    patterns : iterable of str
        Regular expressions selecting the linears, as :func:`~sparsemac.sw.pruning.prune_model`.
    blocksize, dampening
        SparseGPT's, see :func:`sparsegpt_prune`.
    progress : bool
        Print each layer with its time to stderr.

    Returns
    -------
    CalibrationReport

    Raises
    ------
    ValueError
        If the method or pattern is unknown, the sparsity invalid for the pattern, a layer's
        width does not fit the pattern, no linear matches, or there is no calibration text.
        Checked before any weight changes.
    """
    import sys

    if method not in PRUNERS:
        raise InputError(f"unknown calibrated method {method!r}; valid: "
                         f"{', '.join(map(repr, PRUNERS))}")
    texts = [text for text in calibration_texts]
    if not texts or not any(text.strip() for text in texts):
        raise InputError("calibrated pruning needs calibration text; got none")
    patterns = tuple(patterns)
    linears = matching_linears(model, patterns)
    if not linears:
        raise InputError(f"no nn.Linear in the model matches the patterns {list(patterns)!r}")
    for _, linear in linears:
        sparsity_checked, _ = check_pattern(sparsity, pattern, lanes, linear.in_features)
    prune = PRUNERS[method]
    options = {"blocksize": blocksize, "dampening": dampening} if method == "sparsegpt" else {}
    started = time.perf_counter()
    inputs = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    token_mask = inputs["attention_mask"].bool()
    remaining = list(linears)
    layers, masks = [], {}
    while remaining:
        layer_started = time.perf_counter()
        names, statistics = capture_group_inputs(model, remaining, dict(inputs), token_mask)
        modules = dict(remaining)
        for name in names:
            linear = modules[name]
            original = linear.weight.detach().clone()
            pruned, mask = prune(original, statistics, sparsity, pattern=pattern, lanes=lanes,
                                 **options)
            with torch.no_grad():
                linear.weight.copy_(pruned)
            nnz = int(torch.count_nonzero(linear.weight))
            masks[name] = mask
            layers.append(CalibratedLayer(
                name=name, shape=tuple(original.shape),
                sparsity=1.0 - nnz / original.numel(), nnz=nnz,
                relative_error=reconstruction_error(original, linear.weight, statistics),
                seconds=(time.perf_counter() - layer_started) / len(names)))
            if progress:
                print(f"{method} {name}: sparsity {layers[-1].sparsity:.4f}, error "
                      f"{layers[-1].relative_error:.4f}, "
                      f"{time.perf_counter() - started:.1f} s", file=sys.stderr)
        remaining = [(name, linear) for name, linear in remaining if name not in names]
    return CalibrationReport(method=method, sparsity_target=sparsity_checked, pattern=pattern,
                             lanes=lanes, calibration_texts=len(texts),
                             calibration_tokens=int(token_mask.sum()), layers=layers,
                             seconds=time.perf_counter() - started, masks=masks)


def activation_absmax(model: nn.Module, tokenizer, texts: Sequence[str],
                      patterns: Iterable[str] = DEFAULT_BERT_PATTERNS) -> dict[str, torch.Tensor]:
    """``max|X_j|`` of every input channel of the matching linears on calibration text.

    One forward pass of the texts as a padded batch; padding tokens do not count. The result
    feeds :func:`~sparsemac.sw.quantisation.smoothing_scales`.

    Parameters
    ----------
    model : nn.Module
    tokenizer : transformers.PreTrainedTokenizerFast
    texts : sequence of str
    patterns : iterable of str

    Returns
    -------
    dict of str to torch.Tensor
        float32 ``(in_features,)`` by qualified linear name, in module order.

    Raises
    ------
    ValueError
        If there is no text or no linear matches.
    """
    texts = list(texts)
    if not texts:
        raise InputError("activation statistics need calibration text; got none")
    patterns = tuple(patterns)
    linears = matching_linears(model, patterns)
    if not linears:
        raise InputError(f"no nn.Linear in the model matches the patterns {list(patterns)!r}")
    inputs = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    token_mask = inputs["attention_mask"].bool()
    maxima: dict[str, torch.Tensor] = {}

    def recorder(name):
        def record(_module, args):
            maxima[name] = args[0][token_mask].abs().amax(dim=0).float()
        return record

    handles = [linear.register_forward_pre_hook(recorder(name)) for name, linear in linears]
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    return {name: maxima[name] for name, _ in linears}
