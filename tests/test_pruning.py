"""Tests of sparsemac.sw.pruning: exact counts, magnitude order, N:M, global, gradual."""

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, BertModel

from sparsemac.sw.pruning import (
    DEFAULT_BERT_PATTERNS, GradualPruner, cubic_sparsity, global_magnitude_masks,
    matching_linears, prune_mask, prune_model,
)

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)  # same cases every run
LINEAR_SUFFIXES = ("attention.self.query", "attention.self.key", "attention.self.value",
                   "attention.output.dense", "intermediate.dense", "output.dense")


def random_weight(rows, cols, seed, levels=None):
    """Seeded normal weights; with ``levels``, rounded to that many magnitudes to force ties."""
    weight = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    if levels is not None:
        weight = torch.round(weight * levels / 3) / levels
    return weight


def tiny_bert(classifier=False):
    torch.manual_seed(0)
    config = BertConfig(hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=16, vocab_size=10, max_position_embeddings=16)
    return BertForSequenceClassification(config) if classifier else BertModel(config)


def count_pruned(mask):
    return int((~mask).sum())


# Magnitude ------------------------------------------------------------------------------------

@SETTINGS
@given(rows=st.integers(1, 12), cols=st.integers(1, 12), sparsity=st.floats(0, 1),
       seed=st.integers(0, 2**31 - 1), levels=st.sampled_from([None, 2, 4]))
def test_magnitude_exact_count_and_order(rows, cols, sparsity, seed, levels):
    weight = random_weight(rows, cols, seed, levels)
    mask = prune_mask(weight, sparsity)
    assert mask.dtype == torch.bool and mask.shape == weight.shape
    assert count_pruned(mask) == round(sparsity * weight.numel())
    kept, pruned = weight.abs()[mask], weight.abs()[~mask]
    if kept.numel() and pruned.numel():
        assert kept.min() >= pruned.max()


@SETTINGS
@given(rows=st.integers(1, 8), cols=st.integers(1, 8), sparsity=st.floats(0, 1),
       seed=st.integers(0, 2**31 - 1))
def test_magnitude_ties_prune_lower_flat_index_first(rows, cols, sparsity, seed):
    weight = random_weight(rows, cols, seed, levels=1)  # few distinct magnitudes
    mask = prune_mask(weight, sparsity).flatten()
    magnitude = weight.abs().flatten()
    for value in magnitude.unique():
        same = (magnitude == value).nonzero().flatten()
        kept = mask[same]
        # Within one magnitude the pruned ones form a prefix in index order.
        assert torch.equal(kept, torch.sort(kept.to(torch.int8)).values.bool())


def test_magnitude_rounds_half_to_even():
    weight = torch.arange(1.0, 11.0).reshape(2, 5)
    assert count_pruned(prune_mask(weight, 0.25)) == 2  # round(2.5) == 2
    assert count_pruned(prune_mask(weight, 0.35)) == 4  # round(3.5) == 4


def test_magnitude_does_not_modify_weight():
    weight = random_weight(4, 4, 1)
    before = weight.clone()
    prune_mask(weight, 0.5)
    assert torch.equal(weight, before)


# Random ---------------------------------------------------------------------------------------

@SETTINGS
@given(rows=st.integers(1, 12), cols=st.integers(1, 12), sparsity=st.floats(0, 1),
       seed=st.integers(0, 2**31 - 1))
def test_random_exact_count_and_reproducible(rows, cols, sparsity, seed):
    weight = random_weight(rows, cols, 0)
    mask = prune_mask(weight, sparsity, "random", seed=seed)
    assert count_pruned(mask) == round(sparsity * weight.numel())
    assert torch.equal(mask, prune_mask(weight, sparsity, "random", seed=seed))


def test_random_depends_on_seed_not_magnitude():
    weight = random_weight(16, 16, 0)
    a = prune_mask(weight, 0.5, "random", seed=1)
    b = prune_mask(weight, 0.5, "random", seed=2)
    assert not torch.equal(a, b)
    assert not torch.equal(a, prune_mask(weight, 0.5))


def test_random_needs_seed():
    with pytest.raises(ValueError, match="seed"):
        prune_mask(random_weight(2, 2, 0), 0.5, "random")


