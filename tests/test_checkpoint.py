"""Saving an offloaded model and loading it back: bit-exact, whole or not at all."""

import copy
import json
import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a hub

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils import prune  # noqa: E402
from transformers import BertConfig, BertModel, GPT2Config, GPT2Model  # noqa: E402

from sparsemac.devices import open_device  # noqa: E402
from sparsemac.hw.config import ArrayConfig  # noqa: E402
from sparsemac.sw import checkpoint  # noqa: E402
from sparsemac.sw.checkpoint import (  # noqa: E402
    FORMAT, MANIFEST_FILE, TENSORS_FILE, load_offloaded, save_offloaded,
)
from sparsemac.sw.model_offload import offload  # noqa: E402
from sparsemac.sw.models import load_model, tokenize  # noqa: E402
from sparsemac.sw.offloaded_linear import OffloadedLinear  # noqa: E402

SMALL = ArrayConfig(lanes=4, token_lanes=2, max_in_features=64)


def tiny_bert():
    torch.manual_seed(0)
    return BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, vocab_size=100)).eval()


def offloaded_tiny_bert():
    return offload(tiny_bert(), open_device("reference", SMALL), 0.5)[0]


def offloaded_modules(model):
    return {name: module for name, module in model.named_modules()
            if isinstance(module, OffloadedLinear)}


def assert_same_offloaded_layers(saved, loaded):
    saved, loaded = offloaded_modules(saved), offloaded_modules(loaded)
    assert list(saved) == list(loaded)
    for name, module in saved.items():
        other = loaded[name]
        assert module.weights == other.weights, name  # shape, indptr, indices and data
        assert torch.equal(module.weight_scale, other.weight_scale), name
        assert (module.bias is None) == (other.bias is None), name
        assert module.bias is None or torch.equal(module.bias, other.bias), name
        assert module.granularity == other.granularity, name


def run(model, inputs):
    with torch.no_grad():
        return model(**inputs).last_hidden_state


# The round trip ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def minilm_round_trip(tmp_path_factory):
    """MiniLM offloaded at 50 %, saved with its own save_pretrained, loaded back."""
    loaded = load_model("minilm")
    inputs = tokenize(loaded, ["The old lighthouse keeper climbed the stairs.",
                               "A dog is running across the park."])
    model, _ = offload(loaded.model, open_device("reference"), 0.5, granularity="token")
    expected = run(model, inputs)
    path = tmp_path_factory.mktemp("minilm") / "offloaded"
    manifest = model.save_pretrained(path)
    restored = load_offloaded(path, open_device("reference"))
    return model, inputs, expected, path, manifest, restored


def test_minilm_round_trip_is_bit_exact(minilm_round_trip):
    model, inputs, expected, path, manifest, restored = minilm_round_trip
    assert sorted(os.listdir(path)) == ["config.json", MANIFEST_FILE, TENSORS_FILE]
    assert manifest == restored.manifest
    assert manifest.format == FORMAT and manifest.model_class == "BertModel"
    assert manifest.config == ArrayConfig() and len(manifest.layers) == 36
    assert_same_offloaded_layers(model, restored.model)
    # Everything not offloaded comes back as it was: embeddings, norms, pooler.
    state = model.state_dict()
    for key, value in restored.model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert not restored.model.training
    output = run(restored.model, inputs)
    assert torch.equal(output, expected)
    for name, module in offloaded_modules(restored.model).items():
        assert torch.equal(module.last_sums, offloaded_modules(model)[name].last_sums), name


def test_from_pretrained_and_load_model_refuse_rather_than_fill_random_weights(
        minilm_round_trip):
    path = minilm_round_trip[3]
    # No model.safetensors: transformers cannot load the folder as a float model with the
    # offloaded linears initialised at random, which is what a plain save_pretrained led to.
    with pytest.raises(OSError, match="model.safetensors"):
        BertModel.from_pretrained(path)
    with pytest.raises(FileNotFoundError, match=re.escape(
            f"{path}: no model.safetensors or model.safetensors.index.json: it is an offloaded "
            "model, load it with sparsemac.sw.checkpoint.load_offloaded")):
        load_model(str(path))


def test_saving_again_replaces_the_checkpoint_whole(minilm_round_trip, tmp_path):
    restored = minilm_round_trip[5]
    path = tmp_path / "again"
    restored.model.save_pretrained(path)
    first = (path / TENSORS_FILE).read_bytes()
    save_offloaded(restored.model, path)
    assert (path / TENSORS_FILE).read_bytes() == first
    assert sorted(os.listdir(tmp_path)) == ["again"]  # no temporary folder left behind


