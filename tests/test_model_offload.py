"""Whole-model offload: a tiny seeded BERT end to end, the cycle bookkeeping, both commands."""

import copy
import dataclasses
import csv
import json
import re

import pytest
import torch
import torch.nn.utils.prune
from torch import nn
from transformers import (BertConfig, BertModel, DistilBertConfig, DistilBertModel, GPT2Config,
                          GPT2Model, ViTConfig, ViTModel)
from transformers.pytorch_utils import Conv1D

from sparsemac.devices import open_device
from sparsemac.hw.config import ArrayConfig
from sparsemac.hw.formats import Mode
from sparsemac.app.cli import main
from sparsemac.app.commands import bert
from sparsemac.sw.model_offload import cross_check, matmul_cycles, model_cycles, offload
from sparsemac.sw.models import load_model, tokenize
from sparsemac.sw.offloaded_linear import OffloadedLinear
from sparsemac.sw.pruning import matching_linears, prune_model

from helpers import random_activations, random_weights

#: Holds the tiny BERT (widest input 64) and keeps the Verilator build small.
SMALL = ArrayConfig(lanes=4, token_lanes=2, max_in_features=64)


def tiny_bert(seed=0):
    torch.manual_seed(seed)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, vocab_size=100)
    return BertModel(config).eval()


def tiny_inputs(tokens=11, batch=2, seed=1):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, 100, (batch, tokens), generator=generator)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def hidden(model, inputs):
    with torch.no_grad():
        return model(**inputs).last_hidden_state


def run_command(module, argv):
    return main([module.__name__.rpartition(".")[2], *argv])


# offload ----------------------------------------------------------------------------------------

def test_every_encoder_linear_is_replaced_and_nothing_else():
    model = tiny_bert()
    linears_before = {name for name, module in model.named_modules()
                      if isinstance(module, nn.Linear)}
    _, report = offload(model, open_device("reference", SMALL), 0.5)
    offloaded = [name for name, module in model.named_modules()
                 if isinstance(module, OffloadedLinear)]
    assert len(offloaded) == 2 * 6
    assert [layer.name for layer in report.layers] == offloaded
    # Only the pooler's dense stays a float linear; embeddings and norms are untouched.
    assert linears_before - set(offloaded) == {"pooler.dense"}
    assert isinstance(model.pooler.dense, nn.Linear)
    assert isinstance(model.embeddings.word_embeddings, nn.Embedding)
    assert all(abs(layer.sparsity - 0.5) < 0.02 for layer in report.layers)


def test_bert_for_task_models_are_offloaded_through_their_prefix():
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert().config).eval()
    _, report = offload(model, open_device("reference", SMALL), 0.5)
    assert len(report.layers) == 12
    assert report.layers[0].name == "bert.encoder.layer.0.attention.self.query"
    assert isinstance(model.classifier, nn.Linear)


def test_sparsity_zero_stays_close_to_float():
    model = tiny_bert()
    inputs = tiny_inputs()
    expected = hidden(model, inputs)
    offload(model, open_device("reference", SMALL), 0.0)
    cosine = torch.nn.functional.cosine_similarity(hidden(model, inputs).flatten(),
                                                   expected.flatten(), dim=0)
    assert cosine > 0.99


@pytest.mark.parametrize("method, sparsity", [("magnitude", 0.7), ("random", 0.5),
                                              ("2:4", None)])


