"""Symmetric int8 quantisation of weights (per output row) and activations (dynamic), with an
optional SmoothQuant-style migration of activation outliers into the weights.

A real value ``x`` is stored as ``q = clamp(round(x / scale), -127, 127)`` and read back as
``q * scale``. The range is symmetric, [-127, 127]: -128 is never produced, so negating a value
never saturates and the scale maps the largest magnitude to exactly +-127 on both sides.
Rounding is half to even (``torch.round``), which has no bias for values that sit exactly
between two steps.

BERT's activations have a few outlier channels, which one scale per token has to cover. The
migration of SmoothQuant (Xiao et al. 2023) divides input channel ``j`` of the activations by
``s_j`` and multiplies weight column ``j`` by it: ``(X / s)(W * s)^T = X W^T`` exactly in real
arithmetic, while both factors become easier to quantise. The host applies both before
quantising, so the array still multiplies int8 by int8 into int32. :class:`Int8Linear` computes
that integer path on the host, bit-exact with the golden model, to measure it on a whole model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ..hw.errors import InputError

__all__ = [
    "DEFAULT_GRANULARITY",
    "DEFAULT_SMOOTHING_ALPHA",
    "ErrorMeasure",
    "GRANULARITIES",
    "Int8Linear",
    "QMAX",
    "QuantisedTensor",
    "approximation_error",
    "dequantise_sums",
    "quantisation_error",
    "quantise_activations",
    "quantise_input",
    "quantise_model",
    "quantise_weights",
    "smoothing_scales",
]

#: Largest magnitude of a quantised value: the symmetric int8 range is [-QMAX, QMAX].
QMAX = 127

#: Activation scale granularities: one scale per tensor, or one per token (row of the last dim).
GRANULARITIES = ("tensor", "token")

#: The finer of the two activation scales: one per token costs the array nothing (the host
#: dequantises per token). MiniLM on the task: cosine 0.997 to float, 0.5 points of accuracy
#: (docs/results.md, "Fidelity on the task").
DEFAULT_GRANULARITY = "token"

#: SmoothQuant's migration strength: 0 leaves the activations alone, 1 moves all their range
#: into the weights. The commands that offload a whole model (``bert``, ``compare``) migrate
#: with it by default: on MiniLM it lifts the int8 embedding cosine from 0.9973 to 0.9990, the
#: best of 0.5 to 0.9 (docs/results.md, "Accuracy on a fine-tuned task model").
DEFAULT_SMOOTHING_ALPHA = 0.6

# Scale of an all-zero row or tensor: any positive value maps zeros to zeros; 1.0 is exact.
_ZERO_SCALE = 1.0


@dataclass
class QuantisedTensor:
    """int8 values with the floating-point scale that turns them back into real numbers.

    Raises
    ------
    TypeError
        If ``values`` is not int8 or ``scale`` is not a floating-point tensor.
    ValueError
        If ``scale`` does not broadcast against ``values`` or is not positive and finite.
    """

    #: ``torch.int8`` values in [-127, 127].
    values: torch.Tensor
    #: Positive floating-point scales broadcastable against `values`: shape ``(rows, 1)`` for
    #: weights, ``()`` for a per-tensor or ``(..., 1)`` for a per-token activation scale.
    scale: torch.Tensor

    def __post_init__(self):
        if not isinstance(self.values, torch.Tensor) or self.values.dtype != torch.int8:
            raise TypeError(f"values must be a torch.int8 tensor, got {_describe(self.values)}")
        if not isinstance(self.scale, torch.Tensor) or not self.scale.is_floating_point():
            raise TypeError(f"scale must be a floating-point tensor, got {_describe(self.scale)}")
        try:
            shape = torch.broadcast_shapes(self.values.shape, self.scale.shape)
        except RuntimeError:
            shape = None
        if shape != self.values.shape:
            raise InputError(f"scale of shape {tuple(self.scale.shape)} does not broadcast "
                             f"against values of shape {tuple(self.values.shape)}")
        if not bool((torch.isfinite(self.scale) & (self.scale > 0)).all()):
            raise InputError("scale must be positive and finite")

    def dequantise(self) -> torch.Tensor:
        """The real values ``values * scale``, in the dtype of ``scale``."""
        return self.values.to(self.scale.dtype) * self.scale


@dataclass
class ErrorMeasure:
    """How far an approximation (a quantised tensor, an int8 layer's output) is from what it
    approximates."""

    #: Largest absolute error of one element.
    max_abs: float
    #: Root mean square error.
    rms: float
    #: ``||error||_2 / ||original||_2``; 0 when both are zero, inf when only the original is.
    relative: float


def _describe(value):
    return str(value.dtype) if isinstance(value, torch.Tensor) else type(value).__name__


def _check_real(x, what):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, not {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{what} must be a floating-point tensor, got {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise InputError(f"{what} contains NaN or infinite values; they have no int8 value")


def _quantise(x, amax):
    """Quantise ``x`` with scales ``amax / QMAX`` (``amax`` broadcastable against ``x``)."""
    # float64 input keeps its precision; half types are widened so the scale is exact enough.
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    amax = amax.to(dtype)
    scale = torch.where(amax > 0, amax / QMAX, torch.full_like(amax, _ZERO_SCALE))
    # torch.round rounds half to even; the clamp only catches x / scale landing a rounding
    # error above 127 for the largest element.
    values = torch.round(x.to(dtype) / scale).clamp_(-QMAX, QMAX).to(torch.int8)
    return QuantisedTensor(values=values, scale=scale)


def quantise_weights(weight: torch.Tensor) -> QuantisedTensor:
    """Quantise a weight matrix with one scale per output row.

    The scale of row ``r`` is ``max|weight[r]| / 127``, so the largest weight of each row maps
    to +-127. An all-zero row (for example a fully pruned one) gets scale 1.0.

    Parameters
    ----------
    weight : torch.Tensor
        Floating-point ``(rows, cols)`` matrix.

    Returns
    -------
    QuantisedTensor
        int8 values of the same shape and a ``(rows, 1)`` scale (float64 for float64 input,
        else float32).

    Raises
    ------
    TypeError
        If ``weight`` is not a floating-point tensor.
    ValueError
        If ``weight`` is not 2-D or contains NaN or infinity.
    """
    _check_real(weight, "weight")
    if weight.dim() != 2:
        raise InputError(f"weight must be 2-D (rows, cols), got shape {tuple(weight.shape)}")
    weight = weight.detach()
    amax = weight.abs().amax(dim=1, keepdim=True) if weight.shape[1] else \
        torch.zeros(weight.shape[0], 1, dtype=weight.dtype)
    return _quantise(weight, amax)


def quantise_activations(x: torch.Tensor, granularity: str = "tensor") -> QuantisedTensor:
    """Quantise activations with dynamic scales computed from ``x`` itself.

    Parameters
    ----------
    x : torch.Tensor
        Floating-point ``(..., features)`` tensor, at least 1-D.
    granularity : {"tensor", "token"}
        ``"tensor"``: one scale ``max|x| / 127`` (shape ``()``). ``"token"``: one scale per
        token, i.e. per row of the last dimension (shape ``(..., 1)``). A zero tensor or token
        gets scale 1.0.

    Returns
    -------
    QuantisedTensor

    Raises
    ------
    TypeError
        If ``x`` is not a floating-point tensor.
    ValueError
        If ``x`` is 0-D or contains NaN or infinity, or ``granularity`` is unknown.
    """
    _check_real(x, "activations")
    if granularity not in GRANULARITIES:
        raise InputError(f"granularity must be one of {GRANULARITIES!r}, not {granularity!r}")
    if x.dim() == 0:
        raise InputError("activations must have at least one dimension (features)")
    x = x.detach()
    if x.numel() == 0:
        amax = torch.zeros((*x.shape[:-1], 1) if granularity == "token" else (), dtype=x.dtype)
    elif granularity == "tensor":
        amax = x.abs().amax()
    else:
        amax = x.abs().amax(dim=-1, keepdim=True)
    return _quantise(x, amax)


def quantisation_error(original: torch.Tensor, quantised: QuantisedTensor) -> ErrorMeasure:
    """Compare a tensor with its quantised form.

    Parameters
    ----------
    original : torch.Tensor
        The floating-point tensor that was quantised.
    quantised : QuantisedTensor
        Its quantised form, of the same shape.

    Returns
    -------
    ErrorMeasure

    Raises
    ------
    ValueError
        If the shapes differ.
    """
    return approximation_error(original, quantised.dequantise())


def approximation_error(reference: torch.Tensor, approximation: torch.Tensor
                        ) -> ErrorMeasure:
    """The error of any real approximation of a tensor, computed in float64.

    Parameters
    ----------
    reference, approximation : torch.Tensor
        Real tensors of the same shape.

    Returns
    -------
    ErrorMeasure
        All zero for empty tensors.

    Raises
    ------
    ValueError
        If the shapes differ.
    """
    if tuple(reference.shape) != tuple(approximation.shape):
        raise InputError(f"shapes differ: reference {tuple(reference.shape)}, "
                         f"approximation {tuple(approximation.shape)}")
    reference = reference.detach().to(torch.float64)
    error = approximation.detach().to(torch.float64) - reference
    if error.numel() == 0:
        return ErrorMeasure(max_abs=0.0, rms=0.0, relative=0.0)
    error_norm = float(torch.linalg.vector_norm(error))
    reference_norm = float(torch.linalg.vector_norm(reference))
    if reference_norm:
        relative = error_norm / reference_norm
    else:
        relative = 0.0 if error_norm == 0 else float("inf")
    return ErrorMeasure(max_abs=float(error.abs().max()),
                             rms=float(error.pow(2).mean().sqrt()), relative=relative)


def smoothing_scales(activation_absmax: torch.Tensor, weight: torch.Tensor,
                     alpha: float = DEFAULT_SMOOTHING_ALPHA) -> torch.Tensor:
    """SmoothQuant's per-input-channel migration factors ``s``.

    ``s_j = max|X_j| ** alpha / max|W[:, j]| ** (1 - alpha)``: dividing the activations' channel
    ``j`` by ``s_j`` and multiplying the weight's column ``j`` by it leaves ``X W^T`` unchanged
    while it evens out the channels' ranges.

    Parameters
    ----------
    activation_absmax : torch.Tensor
        ``max|X_j|`` of each input channel over calibration inputs, shape ``(cols,)``.
    weight : torch.Tensor
        The ``(rows, cols)`` float weight.
    alpha : float
        Migration strength in [0, 1].

    Returns
    -------
    torch.Tensor
        float32 factors of shape ``(cols,)``, positive and finite; 1.0 for a channel whose
        activations or weights are all zero (nothing to migrate).

    Raises
    ------
    ValueError
        If `alpha` is outside [0, 1], the shapes disagree, or an input is not finite or negative.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise InputError(f"alpha must be a number in [0, 1], not {alpha!r}")
    _check_real(weight, "weight")
    _check_real(activation_absmax, "activation_absmax")
    if weight.dim() != 2 or tuple(activation_absmax.shape) != (weight.shape[1],):
        raise InputError(f"activation_absmax must have shape ({weight.shape[-1]},) for a weight "
                         f"of shape {tuple(weight.shape)}, got {tuple(activation_absmax.shape)}")
    if bool((activation_absmax < 0).any()):
        raise InputError("activation_absmax must be non-negative (a maximum of magnitudes)")
    x_max = activation_absmax.detach().to(torch.float64)
    w_max = weight.detach().abs().amax(dim=0).to(torch.float64)
    usable = (x_max > 0) & (w_max > 0)
    scales = torch.ones_like(x_max)
    scales[usable] = x_max[usable].pow(alpha) / w_max[usable].pow(1 - alpha)
    return scales.to(torch.float32)


class Int8Linear(nn.Module):
    """A linear computed through the array's int8 path on the host, for whole-model measurement.

    ``forward`` divides the input by the migration factors (if any), quantises it dynamically,
    multiplies by the int8 weight exactly (in float32 blocks of columns short enough that every
    partial sum is an exact integer), and dequantises as ``sum * activation_scale * weight_row_scale`` in float64
    plus the float bias: the arithmetic of
    :class:`~sparsemac.sw.offloaded_linear.OffloadedLinear`, whose device sums equal
    :func:`~sparsemac.sw.golden.golden_matmul`'s, without a device.

    Parameters
    ----------
    linear : nn.Linear
        Its current (possibly pruned) weight and bias are used.
    granularity : {"tensor", "token"}
    smoothing : torch.Tensor or None
        Migration factors ``s`` of shape ``(in_features,)`` (see :func:`smoothing_scales`).

    Attributes
    ----------
    quantised : QuantisedTensor
        int8 values of ``linear.weight * s`` with row scales.
    last_sums : torch.Tensor or None
        int32 sums of the last call, ``[tokens, out_features]``.
    """

    def __init__(self, linear: nn.Linear, granularity: str = DEFAULT_GRANULARITY,
                 smoothing: torch.Tensor | None = None):
        weight = linear.weight.detach().float()
        if smoothing is not None:
            if tuple(smoothing.shape) != (linear.in_features,):
                raise InputError(f"smoothing must have shape ({linear.in_features},), got "
                                 f"{tuple(smoothing.shape)}")
            smoothing = smoothing.detach().float()
            weight = weight * smoothing
        self._hold(quantise_weights(weight), linear.bias, granularity, smoothing)

    @classmethod
    def from_offloaded(cls, module: nn.Module) -> Int8Linear:
        """The host twin of an :class:`~sparsemac.sw.offloaded_linear.OffloadedLinear`: the same
        int8 weights, row scales, bias, granularity and migration, so its outputs equal the
        offloaded module's bit for bit (which equal the device's)."""
        host = cls.__new__(cls)
        host._hold(QuantisedTensor(module.weights.to_dense(), module.weight_scale),
                   module.bias, module.granularity, module.smoothing)
        return host

    def _hold(self, quantised, bias, granularity, smoothing):
        super().__init__()
        if granularity not in GRANULARITIES:
            raise InputError(f"granularity must be one of {GRANULARITIES!r}, not {granularity!r}")
        self.out_features, self.in_features = quantised.values.shape
        self.granularity = granularity
        self.smoothing = smoothing
        self.quantised = quantised
        self.bias = None if bias is None else bias.detach().float().clone()
        self.last_sums = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activations = quantise_input(x, self.granularity, self.smoothing)
        self.last_sums = _integer_matmul(activations.values, self.quantised.values)
        return dequantise_sums(self.last_sums, activations.scale, self.quantised.scale,
                               self.bias, x)


# float32 holds every integer up to 2**24 exactly, and a product of two int8 values is at most
# 2**14 in magnitude: a dot product over this many columns, and each of its partial sums, is
# exact in float32 whatever order BLAS adds in.
_EXACT_FLOAT32_COLUMNS = 2 ** 24 // 2 ** 14


def _integer_matmul(activations: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``activations @ weights.T`` of int8 tensors, exactly, as int32 (float32 BLAS in column
    blocks whose sums are exact, added in int64: twice as fast as a float64 product)."""
    total = torch.zeros(activations.shape[0], weights.shape[0], dtype=torch.int64)
    for start in range(0, activations.shape[1], _EXACT_FLOAT32_COLUMNS):
        stop = start + _EXACT_FLOAT32_COLUMNS
        total += (activations[:, start:stop].float() @ weights[:, start:stop].float().T).long()
    return total.to(torch.int32)


def quantise_input(x: torch.Tensor, granularity: str,
                   smoothing: torch.Tensor | None = None) -> QuantisedTensor:
    """The int8 activations the array receives for a linear's input.

    Parameters
    ----------
    x : torch.Tensor
        Floating-point ``(..., in_features)``.
    granularity : {"tensor", "token"}
    smoothing : torch.Tensor or None
        Migration factors ``(in_features,)``: ``x`` is divided by them before quantising.

    Returns
    -------
    QuantisedTensor
        Values of shape ``(tokens, in_features)``, ``tokens`` being every leading index.
    """
    tokens = x.detach().reshape(-1, x.shape[-1]).float()
    if smoothing is not None:
        tokens = tokens / smoothing
    return quantise_activations(tokens, granularity)


def dequantise_sums(sums: torch.Tensor, activation_scale: torch.Tensor,
                    weight_scale: torch.Tensor, bias: torch.Tensor | None,
                    like: torch.Tensor) -> torch.Tensor:
    """A linear's real output from the array's int32 sums.

    ``sums * activation_scale * weight_row_scale`` in float64 (which holds every int32 sum
    exactly, so dequantisation adds no error of its own), cast to float32, plus the bias.

    Parameters
    ----------
    sums : torch.Tensor
        int32 ``(tokens, out_features)``.
    activation_scale : torch.Tensor
        ``()`` or ``(tokens, 1)``.
    weight_scale : torch.Tensor
        ``(out_features, 1)``.
    bias : torch.Tensor or None
    like : torch.Tensor
        The input ``(..., in_features)``: the output takes its leading shape and dtype.

    Returns
    -------
    torch.Tensor
        ``(..., out_features)``.
    """
    output = (sums.double() * activation_scale.double().reshape(-1, 1)
              * weight_scale.double().reshape(1, -1)).float()
    if bias is not None:
        output = output + bias
    return output.reshape(*like.shape[:-1], sums.shape[1]).to(like.dtype)


def quantise_model(model: nn.Module, patterns: Iterable[str], *,
                   granularity: str = DEFAULT_GRANULARITY,
                   smoothing: dict[str, torch.Tensor] | None = None) -> list[str]:
    """Replace every linear whose qualified name matches a pattern by an :class:`Int8Linear`.

    Parameters
    ----------
    model : nn.Module
        Changed in place.
    patterns : iterable of str
        Regular expressions (``re.search``), e.g. ``pruning.DEFAULT_BERT_PATTERNS``.
    granularity : {"tensor", "token"}
    smoothing : dict of str to torch.Tensor, optional
        Migration factors by qualified name; layers not in it are not migrated.

    Returns
    -------
    list of str
        The replaced linears' names, in module order.

    Raises
    ------
    ValueError
        If no linear matches or the granularity is unknown. Nothing is replaced then.
    """
    from .pruning import matching_linears

    patterns = tuple(patterns)
    linears = matching_linears(model, patterns)
    if not linears:
        raise InputError(f"no nn.Linear matches the patterns {list(patterns)!r}")
    smoothing = smoothing or {}
    replacements = [(name, Int8Linear(linear, granularity, smoothing.get(name)))
                    for name, linear in linears]
    for name, module in replacements:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, module)
    return [name for name, _ in replacements]
