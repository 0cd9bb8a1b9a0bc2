"""Offload every encoder linear of a BERT to a sparse MAC device, and count what it saves.

:func:`offload` prunes, quantises and packs the six linears of each encoder layer (query, key,
value, attention output, intermediate, output) and puts an
:class:`~sparsemac.sw.offloaded_linear.OffloadedLinear` in the place of each. Embeddings, attention
softmax, layer norms and GELU stay on the host in float. The returned :class:`OffloadReport`
fills in as the model runs: for every call of every layer it adds the device's sparse cycles
and the cycles the same call would take with dense weights, so the two are always compared on
the same token counts. It also counts the exactly-zero int8 activations each layer sent to the
device: with a sparse feed-forward activation (``activation=``, see
:mod:`sparsemac.sw.activation_sparsity`) those entering ``output.dense`` are mostly zero.

The dense baseline comes from the exact cycle model (:func:`matmul_cycles`, which tiles a layer
into jobs as :meth:`Device.matmul <sparsemac.sw.device.Device.matmul>` does), or, with
``measure_dense=True``, from running every call a second time on the device in dense mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..hw.config import ArrayConfig
from ..hw.formats import ColumnIndex, Mode
from .calibration import activation_absmax, prune_calibrated
from .csr import CSRMatrix
from .cycle_model import job_cycles, job_tiles
from .device import Device, DeviceError
from .ffn_activation import (check_activation, feed_forward_consumers, model_activation,
                             sparsify_activations)
from .methods import PruningMethod, parse_method
from .offloaded_linear import OffloadedLinear, OffloadStats
from .packing import check_index, tile_row_lengths, weight_stream_bytes
from .progress import progress_bar
from .pruning import (DEFAULT_BERT_PATTERNS, LayerWeights, choose_masks, conv1d_class,
                      matching_linears, require_linears)
from .quantisation import (DEFAULT_GRANULARITY, GRANULARITIES, Int8Linear, quantise_weights,
                           smoothing_scales)
from ..hw.errors import InputError

__all__ = ["LayerFigures", "LayerReport", "OffloadReport", "CrossCheck", "offload",
           "matmul_cycles", "model_cycles", "cross_check", "run_on_host"]

#: One layer's figures as :meth:`LayerReport.as_json` gives them, by name: numbers, flags, the
#: name and the shape (None where a ratio is infinite).
LayerFigures = dict[str, str | int | float | bool | list[int] | None]


def _stat(name, doc):
    """A read-only property reading the offloaded linear's counter ``stats.<name>``."""
    return property(lambda self: getattr(self.stats, name), doc=doc)


def _total(name, doc):
    """A read-only property summing ``<name>`` over the report's ``layers``."""
    return property(lambda self: sum(getattr(layer, name) for layer in self.layers), doc=doc)


class _Speedups:
    """The speedups of a report that has ``dense_cycles``, ``sparse_cycles`` and ``sparsity``
    (one layer's, or the whole model's)."""

    @property
    def speedup(self) -> float:
        """Dense over sparse cycles; NaN before the first call."""
        return self.dense_cycles / self.sparse_cycles if self.sparse_cycles else float("nan")

    @property
    def ideal_speedup(self) -> float:
        """``1 / (1 - sparsity)``: the speedup if cycles fell in proportion to the nonzeros."""
        return 1.0 / (1.0 - self.sparsity) if self.sparsity < 1.0 else float("inf")


