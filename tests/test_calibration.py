"""Tests of calibrated one-shot pruning: Wanda, SparseGPT, N:M and K-aligned patterns."""

import copy

import pytest
import torch
from transformers import BertConfig, BertModel

from sparsemac.sw.calibration import (
    InputStatistics, activation_absmax, capture_group_inputs, prune_calibrated,
    reconstruction_error, sparsegpt_prune, wanda_prune,
)
from sparsemac.sw.models import load_model
from sparsemac.sw.pruning import matching_linears, prune_mask

PRUNERS = [wanda_prune, sparsegpt_prune]
TEXTS = ["The train was late again this morning.", "I love the new phone, great battery!",
         "Worst customer service ever.", "Meeting moved to three o'clock.",
         "Such a beautiful day at the beach", "not sure what to think about the update"]


def _layer(seed, rows=24, cols=32, tokens=200):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=generator)
    x = torch.randn(tokens, cols, generator=generator) * torch.linspace(0.1, 3.0, cols)
    return weight, InputStatistics.from_inputs(x)


@pytest.fixture(scope="module")
def minilm():
    return load_model("minilm")


@pytest.fixture(scope="module")
def tiny_bert(minilm):
    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64)
    return BertModel(config).eval(), minilm.tokenizer


@pytest.mark.parametrize("prune", PRUNERS)
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.77, 0.9, 1.0])
def test_unstructured_sparsity_is_exact(prune, sparsity):
    weight, statistics = _layer(0)
    pruned, mask = prune(weight, statistics, sparsity)
    assert int((~mask).sum()) == round(sparsity * weight.numel())
    assert torch.equal(pruned == 0, ~mask)
    if prune is wanda_prune:
        # Compared within rows: every row prunes the same count, give or take one.
        per_row = (~mask).sum(dim=1)
        assert int(per_row.max() - per_row.min()) <= 1
        assert torch.equal(pruned, weight * mask)