# N:M ------------------------------------------------------------------------------------------

@SETTINGS
@given(rows=st.integers(1, 6), groups=st.integers(1, 6), nm=st.sampled_from([(1, 2), (2, 4),
       (1, 4), (3, 4), (4, 8), (4, 4)]), seed=st.integers(0, 2**31 - 1),
       levels=st.sampled_from([None, 1]))
def test_n_m_structure(rows, groups, nm, seed, levels):
    n, m = nm
    weight = random_weight(rows, groups * m, seed, levels)
    mask = prune_mask(weight, None, "n:m", n=n, m=m)
    grouped_mask = mask.reshape(rows, groups, m)
    grouped = weight.abs().reshape(rows, groups, m)
    assert (grouped_mask.sum(-1) == n).all()
    kept_min = grouped.masked_fill(~grouped_mask, float("inf")).amin(-1)
    pruned_max = grouped.masked_fill(grouped_mask, -1.0).amax(-1)
    assert (kept_min >= pruned_max).all()


def test_n_m_string_form_and_sparsity_argument():
    weight = random_weight(3, 8, 5)
    expected = prune_mask(weight, None, "n:m", n=2, m=4)
    assert torch.equal(prune_mask(weight, 0.5, "2:4"), expected)
    assert torch.equal(prune_mask(weight, None, " 2 : 4 "), expected)
    # The string's numbers take precedence over n and m.
    assert torch.equal(prune_mask(weight, None, "2:4", n=1, m=8), expected)
    assert count_pruned(prune_mask(weight, 1 - 1 / 8, "1:8")) == 3 * 7


def test_n_m_ties_keep_lower_index():
    weight = torch.ones(1, 4)
    assert prune_mask(weight, None, "2:4").tolist() == [[True, True, False, False]]


@pytest.mark.parametrize("kwargs, message", [
    (dict(sparsity=None, method="2:4", weight=torch.ones(2, 6)), "multiple of 4, got 6"),
    (dict(sparsity=0.9, method="2:4", weight=torch.ones(2, 8)), "2:4 pruning has sparsity 0.5"),
    (dict(sparsity=None, method="5:4", weight=torch.ones(2, 8)), "1 <= n <= m"),
    (dict(sparsity=None, method="0:4", weight=torch.ones(2, 8)), "1 <= n <= m"),
])
def test_n_m_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        prune_mask(**kwargs)


# Validation -----------------------------------------------------------------------------------

@pytest.mark.parametrize("sparsity", [-0.1, 1.5, float("nan")])
def test_sparsity_out_of_range(sparsity):
    with pytest.raises(ValueError, match=f"not {sparsity!r}"):
        prune_mask(torch.ones(2, 2), sparsity)


def test_other_validation_errors():
    with pytest.raises(ValueError, match="unknown pruning method 'largest'.*'magnitude', "
                                         "'random', 'n:m'.*'2:4'"):
        prune_mask(torch.ones(2, 2), 0.5, "largest")
    with pytest.raises(ValueError, match=r"2-D .* got shape \(4,\)"):
        prune_mask(torch.ones(4), 0.5)
    with pytest.raises(TypeError, match="floating-point tensor, got torch.int64"):
        prune_mask(torch.ones(2, 2, dtype=torch.int64), 0.5)
    with pytest.raises(ValueError, match="NaN or infinite"):
        prune_mask(torch.tensor([[1.0, float("nan")]]), 0.5)
    with pytest.raises(ValueError, match="needs a sparsity"):
        prune_mask(torch.ones(2, 2), None)
    with pytest.raises(TypeError, match="sparsity must be a number"):
        prune_mask(torch.ones(2, 2), "0.5")
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        prune_mask([[1.0]], 0.5)


# Global ---------------------------------------------------------------------------------------

@SETTINGS
@given(shapes=st.lists(st.tuples(st.integers(1, 6), st.integers(1, 6)), min_size=1,
                       max_size=4),
       sparsity=st.floats(0, 1), seed=st.integers(0, 2**31 - 1),
       levels=st.sampled_from([None, 2]))
