"""Linear layers that run on a sparse MAC device, inside any PyTorch model."""

from dataclasses import dataclass

import torch
from torch import nn

from ..hw.formats import ColumnIndex, Mode, Sparsity
from .csr import CSRMatrix
from .device import Device
from .methods import parse_method
from .pruning import choose_masks
from .quantisation import (DEFAULT_GRANULARITY, GRANULARITIES, dequantise_sums,
                           quantise_input, quantise_weights)
from ..hw.errors import InputError

__all__ = ["OffloadStats", "OffloadedLinear"]


@dataclass
class OffloadStats:
    """What an :class:`OffloadedLinear` has done since it was built (or last reset)."""
    #: Forward calls.
    calls: int = 0
    #: Tokens over all calls.
    tokens: int = 0
    #: Device jobs over all calls.
    jobs: int = 0
    #: Device cycles of the sparse runs.
    cycles: int = 0
    #: Weight traffic of the sparse runs (of a dual-sparse run, its pairs).
    weight_bytes: int = 0
    #: Host wall time spent in the device.
    device_s: float = 0.0

    def reset(self):
        """Back to zero, in place: a report that holds this object sees the reset."""
        self.calls = self.tokens = self.jobs = self.cycles = self.weight_bytes = 0
        self.device_s = 0.0


