"""Tests of sparsemac.sw.golden against an independent numpy int64 computation."""

import time
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from sparsemac.sw.csr import FORMAT_MAX_COLS, CSRMatrix
from sparsemac.sw.golden import (
    AccumulatorOverflowWarning, accumulate_int32, golden_matmul, overflow_possible,
    quantised_linear, worst_case_accumulator, wrap_int32,
)
from sparsemac.sw.pruning import prune_mask
from sparsemac.sw.quantisation import quantise_activations, quantise_weights

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)  # same cases every run


def reference_matmul(weights, activations):
    """Dense numpy int64 product, then an arithmetic wrap to int32: no code shared with golden."""
    exact = activations.numpy().astype(np.int64) @ weights.to_dense().numpy().astype(np.int64).T
    return (exact + 2**31) % 2**32 - 2**31


def random_case(rows, cols, tokens, density, seed):
    rng = np.random.default_rng(seed)
    dense = rng.integers(-128, 128, size=(rows, cols), dtype=np.int8)
    dense[rng.random((rows, cols)) >= density] = 0
    x = rng.integers(-128, 128, size=(tokens, cols), dtype=np.int8)
    return CSRMatrix.from_dense(dense), torch.from_numpy(x)


@SETTINGS
@given(rows=st.integers(0, 10), cols=st.integers(0, 12), tokens=st.integers(0, 6),
       density=st.sampled_from([0.0, 0.2, 1.0]), seed=st.integers(0, 2**31 - 1))
def test_matches_numpy_int64(rows, cols, tokens, density, seed):
    weights, x = random_case(rows, cols, tokens, density, seed)
    y = golden_matmul(weights, x)
    assert y.dtype == torch.int32 and y.shape == (tokens, rows)
    assert np.array_equal(y.numpy(), reference_matmul(weights, x))


def test_extreme_values_without_overflow():
    # -128 * -128 in every one of the widest format's columns: 2**29, no wrap possible.
    weights = CSRMatrix.from_dense(np.full((2, FORMAT_MAX_COLS), -128, np.int8))
    x = torch.full((3, FORMAT_MAX_COLS), -128, dtype=torch.int8)
    assert worst_case_accumulator(weights) == 2**29 and not overflow_possible(weights)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert (golden_matmul(weights, x) == 2**29).all()


@pytest.mark.parametrize("weight, activation", [(127, 127), (-128, 127), (-128, -128)])
def test_accumulator_wraps_like_int32(weight, activation):
    # 140000 products of about 2**14 exceed 2**31: only possible beyond the format's 32768
    # columns, so the matrix is built directly rather than packed for the hardware.
    cols = 140_000
    weights = CSRMatrix.from_dense(np.full((1, cols), weight, np.int8))
    x = torch.full((2, cols), activation, dtype=torch.int8)
    exact = cols * weight * activation
    assert abs(exact) > 2**31
    assert overflow_possible(weights)
    with pytest.warns(AccumulatorOverflowWarning, match=r"1x140000 layer .* may wrap"):
        y = golden_matmul(weights, x)
    expected = (exact + 2**31) % 2**32 - 2**31
    assert y.tolist() == [[expected], [expected]]
    assert np.array_equal(y.numpy(), reference_matmul(weights, x))
    assert expected != exact


def test_warning_is_about_the_worst_case_not_the_result():
    cols = 140_000
    weights = CSRMatrix.from_dense(np.full((1, cols), 127, np.int8))
    x = torch.zeros((1, cols), dtype=torch.int8)
    x[0, :10] = 1
    with pytest.warns(AccumulatorOverflowWarning):
        assert golden_matmul(weights, x).tolist() == [[1270]]