def test_report_totals_are_sums_of_layers_and_dense_is_the_reference_device(method, sparsity):
    model = tiny_bert()
    device = open_device("reference", SMALL)
    _, report = offload(model, device, sparsity, method, seed=3, keep_sums=True)
    hidden(model, tiny_inputs(tokens=7))
    hidden(model, tiny_inputs(tokens=3, batch=1))
    layers = report.layers
    assert report.sparse_cycles == sum(layer.sparse_cycles for layer in layers) > 0
    assert report.dense_cycles == sum(layer.dense_cycles for layer in layers)
    assert report.sparse_weight_bytes == sum(layer.sparse_weight_bytes for layer in layers)
    assert report.speedup == report.dense_cycles / report.sparse_cycles
    for layer, module in zip(layers, report.modules):
        assert layer.call_tokens == [14, 3] and layer.calls == 2 and layer.tokens == 17
        # The predicted dense baseline is what the reference device measures, call by call.
        measured = [device.matmul(module.weights, torch.zeros(tokens, layer.shape[1],
                                                              dtype=torch.int8), Mode.DENSE)
                    for tokens in layer.call_tokens]
        assert layer.dense_cycles == sum(result.cycles for result in measured)
        assert [sums.shape for sums in layer.sums] == [(14, layer.shape[0]), (3, layer.shape[0])]
    if method == "2:4":
        assert report.sparsity_target == 0.5
    report.reset()
    assert report.sparse_cycles == report.dense_cycles == 0
    assert all(module.stats.calls == 0 for module in report.modules)


def test_measured_dense_equals_predicted_dense():
    model = tiny_bert()
    predicted_model = copy.deepcopy(model)
    inputs = tiny_inputs()
    _, measured = offload(model, open_device("reference", SMALL), 0.8, measure_dense=True)
    _, predicted = offload(predicted_model, open_device("reference", SMALL), 0.8)
    hidden(model, inputs)
    hidden(predicted_model, inputs)
    assert measured.dense_measured and not predicted.dense_measured
    assert measured.dense_cycles == predicted.dense_cycles
    assert measured.cycles_for(SMALL) == (predicted.sparse_cycles, predicted.dense_cycles)


def test_matmul_cycles_tiles_like_the_driver():
    config = ArrayConfig(lanes=4, token_lanes=2, max_in_features=64, max_out_features=5,
                         max_token_blocks=3)
    device = open_device("reference", config)
    weights = random_weights(13, 40, 0.6, seed=5)
    for tokens in (1, 6, 7, 20):
        activations = random_activations(tokens, 40, seed=tokens)
        for mode in Mode:
            assert matmul_cycles(weights, tokens, config, mode) == \
                device.matmul(weights, activations, mode).cycles


def test_model_cycles_are_what_the_reference_device_counts_for_a_pruned_model():
    model = tiny_bert()
    prune_model(model, 0.7, "magnitude")
    pruned = copy.deepcopy(model)
    _, report = offload(model, open_device("reference", SMALL), 0.0)
    hidden(model, tiny_inputs(tokens=9, batch=1))
    for mode, counted in ((Mode.SPARSE, report.sparse_cycles), (Mode.DENSE, report.dense_cycles)):
        assert model_cycles(pruned, 9, SMALL, mode) == counted > 0
    with pytest.raises(ValueError, match="no nn.Linear in the model matches"):
        model_cycles(pruned, 9, SMALL, patterns=("no-such-layer",))


def test_global_scope_reaches_the_target_over_all_layers():
    _, report = offload(tiny_bert(), open_device("reference", SMALL), 0.6, scope="global")
    sparsities = [layer.sparsity for layer in report.layers]
    assert abs(report.sparsity - 0.6) < 0.01
    assert max(sparsities) - min(sparsities) > 0.01  # one threshold, unequal layers


def test_reference_and_verilator_agree_bit_for_bit_on_every_layer():
    model = tiny_bert()
    reference_model = copy.deepcopy(model)
    inputs = tiny_inputs(tokens=9)
    with open_device("verilator", SMALL) as device:
        _, report = offload(model, device, 0.8, keep_sums=True)
        verilator_out = hidden(model, inputs)
    _, reference = offload(reference_model, open_device("reference", SMALL), 0.8,
                           keep_sums=True)
    reference_out = hidden(reference_model, inputs)
    check = cross_check(reference, report)
    assert check.bit_exact and check.cycles_equal, check
    assert report.sparse_cycles == reference.sparse_cycles > 0
    assert torch.equal(verilator_out, reference_out)