class OffloadedLinear(nn.Module):
    """An ``nn.Linear`` whose matrix product runs on a sparse MAC device.

    It holds the pruned weight as int8 CSR with one float scale per output row. ``forward``
    quantises the activations (dynamic, symmetric int8), runs the int32 product on the device,
    dequantises with both scales and adds the float bias. The result is the hardware's: when
    two devices agree bit for bit on the int32 sums, they agree exactly here too.

    Parameters
    ----------
    weights : CSRMatrix
        The int8 weight, ``out_features x in_features``.
    weight_scale : torch.Tensor
        Shape ``(out_features, 1)``.
    bias : torch.Tensor or None
    device : Device
    granularity : {"tensor", "token"}
        Activation scale per tensor or per token.
    smoothing : torch.Tensor or None
        SmoothQuant migration factors ``s`` of shape ``(in_features,)``: `weights` already
        hold ``W * s`` and the host divides each input by ``s`` before quantising it.

    Attributes
    ----------
    stats : OffloadStats
    last_sums : torch.Tensor or None
        int32 sums of the last call, [tokens, out_features], for bit-exact comparisons.
    index : ColumnIndex
        How the device's jobs send the column indices (``DELTA`` on a config with the delta
        decoder); may be changed between calls.
    dual : bool
        Run the jobs in the dual-sparse mode (:class:`~sparsemac.hw.formats.Sparsity` ``DUAL``,
        on a dual-sparse config such as ``k8t4a1``), skipping zero activations per token too;
        the sums are the same. False by default; may be changed between calls.
    """

    def __init__(self, weights, weight_scale, bias, device, granularity=DEFAULT_GRANULARITY,
                 smoothing=None):
        super().__init__()
        if not isinstance(weights, CSRMatrix):
            raise TypeError(f"weights must be a CSRMatrix, not {type(weights).__name__}")
        if not isinstance(device, Device):
            raise TypeError(f"device must be a Device (see open_device), not {device!r}")
        if granularity not in GRANULARITIES:
            raise InputError(f"granularity must be one of {GRANULARITIES}, not {granularity!r}")
        if tuple(weight_scale.shape) != (weights.rows, 1):
            raise InputError(f"weight_scale must have shape ({weights.rows}, 1), "
                             f"not {tuple(weight_scale.shape)}")
        self.weights = weights
        self.device = device
        self.granularity = granularity
        self.in_features, self.out_features = weights.cols, weights.rows
        self.register_buffer("weight_scale", weight_scale.detach().float().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        if smoothing is not None and tuple(smoothing.shape) != (weights.cols,):
            raise InputError(f"smoothing must have shape ({weights.cols},), "
                             f"not {tuple(smoothing.shape)}")
        self.register_buffer("smoothing",
                             None if smoothing is None else smoothing.detach().float().clone())
        self.stats = OffloadStats()
        self.last_sums = None
        self.index = ColumnIndex.CSR
        self.dual = False

    @classmethod
    def from_linear(cls, linear, device, *, sparsity=None, method="magnitude", seed=None,
                    n=2, m=4, granularity=DEFAULT_GRANULARITY, mask=None, smoothing=None):
        """Prunes, quantises and packs ``linear`` for ``device``.

        Parameters
        ----------
        linear : nn.Linear
        device : Device
        sparsity : float or None
            Fraction of weights to remove. None: none for ``"magnitude"`` and ``"random"``, the
            pattern's for N:M, which refuses any other value.
        method : str or PruningMethod
            ``"magnitude"``, ``"random"`` or ``"N:M"`` (see :func:`prune_mask`).
        seed : int or None
            For random pruning.
        n, m : int
        granularity : {"tensor", "token"}
        mask : torch.Tensor of bool or None
            A keep-mask computed elsewhere (e.g. one global threshold over many layers); the
            pruning arguments are then not used.
        smoothing : torch.Tensor or None
            Migration factors ``s`` (see
            :func:`~sparsemac.sw.quantisation.smoothing_scales`): the pruned weight's columns
            are multiplied by them before quantisation.

        Returns
        -------
        OffloadedLinear
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, not {type(linear).__name__}")
        weight = linear.weight.detach().float()
        if mask is None:
            method = parse_method(method, nm=(n, m))
            if sparsity is None and not method.fixes_sparsity:
                sparsity = 0.0
            [mask], _ = choose_masks([weight], sparsity, method, seed=seed)
        elif tuple(mask.shape) != tuple(weight.shape):
            raise InputError(f"mask has shape {tuple(mask.shape)} but the weight has "
                             f"{tuple(weight.shape)}")
        weight = weight * mask
        if smoothing is not None:
            weight = weight * smoothing.detach().float()
        quantised = quantise_weights(weight)
        return cls(CSRMatrix.from_dense(quantised.values), quantised.scale, linear.bias, device,
                   granularity, smoothing)

    @property
    def sparsity(self):
        """Achieved fraction of zero weights (pruned, or rounded to zero by quantisation)."""
        return self.weights.sparsity

    def reset_stats(self):
        self.stats.reset()

    def integer_forward(self, x):
        """Quantises ``x`` [..., in_features] and returns the device's MatmulResult and the
        activation scale."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError("OffloadedLinear takes a floating-point tensor, not "
                            f"{getattr(x, 'dtype', type(x).__name__)}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise InputError(f"expected input of shape (..., {self.in_features}), "
                             f"got {tuple(x.shape)}")
        activations = self.quantise_input(x)
        sparsity = Sparsity.DUAL if self.dual else Sparsity.WEIGHTS
        result = self.device.matmul(self.weights, activations.values, Mode.SPARSE, self.index,
                                    sparsity)
        return result, activations.scale

    def quantise_input(self, x):
        """The int8 activations (with their scale) the device receives for ``x``, as
        ``(tokens, in_features)``: migrated by ``1 / smoothing`` first when set."""
        return quantise_input(x, self.granularity, self.smoothing)

    def forward(self, x):
        result, activation_scale = self.integer_forward(x)
        self.last_sums = result.sums
        stats = self.stats
        stats.calls += 1
        stats.tokens += result.sums.shape[0]
        stats.jobs += result.jobs
        stats.cycles += result.cycles
        stats.weight_bytes += result.weight_bytes
        stats.device_s += result.wall_s
        return dequantise_sums(result.sums, activation_scale, self.weight_scale, self.bias, x)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"sparsity={self.sparsity:.3f}, device={self.device.name}")
