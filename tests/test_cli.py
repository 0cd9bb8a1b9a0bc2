"""The ``sparsemac`` command line: what every command shares."""

import pytest

from sparsemac.sw import cli
from sparsemac.sw.commands import prune, sweep


@pytest.mark.parametrize("command, module", [("sweep", sweep), ("prune", prune),
                                             ("bench", None)])
def test_ctrl_c_says_what_is_kept_and_exits_130(monkeypatch, capsys, command, module):
    def interrupted(_args):
        raise KeyboardInterrupt

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices[command].set_defaults(handler=interrupted)
    argv = {"sweep": ["sweep", "spec.toml", "--output", "out"],
            "prune": ["prune", "--output", "out"], "bench": ["bench"]}[command]
    assert cli.main(argv) == cli.INTERRUPTED_EXIT == 130
    err = capsys.readouterr().err
    said = cli.INTERRUPTED if module is None else module.INTERRUPTED
    assert f"sparsemac {command}: interrupted; {said}" in err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
