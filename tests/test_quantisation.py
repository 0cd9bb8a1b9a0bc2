"""Tests of sparsemac.sw.quantisation: symmetric int8 range, rounding, error bounds, scales."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

from sparsemac.sw.quantisation import (
    QuantisedTensor, approximation_error, quantisation_error, quantise_activations,
    quantise_weights,
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
