"""Tests of sparsemac.sw.quantisation: symmetric int8 range, rounding, error bounds, scales."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

from sparsemac.hw.config import ArrayConfig
from sparsemac.sw.csr import CSRMatrix
from sparsemac.devices import open_device
from sparsemac.sw.golden import golden_matmul
from sparsemac.sw.offloaded_linear import OffloadedLinear
from sparsemac.sw.quantisation import (
    DEFAULT_GRANULARITY, GRANULARITIES, Int8Linear, QuantisedTensor, approximation_error,
    quantisation_error, quantise_activations, quantise_model, quantise_weights,
    smoothing_scales,
)

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)  # same cases every run


def random_tensor(shape, seed, scale=1.0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator, dtype=torch.float64) * scale).to(dtype)


def assert_within_half_step(x, q):
    """Every element is within scale / 2 of its value (plus float rounding of x / scale)."""
    error = (q.dequantise().double() - x.double()).abs()
    bound = q.scale.double().expand_as(error) / 2
    assert (error <= bound * (1 + 1e-5) + 1e-12).all()


@SETTINGS
@given(rows=st.integers(1, 10), cols=st.integers(1, 10), seed=st.integers(0, 2**31 - 1),
       magnitude=st.sampled_from([1e-6, 1.0, 1e4]),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
def test_weights_per_row_bounds_and_error(rows, cols, seed, magnitude, dtype):
    weight = random_tensor((rows, cols), seed, magnitude, dtype)
    q = quantise_weights(weight)
    assert q.values.dtype == torch.int8 and q.values.shape == weight.shape
    assert q.scale.shape == (rows, 1)
    assert q.values.abs().max() <= 127
    # Each row's largest magnitude maps to +-127 exactly.
    assert (q.values.abs().amax(dim=1) == 127).all()
    expected_scale = weight.double().abs().amax(dim=1, keepdim=True) / 127
    torch.testing.assert_close(q.scale.double(), expected_scale, rtol=1e-6, atol=0)
    assert_within_half_step(weight, q)


def test_all_zero_row_gets_scale_one():
    weight = torch.tensor([[0.0, 0.0], [1.0, -0.5]])
    q = quantise_weights(weight)
    assert q.scale[0, 0] == 1.0
    assert q.values[0].tolist() == [0, 0]
    assert q.values[1].tolist() == [127, -64]  # -63.5 rounds half to even


def test_rounding_is_half_to_even_and_minus_128_never_used():
    # max 127 makes the scale exactly 1.0, so x / scale is x itself.
    x = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, -127.0]])
    q = quantise_weights(x)
    assert q.scale.item() == 1.0
    assert q.values.tolist() == [[127, 0, 2, 2, 0, -2, -2, -127]]
    assert quantise_activations(torch.tensor([-1.0, 0.25])).values.tolist() == [-127, 32]


@SETTINGS
@given(tokens=st.integers(1, 8), features=st.integers(1, 12), seed=st.integers(0, 2**31 - 1),
       granularity=st.sampled_from(["tensor", "token"]))
def test_activations_bounds_and_error(tokens, features, seed, granularity):
    x = random_tensor((2, tokens, features), seed)
    q = quantise_activations(x, granularity)
    assert q.values.dtype == torch.int8 and q.values.shape == x.shape
    assert q.values.abs().max() == 127
    if granularity == "tensor":
        assert q.scale.shape == ()
        torch.testing.assert_close(q.scale, x.abs().max() / 127)
    else:
        assert q.scale.shape == (2, tokens, 1)
        torch.testing.assert_close(q.scale, x.abs().amax(-1, keepdim=True) / 127)
        assert (q.values.abs().amax(-1) == 127).all()
    assert_within_half_step(x, q)


def test_per_token_is_finer_than_per_tensor():
    # One loud token and one quiet one: a shared scale crushes the quiet one.
    x = torch.stack([random_tensor(64, 1, 100.0), random_tensor(64, 2, 0.01)])
    per_tensor = quantisation_error(x[1:], QuantisedTensor(
        quantise_activations(x, "tensor").values[1:], quantise_activations(x, "tensor").scale))
    per_token = quantisation_error(x, quantise_activations(x, "token"))
    assert per_tensor.relative > 0.3
    assert per_token.relative < 0.01


def test_zero_activations():
    q = quantise_activations(torch.zeros(3, 4), "token")
    assert (q.values == 0).all() and (q.scale == 1.0).all()
    assert quantise_activations(torch.zeros(0, 4), "tensor").values.shape == (0, 4)


def test_quantisation_error_fields():
    x = torch.tensor([1.0, -0.5, 0.25])
    q = QuantisedTensor(torch.tensor([4, -2, 0], dtype=torch.int8), torch.tensor(0.25))
    error = quantisation_error(x, q)
    assert error.max_abs == 0.25
    assert error.rms == pytest.approx((0.25 ** 2 / 3) ** 0.5)
    assert error.relative == pytest.approx(0.25 / float(x.norm()))
    assert approximation_error(torch.zeros(2), torch.zeros(2)).relative == 0.0
    assert approximation_error(torch.zeros(2), torch.ones(2)).relative == float("inf")


def test_errors():
    with pytest.raises(TypeError, match="floating-point tensor, got torch.int8"):
        quantise_weights(torch.ones(2, 2, dtype=torch.int8))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        quantise_activations([1.0, 2.0])
    with pytest.raises(ValueError, match="NaN or infinite"):
        quantise_weights(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        quantise_activations(torch.tensor([1.0, float("inf")]))
    with pytest.raises(ValueError, match="2-D"):
        quantise_weights(torch.ones(3))
    with pytest.raises(ValueError, match="granularity must be one of .* not 'channel'"):
        quantise_activations(torch.ones(3), "channel")
    with pytest.raises(ValueError, match="at least one dimension"):
        quantise_activations(torch.tensor(1.0))
    with pytest.raises(ValueError, match="shapes differ"):
        quantisation_error(torch.ones(3), quantise_activations(torch.ones(4)))


def test_quantised_tensor_validation():
    with pytest.raises(TypeError, match="values must be a torch.int8 tensor, got torch.int16"):
        QuantisedTensor(torch.zeros(2, dtype=torch.int16), torch.tensor(1.0))
    with pytest.raises(TypeError, match="scale must be a floating-point tensor"):
        QuantisedTensor(torch.zeros(2, dtype=torch.int8), torch.tensor(1))
    with pytest.raises(ValueError, match="does not broadcast"):
        QuantisedTensor(torch.zeros(2, 3, dtype=torch.int8), torch.ones(2))
    with pytest.raises(ValueError, match="does not broadcast"):
        QuantisedTensor(torch.zeros(3, dtype=torch.int8), torch.ones(2, 3))
    with pytest.raises(ValueError, match="positive and finite"):
        QuantisedTensor(torch.zeros(2, dtype=torch.int8), torch.tensor(0.0))


# SmoothQuant migration and the host int8 path ------------------------------------------------

def _layer(seed, rows=12, cols=16, outlier=40.0):
    generator = torch.Generator().manual_seed(seed)
    linear = torch.nn.Linear(cols, rows)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(rows, cols, generator=generator) * 0.1)
        linear.bias.copy_(torch.randn(rows, generator=generator))
    x = torch.randn(2, 5, cols, generator=generator)
    x[..., 3] *= outlier  # one outlier channel, as BERT's activations have
    return linear, x


def test_smoothing_scales_formula_and_edge_channels():
    weight = torch.tensor([[1.0, -4.0, 0.0, 3.0], [-4.0, 1.0, 0.0, 0.0]])
    absmax = torch.tensor([9.0, 16.0, 5.0, 0.0])
    scales = smoothing_scales(absmax, weight, alpha=0.5)
    # sqrt(max|X_j|) / sqrt(max|W_j|); channels with no activation or no weight stay 1.
    torch.testing.assert_close(scales, torch.tensor([1.5, 2.0, 1.0, 1.0]))
    assert smoothing_scales(absmax, weight, alpha=0.0)[:2].tolist() == [0.25, 0.25]
    assert smoothing_scales(absmax, weight, alpha=1.0)[:2].tolist() == [9.0, 16.0]
    with pytest.raises(ValueError, match=r"alpha must be a number in \[0, 1\], not 1.5"):
        smoothing_scales(absmax, weight, alpha=1.5)
    with pytest.raises(ValueError, match=r"activation_absmax must have shape \(4,\)"):
        smoothing_scales(absmax[:3], weight)
    with pytest.raises(ValueError, match="must be non-negative"):
        smoothing_scales(-absmax, weight)


def test_migration_is_exact_in_float():
    linear, x = _layer(0)
    absmax = x.reshape(-1, x.shape[-1]).abs().amax(dim=0)
    s = smoothing_scales(absmax, linear.weight, alpha=0.5)
    x64, w64, s64 = x.double(), linear.weight.detach().double(), s.double()
    migrated = (x64 / s64) @ (w64 * s64).T
    torch.testing.assert_close(migrated, x64 @ w64.T, rtol=1e-12, atol=1e-12)
    # The migration evens out the channels: the outlier channel no longer dominates.
    before = absmax.max() / absmax.median()
    after_absmax = (x / s).reshape(-1, x.shape[-1]).abs().amax(dim=0)
    assert after_absmax.max() / after_absmax.median() < before / 4


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("migrate", [False, True])
def test_int8_linear_is_bit_exact_with_the_golden_model_and_the_device(granularity, migrate):
    linear, x = _layer(1)
    s = (smoothing_scales(x.reshape(-1, 16).abs().amax(dim=0), linear.weight, 0.5)
         if migrate else None)
    host = Int8Linear(linear, granularity, s)
    output = host(x)
    # The golden model on the same integers.
    weight = linear.weight.detach() * (s if migrate else 1.0)
    quantised = quantise_weights(weight)
    tokens = x.reshape(-1, 16) / (s if migrate else 1.0)
    activations = quantise_activations(tokens, granularity)
    golden = golden_matmul(CSRMatrix.from_dense(quantised.values), activations.values)
    assert torch.equal(host.last_sums, golden)
    # The device path, pruned with an all-keeping mask, gives the very same floats.
    device = open_device("reference", ArrayConfig(lanes=4, token_lanes=2))
    offloaded = OffloadedLinear.from_linear(linear, device, mask=torch.ones(12, 16,
                                                                            dtype=torch.bool),
                                            granularity=granularity, smoothing=s)
    assert torch.equal(offloaded(x), output)
    assert torch.equal(offloaded.last_sums, golden)


def test_migration_reduces_int8_error_with_outliers():
    linear, x = _layer(2, rows=32, cols=64, outlier=60.0)
    reference = linear(x).detach()
    s = smoothing_scales(x.reshape(-1, 64).abs().amax(dim=0), linear.weight, 0.5)
    plain = approximation_error(reference, Int8Linear(linear, "token")(x)).relative
    migrated = approximation_error(reference, Int8Linear(linear, "token", s)(x)).relative
    assert migrated < plain / 2


def test_quantise_model_replaces_matching_linears():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(3))
    reference = model(x).detach()
    names = quantise_model(model, [r"^2$"], granularity="token",
                           smoothing={"2": torch.full((8,), 2.0)})
    assert names == ["2"]
    assert isinstance(model[2], Int8Linear) and isinstance(model[0], torch.nn.Linear)
    assert torch.equal(model[2].smoothing, torch.full((8,), 2.0))
    assert approximation_error(reference, model(x).detach()).relative < 0.02
    with pytest.raises(ValueError, match=r"no nn.Linear matches the patterns \['nothing'\]"):
        quantise_model(model, ["nothing"])
    with pytest.raises(ValueError, match="granularity must be one of"):
        Int8Linear(torch.nn.Linear(2, 2), "channel")


def test_default_granularity_is_known():
    assert DEFAULT_GRANULARITY in GRANULARITIES


def test_the_commands_default_granularity_is_the_librarys():
    """`--granularity` restates the default so that `--help` does not import torch."""
    from sparsemac.app.commands import options
    from sparsemac.sw.quantisation import DEFAULT_GRANULARITY
    assert options.DEFAULT_GRANULARITY == DEFAULT_GRANULARITY


def test_the_commands_default_smoothing_is_the_librarys():
    from sparsemac.app.commands import options
    from sparsemac.sw.quantisation import DEFAULT_SMOOTHING_ALPHA
    assert options.DEFAULT_SMOOTHING_ALPHA == DEFAULT_SMOOTHING_ALPHA