def test_minilm_on_a_512_column_buffer_is_tiled_and_bit_exact():
    loaded = load_model("minilm")
    inputs = tokenize(loaded, ["The old lighthouse keeper climbed the stairs."])
    narrow = ArrayConfig.from_key("k8t4i512")
    reports, outputs = [], []
    for config in (ArrayConfig(), narrow):
        model, report = offload(copy.deepcopy(loaded.model), open_device("reference", config),
                                0.9, keep_sums=True)
        with torch.no_grad():
            outputs.append(model(**inputs).last_hidden_state)
        reports.append(report)
    assert cross_check(*reports).bit_exact
    assert torch.equal(*outputs)
    # The FFN output linears (1536 inputs) run as three column tiles, the others as one job.
    jobs = {layer.name: layer.stats.jobs for layer in reports[1].layers}
    assert {name: count for name, count in jobs.items() if count != 1} == {
        f"encoder.layer.{index}.output.dense": 3 for index in range(6)}
    assert reports[0].cycles_for(narrow) == (reports[1].sparse_cycles, reports[1].dense_cycles)


def test_a_model_pruned_beforehand_reports_found_and_applied_sparsity():
    model = tiny_bert()
    for _, linear in matching_linears(model):
        torch.nn.utils.prune.l1_unstructured(linear, "weight", amount=0.8)
        torch.nn.utils.prune.remove(linear, "weight")
    _, report = offload(model, open_device("reference", SMALL), 0.5)
    assert report.sparsity_target == 0.5
    assert report.sparsity_found == pytest.approx(0.8, abs=0.001)
    assert report.sparsity >= report.sparsity_found  # the model's own zeros are kept
    assert all(layer.sparsity_found == pytest.approx(0.8, abs=0.001) for layer in report.layers)
    summary = report.as_json()
    assert summary["sparsity_found"] == report.sparsity_found
    assert summary["layers"][0]["sparsity_found"] == report.layers[0].sparsity_found


def test_the_fidelity_baseline_is_the_model_as_given(capsys):
    from sparsemac.app.pipelines.bert import BertReport, measure_bert

    report = BertReport(
        model="tiny", source="test", backend="reference", method="magnitude", sparsity=0.5,
        sparsity_found=0.8, achieved_sparsity=0.81, scope="local", seed=0, tokens=4,
        config=SMALL.as_dict(), sparse_cycles=10, dense_cycles=40, weight_only_cycles=10,
        speedup=4.0, ideal_speedup=5.0, dense_measured=False, sparse_weight_bytes=1,
        dense_weight_bytes=2,
        bit_exact=None, cycles_equal=None, baseline="the float model as given",
        embedding_cosine=0.9, ranking_agreement=None, device_s=0.0, wall_s=0.0, layers=[])
    text = "\n".join(str(row) for _, _, rows in report.sections() for row in rows)
    assert "found 80.0% in the model as given, target 50.0%, applied 81.0%" in text
    assert "0.9000 (against the float model as given)" in text
    assert "unpruned" not in text
    with pytest.raises(ValueError, match="does not say which pattern"):
        measure_bert("minilm", method="n:m")  # refused before loading


def test_clear_errors():
    device = open_device("reference", SMALL)
    with pytest.raises(ValueError, match=re.escape(
            "no nn.Linear or Conv1D of this Sequential matches the default patterns "
            "(DEFAULT_BERT_PATTERNS: the encoder linears of a BERT). Its nn.Linear or Conv1D "
            "layers (1): 0. Choose the ones to use with patterns= (regular expressions searched "
            "in each name), e.g. patterns=['^0$']")):
        offload(nn.Sequential(nn.Linear(4, 4)), device, 0.5)
    with pytest.raises(ValueError, match=re.escape("the patterns ['^x$']: it has no nn.Linear "
                                                   "or Conv1D layer")):
        offload(nn.Sequential(nn.ReLU()), device, 0.5, patterns=["^x$"])
    model = tiny_bert()
    with pytest.raises(ValueError, match="unknown pruning method 'lottery'"):
        offload(model, device, 0.5, "lottery")
    with pytest.raises(ValueError, match="global scope needs the 'magnitude' method"):
        offload(model, device, 0.5, "random", seed=0, scope="global")
    # A failed offload replaces nothing.
    assert not any(isinstance(module, OffloadedLinear) for module in model.modules())


