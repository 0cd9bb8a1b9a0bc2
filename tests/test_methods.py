"""The pruning-method grammar: every form parses to one value and back, errors list the forms,
and the module imports nothing heavy."""

import subprocess
import sys

import pytest

from sparsemac.sw.methods import (CALIBRATED_KINDS, KINDS, METHOD_HELP, PruningMethod,
                                  parse_method)


@pytest.mark.parametrize("text, kind, pattern, calibrated, fixed", [
    ("magnitude", "magnitude", None, False, None),
    ("random", "random", None, False, None),
    ("2:4", "magnitude", "2:4", False, 0.5),
    (" 1 : 8 ", "magnitude", "1:8", False, 0.875),
    ("wanda", "wanda", None, True, None),
    ("sparsegpt-2:4", "sparsegpt", "2:4", True, 0.5),
    ("wanda-k-aligned", "wanda", "k-aligned", True, None),
])
def test_every_form_parses_to_one_value_and_back(text, kind, pattern, calibrated, fixed):
    method = parse_method(text)
    assert (method.kind, method.pattern) == (kind, pattern)
    assert method.calibrated is calibrated
    assert method.fixes_sparsity is (fixed is not None)
    assert method.fixed_sparsity == fixed
    assert parse_method(method.text) == method and parse_method(method) is method
    assert str(method) == method.text == text.replace(" ", "")


def test_the_bare_n_m_takes_its_pattern_from_the_api_only():
    assert parse_method("n:m", nm=(1, 4)) == PruningMethod("magnitude", "1:4")
    with pytest.raises(ValueError, match="'n:m' does not say which pattern"):
        parse_method("n:m")
    with pytest.raises(TypeError, match="n must be an integer, not 2.0"):
        parse_method("n:m", nm=(2.0, 4))


@pytest.mark.parametrize("text, message", [
    ("lottery", "unknown pruning method 'lottery'; valid methods are 'magnitude', 'random' or "
                "an 'N:M' string such as '2:4'; or a calibrated one: wanda, sparsegpt, each "
                "optionally with -N:M or -k-aligned (e.g. sparsegpt-2:4)"),
    ("4:2", "N:M pruning needs 1 <= n <= m, got n=4, m=2"),
    ("wanda-5:4", "method 'wanda-5:4': after wanda- comes an N:M pattern with 1 <= N <= M "
                  "(e.g. wanda-2:4) or 'k-aligned', not '5:4'"),
    ("magnitude-2:4", "unknown pruning method 'magnitude-2:4'"),
])
def test_errors_list_every_valid_form(text, message):
    with pytest.raises(ValueError) as error:
        parse_method(text)
    assert str(error.value).startswith(message)


def test_a_value_refuses_what_its_kind_cannot_take():
    with pytest.raises(ValueError, match="the 'k-aligned' pattern needs a calibrated method "
                                         r"\(wanda or sparsegpt\), not 'magnitude'"):
        PruningMethod("magnitude", "k-aligned")
    with pytest.raises(ValueError, match="random pruning takes no pattern"):
        PruningMethod("random", "2:4")
    with pytest.raises(ValueError, match="unknown pattern 'blocky'"):
        PruningMethod("wanda", "blocky")
    assert PruningMethod("wanda", " 2 : 4 ").pattern == "2:4"


def test_the_help_names_every_kind():
    assert all(kind in METHOD_HELP for kind in KINDS)
    assert set(CALIBRATED_KINDS) < set(KINDS)


def test_the_grammar_imports_nothing_heavy():
    code = ("import sys, sparsemac.sw.methods; "
            "print(sorted(m for m in ('torch', 'numpy', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"
