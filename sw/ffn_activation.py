"""Sparse activations in a BERT's feed-forward intermediate, and how sparse they really are.

:func:`sparsify_activations` puts a :class:`SparseActivation` in the place of GELU
(``intermediate.intermediate_act_fn`` of each Hugging Face ``BertIntermediate``), as an
:class:`~sparsemac.sw.activation_sparsity.ActivationSpec` says. Everything downstream sees the
sparse activations: the float model, :class:`~sparsemac.sw.quantisation.Int8Linear` and an
:class:`~sparsemac.sw.offloaded_linear.OffloadedLinear` on a device, whose per-token int8
quantisation keeps a zero exactly zero (``round(0 / scale) = 0``; SmoothQuant's migration
divides, so zeros stay zero there too).

:func:`measure_activation_sparsity` counts, on held-out text, the exactly-zero int8 activations
entering each ``output.dense``: the figure a zero-skipping array gains from, never assumed from
the spec.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .activation_sparsity import (ActivationMismatchError, ActivationSpec, ActivationSpecError,
                                  parse_activation)
from .pruning import _folded_names
from .quantisation import DEFAULT_GRANULARITY, quantise_input

__all__ = ["FeedForwardError", "SparseActivation", "ActivationSetting",
           "LayerActivationSparsity", "ActivationSparsityReport", "feed_forward_layers",
           "feed_forward_consumers",
           "model_activation", "sparsify_activations", "check_activation", "calibrate_thresholds",
           "measure_activation_sparsity", "CONFIG_KEY", "record_activation",
           "restore_activation"]

#: The key of a Hugging Face ``config.json`` under which a model's activation is recorded, as
#: :class:`ActivationSetting`'s ``spec`` and ``thresholds`` (absent: GELU as trained).
CONFIG_KEY = "sparsemac_activation"

# The linear that consumes an intermediate's activations, relative to the intermediate's parent.
_CONSUMER = "output.dense"
_ACT = "intermediate_act_fn"


class FeedForwardError(ActivationSpecError):
    """The model has no BERT feed-forward GELU to replace (exit status 2)."""


class SparseActivation(nn.Module):
    """GELU's replacement in one feed-forward intermediate.

    Parameters
    ----------
    spec : ActivationSpec
        ``relu`` or ``topk`` (``none`` needs no module).
    base : nn.Module
        The GELU it replaces: ``topk`` keeps the largest of its outputs.
    threshold : float or None
        ``relu``'s threshold; by default the spec's (``relu@S`` needs its calibrated one).
    """

    def __init__(self, spec: ActivationSpec, base: nn.Module, threshold: float | None = None):
        super().__init__()
        if not spec.sparse:
            raise ActivationSpecError("activation none replaces nothing: keep GELU")
        if spec.kind == "relu":
            threshold = spec.threshold if threshold is None else float(threshold)
            if threshold is None or not threshold >= 0:
                raise ActivationSpecError(f"{spec} needs a threshold >= 0, not {threshold!r}")
        self.spec = spec
        self.base = base
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.kind == "relu":
            return torch.where(x > self.threshold, x, torch.zeros((), dtype=x.dtype))
        y = self.base(x)
        values, indices = y.topk(self.spec.kept(y.shape[-1]), dim=-1, sorted=False)
        return torch.zeros_like(y).scatter(-1, indices, values)

    def extra_repr(self) -> str:
        threshold = "" if self.threshold is None else f", threshold={self.threshold:.6g}"
        return f"spec={self.spec}{threshold}"


@dataclass(frozen=True)
class ActivationSetting:
    """What a model's feed-forward intermediates compute: what checkpoints record."""

    #: The canonical spec text (``str(ActivationSpec)``).
    spec: str
    #: Qualified names of the intermediates, in module order.
    layers: tuple[str, ...]
    #: ``relu``: each layer's threshold, in the order of `layers`; None otherwise.
    thresholds: tuple[float, ...] | None = None


@dataclass(frozen=True)
class LayerActivationSparsity:
    """Exactly-zero int8 activations entering one linear."""

    #: The consuming linear, e.g. ``encoder.layer.0.output.dense``.
    name: str
    #: Exactly-zero int8 activations counted.
    zeros: int
    #: Activations counted (tokens x input features, padding left out).
    values: int

    @property
    def sparsity(self) -> float:
        """``zeros / values``; NaN before anything was counted."""
        return self.zeros / self.values if self.values else float("nan")