# Models that are not BERTs --------------------------------------------------------------------

def tiny_distilbert():
    torch.manual_seed(0)
    return DistilBertModel(DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                            vocab_size=100)).eval()


def tiny_vit():
    torch.manual_seed(0)
    return ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=64, image_size=8, patch_size=4)).eval()


def tiny_gpt2():
    torch.manual_seed(0)
    return GPT2Model(GPT2Config(n_embd=32, n_layer=2, n_head=2, n_inner=64, vocab_size=100,
                                n_positions=16, bos_token_id=0, eos_token_id=0)).eval()


@pytest.mark.parametrize("build, names, pattern", [
    (tiny_distilbert, "transformer.layer.<i>.attention.q_lin, transformer.layer.<i>.attention"
     ".k_lin, transformer.layer.<i>.attention.v_lin, transformer.layer.<i>.attention.out_lin, "
     "transformer.layer.<i>.ffn.lin1, transformer.layer.<i>.ffn.lin2",
     r"^transformer\.layer\.\d+\."),
    # transformers 5 names ViT's linears like a decoder's, no longer like BERT's.
    (tiny_vit, "layers.<i>.attention.q_proj, layers.<i>.attention.k_proj, layers.<i>.attention"
     ".v_proj, layers.<i>.attention.o_proj, layers.<i>.mlp.fc1, layers.<i>.mlp.fc2, pooler.dense",
     r"^layers\.\d+\."),
])
def test_other_models_are_refused_naming_their_linears_and_patterns(build, names, pattern):
    model = build()
    count = sum(isinstance(module, nn.Linear) for module in model.modules())
    with pytest.raises(ValueError, match=re.escape(
            f"no nn.Linear or Conv1D of this {type(model).__name__} matches the default patterns "
            f"(DEFAULT_BERT_PATTERNS: the encoder linears of a BERT). Its nn.Linear or Conv1D "
            f"layers ({count}): {names}. Choose the ones to use with patterns= (regular "
            f"expressions searched in each name), e.g. patterns=[{pattern!r}]")):
        offload(model, open_device("reference", SMALL), 0.5)
    # The suggested pattern is one that works: every linear of every layer, and nothing else.
    _, report = offload(model, open_device("reference", SMALL), 0.5, patterns=[pattern])
    assert len(report.layers) == 2 * 6
    assert all(re.search(pattern, layer.name) for layer in report.layers)


def conv1d_as_linear(model):
    """The model with each transformers Conv1D replaced by the nn.Linear it computes."""
    for name, module in list(model.named_modules()):
        if isinstance(module, Conv1D):
            linear = nn.Linear(*module.weight.shape)
            with torch.no_grad():
                linear.weight.copy_(module.weight.t())
                linear.bias.copy_(module.bias)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, linear)
    return model


@pytest.mark.parametrize("method, sparsity", [("magnitude", 0.0), ("2:4", None)])
def test_gpt2_conv1d_layers_are_offloaded_as_their_transposed_linear(method, sparsity):
    model = tiny_gpt2()
    as_linears = conv1d_as_linear(copy.deepcopy(model))
    input_ids = tiny_inputs(tokens=9)["input_ids"]
    with torch.no_grad():
        float_out = model(input_ids).last_hidden_state
    patterns = [r"^h\.\d+\."]
    _, report = offload(model, open_device("reference", SMALL), sparsity, method,
                        patterns=patterns, keep_sums=True)
    _, linear_report = offload(as_linears, open_device("reference", SMALL), sparsity, method,
                               patterns=patterns, keep_sums=True)
    with torch.no_grad():
        out = model(input_ids).last_hidden_state
        linear_out = as_linears(input_ids).last_hidden_state
    assert [layer.name for layer in report.layers] == [
        f"h.{i}.{name}" for i in range(2) for name in ("attn.c_attn", "attn.c_proj",
                                                      "mlp.c_fc", "mlp.c_proj")]
    assert [layer.shape for layer in report.layers[:4]] == [(96, 32), (32, 32), (64, 32),
                                                            (32, 64)]
    # Bit for bit what the nn.Linear of the transposed weight gives: same int32 sums, same output.
    assert cross_check(linear_report, report).bit_exact
    assert torch.equal(out, linear_out)
    if method == "2:4":  # the N:M groups run along the inputs, as the array reads them
        for module in report.modules:
            groups = (module.weights.to_dense() != 0).reshape(module.out_features, -1, 4)
            assert int(groups.sum(dim=-1).max()) <= 2
    else:
        cosine = torch.nn.functional.cosine_similarity(out.flatten(), float_out.flatten(), dim=0)
        assert cosine > 0.99


