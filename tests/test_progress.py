"""Progress on stderr: elapsed time on long phases, plain lines when stderr is no terminal."""

import io
import re
import time

from sparsemac.hw.config import ArrayConfig
from sparsemac.sw import progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_phase_prints_elapsed_lines_then_its_duration(monkeypatch):
    stream = io.StringIO()  # not a terminal: plain lines, no carriage returns
    monkeypatch.setattr("sys.stderr", stream)
    with progress.phase("building", interval=0.05):
        time.sleep(0.23)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[sparsemac] building ..."
    assert len(lines) - 2 >= 2  # a loaded machine may tick less often, never more
    assert all(re.fullmatch(r"\[sparsemac\] building \.\.\. \d+ s", line)
               for line in lines[1:-1])
    assert re.fullmatch(r"\[sparsemac\] building: done in \d\.\d s", lines[-1]), lines[-1]
    assert "\r" not in stream.getvalue()


def test_a_failed_phase_says_so(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    try:
        with progress.phase("running"):
            raise KeyError("x")
    except KeyError:
        pass
    assert re.search(r"running: failed after \d+\.\d s\n$", stream.getvalue())


def test_a_phase_redraws_one_line_on_a_terminal(monkeypatch):
    stream = Terminal()
    monkeypatch.setattr("sys.stderr", stream)
    with progress.phase("building", interval=0.05):
        time.sleep(0.12)
    text = stream.getvalue()
    assert text.count("\n") == 2 and "\r[sparsemac] building ... 0 s" in text


def test_bars_fall_back_to_plain_lines(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    monkeypatch.setattr(progress, "PLAIN_INTERVAL_S", 0.0)
    with progress.progress_bar(3, "offload", "layer") as bar:
        for _ in range(3):
            bar.update()
    lines = stream.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "[sparsemac] offload: 1/3 layers", "[sparsemac] offload: 2/3 layers",
        "[sparsemac] offload: 3/3 layers", "[sparsemac] offload: 3/3 layers"]
    assert lines[-1].endswith(", done") and "\r" not in stream.getvalue()
    monkeypatch.setattr("sys.stderr", Terminal())
    assert type(progress.progress_bar(3)).__name__ == "tqdm"


def test_a_cold_verilator_build_shows_progress(monkeypatch, tmp_path, capsys):
    from sparsemac.devices import verilator

    monkeypatch.setenv("SPARSEMAC_CACHE", str(tmp_path))
    config = ArrayConfig(lanes=2, token_lanes=2, max_in_features=64)

    def build(config, trace, folder, log, env):  # stands in for the minutes of a real build
        time.sleep(0.1)
        (folder / verilator.LIBRARY_NAME).write_bytes(b"")

    monkeypatch.setattr(verilator, "_build", build)
    assert not verilator.is_cached(config)
    result = verilator.build_library(config)
    assert not result.cached and verilator.is_cached(config)
    err = capsys.readouterr().err
    assert "[sparsemac] building the Verilator model of K=2 T=2 in<=64 (once; cached in" in err
    assert re.search(r"building the Verilator model of K=2 T=2 in<=64 .*: done in 0\.\d s", err)
    assert verilator.build_library(config).cached and capsys.readouterr().err == ""