@dataclass
class LayerReport(_Speedups, LayerWeights):
    """One offloaded linear: its int8 weights (:class:`~sparsemac.sw.pruning.LayerWeights`,
    whose ``sparsity`` is the sparsity applied: zeros found, pruned, or rounded to zero by
    quantisation), and what its calls have cost so far.
    """

    #: Fraction of zero weights in the model as given, before pruning (a model pruned beforehand
    #: keeps its zeros: pruning only adds to them).
    sparsity_found: float
    #: Bytes of one pass of the weights over the link in CSR mode.
    sparse_weight_bytes: int
    #: Bytes of one pass in dense mode.
    dense_weight_bytes: int
    #: The offloaded linear's own counters (the same object): :attr:`calls`, :attr:`tokens`,
    #: :attr:`sparse_cycles` and :attr:`device_s` read them.
    stats: OffloadStats = field(default_factory=OffloadStats, repr=False)
    #: Cycles of the same calls with dense weights: predicted by the cycle model, or measured on the
    #: device when the report's ``dense_measured`` is True.
    dense_cycles: int = 0
    #: Tokens of each call, in order.
    call_tokens: list[int] = field(default_factory=list)
    #: int32 sums of each call, kept only when :func:`offload` was given ``keep_sums=True``.
    sums: list[torch.Tensor] = field(default_factory=list, repr=False)
    #: int8 activations the calls sent to the device, and how many of them were exactly zero.
    activations: int = 0
    #: Of those, the ones exactly zero.
    zero_activations: int = 0
    #: Whether the layer's jobs skip zero activations too (the dual-sparse mode: a layer fed by
    #: a sparse feed-forward activation, on a dual-sparse config).
    dual: bool = False
    #: Of a dual layer, the cycles its calls would take skipping zero weights only, on the same
    #: array (the exact cycle model); 0 for any other layer.
    dual_weight_only_cycles: int = 0

    calls = _stat("calls", "Forward calls the layer has run.")
    tokens = _stat("tokens", "Tokens (rows of activations) of those calls.")
    sparse_cycles = _stat("cycles", "Device cycles of those calls, as the device reported them.")
    device_s = _stat("device_s", "Host wall time spent in the device for the sparse runs.")

    @property
    def weight_only_cycles(self) -> int:
        """Cycles of the calls skipping zero weights only, on the same array: a dual layer's by
        the exact cycle model, any other's its own sparse cycles."""
        return self.dual_weight_only_cycles if self.dual else self.sparse_cycles

    @property
    def activation_sparsity(self) -> float:
        """Measured fraction of exactly-zero int8 activations sent; NaN before the first call."""
        return self.zero_activations / self.activations if self.activations else float("nan")

    @property
    def joint_ideal_speedup(self) -> float:
        """``1 / ((1 - s_w)(1 - s_a))``: the speedup if cycles fell with the products of a
        nonzero weight and a nonzero activation; NaN before the first call."""
        nonzero = (1.0 - self.sparsity) * (1.0 - self.activation_sparsity)
        return 1.0 / nonzero if nonzero else float("inf")

    def reset(self) -> None:
        """Forget the calls, here and in the offloaded linear's stats (the weights' figures
        stay)."""
        self.stats.reset()
        self.dense_cycles = self.dual_weight_only_cycles = 0
        self.activations = self.zero_activations = 0
        self.call_tokens.clear()
        self.sums.clear()

    def as_json(self) -> LayerFigures:
        """JSON-ready figures (without the recorded sums)."""
        return {"name": self.name, "shape": list(self.shape),
                "sparsity_found": self.sparsity_found, "sparsity": self.sparsity,
                "nnz": self.nnz, "calls": self.calls, "tokens": self.tokens,
                "sparse_cycles": self.sparse_cycles, "dense_cycles": self.dense_cycles,
                "speedup": _finite(self.speedup), "ideal_speedup": _finite(self.ideal_speedup),
                "activation_sparsity": _finite(self.activation_sparsity),
                "joint_ideal_speedup": _finite(self.joint_ideal_speedup),
                "dual": self.dual, "weight_only_cycles": self.weight_only_cycles,
                "sparse_weight_bytes": self.sparse_weight_bytes,
                "dense_weight_bytes": self.dense_weight_bytes, "device_s": self.device_s}


