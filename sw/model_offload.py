"""Offload every encoder linear of a BERT to a sparse MAC device, and count what it saves.

:func:`offload` prunes, quantises and packs the six linears of each encoder layer (query, key,
value, attention output, intermediate, output) and puts an
:class:`~sparsemac.sw.offload.OffloadedLinear` in the place of each. Embeddings, attention
softmax, layer norms and GELU stay on the host in float. The returned :class:`OffloadReport`
fills in as the model runs: for every call of every layer it adds the device's sparse cycles
and the cycles the same call would take with dense weights, so the two are always compared on
the same token counts.

The dense baseline comes from the exact cycle model (:func:`matmul_cycles`, which tiles a layer
into jobs as :meth:`Device.matmul <sparsemac.sw.driver.Device.matmul>` does), or, with
``measure_dense=True``, from running every call a second time on the device in dense mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..hw.config import ArrayConfig
from ..hw.formats import Mode
from .csr import CSRMatrix, csr_stream_bytes, dense_stream_bytes
from .cycle_model import job_cycles
from .driver import Device, DeviceError
from .offload import OffloadedLinear
from .pruning import (DEFAULT_BERT_PATTERNS, global_magnitude_masks, matching_linears,
                      parse_method, prune_mask)
from .quantisation import GRANULARITIES

__all__ = ["LayerReport", "OffloadReport", "CrossCheck", "offload", "matmul_cycles",
           "cross_check"]

SCOPES = ("local", "global")


@dataclass
class LayerReport:
    """One offloaded linear: its weights, and what its calls have cost so far.

    Attributes
    ----------
    name : str
        Qualified module name, e.g. ``encoder.layer.0.attention.self.query``.
    shape : tuple of int
        ``(out_features, in_features)``.
    sparsity : float
        Achieved fraction of zero int8 weights (pruned, or rounded to zero).
    nnz : int
        Nonzero int8 weights.
    sparse_weight_bytes, dense_weight_bytes : int
        Bytes of one pass of the weights over the link in CSR and in dense mode.
    calls, tokens : int
        Forward calls and tokens (rows of activations) the layer has run.
    sparse_cycles : int
        Device cycles of those calls, as the device reported them.
    dense_cycles : int
        Cycles of the same calls with dense weights: predicted by the cycle model, or measured
        on the device when the report's ``dense_measured`` is True.
    device_s : float
        Host wall time spent in the device for the sparse runs.
    call_tokens : list of int
        Tokens of each call, in order.
    sums : list of torch.Tensor
        int32 sums of each call, kept only when :func:`offload` was given ``keep_sums=True``.
    """

    name: str
    shape: tuple[int, int]
    sparsity: float
    nnz: int
    sparse_weight_bytes: int
    dense_weight_bytes: int
    calls: int = 0
    tokens: int = 0
    sparse_cycles: int = 0
    dense_cycles: int = 0
    device_s: float = 0.0
    call_tokens: list[int] = field(default_factory=list)
    sums: list[torch.Tensor] = field(default_factory=list, repr=False)

    @property
    def speedup(self) -> float:
        """Dense over sparse cycles; NaN before the first call."""
        return _ratio(self.dense_cycles, self.sparse_cycles)

    @property
    def ideal_speedup(self) -> float:
        """``1 / (1 - sparsity)``: the speedup if cycles fell in proportion to the nonzeros."""
        return _ideal(self.sparsity)

    def reset(self) -> None:
        """Forget the calls (the weights' figures stay)."""
        self.calls = self.tokens = self.sparse_cycles = self.dense_cycles = 0
        self.device_s = 0.0
        self.call_tokens.clear()
        self.sums.clear()

    def as_dict(self) -> dict:
        """JSON-ready figures (without the recorded sums)."""
        return {"name": self.name, "shape": list(self.shape), "sparsity": self.sparsity,
                "nnz": self.nnz, "calls": self.calls, "tokens": self.tokens,
                "sparse_cycles": self.sparse_cycles, "dense_cycles": self.dense_cycles,
                "speedup": _finite(self.speedup), "ideal_speedup": _finite(self.ideal_speedup),
                "sparse_weight_bytes": self.sparse_weight_bytes,
                "dense_weight_bytes": self.dense_weight_bytes, "device_s": self.device_s}


@dataclass
class OffloadReport:
    """What offloading a model did, and what its runs have cost; totals are sums of `layers`.

    Attributes
    ----------
    backend : str
        The device's back-end name.
    config : ArrayConfig
    method : str
    sparsity_target : float
        The sparsity asked for (``1 - n/m`` for N:M pruning).
    scope : {"local", "global"}
    seed : int or None
    dense_measured : bool
        Dense cycles were measured on the device rather than predicted.
    layers : list of LayerReport
        One per offloaded linear, in module order.
    modules : list of OffloadedLinear
        The offloaded linears, in the order of `layers`.
    """

    backend: str
    config: ArrayConfig
    method: str
    sparsity_target: float
    scope: str
    seed: int | None
    dense_measured: bool
    layers: list[LayerReport]
    modules: list[OffloadedLinear] = field(repr=False)
    _hooks: list = field(default_factory=list, repr=False)

    @property
    def sparse_cycles(self) -> int:
        return sum(layer.sparse_cycles for layer in self.layers)

    @property
    def dense_cycles(self) -> int:
        return sum(layer.dense_cycles for layer in self.layers)

    @property
    def speedup(self) -> float:
        """Dense over sparse cycles of the whole model; NaN before the first run."""
        return _ratio(self.dense_cycles, self.sparse_cycles)

    @property
    def sparsity(self) -> float:
        """Achieved fraction of zero weights over all offloaded layers."""
        total = sum(layer.shape[0] * layer.shape[1] for layer in self.layers)
        return 1.0 - sum(layer.nnz for layer in self.layers) / total

    @property
    def ideal_speedup(self) -> float:
        """``1 / (1 - sparsity)`` of the whole model."""
        return _ideal(self.sparsity)

    @property
    def sparse_weight_bytes(self) -> int:
        return sum(layer.sparse_weight_bytes for layer in self.layers)

    @property
    def dense_weight_bytes(self) -> int:
        return sum(layer.dense_weight_bytes for layer in self.layers)

    @property
    def device_s(self) -> float:
        return sum(layer.device_s for layer in self.layers)

    def reset(self) -> None:
        """Forget every call so far, here and in the modules' own stats."""
        for layer, module in zip(self.layers, self.modules):
            layer.reset()
            module.reset_stats()

    def cycles_for(self, config: ArrayConfig) -> tuple[int, int]:
        """Sparse and dense cycles the recorded calls would take on another array.

        Parameters
        ----------
        config : ArrayConfig

        Returns
        -------
        tuple of int
            ``(sparse, dense)``, from the exact cycle model, summed over every call so far.

        Raises
        ------
        ValueError
            If a layer is wider than ``config.max_in_features``.
        """
        sparse = dense = 0
        for layer, module in zip(self.layers, self.modules):
            for tokens in layer.call_tokens:
                sparse += matmul_cycles(module.weights, tokens, config, Mode.SPARSE)
                dense += matmul_cycles(module.weights, tokens, config, Mode.DENSE)
        return sparse, dense

    def detach(self) -> None:
        """Stop recording: remove the hooks from the modules."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    def as_dict(self) -> dict:
        """JSON-ready totals and per-layer figures."""
        return {"backend": self.backend, "config": self.config.as_dict(), "method": self.method,
                "sparsity_target": self.sparsity_target, "sparsity": self.sparsity,
                "scope": self.scope, "seed": self.seed, "dense_measured": self.dense_measured,
                "sparse_cycles": self.sparse_cycles, "dense_cycles": self.dense_cycles,
                "speedup": _finite(self.speedup), "ideal_speedup": _finite(self.ideal_speedup),
                "sparse_weight_bytes": self.sparse_weight_bytes,
                "dense_weight_bytes": self.dense_weight_bytes, "device_s": self.device_s,
                "layers": [layer.as_dict() for layer in self.layers]}


@dataclass
class CrossCheck:
    """Two runs of the same offloaded model on two devices, compared layer by layer.

    Attributes
    ----------
    sums_mismatch : list of str
        Layers whose int32 sums differ in some call (or whose call counts differ).
    cycles_mismatch : list of str
        Layers whose sparse or dense cycle totals differ.
    """

    sums_mismatch: list[str]
    cycles_mismatch: list[str]

    @property
    def bit_exact(self) -> bool:
        return not self.sums_mismatch

    @property
    def cycles_equal(self) -> bool:
        return not self.cycles_mismatch


def offload(model: nn.Module, device: Device, sparsity: float | None, method: str = "magnitude",
            *, seed: int | None = None, granularity: str = "tensor", scope: str = "local",
            patterns=DEFAULT_BERT_PATTERNS, measure_dense: bool = False,
            keep_sums: bool = False, progress: bool = False) -> tuple[nn.Module, OffloadReport]:
    """Prune, quantise and offload the encoder linears of a BERT, in place.

    Parameters
    ----------
    model : nn.Module
        A Hugging Face ``BertModel`` or ``BertFor...`` model (any module whose linears match
        `patterns`), in float.
    device : Device
        Every offloaded linear runs on it; its config must hold the widest layer.
    sparsity : float or None
        Fraction of each layer's weights to remove (of all matched weights with global scope).
        None or ``1 - n/m`` for N:M methods, whose pattern fixes it.
    method : str
        ``"magnitude"``, ``"random"`` or an ``"N:M"`` string such as ``"2:4"``, as in
        :func:`~sparsemac.sw.pruning.prune_mask`.
    seed : int or None
        For random pruning (required there): layer ``i`` gets seed ``seed + i``, as in
        :func:`~sparsemac.sw.pruning.prune_model`.
    granularity : {"tensor", "token"}
        Activation quantisation scale, per call or per token.
    scope : {"local", "global"}
        ``"global"``: one magnitude threshold over all matched layers (magnitude only).
    patterns : iterable of str
        Regular expressions selecting the linears by qualified name.
    measure_dense : bool
        Run every call again on the device in dense mode and record its cycles (and check that
        its sums equal the sparse run's) instead of predicting them with the cycle model.
    keep_sums : bool
        Keep every call's int32 sums in the report, for :func:`cross_check`.
    progress : bool
        Show a progress bar on stderr while layers are packed.

    Returns
    -------
    model : nn.Module
        The same object, its matched linears replaced.
    report : OffloadReport
        Empty until the model runs; it fills in on every forward call.

    Raises
    ------
    ValueError
        If no linear matches (the message names the patterns), the method, scope or
        granularity is unknown, the sparsity is invalid, or a layer does not fit the device.
        Nothing is replaced then.
    TypeError
        If `device` is not a Device.
    """
    if not isinstance(device, Device):
        raise TypeError(f"device must be a Device (see open_device), not {device!r}")
    kind, n, m = parse_method(method)
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, not {scope!r}")
    if scope == "global" and kind != "magnitude":
        raise ValueError(f"global scope needs the 'magnitude' method, not {method!r}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, not {granularity!r}")
    patterns = tuple(patterns)
    linears = matching_linears(model, patterns)
    if not linears:
        raise ValueError(f"no nn.Linear of this {type(model).__name__} matches the encoder "
                         f"patterns {list(patterns)!r}: is it a BERT?")
    target = 1 - n / m if kind == "n:m" else sparsity
    weights = [linear.weight.detach().float() for _, linear in linears]
    if scope == "global":
        masks = global_magnitude_masks(weights, sparsity)
    else:
        masks = [prune_mask(weight, sparsity, method, n=n, m=m,
                            seed=None if seed is None else seed + index)
                 for index, weight in enumerate(weights)]

    from tqdm import tqdm

    # Build every replacement before swapping any, so an error leaves the model untouched.
    replacements = []
    for (name, linear), mask in tqdm(list(zip(linears, masks)), desc="offload", unit="layer",
                                     disable=not progress, leave=False):
        replacements.append((name, OffloadedLinear.from_linear(linear, device, mask=mask,
                                                               granularity=granularity)))
    for name, module in replacements:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, module)

    config = device.config
    report = OffloadReport(
        backend=device.name, config=config, method=method,
        sparsity_target=None if target is None else float(target), scope=scope, seed=seed,
        dense_measured=measure_dense,
        layers=[_layer_report(name, module, config.lanes) for name, module in replacements],
        modules=[module for _, module in replacements])
    for layer, module in zip(report.layers, report.modules):
        report._hooks.append(module.register_forward_hook(
            _recorder(layer, measure_dense, keep_sums)))
    return model, report


def matmul_cycles(weights: CSRMatrix, tokens: int, config: ArrayConfig,
                  mode: Mode = Mode.SPARSE) -> int:
    """Cycles of one :meth:`Device.matmul <sparsemac.sw.driver.Device.matmul>` call, predicted.

    The layer is split into jobs as the driver splits it (token blocks of ``config.max_tokens``,
    row tiles of ``config.max_out_features``) and the exact cycle model's counts are added, so
    this is what the reference device reports, without computing any sums.

    Parameters
    ----------
    weights : CSRMatrix
        In dense mode only its shape matters.
    tokens : int
        Rows of activations, at least 1.
    config : ArrayConfig
    mode : Mode

    Returns
    -------
    int

    Raises
    ------
    ValueError
        If the layer is wider than ``config.max_in_features`` or `tokens` is below 1.
    """
    if tokens < 1:
        raise ValueError(f"a call needs at least one token, not {tokens!r}")
    rows, cols = weights.shape
    row_lengths = weights.row_lengths()
    total = 0
    for token_start in range(0, tokens, config.max_tokens):
        block = min(config.max_tokens, tokens - token_start)
        for row_start in range(0, rows, config.max_out_features):
            tile = row_lengths[row_start:row_start + config.max_out_features]
            total += job_cycles(tile, cols, block, config, mode).total
    return total


def cross_check(reference: OffloadReport, other: OffloadReport) -> CrossCheck:
    """Compare two reports of the same offloaded model run on the same inputs.

    Parameters
    ----------
    reference, other : OffloadReport
        Both made with ``keep_sums=True`` for the sums to be compared.

    Returns
    -------
    CrossCheck

    Raises
    ------
    ValueError
        If the reports are of different layers.
    """
    if [layer.name for layer in reference.layers] != [layer.name for layer in other.layers]:
        raise ValueError("the reports are of different layers: not the same model")
    sums, cycles = [], []
    for a, b in zip(reference.layers, other.layers):
        if len(a.sums) != len(b.sums) or a.calls != b.calls or not all(
                torch.equal(x, y) for x, y in zip(a.sums, b.sums)):
            sums.append(a.name)
        if (a.sparse_cycles, a.dense_cycles) != (b.sparse_cycles, b.dense_cycles):
            cycles.append(a.name)
    return CrossCheck(sums_mismatch=sums, cycles_mismatch=cycles)


# Internals --------------------------------------------------------------------------------------

def _layer_report(name, module, lanes):
    weights = module.weights
    return LayerReport(name=name, shape=weights.shape, sparsity=weights.sparsity,
                       nnz=weights.nnz, sparse_weight_bytes=csr_stream_bytes(weights, lanes),
                       dense_weight_bytes=dense_stream_bytes(weights.rows, weights.cols, lanes))


def _recorder(layer, measure_dense, keep_sums):
    """A forward hook filling ``layer`` from its OffloadedLinear after each call."""

    def record(module, args, _output):
        stats = module.stats
        layer.calls, layer.tokens = stats.calls, stats.tokens
        layer.sparse_cycles, layer.device_s = stats.cycles, stats.device_s
        sums = module.last_sums
        layer.call_tokens.append(sums.shape[0])
        if keep_sums:
            layer.sums.append(sums)
        if measure_dense:
            activations = module.quantise_input(args[0]).values
            result = module.device.matmul(module.weights, activations, Mode.DENSE)
            if not torch.equal(result.sums, sums):
                raise DeviceError(f"{layer.name}: the device's dense-mode sums differ from its "
                                  "sparse-mode sums for the same call")
            layer.dense_cycles += result.cycles
        else:
            layer.dense_cycles += matmul_cycles(module.weights, sums.shape[0],
                                                module.device.config, Mode.DENSE)

    return record


def _ratio(numerator, denominator):
    return numerator / denominator if denominator else float("nan")


def _ideal(sparsity):
    return 1.0 / (1.0 - sparsity) if sparsity < 1.0 else float("inf")


def _finite(value):
    """JSON has no NaN or infinity: None stands for them."""
    return value if np.isfinite(value) else None
