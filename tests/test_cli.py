"""The ``sparsemac`` command line: what every command shares."""

import pytest

from sparsemac.app import cli
from sparsemac.app.commands import prune, sweep


def command_parser(monkeypatch, command):
    """The subparser of ``command`` in the parser that :func:`cli.main` will build, so a test
    can swap its handler."""
    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    return parser._subparsers._group_actions[0].choices[command]


@pytest.mark.parametrize("command, module", [("sweep", sweep), ("prune", prune),
                                             ("bench", None)])
def test_ctrl_c_says_what_is_kept_and_exits_130(monkeypatch, capsys, command, module):
    def interrupted(_args):
        raise KeyboardInterrupt

    command_parser(monkeypatch, command).set_defaults(handler=interrupted)
    argv = {"sweep": ["sweep", "spec.toml", "--output", "out"],
            "prune": ["prune", "--output", "out"], "bench": ["bench"]}[command]
    assert cli.main(argv) == cli.INTERRUPTED_EXIT == 130
    err = capsys.readouterr().err
    said = cli.INTERRUPTED if module is None else module.INTERRUPTED
    assert f"sparsemac {command}: interrupted; {said}" in err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def test_an_error_that_is_not_sparsemacs_keeps_its_traceback(monkeypatch):
    # A ValueError from deep inside a library is a bug, not bad input: no "error:" and exit 2.
    def deep_bug(_args):
        raise ValueError("shapes (3,) and (4,) not aligned")

    command_parser(monkeypatch, "bench").set_defaults(handler=deep_bug)
    with pytest.raises(ValueError, match="not aligned"):
        cli.main(["bench"])


def test_sparsemacs_own_errors_exit_2_or_1(monkeypatch, capsys):
    from sparsemac.hw.errors import InputError, RunFailure

    bench = command_parser(monkeypatch, "bench")
    for error, status, said in ((InputError("--x must be 1"), 2, "error: --x must be 1"),
                                (RunFailure("Yosys failed"), 1, "RunFailure: Yosys failed")):
        def fail(_args, error=error):
            raise error

        bench.set_defaults(handler=fail)
        assert cli.main(["bench"]) == status
        assert f"sparsemac bench: {said}" in capsys.readouterr().err