def test_prune_model_names_the_conv1d_layers_it_does_not_support():
    with pytest.raises(ValueError, match=re.escape(
            "it has no nn.Linear layer. Its 8 Conv1D layers (h.<i>.attn.c_attn, h.<i>.attn"
            ".c_proj, h.<i>.mlp.c_fc, h.<i>.mlp.c_proj) are not supported here: transformers' "
            "Conv1D (GPT-2) stores its weight transposed, (in_features, out_features), and this "
            "takes nn.Linear weights only")):
        prune_model(tiny_gpt2(), 0.5, patterns=[r"^h\.\d+\."])


# Commands ---------------------------------------------------------------------------------------

def test_bert_command_json_on_minilm(capsys, tmp_path):
    path = tmp_path / "layers.csv"
    assert run_command(bert, ["--json", "--backend", "reference", "--sparsity", "0.5",
                              "--csv", str(path)]) == 0
    result = json.loads(capsys.readouterr().out)
    with path.open() as file:
        rows = list(csv.DictReader(file))
    assert [row["name"] for row in rows] == [layer["name"] for layer in result["layers"]]
    assert [int(row["sparse_cycles"]) for row in rows] == [
        layer["sparse_cycles"] for layer in result["layers"]]
    assert result["baseline"] == "the float model as given"
    assert result["sparsity_found"] == 0.0 and result["sparsity"] == 0.5
    for key in ("model", "backend", "sparsity", "tokens", "sparse_cycles", "dense_cycles",
                "speedup", "ideal_speedup", "bit_exact", "embedding_cosine",
                "ranking_agreement", "wall_s", "layers", "seed"):
        assert key in result
    assert result["model"] == "minilm" and result["bit_exact"] is None
    assert len(result["layers"]) == 36
    assert result["sparse_cycles"] == sum(layer["sparse_cycles"] for layer in result["layers"])
    assert 1.5 < result["speedup"] <= result["ideal_speedup"]
    assert 0.0 < result["embedding_cosine"] <= 1.0
    assert -1.0 <= result["ranking_agreement"] <= 1.0


def test_bert_command_reports_bad_method(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_command(bert, ["--method", "lottery"])
    assert exit_info.value.code == 2
    assert "unknown pruning method 'lottery'" in capsys.readouterr().err


def test_calibrated_methods_offload_bit_exact_on_verilator():
    from sparsemac.sw.models import load_model

    tokenizer = load_model("minilm").tokenizer
    torch.manual_seed(0)
    model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64)).eval()
    reference_model = copy.deepcopy(model)
    texts = ["The lamp is lit at dusk.", "Stairs wind up the old tower to the light."]
    inputs = tokenizer(["A ship passes the lighthouse."], return_tensors="pt")
    options = dict(calibration=texts, tokenizer=tokenizer, keep_sums=True)
    with open_device("verilator", SMALL) as device:
        _, report = offload(model, device, None, "sparsegpt-2:4", **options)
        verilator_out = hidden(model, inputs)
    _, reference = offload(reference_model, open_device("reference", SMALL), 0.5,
                           "sparsegpt-2:4", **options)
    assert torch.equal(hidden(reference_model, inputs), verilator_out)
    check = cross_check(reference, report)
    assert check.bit_exact and check.cycles_equal, check
    assert report.sparsity_target == 0.5 and report.method == "sparsegpt-2:4"
    for module in report.modules:  # every group of 4 inputs of a row keeps at most 2
        dense = module.weights.to_dense().reshape(module.out_features, -1, 4)
        assert int((dense != 0).sum(dim=-1).max()) <= 2