@dataclass
class ActivationSparsityReport:
    """What :func:`measure_activation_sparsity` counted."""

    #: The model's activation (``str(ActivationSpec)``).
    activation: str
    #: Texts run.
    texts: int
    #: Their tokens (padding left out).
    tokens: int
    #: One per ``output.dense``, in module order.
    layers: list[LayerActivationSparsity] = field(default_factory=list)

    @property
    def sparsity(self) -> float:
        """Zeros over every layer's activations."""
        values = sum(layer.values for layer in self.layers)
        return sum(layer.zeros for layer in self.layers) / values if values else float("nan")

    def as_json(self) -> dict:
        """JSON-ready, the overall and per-layer sparsities included."""
        return {"activation": self.activation, "texts": self.texts, "tokens": self.tokens,
                "sparsity": self.sparsity,
                "layers": [{"name": layer.name, "zeros": layer.zeros, "values": layer.values,
                            "sparsity": layer.sparsity} for layer in self.layers]}


def feed_forward_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The BERT feed-forward intermediates of `model` whose activation can be replaced.

    Parameters
    ----------
    model : nn.Module

    Returns
    -------
    list of (str, nn.Module)
        Each ``BertIntermediate``-like module (one with ``intermediate_act_fn`` and an
        ``output.dense`` linear beside it) by qualified name, in module order.

    Raises
    ------
    FeedForwardError
        If there is none (the message names the activation modules the model has instead), or
        one's activation is neither a GELU nor already a :class:`SparseActivation` (the
        message names it).
    """
    layers = [(name, module) for name, module in model.named_modules()
              if isinstance(getattr(module, _ACT, None), nn.Module)]
    if not layers:
        found = [f"{name} ({type(module).__name__})" for name, module in model.named_modules()
                 if _looks_like_activation(module)]
        raise FeedForwardError(
            f"this {type(model).__name__} has no BERT feed-forward intermediate "
            f"(a module with {_ACT}, as BertIntermediate) whose GELU could be replaced; "
            + (f"its activation modules are {_folded_names(found, 4)}" if found
               else "it has no activation module at all"))
    for name, module in layers:
        act = getattr(module, _ACT)
        if not isinstance(act, SparseActivation) and "gelu" not in type(act).__name__.lower():
            raise FeedForwardError(f"{name}.{_ACT} is a {type(act).__name__}, not a GELU: only "
                                   "a GELU feed-forward activation is replaced")
        _consumer(model, name)
    return layers


def feed_forward_consumers(model: nn.Module) -> list[str]:
    """The qualified names of the linears the feed-forward activations enter (each
    ``output.dense``), in module order.

    Raises
    ------
    FeedForwardError
        As :func:`feed_forward_layers`.
    """
    return [_consumer(model, name) for name, _ in feed_forward_layers(model)]


def model_activation(model: nn.Module) -> ActivationSetting:
    """The activation `model` computes now: ``none`` when no intermediate was replaced.

    Raises
    ------
    ActivationMismatchError
        If its intermediates were made sparse in different ways.
    """
    replaced = [(name, getattr(module, _ACT)) for name, module in model.named_modules()
                if isinstance(getattr(module, _ACT, None), SparseActivation)]
    if not replaced:
        return ActivationSetting(spec="none", layers=())
    specs = {act.spec for _, act in replaced}
    if len(specs) != 1:
        raise ActivationMismatchError(f"the intermediates carry {len(specs)} different "
                                      f"activations: {', '.join(sorted(map(str, specs)))}")
    spec = specs.pop()
    thresholds = (tuple(act.threshold for _, act in replaced) if spec.kind == "relu" else None)
    return ActivationSetting(spec=str(spec), layers=tuple(name for name, _ in replaced),
                             thresholds=thresholds)


def sparsify_activations(model: nn.Module, spec: ActivationSpec | str, *,
                         tokenizer=None, calibration: Sequence[str] | None = None,
                         thresholds: Sequence[float] | None = None) -> ActivationSetting:
    """Replace the GELU of every feed-forward intermediate of `model`, in place.

    Parameters
    ----------
    model : nn.Module
        A Hugging Face BERT (``BertModel`` or a ``BertFor...``), float or offloaded.
    spec : ActivationSpec or str
        As :func:`~sparsemac.sw.activation_sparsity.parse_activation` reads it. ``none``
        changes nothing. A model that already carries `spec` is left as it is.
    tokenizer : transformers.PreTrainedTokenizerFast, optional
    calibration : sequence of str, optional
        ``relu@S``: the text its thresholds are calibrated on (:func:`calibrate_thresholds`),
        with the model's tokenizer; keep it apart from evaluation text.
    thresholds : sequence of float, optional
        ``relu@S``: per-layer thresholds found before (a checkpoint's), instead of calibrating.

    Returns
    -------
    ActivationSetting
        What the model now computes.

    Raises
    ------
    FeedForwardError
        As :func:`feed_forward_layers` (not for ``none``).
    ActivationMismatchError
        If the model already carries another activation.
    ActivationSpecError
        If `spec` does not parse, ``relu@S`` has neither calibration text and tokenizer nor
        thresholds, or the thresholds are not one per layer, each >= 0. Nothing is replaced
        after any error.
    """
    spec, layers = _checked(model, spec, tokenizer, calibration, thresholds)
    if layers is None:
        return model_activation(model)
    if spec.calibrated and thresholds is None:
        thresholds = calibrate_thresholds(model, tokenizer, calibration, spec.target)
    elif spec.kind == "relu" and thresholds is None:
        thresholds = [spec.threshold] * len(layers)
    _check_thresholds(spec, thresholds, len(layers))
    for index, (_, module) in enumerate(layers):
        setattr(module, _ACT, SparseActivation(
            spec, getattr(module, _ACT), None if thresholds is None else thresholds[index]))
    return model_activation(model)


def check_activation(model: nn.Module, spec: ActivationSpec | str, *, tokenizer=None,
                     calibration: Sequence[str] | None = None,
                     thresholds: Sequence[float] | None = None) -> ActivationSpec:
    """What :func:`sparsify_activations` would refuse, checked without changing `model`.

    Returns
    -------
    ActivationSpec
        `spec`, parsed.

    Raises
    ------
    FeedForwardError, ActivationMismatchError, ActivationSpecError
        As :func:`sparsify_activations`.
    """
    spec, layers = _checked(model, spec, tokenizer, calibration, thresholds)
    if layers is not None and thresholds is not None:
        _check_thresholds(spec, thresholds, len(layers))
    return spec


def record_activation(model: nn.Module) -> ActivationSetting:
    """Record the activation `model` computes in ``model.config`` under :data:`CONFIG_KEY`, so
    that its ``config.json`` carries it (nothing is recorded for ``none``).

    Returns
    -------
    ActivationSetting
        What was recorded.
    """
    setting = model_activation(model)
    if setting.spec == "none":
        model.config.__dict__.pop(CONFIG_KEY, None)
    else:
        thresholds = None if setting.thresholds is None else list(setting.thresholds)
        setattr(model.config, CONFIG_KEY, {"spec": setting.spec, "thresholds": thresholds})
    return setting


def restore_activation(model: nn.Module, where: str) -> ActivationSetting:
    """Make `model` compute the activation its ``config`` records (see
    :func:`record_activation`); a model whose config records none is left as it is.

    Parameters
    ----------
    model : nn.Module
        A BERT just built from its config and weights.
    where : str
        Names the checkpoint in messages.

    Returns
    -------
    ActivationSetting

    Raises
    ------
    ActivationSpecError
        If the record is not a spec with its thresholds, or does not fit the model (the
        message names `where`).
    """
    recorded = getattr(model.config, CONFIG_KEY, None)
    if recorded is None:
        return model_activation(model)
    try:
        return sparsify_activations(model, recorded["spec"],
                                    thresholds=recorded.get("thresholds"))
    except (TypeError, KeyError, AttributeError, ValueError) as error:
        raise ActivationSpecError(f"{where}: config.json {CONFIG_KEY} {recorded!r}: "
                                  f"{error}") from error


def calibrate_thresholds(model: nn.Module, tokenizer, texts: Sequence[str],
                         target: float) -> list[float]:
    """Per-intermediate ReLU thresholds at which a fraction `target` of the inputs are zeroed.

    Each threshold is the smallest GELU input of its intermediate at or below which at least
    a fraction `target` of the inputs fall, over the tokens of `texts` (one text at a time, so
    no padding counts) in the model as given; at least 0.

    Parameters
    ----------
    model : nn.Module
        With GELU still in place.
    tokenizer : transformers.PreTrainedTokenizerFast
    texts : sequence of str
    target : float
        In (0, 1).

    Returns
    -------
    list of float
        One per :func:`feed_forward_layers` entry, in its order.
    """
    layers = feed_forward_layers(model)
    captured: list[list[torch.Tensor]] = [[] for _ in layers]
    handles = [getattr(module, _ACT).register_forward_pre_hook(
        lambda _module, args, store=store: store.append(args[0].detach().flatten()))
        for (_, module), store in zip(layers, captured)]
    try:
        _run_texts(model, tokenizer, texts, batch_size=1)
    finally:
        for handle in handles:
            handle.remove()
    return [max(0.0, float(np.quantile(torch.cat(values).double().numpy(), target,
                                             method="higher")))
            for values in captured]


def measure_activation_sparsity(model: nn.Module, tokenizer, texts: Sequence[str], *,
                                granularity: str = DEFAULT_GRANULARITY,
                                batch_size: int = 32) -> ActivationSparsityReport:
    """Count the exactly-zero int8 activations entering each ``output.dense`` on `texts`.

    The activations are quantised as the linear quantises them: an
    :class:`~sparsemac.sw.offloaded_linear.OffloadedLinear` or
    :class:`~sparsemac.sw.quantisation.Int8Linear` with its own granularity and migration,
    a float ``nn.Linear`` per `granularity`, as it would be offloaded.

    Parameters
    ----------
    model : nn.Module
        A BERT as :func:`feed_forward_layers` finds its intermediates, sparse or not.
    tokenizer : transformers.PreTrainedTokenizerFast
    texts : sequence of str
        Held-out text (the task's test or calibration split), never training text.
    granularity : {"tensor", "token"}
        For float linears.
    batch_size : int
        Texts a forward pass; padding tokens are not counted.

    Returns
    -------
    ActivationSparsityReport

    Raises
    ------
    FeedForwardError
        As :func:`feed_forward_layers`.
    """
    names = feed_forward_consumers(model)
    counts = np.zeros((len(names), 2), dtype=np.int64)
    mask: list[torch.Tensor] = []

    def counter(index):
        def count(module, args):
            x = args[0].detach()
            quantised = quantise_input(x, getattr(module, "granularity", granularity),
                                       getattr(module, "smoothing", None)).values
            real = mask[0].reshape(-1).bool()
            counts[index] += (int((quantised[real] == 0).sum()), int(real.sum()) * x.shape[-1])
        return count

    handles = [model.get_submodule(name).register_forward_pre_hook(counter(index))
               for index, name in enumerate(names)]
    try:
        tokens = _run_texts(model, tokenizer, texts, batch_size, mask)
    finally:
        for handle in handles:
            handle.remove()
    return ActivationSparsityReport(
        activation=model_activation(model).spec, texts=len(texts), tokens=tokens,
        layers=[LayerActivationSparsity(name, int(zeros), int(values))
                for name, (zeros, values) in zip(names, counts)])


# Internals --------------------------------------------------------------------------------------

def _checked(model, spec, tokenizer, calibration, thresholds):
    """`spec` parsed, and the intermediates to replace (None when the model already carries
    `spec`, or `spec` is none on a model without a sparse activation)."""
    spec = parse_activation(spec)
    carried = model_activation(model)
    if carried.spec != "none" or not spec.sparse:
        if carried.spec != str(spec):
            raise ActivationMismatchError(f"the model already carries activation "
                                          f"{carried.spec}; it cannot be made {spec}")
        return spec, None
    layers = feed_forward_layers(model)
    if spec.calibrated and thresholds is None and (tokenizer is None or not calibration):
        raise ActivationSpecError(f"{spec} calibrates its thresholds: it needs calibration "
                                  "text and the model's tokenizer")
    return spec, layers


def _check_thresholds(spec, thresholds, count):
    if spec.kind != "relu":
        if thresholds is not None:
            raise ActivationSpecError(f"{spec} takes no thresholds")
        return
    if len(thresholds) != count or not all(float(value) >= 0 for value in thresholds):
        raise ActivationSpecError(f"{spec} needs {count} thresholds >= 0, one per "
                                  f"intermediate, not {list(thresholds)!r}")


def _run_texts(model, tokenizer, texts, batch_size, mask=None):
    """Run `texts` through `model` in eval mode without gradients; `mask`, if given, holds the
    attention mask of the batch running. Returns the tokens run, padding left out."""
    was_training = model.training
    model.eval()
    tokens = 0
    try:
        for start in range(0, len(texts), batch_size):
            inputs = tokenizer(list(texts[start:start + batch_size]), padding=True,
                               truncation=True, max_length=model.config.max_position_embeddings,
                               return_tensors="pt")
            if mask is not None:
                mask[:] = [inputs["attention_mask"]]
            tokens += int(inputs["attention_mask"].sum())
            with torch.no_grad():
                model(**inputs)
    finally:
        model.train(was_training)
    return tokens


def _consumer(model, name):
    """The qualified name of the linear consuming intermediate `name`'s activations."""
    parent = name.rpartition(".")[0]
    consumer = f"{parent}.{_CONSUMER}" if parent else _CONSUMER
    try:
        model.get_submodule(consumer)
    except AttributeError:
        raise FeedForwardError(f"{name} has no {consumer} beside it to feed: not a BERT "
                               "feed-forward block") from None
    return consumer


def _looks_like_activation(module):
    name = type(module).__name__
    return name.endswith("Activation") or isinstance(module, (nn.GELU, nn.ReLU, nn.SiLU,
                                                              nn.Tanh))