def tiny_gpt2():
    torch.manual_seed(0)
    return GPT2Model(GPT2Config(n_embd=32, n_layer=2, n_head=2, n_inner=64, vocab_size=100,
                                n_positions=16, bos_token_id=0, eos_token_id=0)).eval()


def test_gpt2_conv1d_layers_round_trip(tmp_path):
    model, _ = offload(tiny_gpt2(), open_device("reference", SMALL), None, "2:4",
                       patterns=[r"^h\.\d+\."])
    inputs = {"input_ids": torch.arange(1, 12).reshape(1, 11)}
    expected = run(model, inputs)
    save_offloaded(model, tmp_path / "gpt2")
    seed_state = torch.get_rng_state()
    restored = load_offloaded(tmp_path / "gpt2", open_device("reference", SMALL))
    assert torch.equal(torch.get_rng_state(), seed_state)  # loading draws no random numbers
    assert_same_offloaded_layers(model, restored.model)
    assert torch.equal(run(restored.model, inputs), expected)


def test_a_deep_copy_saves_itself(tmp_path):
    model = offloaded_tiny_bert()
    copied = copy.deepcopy(model)
    with torch.no_grad():
        copied.pooler.dense.weight.zero_()
    copied.save_pretrained(tmp_path / "copy")
    restored = load_offloaded(tmp_path / "copy", open_device("reference", SMALL))
    assert not restored.model.pooler.dense.weight.any()
    assert model.pooler.dense.weight.any()


# What cannot be saved -------------------------------------------------------------------------

def test_what_cannot_be_restored_is_refused_and_nothing_written(tmp_path):
    target = tmp_path / "checkpoint"
    with pytest.raises(ValueError, match="this BertModel has no OffloadedLinear: save it with "
                                         "transformers' save_pretrained"):
        save_offloaded(tiny_bert(), target)
    model = offloaded_tiny_bert()
    prune.l1_unstructured(model.pooler.dense, "weight", amount=0.5)
    with pytest.raises(ValueError, match=re.escape(
            f"{target}: cannot save: the tensors do not fill a BertModel of this config: "
            "missing pooler.dense.weight, "
            "unexpected pooler.dense.weight_mask, pooler.dense.weight_orig, misshapen none")):
        model.save_pretrained(target)
    sequential = nn.Sequential(nn.Linear(8, 8))
    offload(sequential, open_device("reference", SMALL), 0.5, patterns=["^0$"])
    with pytest.raises(ValueError, match="the model's class 'Sequential' is not a transformers "
                                         "model class"):
        save_offloaded(sequential, target)
    with pytest.raises(TypeError, match="takes no push_to_hub"):
        offloaded_tiny_bert().save_pretrained(target, push_to_hub=True)
    assert os.listdir(tmp_path) == []


def test_a_folder_of_other_files_is_not_overwritten(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="exists and is not an offload checkpoint"):
        save_offloaded(offloaded_tiny_bert(), tmp_path)
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_a_failed_write_leaves_the_earlier_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint"
    model = offloaded_tiny_bert()
    save_offloaded(model, path)
    before = {file: (path / file).read_bytes() for file in os.listdir(path)}

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "write_safetensors", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_offloaded(offloaded_tiny_bert(), path)
    with pytest.raises(OSError, match="No space left"):
        save_offloaded(model, tmp_path / "new")
    assert sorted(os.listdir(tmp_path)) == ["checkpoint"]
    assert {file: (path / file).read_bytes() for file in os.listdir(path)} == before


# What cannot be loaded --------------------------------------------------------------------------

@pytest.fixture
def saved(tmp_path):
    model = offloaded_tiny_bert()
    save_offloaded(model, tmp_path / "saved")
    return tmp_path / "saved"


def test_a_damaged_checkpoint_is_refused_naming_the_file(saved):
    device = open_device("reference", SMALL)
    tensors_file = saved / TENSORS_FILE
    tensors = load_file(tensors_file)
    del tensors["encoder.layer.1.output.dense.data"]
    save_file(tensors, tensors_file)
    with pytest.raises(ValueError, match=re.escape(
            f"{tensors_file}: no tensor encoder.layer.1.output.dense.data of the manifest's "
            "layers")):
        load_offloaded(saved, device)
    tensors_file.write_bytes(tensors_file.read_bytes()[:1000])
    with pytest.raises(ValueError, match=re.escape(f"{tensors_file}: truncated")):
        load_offloaded(saved, device)
    manifest_file = saved / MANIFEST_FILE
    manifest_file.write_text(json.dumps({"format": "sparsemac-offload/0"}))
    with pytest.raises(ValueError, match=re.escape(
            f"{manifest_file}: not a sparsemac offload manifest: format "
            f"'sparsemac-offload/0', expected '{FORMAT}'")):
        load_offloaded(saved, device)