def test_calibrated_method_errors_leave_the_model_untouched():
    model = tiny_bert()
    before = copy.deepcopy(model.state_dict())
    device = open_device("reference", SMALL)
    with pytest.raises(ValueError, match="wanda needs calibration text and the model's "
                                         "tokenizer"):
        offload(model, device, 0.5, "wanda")
    with pytest.raises(ValueError, match="sparsity 0.6 cannot be reached with 2:4"):
        offload(model, device, 0.6, "sparsegpt-2:4", calibration=["text"], tokenizer=object())
    with pytest.raises(ValueError, match="wanda-k-aligned prunes each layer on its own"):
        offload(model, device, 0.5, "wanda-k-aligned", scope="global")
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())


def test_smoothing_migrates_each_linear_and_the_host_twin_stays_exact():
    from sparsemac.sw.calibration import activation_absmax
    from sparsemac.sw.model_offload import run_on_host
    from sparsemac.sw.pruning import choose_masks
    from sparsemac.sw.quantisation import smoothing_scales

    tokenizer = load_model("minilm").tokenizer
    torch.manual_seed(0)
    model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64)).eval()
    texts = ["The lamp is lit at dusk.", "Stairs wind up the old tower to the light."]
    maxima = activation_absmax(model, tokenizer, texts)
    weights = {name: linear.weight.detach().clone() for name, linear in matching_linears(model)}
    inputs = tokenizer(["A ship passes the lighthouse."], return_tensors="pt")
    _, report = offload(model, open_device("reference", SMALL), 0.5, calibration=texts,
                        tokenizer=tokenizer, smoothing=0.5)
    masks, _ = choose_masks(list(weights.values()), 0.5, "magnitude")
    for layer, module, mask in zip(report.layers, report.modules, masks):
        expected = smoothing_scales(maxima[layer.name], weights[layer.name] * mask, 0.5)
        assert torch.equal(module.smoothing, expected), layer.name
    on_device = hidden(model, inputs)
    run_on_host(model, report)
    assert torch.equal(hidden(model, inputs), on_device)
    with pytest.raises(ValueError, match="smoothing needs calibration text"):
        offload(tiny_bert(), open_device("reference", SMALL), 0.5, smoothing=0.5)


# Sparse feed-forward activations ----------------------------------------------------------------

def test_a_sparse_activation_is_counted_where_it_enters_the_device():
    from sparsemac.sw.activation_sparsity import parse_activation

    model = tiny_bert()
    _, report = offload(model, open_device("reference", SMALL), 0.5, activation="topk:0.1")
    assert report.activation == "topk:0.1"
    assert all(layer.activations == 0 for layer in report.layers)
    hidden(model, tiny_inputs())
    kept = parse_activation("topk:0.1").kept(64)
    by_name = {layer.name: layer for layer in report.layers}
    for index in range(2):
        layer = by_name[f"encoder.layer.{index}.output.dense"]
        assert layer.activations == 2 * 11 * 64
        # At most k nonzero per token; int8 rounding may zero a few more.
        assert layer.activation_sparsity >= 1 - kept / 64
        assert layer.joint_ideal_speedup == pytest.approx(
            1 / ((1 - layer.sparsity) * (1 - layer.activation_sparsity)))
        assert by_name[f"encoder.layer.{index}.attention.self.query"].activation_sparsity < 0.1
    work = [layer.tokens * layer.shape[0] * layer.shape[1] for layer in report.layers]
    assert report.joint_ideal_speedup == pytest.approx(sum(work) / sum(
        w / layer.joint_ideal_speedup for w, layer in zip(work, report.layers)))
    figures = report.as_json()
    assert figures["activation"] == "topk:0.1"
    assert figures["layers"][5]["activation_sparsity"] == by_name[
        "encoder.layer.0.output.dense"].activation_sparsity
    report.reset()
    assert report.layers[5].activations == 0


