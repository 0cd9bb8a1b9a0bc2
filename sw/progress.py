"""Progress on stderr, with elapsed time, for every phase that may take more than a few seconds.

stdout carries only reports (a table or one JSON object), so progress always goes to stderr.
On a terminal, bars are tqdm's and a running phase redraws one line; otherwise (a log file, a
pipe, CI) both fall back to plain lines, at most one every :data:`PLAIN_INTERVAL_S` seconds, so
a log shows that a long phase is alive without carriage returns or thousands of lines.
"""

import sys
import threading
import time
from contextlib import contextmanager

__all__ = ["PLAIN_INTERVAL_S", "progress", "phase", "progress_bar"]

#: Seconds between two plain progress lines of one phase or bar.
PLAIN_INTERVAL_S = 10.0
#: Seconds between two redraws of a running phase on a terminal.
TERMINAL_INTERVAL_S = 1.0

PREFIX = "[sparsemac]"


def _stream():
    return sys.stderr


def _is_terminal(stream):
    return hasattr(stream, "isatty") and stream.isatty()


def progress(message):
    """One progress line on stderr."""
    print(f"{PREFIX} {message}", file=_stream(), flush=True)


@contextmanager
def phase(message, *, interval=None):
    """Shows ``message`` while the block runs, with the time elapsed, then how long it took.

    Parameters
    ----------
    message : str
        What the phase does, e.g. ``"building the Verilator model"``.
    interval : float or None
        Seconds between updates (default: :data:`TERMINAL_INTERVAL_S` on a terminal,
        :data:`PLAIN_INTERVAL_S` otherwise).

    The last line says ``done in`` (or ``failed after``) and the elapsed seconds.
    """
    stream = _stream()
    terminal = _is_terminal(stream)
    interval = interval or (TERMINAL_INTERVAL_S if terminal else PLAIN_INTERVAL_S)
    started = time.perf_counter()
    stop = threading.Event()
    lock = threading.Lock()
    print(f"{PREFIX} {message} ...", file=stream, flush=True)

    def tick():
        while not stop.wait(interval):
            elapsed = time.perf_counter() - started
            with lock:
                if terminal:
                    stream.write(f"\r{PREFIX} {message} ... {elapsed:.0f} s")
                else:
                    stream.write(f"{PREFIX} {message} ... {elapsed:.0f} s\n")
                stream.flush()

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    outcome = "failed after"
    try:
        yield
        outcome = "done in"
    finally:
        stop.set()
        ticker.join()
        elapsed = time.perf_counter() - started
        with lock:
            stream.write(("\r" if terminal else "")
                         + f"{PREFIX} {message}: {outcome} {elapsed:.1f} s\n")
            stream.flush()


class _PlainBar:
    """tqdm's ``update``/``close``/``write`` as plain, rate-limited lines."""

    def __init__(self, total, desc, unit, interval):
        self.total, self.desc, self.unit, self.interval = total, desc, unit, interval
        self.count = 0
        self._started = self._shown = time.perf_counter()
        self._stream = _stream()

    def _line(self, suffix=""):
        elapsed = time.perf_counter() - self._started
        of = "" if self.total is None else f"/{self.total}"
        print(f"{PREFIX} {self.desc}: {self.count}{of} {self.unit}s, {elapsed:.1f} s{suffix}",
              file=self._stream, flush=True)

    def update(self, count=1):
        self.count += count
        if time.perf_counter() - self._shown >= self.interval:
            self._shown = time.perf_counter()
            self._line()

    def set_description(self, desc):
        self.desc = desc

    def write(self, text):
        print(text, file=self._stream, flush=True)

    def close(self):
        if self._stream is not None:
            self._line(", done")
            self._stream = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def progress_bar(total=None, desc="", unit="it", *, leave=True):
    """A progress bar on stderr: tqdm on a terminal, else plain lines with the elapsed time.

    Returns an object with tqdm's ``update(n)``, ``set_description``, ``write`` and ``close``,
    usable as a context manager.
    """
    if _is_terminal(_stream()):
        from tqdm import tqdm
        return tqdm(total=total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True)
    return _PlainBar(total, desc, unit, PLAIN_INTERVAL_S)