def test_tampered_csr_arrays_are_refused(saved):
    tensors = load_file(saved / TENSORS_FILE)
    key = "encoder.layer.0.attention.self.query.indices"
    tensors[key] = tensors[key].flip(0).contiguous()  # columns no longer ascending
    save_file(tensors, saved / TENSORS_FILE)
    with pytest.raises(ValueError, match=re.escape(
            f"{saved / TENSORS_FILE}: encoder.layer.0.attention.self.query: ")):
        load_offloaded(saved, open_device("reference", SMALL))


def test_a_narrower_array_tiles_and_a_plain_checkpoint_is_refused(saved, tmp_path):
    inputs = {"input_ids": torch.tensor([[5, 17, 33, 2]])}
    narrow = load_offloaded(saved, open_device("reference", ArrayConfig(max_in_features=32)))
    wide = load_offloaded(saved, open_device("reference", SMALL))
    assert torch.equal(run(narrow.model, inputs), run(wide.model, inputs))
    plain = tmp_path / "plain"
    tiny_bert().save_pretrained(plain)
    with pytest.raises(FileNotFoundError, match=re.escape(
            f"{plain}: no {MANIFEST_FILE}, so not a sparsemac offload checkpoint: a plain "
            "Hugging Face checkpoint, load it with load_model or from_pretrained")):
        load_offloaded(plain, open_device("reference", SMALL))


# The feed-forward activation -------------------------------------------------------------------

@pytest.mark.parametrize("activation", ["topk:0.25", "relu:0.01", "relu@0.8"])
def test_the_activation_round_trips_bit_exact(tmp_path, activation):
    from sparsemac.sw.ffn_activation import SparseActivation
    from sparsemac.sw.models import SIMILARITY_PAIRS

    tokenizer = load_model("minilm").tokenizer
    texts = [pair.first for pair in SIMILARITY_PAIRS]
    torch.manual_seed(0)
    model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64)).eval()
    model, report = offload(model, open_device("reference", SMALL), 0.5, activation=activation,
                            calibration=texts, tokenizer=tokenizer)
    inputs = {"input_ids": torch.arange(1000, 1022).reshape(2, 11)}
    expected = run(model, inputs)
    manifest = save_offloaded(model, tmp_path / "sparse")
    assert manifest.activation.spec == activation == report.activation
    saved = json.loads((tmp_path / "sparse" / MANIFEST_FILE).read_text())["activation"]
    assert saved["layers"] == ["encoder.layer.0.intermediate", "encoder.layer.1.intermediate"]
    restored = load_offloaded(tmp_path / "sparse", open_device("reference", SMALL), activation)
    assert restored.manifest == manifest
    acts = [layer.intermediate.intermediate_act_fn for layer in restored.model.encoder.layer]
    assert all(isinstance(act, SparseActivation) for act in acts)
    assert [act.threshold for act in acts] == [
        act.threshold for act in (layer.intermediate.intermediate_act_fn
                                  for layer in model.encoder.layer)]
    assert torch.equal(run(restored.model, inputs), expected)
    for name, module in offloaded_modules(restored.model).items():
        assert torch.equal(module.last_sums, offloaded_modules(model)[name].last_sums), name


def test_an_activation_that_disagrees_with_the_checkpoint_is_refused(tmp_path):
    from sparsemac.sw.activation_sparsity import ActivationMismatchError

    model, _ = offload(tiny_bert(), open_device("reference", SMALL), 0.5, activation="relu")
    save_offloaded(model, tmp_path / "relu")
    save_offloaded(offloaded_tiny_bert(), tmp_path / "gelu")
    device = open_device("reference", SMALL)
    with pytest.raises(ActivationMismatchError, match="relu carries activation relu, but "
                                                      "topk:0.1 was asked for"):
        load_offloaded(tmp_path / "relu", device, "topk:0.1")
    with pytest.raises(ActivationMismatchError, match="carries activation none, but relu"):
        load_offloaded(tmp_path / "gelu", device, "relu")
    # A manifest written before the activation was recorded is a GELU model.
    manifest = json.loads((tmp_path / "gelu" / MANIFEST_FILE).read_text())
    del manifest["activation"]
    (tmp_path / "gelu" / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert load_offloaded(tmp_path / "gelu", device, "none").manifest.activation.spec == "none"