def test_the_zero_count_is_the_int8_input_of_each_call():
    model = tiny_bert()
    _, report = offload(model, open_device("reference", SMALL), 0.5, activation="relu")
    captured = []
    model.encoder.layer[1].output.dense.register_forward_pre_hook(
        lambda _module, args: captured.append(args[0]))
    hidden(model, tiny_inputs())
    module = model.encoder.layer[1].output.dense
    sent = module.quantise_input(captured[0]).values
    layer = report.layers[11]
    assert (layer.zero_activations, layer.activations) == (int((sent == 0).sum()), sent.numel())
    assert layer.activation_sparsity > 0.3


def test_a_model_without_a_feed_forward_gelu_is_refused_untouched():
    from sparsemac.sw.ffn_activation import FeedForwardError

    torch.manual_seed(0)
    gpt2 = GPT2Model(GPT2Config(n_embd=32, n_layer=1, n_head=2, n_inner=64, vocab_size=100,
                                n_positions=16)).eval()
    before = copy.deepcopy(gpt2.state_dict())
    with pytest.raises(FeedForwardError, match=r"GPT2Model has no BERT feed-forward"):
        offload(gpt2, open_device("reference", SMALL), 0.5, activation="relu",
                patterns=[r"^h\.\d+\."])
    assert not any(isinstance(module, OffloadedLinear) for module in gpt2.modules())
    assert all(torch.equal(value, before[key]) for key, value in gpt2.state_dict().items())


def test_a_sparse_activation_runs_dual_sparse_on_an_array_built_for_it():
    # The same model, activation and calls on a dual-sparse array and on the same array
    # without the mode: equal sums, fewer cycles where the sparse activation enters.
    runs = {}
    for config in (SMALL, dataclasses.replace(SMALL, dual_sparse=1)):
        model = tiny_bert()
        _, report = offload(model, open_device("reference", config), 0.5,
                            activation="topk:0.1", keep_sums=True)
        runs[config.dual_sparse] = report, hidden(model, tiny_inputs())
    (weights, weights_output), (dual, dual_output) = runs[0], runs[1]
    assert torch.equal(dual_output, weights_output)
    fed = {f"encoder.layer.{index}.output.dense" for index in range(2)}
    assert {layer.name for layer in dual.layers if layer.dual} == fed
    assert not any(layer.dual for layer in weights.layers)
    for layer, alone in zip(dual.layers, weights.layers):
        assert all(torch.equal(a, b) for a, b in zip(layer.sums, alone.sums)), layer.name
        assert layer.weight_only_cycles == alone.sparse_cycles, layer.name
        if layer.dual:
            assert layer.sparse_cycles < layer.weight_only_cycles
        else:
            assert layer.sparse_cycles == layer.weight_only_cycles
    figures = dual.as_json()
    assert figures["weight_only_cycles"] == weights.sparse_cycles > figures["sparse_cycles"]
    assert figures["dense_cycles"] == weights.dense_cycles


def test_a_gelu_model_does_not_run_dual_sparse():
    _, report = offload(tiny_bert(), open_device("reference",
                                                 dataclasses.replace(SMALL, dual_sparse=1)), 0.5)
    assert not any(layer.dual for layer in report.layers)


def test_the_delta_index_serves_the_layers_that_do_not_run_dual_sparse():
    from sparsemac.hw.formats import ColumnIndex

    model = tiny_bert()
    config = dataclasses.replace(SMALL, delta_bits=5, dual_sparse=1)
    _, report = offload(model, open_device("reference", config), 0.5, activation="topk:0.1",
                        index=ColumnIndex.DELTA)
    hidden(model, tiny_inputs())
    for layer, module in zip(report.layers, report.modules):
        assert module.index == (ColumnIndex.CSR if layer.dual else ColumnIndex.DELTA)
    assert all(layer.calls == 1 for layer in report.layers)
