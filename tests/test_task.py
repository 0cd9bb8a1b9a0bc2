"""Tests of the labelled task: loading, splits, and the probe evaluation."""

import numpy as np
import pytest
import torch

from sparsemac.sw.models import load_model, sentence_embeddings
from sparsemac.sw.task import (
    BUILTIN_SOURCE, TASK_SPLIT_SIZES, LabelledTexts, SplitSizes, TaskDataError, TaskEmbeddings,
    TaskSplits, check_labels, evaluate_embeddings, load_labelled, load_texts, model_embedder,
    task_splits,
)


@pytest.fixture(scope="module")
def builtin():
    return load_labelled()


def test_builtin_tweets(builtin):
    assert len(builtin) == 38158
    assert builtin.label_names == ("negative", "neutral", "positive")
    assert np.bincount(builtin.labels).tolist() == [16186, 15018, 6954]
    assert builtin.source == BUILTIN_SOURCE
    assert builtin.licence.startswith("MIT")
    assert all(text.isascii() and text == " ".join(text.split()) for text in builtin.texts)
    assert builtin.texts[1] == "self-driving cars just seem lazy and a waste of money"


def test_default_splits_are_disjoint_sized_and_fixed(builtin):
    splits = task_splits(builtin)
    parts = [splits.train, splits.test, splits.calibration, splits.distillation]
    assert [len(part) for part in parts[:3]] == [2000, 1000, 128]
    # 38158 rows hold 37232 distinct texts; 4,000 are held out for testing, the test split
    # takes 1,000 of them, and the distillation split takes what follows the others.
    assert len(splits.distillation) == 37232 - 4000 - 2128
    seen = set()
    for part in parts:
        assert seen.isdisjoint(part.texts)
        seen.update(part.texts)
    again = task_splits(builtin, seed=0)
    assert again.test.texts == splits.test.texts and again.test.labels == splits.test.labels
    other = task_splits(builtin, seed=1)
    assert other.test.texts != splits.test.texts
    assert splits.seed == 0 and other.seed == 1


def test_task_splits_hold_out_the_same_test_texts(builtin):
    task = task_splits(builtin, sizes=TASK_SPLIT_SIZES)
    assert [len(task.train), len(task.test), len(task.calibration),
            len(task.distillation)] == [16000, 4000, 128, 37232 - 20128]
    # A smaller test split is the head of the larger one, and no split of either trains,
    # calibrates or distils on a held-out text.
    quick = task_splits(builtin)
    assert task.test.texts[:1000] == quick.test.texts
    held_out = set(task.test.texts)
    for splits in (task, quick):
        for part in (splits.train, splits.calibration, splits.distillation):
            assert held_out.isdisjoint(part.texts)
    assert set(task.distillation.texts).isdisjoint(task.train.texts)


def test_held_out_below_test_is_refused(builtin):
    with pytest.raises(TaskDataError, match="held_out=10 is below test=20"):
        task_splits(builtin, sizes=SplitSizes(test=20, held_out=10))


def test_check_labels():
    def part(labels):
        return LabelledTexts(texts=[str(i) for i in range(len(labels))], labels=labels,
                             label_names=("a", "b", "c"), source="mine.csv",
                             licence="user data")

    def splits(train, test):
        return TaskSplits(part(train), part(test), part([0]), part([0]), seed=0)

    check_labels(splits([0, 1, 0], [1, 0]))
    with pytest.raises(TaskDataError, match="the train split has a single class \\(b\\)"):
        check_labels(splits([1, 1], [1]))
    with pytest.raises(TaskDataError, match="the test split has labels the train split never "
                                            "shows \\(c\\)"):
        check_labels(splits([0, 1], [2, 0]))


def test_split_labels_follow_their_texts(builtin):
    splits = task_splits(builtin, sizes=SplitSizes(train=50, test=20, calibration=5,
                                                   distillation=7))
    first_label = {}
    for text, label in zip(builtin.texts, builtin.labels):
        first_label.setdefault(text, label)
    for part in (splits.train, splits.test, splits.calibration, splits.distillation):
        assert [first_label[text] for text in part.texts] == part.labels
    assert len(splits.distillation) == 7


def test_splits_too_large_or_invalid(builtin):
    with pytest.raises(TaskDataError, match=r"the splits need 4000 held out for testing \+ 38000 "
                                            r"train \+ 1000 calibration \+ at least 1 "
                                            r"distillation unique texts, there are 37232"):
        task_splits(builtin, sizes=SplitSizes(train=38000, test=1000, calibration=1000))
    with pytest.raises(ValueError, match=r"split size test=0: must be an integer of at least 1"):
        task_splits(builtin, sizes=SplitSizes(test=0))


