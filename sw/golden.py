"""The golden model: a bit-exact reference of the sparse MAC array's arithmetic.

The hardware multiplies int8 weights by int8 activations and adds the products in 32-bit
two's complement accumulators that wrap on overflow. Wrapping addition is associative and
commutative, so the result does not depend on the order in which the products are summed: it is
the exact integer sum reduced modulo 2**32 into [-2**31, 2**31). That is what
:func:`golden_matmul` computes, so any summation order in the hardware must match it.

Within the wire format's limits an overflow cannot happen: a row has at most 32768 nonzeros and
each product is at most 128 * 128 = 2**14 in magnitude, so ``|sum| <= 2**29``. The overflow
check exists for matrices built outside those limits (and as the proof of that claim).

A layer wider than the activation buffer runs as column tiles, one job each, whose int32 sums the
host adds with :func:`accumulate_int32`. Addition modulo 2**32 of the tiles' wrapped partial sums
gives the wrapped sum of the whole row, so the tiled result is :func:`golden_matmul`'s, bit for
bit, whatever the tiling.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .csr import CSRMatrix
from .quantisation import (DEFAULT_GRANULARITY, GRANULARITIES, QuantisedTensor,
                           approximation_error, quantise_activations, quantise_weights)
from ..hw.errors import InputError

__all__ = [
    "ACTIVATION_MAX_MAGNITUDE",
    "AccumulatorOverflowWarning",
    "INT32_MAX",
    "LinearResult",
    "accumulate_int32",
    "golden_matmul",
    "overflow_possible",
    "quantised_linear",
    "worst_case_accumulator",
    "wrap_int32",
]

INT32_MAX = (1 << 31) - 1
#: The largest |activation| an int8 can hold (-128).
ACTIVATION_MAX_MAGNITUDE = 128


class AccumulatorOverflowWarning(UserWarning):
    """A layer's worst-case sum does not fit in the 32-bit accumulators, so they may wrap."""


