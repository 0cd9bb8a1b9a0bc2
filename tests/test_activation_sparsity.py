"""The grammar of ``--activation``: good and bad values, canonical text, top-k counts."""

import math

import pytest

from sparsemac.sw.activation_sparsity import (NONE, ActivationMismatchError, ActivationSpec,
                                              ActivationSpecError, agreed_activation,
                                              parse_activation)


@pytest.mark.parametrize("text, spec, canonical", [
    ("none", NONE, "none"),
    (" NONE ", NONE, "none"),
    ("relu", ActivationSpec("relu", threshold=0.0), "relu"),
    ("relu:0", ActivationSpec("relu", threshold=0.0), "relu"),
    ("relu:0.05", ActivationSpec("relu", threshold=0.05), "relu:0.05"),
    ("relu:1e-2", ActivationSpec("relu", threshold=0.01), "relu:0.01"),
    ("relu@0.9", ActivationSpec("relu", target=0.9), "relu@0.9"),
    ("topk:0.1", ActivationSpec("topk", keep=0.1), "topk:0.1"),
    ("TopK:.05", ActivationSpec("topk", keep=0.05), "topk:0.05"),
    ("relu:0.1234567891", ActivationSpec("relu", threshold=0.1234567891), "relu:0.1234567891"),
    ("relu:1e-7", ActivationSpec("relu", threshold=1e-7), "relu:1e-07"),
])
def test_good_values_parse_to_one_canonical_spec(text, spec, canonical):
    parsed = parse_activation(text)
    assert parsed == spec
    assert str(parsed) == canonical
    assert parse_activation(canonical) == parsed
    assert parse_activation(parsed) is parsed


@pytest.mark.parametrize("text, message", [
    ("gelu", "is not one of"),
    ("relu:", "is not one of"),
    ("relu:-0.1", "threshold must be a finite number >= 0"),
    ("relu@0", "strictly between 0 and 1"),
    ("relu@1", "strictly between 0 and 1"),
    ("topk:0", "strictly between 0 and 1"),
    ("topk:1", "strictly between 0 and 1"),
    ("topk:1.5", "strictly between 0 and 1"),
    ("topk", "is not one of"),
    ("topk:0.1:2", "is not one of"),
    ("", "is not one of"),
])
def test_bad_values_are_refused_with_the_forms(text, message):
    with pytest.raises(ActivationSpecError, match=message):
        parse_activation(text)
    assert issubclass(ActivationSpecError, ValueError)


def test_a_spec_built_by_hand_is_checked_too():
    with pytest.raises(ActivationSpecError, match="topk takes keep"):
        ActivationSpec("topk", threshold=0.0)
    with pytest.raises(ActivationSpecError, match="unknown activation kind"):
        ActivationSpec("swish")
    with pytest.raises(ActivationSpecError, match="a ReLU threshold"):
        ActivationSpec("relu", threshold=math.inf)


@pytest.mark.parametrize("keep, width, kept", [
    (0.1, 1536, 154),   # 153.6 rounds up
    (0.1, 1530, 153),   # 153.00000000000003 is 153
    (0.05, 1536, 77),   # 76.8
    (0.5, 64, 32),
    (0.001, 64, 1),     # never fewer than one
    (0.999, 3, 3),
])
def test_top_k_keeps_the_ceiling_of_the_fraction(keep, width, kept):
    assert ActivationSpec("topk", keep=keep).kept(width) == kept


def test_only_top_k_keeps_a_fixed_count():
    with pytest.raises(ActivationSpecError, match="keeps no fixed number"):
        parse_activation("relu").kept(10)


def test_a_carried_activation_is_taken_or_must_agree():
    assert agreed_activation("topk:0.1", None, "ckpt") == parse_activation("topk:0.1")
    assert agreed_activation("topk:0.10", "TOPK:0.1", "ckpt") == parse_activation("topk:0.1")
    with pytest.raises(ActivationMismatchError, match="ckpt carries activation topk:0.1, but "
                                                      "relu was asked for"):
        agreed_activation("topk:0.1", "relu", "ckpt")
    with pytest.raises(ActivationMismatchError, match="carries activation none"):
        agreed_activation("none", "relu", "ckpt")


@pytest.mark.parametrize("command", ["simulate", "bert", "compare", "prune"])
@pytest.mark.parametrize("value", ["topk:1", "swish", "relu:-0.5"])
def test_every_command_refuses_a_bad_activation_before_any_work(command, value, capsys,
                                                                tmp_path, monkeypatch):
    from sparsemac.app import cli

    extra = ["--output", str(tmp_path / "out")] if command in ("compare", "prune") else []
    monkeypatch.setattr("sparsemac.sw.models.load_model", None)  # no model may load
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--activation", value, *extra])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert "argument --activation: " in error and parse_error(value) in error
    assert not (tmp_path / "out").exists()


def parse_error(value):
    with pytest.raises(ActivationSpecError) as error:
        parse_activation(value)
    return str(error.value)


def test_the_help_lists_every_form():
    from sparsemac.app.commands.options import ACTIVATION_HELP

    for form in ("none", "relu", "relu:T", "relu@S", "topk:F"):
        assert form in ACTIVATION_HELP
