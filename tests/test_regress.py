"""The cocotb regressions under pytest, and tests that their checker can fail.

Each (config, testbench) pair is one pytest test running all catalogue cases in one Verilator
process; the configs cover K in {1, 4, 5, 8} and T in {1, 3, 8, 16}. Builds are cached on disk and
shared between pytest-xdist workers, so ``pytest -n 2`` compiles each design once, ever.
The seed is ``$SPARSEMAC_REGRESS_SEED`` (default 1); a failure prints the replay command.
"""

import json
import os
import re

import pytest

from sparsemac.bitstreams.build import BOARDS
from sparsemac.hw.config import ArrayConfig
from sparsemac.sim import regress
from sparsemac.sim.cocotb.scoreboard import Expected, Scoreboard, ScoreboardError
from sparsemac.app.cli import main

SEED = int(os.environ.get("SPARSEMAC_REGRESS_SEED", "1"))

#: K=1 T=1, K=4 T=16 and the odd K=5 T=3 (with the delta decoder, with chunks that span rows,
#: and with the dual-sparse mode) with a 512-column buffer, the ULX3S build K=4 T=32 (512
#: columns, registered edges) and the board's previous one, K=8 T=8 (1024 columns, dual-port
#: buffer, registered edges).
CONFIGS = ("k1t1i512", "k4t16i512", "k5t3i512d4", "k5t3i512s1", "k5t3i512a1",
           "k4t32i512r1", "k8t8i1024p2r1")


def _failure_report(run):
    lines = [f"{run.testbench.name} on {run.config.key()}, seed {run.seed}:"]
    if run.error:
        lines.append(run.error)
    for result in run.failed:
        lines += [f"{result.name}: {result.message}",
                  "  replay: "
                  + regress.replay_command(run.config, run.testbench, result, run.seed)]
        if result.waveform is not None:
            lines.append(f"  waveform: {result.waveform}")
    return "\n".join(lines)


@pytest.mark.slow
@pytest.mark.parametrize("testbench", list(regress.TESTBENCHES))
@pytest.mark.parametrize("config", CONFIGS)
def test_regression(config, testbench, tmp_path):
    run = regress.run_testbench(ArrayConfig.from_key(config), regress.TESTBENCHES[testbench],
                                SEED, tmp_path)
    assert run.results, _failure_report(run)
    assert not run.error and not run.failed, _failure_report(run)
    assert len(run.results) == len(regress.TESTBENCHES[testbench].test_names())


def test_configs_cover_lane_extremes():
    configs = [ArrayConfig.from_key(name) for name in CONFIGS]
    assert set(CONFIGS) == set(regress.NAMED_CONFIGS)
    # What ships is regressed: the config of every board's committed bitstream.
    assert {board.config.key() for board in BOARDS.values()} <= set(CONFIGS)
    assert {1, 4, 8} <= {config.lanes for config in configs}
    assert {1, 8, 16} <= {config.token_lanes for config in configs}
    # An odd K > 1: the adder tree then has an unpaired input at some level.
    assert any(config.lanes > 1 and config.lanes % 2 for config in configs)
    # The dual-port buffer's bank multiplexer.
    assert any(config.read_ports == 2 for config in configs)


# The checker itself -----------------------------------------------------------------------

def _sums_scoreboard(expected_lanes):
    from sparsemac.hw.formats import CoreFormats

    layout = CoreFormats(ArrayConfig(lanes=2, token_lanes=4, max_in_features=64)).sums
    beats = [layout.const(lanes).as_value().value for lanes in expected_lanes]
    expected = [Expected(beat, f"block 0 (tokens 0-3), row {row}")
                for row, beat in enumerate(beats)]
    return layout, beats, Scoreboard("sums", layout, expected, "token lane")


def test_scoreboard_passes_matching_beats():
    _, beats, scoreboard = _sums_scoreboard([[1, 2, 3, 4], [-5, 6, -7, 8]])
    for beat in beats:
        scoreboard.check(beat)
    scoreboard.check_cycles(100, 100, exact=True)
    scoreboard.finish()


def test_scoreboard_names_the_beat_a_broken_golden_value_breaks():
    rows = [[1, 2, 3, 4], [-5, 6, -7, 8], [9, 10, 11, 12]]
    layout, beats, _ = _sums_scoreboard(rows)
    broken = [row[:] for row in rows]
    broken[1][2] = -6  # one wrong golden value: row 1, token lane 2
    _, _, scoreboard = _sums_scoreboard(broken)
    for beat in beats:  # what the "hardware" sent: the right values
        scoreboard.check(beat)
    with pytest.raises(ScoreboardError) as failure:
        scoreboard.finish()
    message = str(failure.value)
    assert "sums beat 1 (block 0 (tokens 0-3), row 1)" in message
    assert "token lane 2: expected -6, got -7" in message
    assert len(scoreboard.mismatches) == 1


