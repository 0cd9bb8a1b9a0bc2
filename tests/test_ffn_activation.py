"""Sparse feed-forward activations: the module, the model change, the measured sparsity."""

import pytest
import torch
from transformers import BertConfig, BertModel, GPT2Config, GPT2Model

from sparsemac.sw.activation_sparsity import (ActivationMismatchError, ActivationSpecError,
                                              parse_activation)
from sparsemac.sw.ffn_activation import (FeedForwardError, SparseActivation,
                                         measure_activation_sparsity, model_activation,
                                         sparsify_activations)
from sparsemac.sw.models import SIMILARITY_PAIRS, load_model
from sparsemac.sw.quantisation import quantise_input

TEXTS = [text for pair in SIMILARITY_PAIRS for text in (pair.first, pair.second)]


@pytest.fixture(scope="module")
def tokenizer():
    return load_model("minilm").tokenizer


def tiny_bert(seed=0, **options):
    torch.manual_seed(seed)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, **options)
    return BertModel(config, add_pooling_layer=False).eval()


def gelu():
    return tiny_bert().encoder.layer[0].intermediate.intermediate_act_fn


def normal(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("keep, width", [(0.1, 64), (0.05, 1536), (0.1, 1536), (0.3, 7)])
def test_top_k_keeps_exactly_k_largest_per_token(keep, width):
    spec = parse_activation(f"topk:{keep}")
    x = normal(3, 5, width)
    y = SparseActivation(spec, gelu())(x)
    k = spec.kept(width)
    assert ((y != 0).sum(dim=-1) == k).all()  # no kept GELU output is exactly 0 here
    reference = gelu()(x)
    kth = reference.topk(k, dim=-1).values[..., -1:].expand_as(y)
    assert torch.equal(y[y != 0], reference[y != 0])
    assert (reference[y == 0] <= kth[y == 0]).all() and (reference[y != 0] >= kth[y != 0]).all()


@pytest.mark.parametrize("threshold", [0.0, 0.25])
def test_relu_zeros_what_is_at_or_below_the_threshold(threshold):
    spec = parse_activation(f"relu:{threshold}")
    x = torch.cat([normal(4, 64), torch.tensor([[threshold] * 64])])
    y = SparseActivation(spec, gelu())(x)
    assert torch.equal(y[x > threshold], x[x > threshold])
    assert not y[x <= threshold].any()


@pytest.mark.parametrize("granularity", ["token", "tensor"])
def test_int8_quantisation_keeps_every_zero_exactly_zero(granularity):
    y = SparseActivation(parse_activation("topk:0.1"), gelu())(normal(16, 256))
    smoothing = normal(256, seed=1).abs() + 0.1
    for migration in (None, smoothing):
        values = quantise_input(y, granularity, migration).values
        assert not values[y == 0].any()


def test_sparsify_replaces_every_gelu_once(tokenizer):
    model = tiny_bert()
    inputs = tokenizer(TEXTS[:3], padding=True, return_tensors="pt")
    with torch.no_grad():
        dense = model(**inputs).last_hidden_state
    setting = sparsify_activations(model, "topk:0.1")
    assert setting.spec == "topk:0.1" and setting.thresholds is None
    assert setting.layers == ("encoder.layer.0.intermediate", "encoder.layer.1.intermediate")
    assert all(isinstance(layer.intermediate.intermediate_act_fn, SparseActivation)
               for layer in model.encoder.layer)
    with torch.no_grad():
        assert not torch.equal(model(**inputs).last_hidden_state, dense)
    assert sparsify_activations(model, "TOPK:0.10") == setting  # carried already: unchanged
    with pytest.raises(ActivationMismatchError, match="carries activation topk:0.1; it cannot "
                                                      "be made relu"):
        sparsify_activations(model, "relu")
    assert model_activation(tiny_bert()).spec == "none"
    assert sparsify_activations(tiny_bert(), "none").layers == ()


def test_a_model_without_a_bert_gelu_is_refused_naming_what_it_has():
    gpt2 = GPT2Model(GPT2Config(n_embd=16, n_layer=1, n_head=2, n_positions=16, vocab_size=50))
    with pytest.raises(FeedForwardError, match=r"GPT2Model has no BERT feed-forward .* its "
                                               r"activation modules are h\.<i>\.mlp\.act "
                                               r"\(NewGELUActivation\)"):
        sparsify_activations(gpt2, "relu")
    silu = tiny_bert(hidden_act="silu")
    with pytest.raises(FeedForwardError, match=r"encoder\.layer\.0\.intermediate\."
                                               r"intermediate_act_fn is a SiLUActivation, "
                                               "not a GELU"):
        sparsify_activations(silu, "relu")
    assert model_activation(silu).spec == "none"  # nothing replaced


def test_calibrated_relu_reaches_its_target_on_the_calibration_text(tokenizer):
    model = tiny_bert()
    with pytest.raises(ActivationSpecError, match="needs calibration text"):
        sparsify_activations(model, "relu@0.9")
    setting = sparsify_activations(model, "relu@0.9", tokenizer=tokenizer, calibration=TEXTS)
    assert len(setting.thresholds) == 2 and all(t > 0 for t in setting.thresholds)
    measured = measure_activation_sparsity(model, tokenizer, TEXTS, batch_size=1)
    # Layer 0 sees the dense model's inputs exactly; int8 rounding only adds zeros.
    assert 0.9 <= measured.layers[0].sparsity < 0.93
    again = sparsify_activations(tiny_bert(), "relu@0.9", thresholds=setting.thresholds)
    assert again == setting


def test_measured_sparsity_equals_a_direct_count(tokenizer):
    model = tiny_bert()
    sparsify_activations(model, "relu")
    inputs = tokenizer(TEXTS, padding=True, truncation=True, return_tensors="pt")
    captured = []
    handles = [layer.output.dense.register_forward_pre_hook(
        lambda _m, args: captured.append(args[0])) for layer in model.encoder.layer]
    with torch.no_grad():
        model(**inputs)
    for handle in handles:
        handle.remove()
    real = inputs["attention_mask"].bool()
    direct = [(int((quantise_input(x[real], "token").values == 0).sum()), int(real.sum()) * 64)
              for x in captured]
    report = measure_activation_sparsity(model, tokenizer, TEXTS, batch_size=len(TEXTS))
    assert [(layer.zeros, layer.values) for layer in report.layers] == direct
    assert [layer.name for layer in report.layers] == [
        "encoder.layer.0.output.dense", "encoder.layer.1.output.dense"]
    assert report.tokens == int(real.sum()) and report.activation == "relu"
    assert report.sparsity == sum(z for z, _ in direct) / sum(v for _, v in direct)
    # Padding is not counted: smaller batches give the same count of values.
    assert measure_activation_sparsity(model, tokenizer, TEXTS, batch_size=3).layers[0].values \
        == direct[0][1]