def test_global_one_threshold_exact_total(shapes, sparsity, seed, levels):
    # Layers of very different scales, so one threshold differs from per-layer ones.
    weights = [random_weight(r, c, seed + i, levels) * 10.0 ** i
               for i, (r, c) in enumerate(shapes)]
    masks = global_magnitude_masks(weights, sparsity)
    assert isinstance(masks, list) and len(masks) == len(weights)
    total = sum(w.numel() for w in weights)
    assert sum(count_pruned(m) for m in masks) == round(sparsity * total)
    kept = torch.cat([w.abs()[m] for w, m in zip(weights, masks)])
    pruned = torch.cat([w.abs()[~m] for w, m in zip(weights, masks)])
    if kept.numel() and pruned.numel():
        assert kept.min() >= pruned.max()


def test_global_keeps_dict_structure_and_differs_from_local():
    small, large = random_weight(4, 4, 1) * 0.01, random_weight(4, 4, 2)
    masks = global_magnitude_masks({"small": small, "large": large}, 0.5)
    assert list(masks) == ["small", "large"]
    assert count_pruned(masks["small"]) == 16 and count_pruned(masks["large"]) == 0


def test_global_ties_prune_earlier_matrix_first():
    masks = global_magnitude_masks([torch.ones(1, 2), torch.ones(1, 2)], 0.5)
    assert [m.tolist() for m in masks] == [[[False, False]], [[True, True]]]


def test_global_validation():
    with pytest.raises(ValueError, match="not 2"):
        global_magnitude_masks([torch.ones(2, 2)], 2)
    with pytest.raises(TypeError, match=r"weights\['b'\] must be a floating-point"):
        global_magnitude_masks({"a": torch.ones(2, 2), "b": torch.ones(2, 2, dtype=torch.int8)},
                               0.5)


# Whole models ---------------------------------------------------------------------------------

@pytest.mark.parametrize("classifier, prefix", [(False, ""), (True, "bert.")])
def test_default_patterns_match_the_six_encoder_linears(classifier, prefix):
    names = [name for name, _ in matching_linears(tiny_bert(classifier), DEFAULT_BERT_PATTERNS)]
    assert names == [f"{prefix}encoder.layer.{i}.{s}" for i in range(2) for s in LINEAR_SUFFIXES]


@pytest.mark.parametrize("method", ["magnitude", "random", "2:4"])
def test_prune_model_local(method):
    model = tiny_bert()
    pooler_before = model.pooler.dense.weight.clone()
    reports = prune_model(model, 0.5, method, seed=3)
    assert len(reports) == 12
    linears = dict(matching_linears(model))
    for report in reports:
        weight = linears[report.name].weight
        assert report.shape == tuple(weight.shape)
        assert report.sparsity_target == 0.5
        assert report.nnz == int(torch.count_nonzero(weight)) == weight.numel() // 2
        assert report.sparsity == pytest.approx(0.5)
    assert torch.equal(model.pooler.dense.weight, pooler_before)


def test_prune_model_global_reaches_total_sparsity():
    model = tiny_bert()
    reports = prune_model(model, 0.8, scope="global")
    total = sum(r.shape[0] * r.shape[1] for r in reports)
    assert sum(r.nnz for r in reports) == total - round(0.8 * total)
    assert len({r.sparsity for r in reports}) > 1  # thresholds are not per layer


def test_prune_model_errors():
    with pytest.raises(ValueError, match=r"no nn.Linear of this Sequential matches the default "
                       r"patterns \(DEFAULT_BERT_PATTERNS: the encoder linears of a BERT\)\. Its "
                       r"nn.Linear layers \(1\): 0\. Choose the ones to use with patterns="):
        prune_model(nn.Sequential(nn.Linear(2, 2)), 0.5)
    with pytest.raises(ValueError, match="global scope needs the 'magnitude' method"):
        prune_model(tiny_bert(), 0.5, "random", scope="global", seed=1)
    with pytest.raises(ValueError, match="scope must be 'local' or 'global', not 'layer'"):
        prune_model(tiny_bert(), 0.5, scope="layer")


# Gradual --------------------------------------------------------------------------------------