def test_worst_case_accumulator():
    dense = np.array([[1, -2, 0], [0, 0, 0], [-128, 0, 127]], np.int8)
    assert worst_case_accumulator(CSRMatrix.from_dense(dense)) == 255 * 128
    assert worst_case_accumulator(CSRMatrix.from_dense(np.zeros((0, 3), np.int8))) == 0
    # The longest row of 127s whose worst case still fits, and one more.
    fits = CSRMatrix.from_dense(np.full((1, 2**31 // (127 * 128)), 127, np.int8))
    assert worst_case_accumulator(fits) <= 2**31 - 1 and not overflow_possible(fits)
    over = CSRMatrix.from_dense(np.full((1, 2**31 // (127 * 128) + 1), 127, np.int8))
    assert worst_case_accumulator(over) > 2**31 - 1 and overflow_possible(over)


def test_wrap_int32():
    x = torch.tensor([0, 2**31 - 1, 2**31, -2**31, -2**31 - 1, 2**32, 3 * 2**32 + 5, -1])
    assert wrap_int32(x).tolist() == [0, 2**31 - 1, -2**31, -2**31, 2**31 - 1, 0, 5, -1]
    assert wrap_int32(x).dtype == torch.int32
    with pytest.raises(TypeError, match="integer tensor, got torch.float64"):
        wrap_int32(torch.zeros(2, dtype=torch.float64))


def test_input_errors():
    weights = CSRMatrix.from_dense(np.ones((4, 768), np.int8))
    with pytest.raises(TypeError, match="activations must be torch.int8, got torch.int16"):
        golden_matmul(weights, torch.zeros(2, 768, dtype=torch.int16))
    with pytest.raises(TypeError, match="activations must be a torch.int8 tensor, not ndarray"):
        golden_matmul(weights, np.zeros((2, 768), np.int8))
    with pytest.raises(ValueError, match=r"2-D \(tokens, features\), got shape \(768,\)"):
        golden_matmul(weights, torch.zeros(768, dtype=torch.int8))
    with pytest.raises(ValueError, match="^activations have 700 columns but the weights have "
                                         "768 input features$"):
        golden_matmul(weights, torch.zeros(2, 700, dtype=torch.int8))
    with pytest.raises(TypeError, match="weights must be a CSRMatrix, not Tensor"):
        golden_matmul(torch.ones(4, 768, dtype=torch.int8), torch.zeros(2, 768, dtype=torch.int8))


def test_bert_intermediate_layer_at_90_percent_is_bit_exact():
    seed = 20240917
    print(f"seed {seed}")
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(3072, 768, generator=generator) * 0.05
    weight *= prune_mask(weight, 0.9)
    weights = CSRMatrix.from_dense(quantise_weights(weight).values)
    kept = 3072 * 768 - round(0.9 * 3072 * 768)
    assert 0.99 * kept < weights.nnz <= kept  # a few survivors may round to zero
    x = quantise_activations(torch.randn(128, 768, generator=generator)).values
    start = time.perf_counter()
    y = golden_matmul(weights, x)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"golden_matmul took {elapsed:.3f} s"
    assert y.shape == (128, 3072)
    assert np.array_equal(y.numpy(), reference_matmul(weights, x))
    assert (y != 0).float().mean() > 0.99  # not a vacuous all-zero agreement


# The float path -------------------------------------------------------------------------------

def pruned_linear(in_features, out_features, sparsity, seed, bias=True):
    torch.manual_seed(seed)
    linear = nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        linear.weight *= prune_mask(linear.weight, sparsity)
    return linear


@pytest.mark.parametrize("granularity", ["tensor", "token"])
def test_quantised_linear_matches_the_dequantised_formula(granularity):
    linear = pruned_linear(64, 32, 0.5, seed=3)
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(4))
    result = quantised_linear(linear, x, granularity=granularity)
    assert result.output.shape == result.reference.shape == (2, 5, 32)
    assert result.output.dtype == torch.float32
    torch.testing.assert_close(result.reference, linear(x).detach())
    # The same numbers by another route: dequantise both operands, multiply in float64.
    w = quantise_weights(linear.weight.detach()).dequantise().double()
    a = quantise_activations(x.reshape(10, 64), granularity).dequantise().double()
    expected = (a @ w.T + linear.bias.detach().double()).reshape(2, 5, 32).float()
    torch.testing.assert_close(result.output, expected, rtol=1e-6, atol=1e-6)
    error = (result.output - result.reference).abs().max().item()
    assert result.max_abs_error == pytest.approx(error, rel=1e-6)
    assert 0 < result.relative_error < 0.03


def test_quantised_linear_with_given_weights_and_csr():
    linear = pruned_linear(32, 8, 0.75, seed=5, bias=False)
    x = torch.randn(4, 32, generator=torch.Generator().manual_seed(6))
    weights = quantise_weights(linear.weight.detach())
    csr = CSRMatrix.from_dense(weights.values)
    given_both = quantised_linear(linear, x, weights=weights, csr=csr)
    derived = quantised_linear(linear, x)
    assert torch.equal(given_both.output, derived.output)


def test_quantised_linear_errors():
    linear = pruned_linear(16, 4, 0.5, seed=1)
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(2))
    weights = quantise_weights(linear.weight.detach())
    with pytest.raises(ValueError, match="csr needs weights"):
        quantised_linear(linear, x, csr=CSRMatrix.from_dense(weights.values))
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 16\), got \(3, 8\)"):
        quantised_linear(linear, x[:, :8])
    with pytest.raises(ValueError, match=r"csr has shape \(4, 8\) but the layer is \(4, 16\)"):
        quantised_linear(linear, x, weights=weights,
                         csr=CSRMatrix.from_dense(np.ones((4, 8), np.int8)))
    with pytest.raises(ValueError, match=r"weights must have values \(4, 16\)"):
        quantised_linear(linear, x, weights=quantise_weights(torch.ones(4, 8)))
    with pytest.raises(ValueError, match="granularity"):
        quantised_linear(linear, x, granularity="row")
    with pytest.raises(TypeError, match="linear must be an nn.Linear"):
        quantised_linear(nn.ReLU(), x)


def test_accumulate_int32_wraps_like_the_accumulators():
    total = torch.tensor([2**31 - 1, -2**31, 5, -7], dtype=torch.int32)
    partial = torch.tensor([1, -1, -2**31, 2**31 - 1], dtype=torch.int32)
    assert accumulate_int32(total, partial).tolist() == [-2**31, 2**31 - 1, 5 - 2**31, 2**31 - 8]
    with pytest.raises(TypeError, match="partial must be an int32 tensor, not torch.int64"):
        accumulate_int32(total, partial.long())
    with pytest.raises(ValueError, match=r"total has shape \(4,\) but partial has \(2,\)"):
        accumulate_int32(total, partial[:2])