@pytest.mark.parametrize("prune", PRUNERS)
@pytest.mark.parametrize("pattern", ["2:4", "1:4", "3:8"])
def test_n_m_patterns_are_valid(prune, pattern):
    n, m = map(int, pattern.split(":"))
    weight, statistics = _layer(1)
    pruned, mask = prune(weight, statistics, None, pattern=pattern)
    assert (mask.reshape(24, 32 // m, m).sum(dim=-1) == n).all()
    assert torch.equal(pruned == 0, ~mask)
    again, _ = prune(weight, statistics, 1 - n / m, pattern=pattern)
    assert torch.equal(again, pruned)


@pytest.mark.parametrize("prune", PRUNERS)
@pytest.mark.parametrize("sparsity, lanes", [(0.5, 8), (0.9, 8), (0.77, 4), (0.3, 16)])
def test_k_aligned_rows_keep_multiples_of_k(prune, sparsity, lanes):
    weight, statistics = _layer(2)
    pruned, mask = prune(weight, statistics, sparsity, pattern="k-aligned", lanes=lanes)
    kept = mask.sum(dim=1)
    assert (kept % lanes == 0).all()
    assert int(kept.max() - kept.min()) <= lanes
    exact_kept = weight.numel() - round(sparsity * weight.numel())
    assert int(kept.sum()) == lanes * round(exact_kept / lanes)
    assert torch.equal(pruned == 0, ~mask)


def test_wanda_scores_weights_by_input_norm():
    # Column 0 carries large inputs, so its small weights outrank column 1's larger ones.
    weight = torch.tensor([[0.5, 1.0], [0.4, 2.0]])
    x = torch.tensor([[10.0, 1.0], [10.0, 1.0]])
    pruned, mask = wanda_prune(weight, InputStatistics.from_inputs(x), 0.5)
    assert mask.tolist() == [[True, False], [True, False]]
    assert prune_mask(weight, 0.5).tolist() == [[False, True], [False, True]]


def test_sparsegpt_reconstructs_better_than_magnitude_and_wanda(minilm):
    name = "encoder.layer.1.intermediate.dense"
    linears = dict(matching_linears(minilm.model))
    inputs = minilm.tokenizer(TEXTS * 4, padding=True, return_tensors="pt")
    names, statistics = capture_group_inputs(minilm.model, [(name, linears[name])],
                                             dict(inputs), inputs["attention_mask"].bool())
    assert names == [name]
    weight = linears[name].weight.detach()
    errors = {}
    for sparsity in (0.5, 0.8):
        magnitude = weight * prune_mask(weight, sparsity)
        errors["magnitude", sparsity] = reconstruction_error(weight, magnitude, statistics)
        for prune in PRUNERS:
            pruned, _ = prune(weight, statistics, sparsity)
            errors[prune.__name__, sparsity] = reconstruction_error(weight, pruned, statistics)
        assert errors["sparsegpt_prune", sparsity] < errors["wanda_prune", sparsity] \
            < errors["magnitude", sparsity]
    assert errors["sparsegpt_prune", 0.5] < 0.7 * errors["magnitude", 0.5]


def test_reconstruction_error_definition():
    weight, statistics = _layer(3, tokens=40)
    x = torch.randn(40, 32, generator=torch.Generator().manual_seed(3))
    statistics = InputStatistics.from_inputs(x)
    pruned = weight * prune_mask(weight, 0.5)
    expected = torch.linalg.norm(x.double() @ (pruned - weight).double().T) / torch.linalg.norm(
        x.double() @ weight.double().T)
    assert reconstruction_error(weight, pruned, statistics) == pytest.approx(float(expected),
                                                                            rel=1e-9)
    assert reconstruction_error(weight, weight, statistics) == 0.0


def test_query_key_value_are_one_group(tiny_bert):
    model, tokenizer = tiny_bert
    inputs = tokenizer(TEXTS, padding=True, return_tensors="pt")
    mask = inputs["attention_mask"].bool()
    linears = matching_linears(model)
    names, statistics = capture_group_inputs(model, linears, dict(inputs), mask)
    assert names == ["encoder.layer.0.attention.self.query", "encoder.layer.0.attention.self.key",
                     "encoder.layer.0.attention.self.value"]
    assert statistics.tokens == int(mask.sum())
    names, _ = capture_group_inputs(model, linears[3:], dict(inputs), mask)
    assert names == ["encoder.layer.0.attention.output.dense"]


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern, sparsity", [(None, 0.6), ("2:4", None), ("k-aligned", 0.75)])
def test_prune_calibrated_is_exact_deterministic_and_sequential(tiny_bert, method, pattern,
                                                                sparsity):
    dense, tokenizer = tiny_bert
    first, second = copy.deepcopy(dense), copy.deepcopy(dense)
    report = prune_calibrated(first, tokenizer, method, sparsity, TEXTS, pattern=pattern,
                              lanes=8)
    prune_calibrated(second, tokenizer, method, sparsity, TEXTS, pattern=pattern, lanes=8)
    pruned = dict(matching_linears(first))
    assert [layer.name for layer in report.layers] == list(pruned)
    for name, linear in matching_linears(second):
        assert torch.equal(linear.weight, pruned[name].weight), name
    for layer in report.layers:
        numel = layer.shape[0] * layer.shape[1]
        kept = {None: numel - round(sparsity * numel) if sparsity else 0, "2:4": numel // 2,
                "k-aligned": 8 * round((numel - round((sparsity or 0) * numel)) / 8)}[pattern]
        assert layer.nnz == kept and layer.sparsity == 1 - kept / numel
        assert torch.equal(pruned[layer.name].weight != 0, report.masks[layer.name])
    total = sum(layer.shape[0] * layer.shape[1] for layer in report.layers)
    assert report.sparsity == pytest.approx(1 - sum(layer.nnz for layer in report.layers) / total,
                                            abs=1e-12)
    assert report.calibration_texts == len(TEXTS)
    # The last linear was calibrated on what the pruned model before it produces.
    last = "encoder.layer.1.output.dense"
    inputs = tokenizer(TEXTS, padding=True, return_tensors="pt")
    _, statistics = capture_group_inputs(first, [(last, pruned[last])], dict(inputs),
                                         inputs["attention_mask"].bool())
    original = dict(matching_linears(dense))[last].weight.detach()
    if method == "wanda":
        redo, _ = wanda_prune(original, statistics, sparsity, pattern=pattern, lanes=8)
    else:
        redo, _ = sparsegpt_prune(original, statistics, sparsity, pattern=pattern, lanes=8)
    assert torch.equal(redo, pruned[last].weight)


def test_activation_absmax(tiny_bert):
    model, tokenizer = tiny_bert
    maxima = activation_absmax(model, tokenizer, TEXTS)
    assert list(maxima) == [name for name, _ in matching_linears(model)]
    inputs = tokenizer(TEXTS, padding=True, return_tensors="pt")
    linears = matching_linears(model)
    _, statistics = capture_group_inputs(model, linears[:1], dict(inputs),
                                         inputs["attention_mask"].bool())
    # max|x_j| over tokens is at least the RMS, sqrt(H_jj / tokens).
    query = maxima["encoder.layer.0.attention.self.query"]
    assert query.shape == (32,)
    assert (query.double() ** 2 * statistics.tokens >= statistics.hessian.diagonal()
            * (1 - 1e-6)).all()


def test_errors(tiny_bert):
    model, tokenizer = tiny_bert
    weight, statistics = _layer(4)
    with pytest.raises(ValueError, match=r"sparsity 0.6 cannot be reached with 2:4: that "
                                         r"pattern prunes exactly 0.5; pass that or None"):
        wanda_prune(weight, statistics, 0.6, pattern="2:4")
    with pytest.raises(ValueError, match=r"unknown pattern 'blocky'"):
        sparsegpt_prune(weight, statistics, 0.5, pattern="blocky")
    with pytest.raises(ValueError, match=r"K-aligned pruning needs in_features to be a "
                                         r"multiple of K=5, got 32"):
        wanda_prune(weight, statistics, 0.5, pattern="k-aligned", lanes=5)
    with pytest.raises(ValueError, match=r"3:8 needs in_features to be a multiple of 8, got 12"):
        wanda_prune(weight[:, :12], InputStatistics.from_inputs(torch.ones(3, 12)), None,
                    pattern="3:8")
    with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\], not 1.2"):
        wanda_prune(weight, statistics, 1.2)
    with pytest.raises(ValueError, match="statistics are of 32 input features, the weight has 16"):
        wanda_prune(weight[:, :16], statistics, 0.5)
    before = [linear.weight.clone() for _, linear in matching_linears(model)]
    with pytest.raises(ValueError, match="unknown calibrated method 'obs'"):
        prune_calibrated(model, tokenizer, "obs", 0.5, TEXTS)
    with pytest.raises(ValueError, match="needs calibration text; got none"):
        prune_calibrated(model, tokenizer, "wanda", 0.5, [])
    with pytest.raises(ValueError, match="cannot be reached with 2:4"):
        prune_calibrated(model, tokenizer, "sparsegpt", 0.6, TEXTS, pattern="2:4")
    with pytest.raises(ValueError, match="no nn.Linear in the model matches"):
        prune_calibrated(model, tokenizer, "wanda", 0.5, TEXTS, patterns=["nothing"])
    for (_, linear), weight_before in zip(matching_linears(model), before):
        assert torch.equal(linear.weight, weight_before)