def wrap_int32(x: torch.Tensor) -> torch.Tensor:
    """Reduce integers to 32-bit two's complement, as the hardware's accumulators do.

    Parameters
    ----------
    x : torch.Tensor
        Integer tensor (exact values, usually int64).

    Returns
    -------
    torch.Tensor
        ``torch.int32`` tensor with ``x`` modulo 2**32 in [-2**31, 2**31).

    Raises
    ------
    TypeError
        If ``x`` is not an integer tensor.
    """
    if not isinstance(x, torch.Tensor) or x.is_floating_point() or x.is_complex() \
            or x.dtype == torch.bool:
        raise TypeError(f"wrap_int32 needs an integer tensor, got "
                        f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
    # Done by hand: a C-style int64 -> int32 cast is not a documented wrap in torch.
    wrapped = ((x.to(torch.int64) + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)
    return wrapped.to(torch.int32)


def accumulate_int32(total: torch.Tensor, partial: torch.Tensor) -> torch.Tensor:
    """``total + partial`` in 32-bit two's complement: how column tiles' sums are combined.

    Parameters
    ----------
    total, partial : torch.Tensor of int32
        Of the same shape.

    Returns
    -------
    torch.Tensor
        ``torch.int32``, the sum modulo 2**32 in [-2**31, 2**31).

    Raises
    ------
    TypeError
        If either is not an int32 tensor.
    ValueError
        If their shapes differ.
    """
    for name, value in (("total", total), ("partial", partial)):
        if not isinstance(value, torch.Tensor) or value.dtype != torch.int32:
            raise TypeError(f"{name} must be an int32 tensor, not "
                            f"{getattr(value, 'dtype', type(value).__name__)}")
    if total.shape != partial.shape:
        raise InputError(f"total has shape {tuple(total.shape)} but partial has "
                         f"{tuple(partial.shape)}")
    return wrap_int32(total.to(torch.int64) + partial.to(torch.int64))


def worst_case_accumulator(weights: CSRMatrix) -> int:
    """The largest |sum| any row can reach: ``max over rows of sum |w| * 128``.

    Parameters
    ----------
    weights : CSRMatrix

    Returns
    -------
    int
        0 for a matrix without rows or nonzeros.
    """
    # Prefix sums over the nonzeros turn each row's sum into one subtraction.
    prefix = np.concatenate(([0], np.cumsum(np.abs(weights.data.astype(np.int64)))))
    row_sums = prefix[weights.indptr[1:]] - prefix[weights.indptr[:-1]]
    return int(row_sums.max(initial=0)) * ACTIVATION_MAX_MAGNITUDE


def overflow_possible(weights: CSRMatrix) -> bool:
    """Whether some int8 activations could drive a row's sum outside int32 (see
    :func:`worst_case_accumulator`)."""
    return worst_case_accumulator(weights) > INT32_MAX


def golden_matmul(weights: CSRMatrix, activations: torch.Tensor) -> torch.Tensor:
    """The array's result for one layer: ``Y[t, r] = sum of w * X[t, c]`` over row r's nonzeros.

    The sum is exact and then wrapped to int32 two's complement like the hardware's
    accumulators (see the module docstring). A warning is given when the weights could make
    the accumulators wrap for some activations; the result is still the wrapped one.

    Parameters
    ----------
    weights : CSRMatrix
        ``(rows, cols)`` int8 weights.
    activations : torch.Tensor
        ``torch.int8`` activations of shape ``(tokens, cols)``.

    Returns
    -------
    torch.Tensor
        ``torch.int32`` sums of shape ``(tokens, rows)``.

    Raises
    ------
    TypeError
        If ``weights`` is not a CSRMatrix or ``activations`` not an int8 tensor.
    ValueError
        If ``activations`` is not 2-D or its column count differs from the weights'.

    Warns
    -----
    AccumulatorOverflowWarning
        If :func:`overflow_possible` holds for ``weights``.
    """
    if not isinstance(weights, CSRMatrix):
        raise TypeError(f"weights must be a CSRMatrix, not {type(weights).__name__}")
    if not isinstance(activations, torch.Tensor):
        raise TypeError(f"activations must be a torch.int8 tensor, "
                        f"not {type(activations).__name__}")
    if activations.dtype != torch.int8:
        raise TypeError(f"activations must be torch.int8, got {activations.dtype}")
    if activations.dim() != 2:
        raise InputError(f"activations must be 2-D (tokens, features), "
                         f"got shape {tuple(activations.shape)}")
    if activations.shape[1] != weights.cols:
        raise InputError(f"activations have {activations.shape[1]} columns but the weights "
                         f"have {weights.cols} input features")
    worst = worst_case_accumulator(weights)
    if worst > INT32_MAX:
        warnings.warn(f"a row of this {weights.rows}x{weights.cols} layer can reach |sum| = "
                      f"{worst} > 2**31 - 1: the 32-bit accumulators may wrap",
                      AccumulatorOverflowWarning, stacklevel=2)
    # int64 throughout is exact: |sum| <= nnz_row * 2**14, far below 2**63. scipy's sparse
    # product keeps integer dtypes and is fast (3072x768 at 90 % by 128 tokens: ~15 ms).
    sparse = weights.to_scipy().astype(np.int64)
    x = activations.detach().cpu().numpy().astype(np.int64)
    sums = np.asarray(sparse @ x.T).T  # (tokens, rows)
    return wrap_int32(torch.from_numpy(np.ascontiguousarray(sums, dtype=np.int64)))


@dataclass
class LinearResult:
    """A linear layer computed through the int8 path, beside the float reference."""

    #: Dequantised result of the integer path plus bias, shape ``(..., out_features)``.
    output: torch.Tensor
    #: ``linear(x)`` in floating point, with the layer's weights as they stand.
    reference: torch.Tensor
    #: ``max |output - reference|``.
    max_abs_error: float
    #: ``||output - reference||_2 / ||reference||_2`` (0 if both are zero, inf if only the reference
    #: is).
    relative_error: float


def quantised_linear(linear: nn.Linear, x: torch.Tensor, weights: QuantisedTensor | None = None,
                     csr: CSRMatrix | None = None, granularity: str = DEFAULT_GRANULARITY) -> LinearResult:
    """Run a linear layer as the hardware would and compare it with floating point.

    The activations are quantised dynamically, multiplied by the int8 weights with
    :func:`golden_matmul` (int32 sums that wrap on overflow, exactly as the hardware; a wrapped
    sum is not corrected, and :class:`AccumulatorOverflowWarning` says when one is possible),
    dequantised as ``sum * activation_scale * weight_row_scale`` and the float bias is added.

    Parameters
    ----------
    linear : nn.Linear
        The layer; its current (for example pruned) weight is the reference.
    x : torch.Tensor
        Floating-point input of shape ``(..., in_features)``.
    weights : QuantisedTensor or None
        The quantised weight with ``(out_features, 1)`` row scales; None quantises
        ``linear.weight`` with :func:`quantise_weights`.
    csr : CSRMatrix or None
        The CSR form of ``weights.values`` (for example one packed elsewhere); None derives it.
        Needs ``weights``: without it there are no scales to dequantise with.
    granularity : {"tensor", "token"}
        Activation scale granularity, as :func:`quantise_activations`.

    Returns
    -------
    LinearResult

    Raises
    ------
    TypeError
        If ``linear`` is not an ``nn.Linear`` or ``x`` is not floating point.
    ValueError
        If shapes disagree, ``csr`` comes without ``weights``, ``granularity`` is unknown, or
        ``x`` is not finite.
    """
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"linear must be an nn.Linear, not {type(linear).__name__}")
    if granularity not in GRANULARITIES:
        raise InputError(f"granularity must be one of {GRANULARITIES!r}, not {granularity!r}")
    out_features, in_features = linear.weight.shape
    if x.dim() == 0 or x.shape[-1] != in_features:
        raise InputError(f"x must have shape (..., {in_features}), got {tuple(x.shape)}")
    if weights is None:
        if csr is not None:
            raise InputError("csr needs weights: its row scales are in the QuantisedTensor")
        weights = quantise_weights(linear.weight.detach())
    if tuple(weights.values.shape) != (out_features, in_features) or \
            tuple(weights.scale.shape) != (out_features, 1):
        raise InputError(f"weights must have values ({out_features}, {in_features}) and scale "
                         f"({out_features}, 1), got {tuple(weights.values.shape)} and "
                         f"{tuple(weights.scale.shape)}")
    if csr is None:
        csr = CSRMatrix.from_dense(weights.values)
    elif csr.shape != (out_features, in_features):
        raise InputError(f"csr has shape {csr.shape} but the layer is "
                         f"({out_features}, {in_features})")

    tokens = x.detach().reshape(-1, in_features)
    acts = quantise_activations(tokens, granularity)
    sums = golden_matmul(csr, acts.values)
    # float64 holds every int32 sum exactly; the two scales are applied in it too.
    output = (sums.to(torch.float64) * acts.scale.to(torch.float64)
              * weights.scale.to(torch.float64).reshape(1, out_features))
    if linear.bias is not None:
        output = output + linear.bias.detach().to(torch.float64)
    output = output.to(x.dtype).reshape(*x.shape[:-1], out_features)
    with torch.no_grad():
        reference = linear(x)
    error = approximation_error(reference, output)
    return LinearResult(output=output, reference=reference, max_abs_error=error.max_abs,
                        relative_error=error.relative)