def test_scoreboard_reports_missing_extra_beats_and_cycles():
    _, beats, scoreboard = _sums_scoreboard([[1, 2, 3, 4], [5, 6, 7, 8]])
    scoreboard.check(beats[0])
    scoreboard.check_cycles(101, 100, exact=True)
    with pytest.raises(ScoreboardError, match=r"got 1 of 2 beats; first missing is beat 1"):
        scoreboard.finish()
    assert "cycle count 101, cycle model says == 100 (+1)" in " ".join(scoreboard.cycle_errors)
    stalled = _sums_scoreboard([[0, 0, 0, 0]])[2]
    stalled.check_cycles(150, 100, exact=False)  # stalls may only add cycles
    stalled.check(0)
    stalled.check(0)
    with pytest.raises(ScoreboardError, match="extra beat"):
        stalled.finish()


def _flip_sum_bit(verilog):
    """The core's Verilog with bit 0 of the MAC array's output register inverted."""
    module = re.search(r"^module \\sparsemac_core\.mac_array .*?^endmodule", verilog,
                       re.MULTILINE | re.DOTALL)
    body, count = re.subn(r"(\n\s*sums__payload <= )(\S+) ;", r"\1\2 ^ 1'h1 ;", module.group(0))
    assert count == 1, "the MAC array's sums register moved: update the mutation"
    return verilog[:module.start()] + body + verilog[module.end():]


def test_one_bit_rtl_mutation_fails_the_regression(tmp_path):
    config = ArrayConfig.from_key("k1t1i512")
    testbench = regress.TESTBENCHES["core"]
    mutant = tmp_path / "mutant.v"
    mutant.write_text(_flip_sum_bit(regress.testbench_verilog(config, testbench).read_text()))
    run = regress.run_testbench(config, testbench, SEED, tmp_path / "results",
                                pattern=r"case=(tiny|random_s90)$", verilog=mutant,
                                keep_failure_waves=False)
    assert not run.error, run.error
    assert [result.passed for result in run.results] == [False, False]
    for result in run.results:
        assert "first mismatch: sums beat 0 (block 0 (tokens 0-0), row 0): token lane 0" \
            in result.message, result.message


def test_replay_command_names_any_config_the_way_the_cli_reads_it():
    from sparsemac.app.cli import build_parser
    from sparsemac.app.commands.options import configs_from_args

    config = ArrayConfig(lanes=2, token_lanes=8, max_in_features=256)
    result = regress.TestResult(testbench="core", name="test_core/case=tiny", passed=False,
                                cycles=0, wall_time=0.0)
    command = regress.replay_command(config, regress.TESTBENCHES["core"], result, 7)
    assert command == ("sparsemac regress --config k2t8i256 --testbench core "
                       "--test 'test_core/case=tiny$' --seed 7 --waves")
    args = build_parser().parse_args(["regress", "--config", "k2t8i256"])
    assert configs_from_args(args) == [config]


def test_a_build_is_keyed_by_the_python_environment(monkeypatch):
    """The simulator binary loads the cocotb libraries of the venv that built it, so another
    venv (say a fresh clone's) must not reuse it."""
    config, testbench = ArrayConfig.from_key("k8t4"), regress.TESTBENCHES["core"]
    key = regress._build_key(config, testbench, "module m; endmodule", waves=False)
    monkeypatch.setattr(regress.sys, "prefix", "/elsewhere/.venv")
    assert regress._build_key(config, testbench, "module m; endmodule", waves=False) != key


@pytest.mark.parametrize("argv, message", [
    (["--testbench", "nope"], "unknown testbench 'nope'; known: core"),
    (["--test", "no such test$"], "no test matches 'no such test$'"),
])
def test_cli_bad_selection_exits_2(capsys, argv, message):
    assert main(["regress", *argv]) == 2
    assert f"sparsemac regress: error: {message}" in capsys.readouterr().err


def test_cli_json_report_of_one_test(capsys, tmp_path):
    assert main(["regress", "--config", "k1t1i512", "--testbench", "core", "--test",
                 "case=tiny$", "--seed", str(SEED), "--output", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] is True and report["seed"] == SEED
    [test] = report["tests"]
    assert test["config"] == "k1t1i512" and test["passed"] and test["cycles"] > 0
    assert (tmp_path / "results.xml").is_file()
