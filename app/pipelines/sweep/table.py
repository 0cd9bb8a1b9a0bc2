"""The results table: one CSV per output folder, one row per point, read back on a rerun and
appended to (and flushed) as each point completes."""

import csv
import dataclasses
import fcntl
import os
import types
from pathlib import Path

from ....hw.errors import InputError
from .worker import COLUMNS, PointResult

__all__ = ["RESULTS_FILE"]

#: The results table inside the output folder.
RESULTS_FILE = "sweep.csv"


def _cell_type(name):
    annotation = PointResult.__dataclass_fields__[name].type
    if isinstance(annotation, types.UnionType):
        return next(kind for kind in annotation.__args__ if kind is not type(None))
    return annotation


_CELL_TYPES = {name: _cell_type(name) for name in COLUMNS}


def _parse_cell(name, text):
    kind = _CELL_TYPES[name]
    if kind is str:
        return text
    if text == "":
        return None
    if kind is bool:
        return text == "True"
    return kind(text)


class _ResultsTable:
    """The CSV of one output folder, held under an exclusive lock while a sweep writes it."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.path = self.folder / RESULTS_FILE
        if self.folder.exists() and not self.folder.is_dir():
            raise InputError(f"--output {str(self.folder)!r} is a file, not a folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.folder / ".sweep.lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise InputError(f"another sweep is writing to {self.folder}: wait for it or "
                             "choose another --output") from None
        self.rows = self._read()
        self._file = None

    def _read(self):
        if not self.path.exists() or self.path.stat().st_size == 0:
            return []
        data = self.path.read_bytes()
        if not data.endswith(b"\n"):
            # A sweep stopped in the middle of a row: drop the partial row, it is recomputed.
            with open(self.path, "r+b") as file:
                file.truncate(data.rfind(b"\n") + 1)
        with open(self.path, newline="") as file:
            reader = csv.reader(file)
            header = next(reader, None)
            if header is None:
                return []
            if tuple(header) != COLUMNS:
                raise InputError(
                    f"{self.path} has other columns than this version of sparsemac writes: "
                    "it is left as it is; choose another --output")
            return [PointResult(**{name: _parse_cell(name, text)
                                   for name, text in zip(COLUMNS, row)})
                    for row in reader if row]

    def append(self, result):
        """Writes one row and flushes it to disk, so an interrupted sweep loses nothing."""
        if self._file is None:
            new = not self.path.exists() or self.path.stat().st_size == 0
            self._file = open(self.path, "a", newline="")
            self._writer = csv.writer(self._file)
            if new:
                self._writer.writerow(COLUMNS)
        self._writer.writerow(["" if value is None else value
                               for value in dataclasses.astuple(result)])
        self._file.flush()
        os.fsync(self._file.fileno())
        self.rows.append(result)

    def close(self):
        if self._file is not None:
            self._file.close()
        self._lock.close()