def test_cubic_schedule_endpoints_and_shape():
    args = dict(initial_sparsity=0.1, final_sparsity=0.9, begin_step=10, end_step=110)
    assert cubic_sparsity(0, **args) == 0.1
    assert cubic_sparsity(10, **args) == pytest.approx(0.1)
    assert cubic_sparsity(110, **args) == 0.9
    assert cubic_sparsity(1000, **args) == 0.9
    # Halfway: s_f + (s_i - s_f) / 8.
    assert cubic_sparsity(60, **args) == pytest.approx(0.9 - 0.8 / 8)
    values = [cubic_sparsity(t, frequency=10, **args) for t in range(0, 130)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    # Constant between pruning steps, changing at them.
    assert values[20] == values[29] < values[30]


@SETTINGS
@given(a=st.floats(0, 1), b=st.floats(0, 1), begin=st.integers(0, 50),
       length=st.integers(1, 60), frequency=st.integers(1, 9))
def test_cubic_schedule_monotone_within_bounds(a, b, begin, length, frequency):
    low, high = min(a, b), max(a, b)
    end = begin + length
    values = [cubic_sparsity(t, low, high, begin, end, frequency)
              for t in range(0, end + 5)]
    assert values[begin] == low and values[end] == high
    assert all(low <= v <= high for v in values)
    assert all(x <= y for x, y in zip(values, values[1:]))


@pytest.mark.parametrize("kwargs, message", [
    (dict(begin_step=5, end_step=5), "begin_step"),
    (dict(frequency=0), "frequency must be at least 1"),
    (dict(final_sparsity=1.2), "not 1.2"),
])
def test_cubic_schedule_errors(kwargs, message):
    args = dict(step=0, initial_sparsity=0.0, final_sparsity=0.9, begin_step=0, end_step=10)
    with pytest.raises(ValueError, match=message):
        cubic_sparsity(**(args | kwargs))


class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.first = nn.Linear(6, 8)
        self.second = nn.Linear(8, 3)

    def forward(self, x):
        return self.second(torch.relu(self.first(x)))


@pytest.mark.parametrize("scope", ["local", "global"])
def test_gradual_pruner_masks_survive_optimiser_steps(scope):
    model = TwoLayers()
    pruner = GradualPruner(model, final_sparsity=0.75, begin_step=2, end_step=8, frequency=2,
                           scope=scope, patterns=[r"^(first|second)$"])
    # Momentum keeps moving pruned weights after their gradient is zero, so without
    # apply_masks they would grow back.
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    generator = torch.Generator().manual_seed(11)
    previous, regrown_any = None, False
    total = sum(layer.weight.numel() for layer in (model.first, model.second))
    for step in range(12):
        applied = pruner.step(step)
        assert (applied is not None) == (step in (2, 4, 6, 8))
        if applied is not None:
            assert applied == cubic_sparsity(step, 0.0, 0.75, 2, 8, 2)
            pruned = sum(count_pruned(m) for m in pruner.masks.values())
            if scope == "global":
                assert pruned == round(applied * total)
            if previous is not None:
                for name, mask in pruner.masks.items():
                    assert not (mask & ~previous[name]).any()  # pruned weights stay pruned
            previous = dict(pruner.masks)
        x = torch.randn(5, 6, generator=generator)
        loss = model(x).pow(2).sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if pruner.masks:
            regrown = any(bool(getattr(model, n).weight[~m].abs().sum() > 0)
                          for n, m in pruner.masks.items())
            regrown_any |= regrown
            pruner.apply_masks()
            for name, mask in pruner.masks.items():
                assert (getattr(model, name).weight[~mask] == 0).all()
    assert regrown_any  # else apply_masks had nothing to undo and the check proves nothing
    assert pruner.sparsity == 0.75
    if scope == "local":
        for layer in (model.first, model.second):
            assert count_pruned(layer.weight != 0) == round(0.75 * layer.weight.numel())


def test_gradual_pruner_errors():
    with pytest.raises(ValueError, match="only the 'magnitude' method"):
        GradualPruner(TwoLayers(), 0.5, 0, 10, method="random", patterns=[".*"])
    with pytest.raises(ValueError, match="no nn.Linear"):
        GradualPruner(TwoLayers(), 0.5, 0, 10)
    with pytest.raises(ValueError, match="begin_step"):
        GradualPruner(TwoLayers(), 0.5, 10, 0, patterns=[".*"])
