"""Symmetric int8 quantisation of weights (per output row) and activations (dynamic).

A real value ``x`` is stored as ``q = clamp(round(x / scale), -127, 127)`` and read back as
``q * scale``. The range is symmetric, [-127, 127]: -128 is never produced, so negating a value
never saturates and the scale maps the largest magnitude to exactly +-127 on both sides.
Rounding is half to even (``torch.round``), which has no bias for values that sit exactly
between two steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "GRANULARITIES",
    "QMAX",
    "QuantisationError",
    "QuantisedTensor",
    "approximation_error",
    "quantisation_error",
    "quantise_activations",
    "quantise_weights",
]

#: Largest magnitude of a quantised value: the symmetric int8 range is [-QMAX, QMAX].
QMAX = 127

#: Activation scale granularities: one scale per tensor, or one per token (row of the last dim).
GRANULARITIES = ("tensor", "token")

# Scale of an all-zero row or tensor: any positive value maps zeros to zeros; 1.0 is exact.
_ZERO_SCALE = 1.0


@dataclass
class QuantisedTensor:
    """int8 values with the floating-point scale that turns them back into real numbers.

    Parameters
    ----------
    values : torch.Tensor
        ``torch.int8`` values in [-127, 127].
    scale : torch.Tensor
        Positive floating-point scales broadcastable against ``values``: shape ``(rows, 1)`` for
        weights, ``()`` for a per-tensor or ``(..., 1)`` for a per-token activation scale.

    Raises
    ------
    TypeError
        If ``values`` is not int8 or ``scale`` is not a floating-point tensor.
    ValueError
        If ``scale`` does not broadcast against ``values`` or is not positive and finite.
    """

    values: torch.Tensor
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
            raise ValueError(f"scale of shape {tuple(self.scale.shape)} does not broadcast "
                             f"against values of shape {tuple(self.values.shape)}")
        if not bool((torch.isfinite(self.scale) & (self.scale > 0)).all()):
            raise ValueError("scale must be positive and finite")

    def dequantise(self) -> torch.Tensor:
        """The real values ``values * scale``, in the dtype of ``scale``."""
        return self.values.to(self.scale.dtype) * self.scale


@dataclass
class QuantisationError:
    """How far a quantised tensor is from the original.

    Attributes
    ----------
    max_abs : float
        Largest absolute error of one element.
    rms : float
        Root mean square error.
    relative : float
        ``||error||_2 / ||original||_2``; 0 when both are zero, inf when only the original is.
    """

    max_abs: float
    rms: float
    relative: float


def _describe(value):
    return str(value.dtype) if isinstance(value, torch.Tensor) else type(value).__name__


def _check_real(x, what):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, not {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{what} must be a floating-point tensor, got {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{what} contains NaN or infinite values; they have no int8 value")


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
        raise ValueError(f"weight must be 2-D (rows, cols), got shape {tuple(weight.shape)}")
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
        raise ValueError(f"granularity must be one of {GRANULARITIES!r}, not {granularity!r}")
    if x.dim() == 0:
        raise ValueError("activations must have at least one dimension (features)")
    x = x.detach()
    if x.numel() == 0:
        amax = torch.zeros((*x.shape[:-1], 1) if granularity == "token" else (), dtype=x.dtype)
    elif granularity == "tensor":
        amax = x.abs().amax()
    else:
        amax = x.abs().amax(dim=-1, keepdim=True)
    return _quantise(x, amax)


def quantisation_error(original: torch.Tensor, quantised: QuantisedTensor) -> QuantisationError:
    """Compare a tensor with its quantised form.

    Parameters
    ----------
    original : torch.Tensor
        The floating-point tensor that was quantised.
    quantised : QuantisedTensor
        Its quantised form, of the same shape.

    Returns
    -------
    QuantisationError

    Raises
    ------
    ValueError
        If the shapes differ.
    """
    return approximation_error(original, quantised.dequantise())


def approximation_error(reference: torch.Tensor, approximation: torch.Tensor
                        ) -> QuantisationError:
    """The error of any real approximation of a tensor, computed in float64.

    Parameters
    ----------
    reference, approximation : torch.Tensor
        Real tensors of the same shape.

    Returns
    -------
    QuantisationError
        All zero for empty tensors.

    Raises
    ------
    ValueError
        If the shapes differ.
    """
    if tuple(reference.shape) != tuple(approximation.shape):
        raise ValueError(f"shapes differ: reference {tuple(reference.shape)}, "
                         f"approximation {tuple(approximation.shape)}")
    reference = reference.detach().to(torch.float64)
    error = approximation.detach().to(torch.float64) - reference
    if error.numel() == 0:
        return QuantisationError(max_abs=0.0, rms=0.0, relative=0.0)
    error_norm = float(torch.linalg.vector_norm(error))
    reference_norm = float(torch.linalg.vector_norm(reference))
    if reference_norm:
        relative = error_norm / reference_norm
    else:
        relative = 0.0 if error_norm == 0 else float("inf")
    return QuantisationError(max_abs=float(error.abs().max()),
                             rms=float(error.pow(2).mean().sqrt()), relative=relative)