@dataclass
class OffloadReport(_Speedups):
    """What offloading a model did, and what its runs have cost; totals are sums of `layers`."""

    #: The device's back-end name.
    backend: str
    #: The array of the device.
    config: ArrayConfig
    #: The pruning method, in its canonical text (:attr:`~sparsemac.sw.methods.PruningMethod.text`).
    method: str
    #: The sparsity asked for (``1 - n/m`` for N:M pruning); :attr:`sparsity_found` and
    #: :attr:`sparsity` say what the model had and what it got.
    sparsity_target: float
    #: ``"local"`` or ``"global"``.
    scope: str
    #: The seed of random pruning (None for the other methods).
    seed: int | None
    #: Dense cycles were measured on the device rather than predicted.
    dense_measured: bool
    #: One per offloaded linear, in module order.
    layers: list[LayerReport]
    #: The offloaded linears, in the order of `layers`.
    modules: list[OffloadedLinear] = field(repr=False)
    #: How their sparse jobs send column indices.
    index: ColumnIndex = ColumnIndex.CSR
    #: The feed-forward activation the model computes (``str(ActivationSpec)``).
    activation: str = "none"
    #: The forward hooks that record the runs into `layers`, removed by :meth:`detach`.
    _hooks: list[torch.utils.hooks.RemovableHandle] = field(default_factory=list, repr=False)

    sparse_cycles = _total("sparse_cycles", "Device cycles of every layer's calls.")
    weight_only_cycles = _total("weight_only_cycles", "Cycles of the same calls skipping zero "
                                "weights only (each dual layer's by the cycle model).")
    dense_cycles = _total("dense_cycles", "Cycles of the same calls with dense weights.")
    sparse_weight_bytes = _total("sparse_weight_bytes",
                                 "Bytes of one pass of every layer's weights in CSR.")
    dense_weight_bytes = _total("dense_weight_bytes",
                                "Bytes of one pass of every layer's weights in dense mode.")
    device_s = _total("device_s", "Host wall time spent in the device for the sparse runs.")

    @property
    def sparsity(self) -> float:
        """Sparsity applied: the achieved fraction of zero weights over all offloaded layers."""
        return 1.0 - sum(layer.nnz for layer in self.layers) / self._weights

    @property
    def sparsity_found(self) -> float:
        """Fraction of zero weights over the offloaded layers in the model as given. Fidelity
        is measured against that model, so a model pruned beforehand is the baseline of its
        own fidelity figures."""
        return sum(layer.sparsity_found * layer.shape[0] * layer.shape[1]
                   for layer in self.layers) / self._weights

    @property
    def activation_sparsity(self) -> float:
        """Measured fraction of exactly-zero int8 activations sent, over every layer's calls."""
        sent = sum(layer.activations for layer in self.layers)
        return sum(layer.zero_activations for layer in self.layers) / sent if sent else \
            float("nan")

    @property
    def joint_ideal_speedup(self) -> float:
        """Products of the calls over those of a nonzero weight and a nonzero activation: each
        layer's ``1 / ((1 - s_w)(1 - s_a))`` weighted by its share of the work; NaN before the
        first call."""
        products = sum(layer.tokens * layer.shape[0] * layer.shape[1] for layer in self.layers)
        nonzero = sum(layer.tokens * layer.shape[0] * layer.shape[1]
                      / layer.joint_ideal_speedup for layer in self.layers if layer.calls)
        return products / nonzero if nonzero else float("nan")

    @property
    def _weights(self) -> int:
        return sum(layer.shape[0] * layer.shape[1] for layer in self.layers)

    def reset(self) -> None:
        """Forget every call so far, here and in the modules' own stats."""
        for layer in self.layers:
            layer.reset()

    def cycles_for(self, config: ArrayConfig) -> tuple[int, int]:
        """Sparse and dense cycles the recorded calls would take on another array, with this
        report's column index (a DELTA report needs a config with the delta decoder).

        Parameters
        ----------
        config : ArrayConfig

        Returns
        -------
        tuple of int
            ``(sparse, dense)``, from the exact cycle model, summed over every call so far.
        """
        sparse = dense = 0
        for layer, module in zip(self.layers, self.modules):
            for tokens in layer.call_tokens:
                sparse += matmul_cycles(module.weights, tokens, config, Mode.SPARSE,
                                        self.index)
                dense += matmul_cycles(module.weights, tokens, config, Mode.DENSE)
        return sparse, dense

    def detach(self) -> None:
        """Stop recording: remove the hooks from the modules."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    def as_json(self) -> dict:
        """JSON-ready totals and per-layer figures."""
        return {"backend": self.backend, "config": self.config.as_dict(), "method": self.method,
                "sparsity_target": self.sparsity_target, "sparsity_found": self.sparsity_found,
                "sparsity": self.sparsity,
                "scope": self.scope, "seed": self.seed, "dense_measured": self.dense_measured,
                "index": self.index.name.lower(), "activation": self.activation,
                "sparse_cycles": self.sparse_cycles, "dense_cycles": self.dense_cycles,
                "weight_only_cycles": self.weight_only_cycles,
                "speedup": _finite(self.speedup), "ideal_speedup": _finite(self.ideal_speedup),
                "activation_sparsity": _finite(self.activation_sparsity),
                "joint_ideal_speedup": _finite(self.joint_ideal_speedup),
                "sparse_weight_bytes": self.sparse_weight_bytes,
                "dense_weight_bytes": self.dense_weight_bytes, "device_s": self.device_s,
                "layers": [layer.as_json() for layer in self.layers]}


@dataclass
class CrossCheck:
    """Two runs of the same offloaded model on two devices, compared layer by layer."""

    #: Layers whose int32 sums differ in some call (or whose call counts differ).
    sums_mismatch: list[str]
    #: Layers whose sparse or dense cycle totals differ.
    cycles_mismatch: list[str]

    @property
    def bit_exact(self) -> bool:
        return not self.sums_mismatch

    @property
    def cycles_equal(self) -> bool:
        return not self.cycles_mismatch


def offload(model: nn.Module, device: Device, sparsity: float | None,
            method: str | PruningMethod = "magnitude",
            *, seed: int | None = None, granularity: str = DEFAULT_GRANULARITY, scope: str = "local",
            patterns=DEFAULT_BERT_PATTERNS, calibration: Sequence[str] | None = None,
            tokenizer=None, measure_dense: bool = False, keep_sums: bool = False,
            progress: bool = False, index: ColumnIndex = ColumnIndex.CSR,
            smoothing: float | None = None,
            activation=None) -> tuple[nn.Module, OffloadReport]:
    """Prune, quantise and offload the encoder linears of a BERT, in place.

    Parameters
    ----------
    model : nn.Module
        A Hugging Face ``BertModel`` or ``BertFor...`` model, or any module whose linears match
        `patterns`, in float. transformers' ``Conv1D`` layers (GPT-2's, weight stored
        transposed) count as linears: each becomes an OffloadedLinear of the transposed weight.
    device : Device
        Every offloaded linear runs on it (layers wider than its buffer as column tiles).
    sparsity : float or None
        Fraction of each layer's weights to remove (of all matched weights with global scope).
        None or ``1 - n/m`` for N:M methods, whose pattern fixes it.
    method : str or PruningMethod
        ``"magnitude"``, ``"random"`` or an ``"N:M"`` string such as ``"2:4"``, as in
        :func:`~sparsemac.sw.pruning.prune_mask`; or a calibrated method, ``"wanda"`` or
        ``"sparsegpt"``, optionally with a pattern: ``"sparsegpt-2:4"``, ``"wanda-k-aligned"``
        (:func:`~sparsemac.sw.methods.parse_method`; K is the device's lanes). A
        calibrated method prunes the float linears in place, in order, on `calibration`
        (:func:`~sparsemac.sw.calibration.prune_calibrated`), before they are quantised.
    seed : int or None
        For random pruning (required there): layer ``i`` gets seed ``seed + i``, as in
        :func:`~sparsemac.sw.pruning.prune_model`.
    granularity : {"tensor", "token"}
        Activation quantisation scale, per call or per token.
    scope : {"local", "global"}
        ``"global"``: one magnitude threshold over all matched layers (magnitude only).
    patterns : iterable of str
        Regular expressions selecting the linears by qualified name (``re.search``); the
        default selects the six encoder linears of each BERT layer. Other models need their
        own, e.g. ``[r"^transformer\\.layer\\.\\d+\\."]`` for DistilBERT.
    calibration : sequence of str, optional
        Calibration text of a calibrated method (required there, unused otherwise): keep it
        apart from evaluation text (:func:`~sparsemac.sw.task.calibration_texts`).
    tokenizer : transformers.PreTrainedTokenizerFast, optional
        The model's, to feed `calibration` (required with a calibrated method).
    measure_dense : bool
        Run every call again on the device in dense mode and record its cycles (and check that
        its sums equal the sparse run's) instead of predicting them with the cycle model.
    keep_sums : bool
        Keep every call's int32 sums in the report, for :func:`cross_check`.
    progress : bool
        Show a progress bar on stderr while layers are packed.
    index : ColumnIndex
        How the sparse jobs send column indices: ``DELTA`` needs a device whose config has
        the delta decoder.
    smoothing : float or None
        SmoothQuant migration strength alpha in [0, 1]: each linear's input channels are
        divided on the host by :func:`~sparsemac.sw.quantisation.smoothing_scales` of the float
        model's activations on `calibration` (required, with `tokenizer`) and its pruned
        weight's columns multiplied by them before quantisation. None: no migration.
    activation : ActivationSpec or str, optional
        Replace the GELU of every feed-forward intermediate
        (:func:`~sparsemac.sw.ffn_activation.sparsify_activations`; ``relu@S`` calibrates on
        `calibration` with `tokenizer`), so that the activations entering ``output.dense``
        are sparse. None leaves the model's activation as it is.

    Returns
    -------
    model : nn.Module
        The same object, its matched linears replaced. Its ``save_pretrained``, if it has
        one, now writes the offloaded model (:func:`~sparsemac.sw.checkpoint.save_offloaded`).
    report : OffloadReport
        Empty until the model runs; it fills in on every forward call.

    Raises
    ------
    ValueError
        If no linear matches (the message names the patterns and the model's linears), the
        method, scope or granularity is unknown, the sparsity is invalid (or not what an N:M
        pattern gives), a layer does not fit the device, or a calibrated method lacks its
        calibration text or tokenizer; or as
        :func:`~sparsemac.sw.ffn_activation.sparsify_activations` for `activation` (no
        feed-forward GELU to replace, another activation carried already). Nothing is
        replaced or pruned then.
    TypeError
        If `device` is not a Device.
    """
    if not isinstance(device, Device):
        raise TypeError(f"device must be a Device (see open_device), not {device!r}")
    method = parse_method(method)  # a bad method fails before the model is searched
    if granularity not in GRANULARITIES:
        raise InputError(f"granularity must be one of {GRANULARITIES}, not {granularity!r}")
    index = ColumnIndex(index)
    check_index(device.config, index)
    if activation is not None:
        activation = check_activation(model, activation, tokenizer=tokenizer,
                                      calibration=calibration)
    conv1d = conv1d_class()
    kinds = (nn.Linear,) if conv1d is None else (nn.Linear, conv1d)
    linears = [(name, _as_linear(module)) for name, module in require_linears(model, patterns,
                                                                              kinds)]
    weights = [linear.weight.detach().float() for _, linear in linears]
    found = [float((weight == 0).sum()) / weight.numel() for weight in weights]
    maxima = {}
    if smoothing is not None:  # activations of the model as given, before any pruning
        if calibration is None or tokenizer is None:
            raise InputError("smoothing needs calibration text and the model's tokenizer")
        maxima = activation_absmax(model, tokenizer, calibration, patterns)
    if not method.calibrated:
        masks, target = choose_masks(weights, sparsity, method, scope=scope, seed=seed)
    else:
        masks, target = _calibrated_masks(model, linears, device.config, sparsity, method,
                                          scope=scope, patterns=patterns,
                                          calibration=calibration, tokenizer=tokenizer)

    # Build every replacement before swapping any, so an error leaves the model untouched.
    replacements = []
    with (progress_bar(len(linears), "offload", "layer", leave=False) if progress
          else nullcontext()) as bar:
        for (name, linear), mask in zip(linears, masks):
            scales = (None if smoothing is None else smoothing_scales(
                maxima[name], linear.weight.detach().float() * mask, smoothing))
            replacements.append((name, OffloadedLinear.from_linear(
                linear, device, mask=mask, granularity=granularity, smoothing=scales)))
            if bar is not None:
                bar.update()
    if activation is not None:  # on the float linears, as pruned: relu@S calibrates here
        sparsify_activations(model, activation, tokenizer=tokenizer, calibration=calibration)
    # A linear fed by a sparse feed-forward activation skips its zeros on an array built for
    # it; a GELU's few zeros are not worth a pairs stream, and other arrays cannot skip them.
    sparse = model_activation(model).spec != "none" and device.config.dual_sparse
    fed = set(feed_forward_consumers(model)) if sparse else set()
    for name, module in replacements:
        module.dual = name in fed
        # A dual layer's pairs carry no column index: the delta index serves the others.
        module.index = ColumnIndex.CSR if module.dual else index
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, module)

    config = device.config
    report = OffloadReport(
        backend=device.name, config=config, method=method.text,
        sparsity_target=None if target is None else float(target), scope=scope, seed=seed,
        dense_measured=measure_dense,
        layers=[_layer_report(name, module, config, sparsity_found)
                for (name, module), sparsity_found in zip(replacements, found)],
        modules=[module for _, module in replacements], index=index,
        activation=model_activation(model).spec)
    for layer, module in zip(report.layers, report.modules):
        report._hooks.append(module.register_forward_hook(
            _recorder(layer, measure_dense, keep_sums)))
    if hasattr(model, "save_pretrained"):  # a transformers model, so transformers is loaded
        from .checkpoint import bind_save_pretrained

        bind_save_pretrained(model)
    return model, report


def run_on_host(model: nn.Module, report: OffloadReport) -> None:
    """Put the host's int8 twin (:meth:`Int8Linear.from_offloaded
    <sparsemac.sw.quantisation.Int8Linear.from_offloaded>`) in the place of each offloaded
    linear of `model`, in place, and stop `report` recording.

    The model's outputs stay bit-exact with the device's, at the host's speed: for scoring
    thousands of texts after the device has run a workload.
    """
    report.detach()
    for layer, module in zip(report.layers, report.modules):
        parent, _, child = layer.name.rpartition(".")
        setattr(model.get_submodule(parent), child, Int8Linear.from_offloaded(module))


def matmul_cycles(weights: CSRMatrix, tokens: int, config: ArrayConfig,
                  mode: Mode = Mode.SPARSE, index: ColumnIndex = ColumnIndex.CSR) -> int:
    """Cycles of one :meth:`Device.matmul <sparsemac.sw.device.Device.matmul>` call, predicted.

    The layer is split into jobs as the driver splits it (token blocks of ``config.max_tokens``,
    row tiles of ``config.max_out_features``, column tiles of ``config.max_in_features``:
    :func:`~sparsemac.sw.cycle_model.job_tiles`) and the exact cycle model's counts are added,
    so this is what the reference device reports, without computing any sums.

    Parameters
    ----------
    weights : CSRMatrix
        In dense mode only its shape matters.
    tokens : int
        Rows of activations, at least 1.
    config : ArrayConfig
    mode : Mode
    index : ColumnIndex
        Of a sparse job; ignored in dense mode.

    Returns
    -------
    int

    Raises
    ------
    ValueError
        If `tokens` is below 1.
    """
    if tokens < 1:
        raise InputError(f"a call needs at least one token, not {tokens!r}")
    rows, cols = weights.shape
    if Mode(mode) == Mode.DENSE:
        index = ColumnIndex.CSR
    return sum(job_cycles(tile_row_lengths(job, weights, config, index), job.cols, job.tokens,
                          config, mode).total
               for job in job_tiles(rows, cols, tokens, config))


def model_cycles(model: nn.Module, tokens: int, config: ArrayConfig, mode: Mode = Mode.SPARSE,
                 patterns: Sequence[str] = DEFAULT_BERT_PATTERNS) -> int:
    """Cycles of one call of every matching linear of `model` with `tokens` tokens, predicted
    as :func:`matmul_cycles` predicts each, on the int8 weights the offload would send (no
    SmoothQuant migration): what ``sparsemac bert --backend reference --smoothing none`` counts
    for a model already pruned, without running it. `model` is left unchanged; a ValueError
    says that no linear matches `patterns`, or that `tokens` is below 1.
    """
    linears = matching_linears(model, patterns)
    if not linears:
        raise InputError(f"no nn.Linear in the model matches the patterns {list(patterns)!r}")
    return sum(matmul_cycles(CSRMatrix.from_dense(quantise_weights(linear.weight.detach()).values),
                             tokens, config, mode)
               for _, linear in linears)


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
        raise InputError("the reports are of different layers: not the same model")
    sums, cycles = [], []
    for a, b in zip(reference.layers, other.layers):
        if len(a.sums) != len(b.sums) or a.calls != b.calls or not all(
                torch.equal(x, y) for x, y in zip(a.sums, b.sums)):
            sums.append(a.name)
        if (a.sparse_cycles, a.dense_cycles) != (b.sparse_cycles, b.dense_cycles):
            cycles.append(a.name)
    return CrossCheck(sums_mismatch=sums, cycles_mismatch=cycles)


# Internals --------------------------------------------------------------------------------------

def _calibrated_masks(model, linears, config, sparsity, calibrated, *, scope, patterns,
                      calibration, tokenizer):
    """Prune `linears` of `model` in place with a calibrated method; their keep-masks and the
    target sparsity. Every check comes before the first weight changes."""
    name = calibrated.text
    if scope != "local":
        raise InputError(f"{name} prunes each layer on its own: scope must be 'local', not "
                         f"{scope!r}")
    if calibration is None or tokenizer is None:
        raise InputError(f"{name} needs calibration text and the model's tokenizer")
    for layer, linear in linears:
        if not isinstance(model.get_submodule(layer), nn.Linear):
            raise InputError(f"{name} prunes nn.Linear layers only, and {layer} is a "
                             f"{type(model.get_submodule(layer)).__name__}")
        if linear.in_features > config.max_in_features:
            raise InputError(f"{layer} has {linear.in_features} input features but the array "
                             f"holds at most {config.max_in_features}")
    report = prune_calibrated(model, tokenizer, calibrated.kind, sparsity, calibration,
                              pattern=calibrated.pattern, lanes=config.lanes,
                              patterns=patterns)
    return [report.masks[layer] for layer, _ in linears], report.sparsity_target


def _as_linear(module):
    """`module` if an nn.Linear, else the nn.Linear a transformers Conv1D computes.

    Conv1D (GPT-2) computes ``x @ weight + bias`` with ``weight`` of shape ``(in, out)``: the
    linear with the transposed weight (a view, not a copy) is the same function.
    """
    if isinstance(module, nn.Linear):
        return module
    in_features, out_features = module.weight.shape
    linear = nn.Linear(in_features, out_features, bias=module.bias is not None, device="meta")
    linear.weight = nn.Parameter(module.weight.detach().t(), requires_grad=False)
    if module.bias is not None:
        linear.bias = nn.Parameter(module.bias.detach(), requires_grad=False)
    return linear


def _layer_report(name, module, config, sparsity_found):
    weights = module.weights
    return LayerReport(name=name, shape=weights.shape, sparsity_found=sparsity_found,
                       nnz=weights.nnz,
                       sparse_weight_bytes=weight_stream_bytes(config, weights, Mode.SPARSE,
                                                               module.index),
                       dense_weight_bytes=weight_stream_bytes(config, weights, Mode.DENSE),
                       stats=module.stats, dual=module.dual)


def _recorder(layer, measure_dense, keep_sums):
    """A forward hook recording in ``layer`` what its OffloadedLinear's stats do not hold: the
    call's tokens, its zero activations, its sums (with ``keep_sums``) and its dense-mode
    cycles."""

    def record(module, args, _output):
        sums = module.last_sums
        layer.call_tokens.append(sums.shape[0])
        # The very values the call sent: quantisation is a pure function of the input.
        activations = module.quantise_input(args[0]).values
        layer.activations += activations.numel()
        layer.zero_activations += int((activations == 0).sum())
        if keep_sums:
            layer.sums.append(sums)
        if module.dual:
            layer.dual_weight_only_cycles += matmul_cycles(
                module.weights, sums.shape[0], module.device.config, Mode.SPARSE, module.index)
        if measure_dense:
            result = module.device.matmul(module.weights, activations, Mode.DENSE)
            if not torch.equal(result.sums, sums):
                raise DeviceError(f"{layer.name}: the device's dense-mode sums differ from its "
                                  "sparse-mode sums for the same call")
            layer.dense_cycles += result.cycles
        else:
            layer.dense_cycles += matmul_cycles(module.weights, sums.shape[0],
                                                module.device.config, Mode.DENSE)

    return record


def _finite(value):
    """JSON has no NaN or infinity: None stands for them."""
    return value if np.isfinite(value) else None