def test_user_csv(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text('id,text,label\n1,"good,  very good",pos\n2,bad,neg\n3,fine,pos\n',
                    encoding="utf-8")
    labelled = load_labelled(path)
    assert labelled.texts == ["good, very good", "bad", "fine"]
    assert labelled.label_names == ("neg", "pos")
    assert labelled.labels == [1, 0, 1]
    assert labelled.source == str(path) and labelled.licence == "user data"


def test_user_csv_integer_labels_sort_numerically(tmp_path):
    path = tmp_path / "numbers.csv"
    path.write_text("text,label\na,10\nb,2\nc,-1\n", encoding="utf-8")
    labelled = load_labelled(path)
    assert labelled.label_names == ("-1", "2", "10")
    assert labelled.labels == [2, 1, 0]


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"", "the file is empty"),
    (b"  \n\n", "the file is empty"),
    (b"text,label\n", "a header but no data row"),
    (b"text,label\ncaf\xe9,1\n", r"not UTF-8 \(byte 0xe9 on line 2\): save it as UTF-8"),
    (b"text,sentiment\nhello,1\n", r"no 'label' column; the header has \['text', "
                                   r"'sentiment'\]"),
    (b"sentence,label\nhello,1\n", r"no 'text' column"),
    (b"text,label\nhello,1\n  ,0\n", r"row on line 3 has an empty 'text'"),
    (b"text,label\nhello,\n", r"row on line 2 has an empty 'label'"),
])
def test_bad_user_csv(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(TaskDataError, match=message) as caught:
        load_labelled(path)
    # The CLI maps ValueError to exit status 2.
    assert isinstance(caught.value, ValueError)
    assert str(path) in str(caught.value)


def test_load_texts(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("first  line\n\n  second\tline \n", encoding="utf-8")
    assert load_texts(path) == ["first line", "second line"]
    path.write_text("\n \n", encoding="utf-8")
    with pytest.raises(TaskDataError, match=r"the file is empty \(or only whitespace\)"):
        load_texts(path)
    with pytest.raises(TaskDataError, match="no such file"):
        load_texts(tmp_path / "missing.txt")
    (tmp_path / "latin1.txt").write_bytes(b"na\xefve\n")
    with pytest.raises(TaskDataError, match="not UTF-8"):
        load_texts(tmp_path / "latin1.txt")


def _toy_splits(builtin, train=60, test=40):
    return task_splits(builtin, sizes=SplitSizes(train=train, test=test, calibration=1,
                                                 distillation=1))


def _class_embeddings(labels, noise, generator):
    """Unit embeddings clustered around one direction per class."""
    centres = torch.eye(8, dtype=torch.float32)[:3] * 3
    x = centres[torch.tensor(labels)] + noise * torch.randn(len(labels), 8,
                                                            generator=generator)
    return torch.nn.functional.normalize(x, dim=1)


def test_evaluate_identical_and_separable(builtin):
    splits = _toy_splits(builtin)
    generator = torch.Generator().manual_seed(0)
    dense = TaskEmbeddings(train=_class_embeddings(splits.train.labels, 0.1, generator),
                           test=_class_embeddings(splits.test.labels, 0.1, generator))
    report = evaluate_embeddings(dense, dense, splits)
    assert report.dense_accuracy == report.accuracy == report.accuracy_dense_probe == 1.0
    assert report.cosine == pytest.approx(1.0, abs=1e-12)
    assert report.knn_agreement == 1.0
    assert (report.train_size, report.test_size) == (60, 40)
    assert report.accuracy_drop_points == 0.0


def test_evaluate_rotated_candidate_needs_its_own_probe(builtin):
    splits = _toy_splits(builtin)
    generator = torch.Generator().manual_seed(1)
    dense = TaskEmbeddings(train=_class_embeddings(splits.train.labels, 0.1, generator),
                           test=_class_embeddings(splits.test.labels, 0.1, generator))
    # A permutation of the features keeps every distance: its own probe and its neighbours
    # are as good as the dense model's, but the dense probe reads the wrong features.
    permutation = torch.tensor([1, 2, 0, 3, 4, 5, 6, 7])
    rotated = TaskEmbeddings(train=dense.train[:, permutation], test=dense.test[:, permutation])
    report = evaluate_embeddings(dense, rotated, splits)
    assert report.accuracy == 1.0 and report.knn_agreement == 1.0
    assert report.accuracy_dense_probe < 0.5
    assert report.cosine < 0.2


def test_evaluate_noise_lowers_the_figures(builtin):
    splits = _toy_splits(builtin, train=200, test=100)
    generator = torch.Generator().manual_seed(2)
    dense = TaskEmbeddings(train=_class_embeddings(splits.train.labels, 0.3, generator),
                           test=_class_embeddings(splits.test.labels, 0.3, generator))
    noisy = TaskEmbeddings(
        train=torch.nn.functional.normalize(dense.train + torch.randn(
            dense.train.shape, generator=generator), dim=1),
        test=torch.nn.functional.normalize(dense.test + torch.randn(
            dense.test.shape, generator=generator), dim=1))
    report = evaluate_embeddings(dense, noisy, splits)
    assert report.accuracy < report.dense_accuracy
    assert report.knn_agreement < 0.5
    assert 0.0 < report.cosine < 0.9


def test_evaluate_rejects_mismatched_embeddings(builtin):
    splits = _toy_splits(builtin)
    good = TaskEmbeddings(train=torch.ones(60, 4), test=torch.ones(40, 4))
    short = TaskEmbeddings(train=torch.ones(59, 4), test=torch.ones(40, 4))
    with pytest.raises(ValueError, match="candidate train embeddings have 59 rows, the split "
                                         "has 60 texts"):
        evaluate_embeddings(good, short, splits)
    wide = TaskEmbeddings(train=torch.ones(60, 5), test=torch.ones(40, 5))
    with pytest.raises(ValueError, match="dense embeddings are 4 wide, the candidate's 5"):
        evaluate_embeddings(good, wide, splits)


def test_model_embedder_matches_sentence_embeddings(builtin):
    loaded = load_model("minilm")
    texts = builtin.texts[:12]
    embed = model_embedder(loaded.model, loaded.tokenizer, batch_size=4)
    by_length = embed(texts)
    one_by_one = torch.cat([sentence_embeddings(loaded.model, loaded.tokenizer, [text])
                            for text in texts])
    torch.testing.assert_close(by_length, one_by_one, atol=1e-5, rtol=0)
    splits = _toy_splits(builtin, train=6, test=4)
    report = evaluate_embeddings(embed, embed, splits)
    assert report.cosine == pytest.approx(1.0, abs=1e-6) and report.knn_agreement == 1.0
