"""The compressed column index on the host: a matrix as :class:`~sparsemac.hw.formats.DeltaCode`
entries.

:meth:`DeltaMatrix.from_csr` encodes any CSR matrix (every gap fits: long ones take a chain of
escape entries); :meth:`DeltaMatrix.to_csr` decodes the entries exactly as the gateware's
:class:`~sparsemac.hw.delta_decoder.DeltaDecoder` does, and is what the golden model computes
from. A matrix built by hand is checked on construction, so a job the format cannot express is
refused before any device work.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..hw.formats import DeltaCode
from .csr import CSRFormatError, CSRMatrix
from ..hw.errors import InputError

__all__ = ["DeltaFormatError", "DeltaMatrix"]


class DeltaFormatError(CSRFormatError):
    """Delta-coded entries that the format cannot express; the message says where."""


def _row_starts(row_lengths):
    """Index of each entry's row's first entry, for per-row prefix sums."""
    return np.repeat(np.cumsum(row_lengths) - row_lengths, row_lengths)


@dataclass(frozen=True, eq=False)
class DeltaMatrix:
    """A sparse int8 matrix as the entries a delta job streams.

    Raises
    ------
    DeltaFormatError
        If a code does not fit ``code.bits``, the row lengths do not add up to the entries or
        do not fit the 16-bit row-length beat, or an entry lands past the last column.
    """

    #: The delta code the entries are written in (its bits and escape).
    code: DeltaCode
    #: Entries per row, escapes included.
    row_lengths: np.ndarray
    #: uint8: the code of each entry, row after row.
    codes: np.ndarray
    #: int8: the value byte of each entry (an escape's holds its extra step, read unsigned).
    values: np.ndarray
    #: ``(rows, cols)`` of the matrix.
    shape: tuple[int, int]

    def __post_init__(self):
        if not isinstance(self.code, DeltaCode):
            raise TypeError(f"code must be a DeltaCode, not {self.code!r}")
        for name, dtype in (("row_lengths", np.int64), ("codes", np.int64),
                            ("values", np.int8)):
            array = np.array(getattr(self, name), dtype=dtype)
            array.setflags(write=False)
            object.__setattr__(self, name, array)
        self._columns()  # validates

    @classmethod
    def from_csr(cls, weights, code):
        """Encodes ``weights``: each gap longer than a code reaches takes escape entries.

        Parameters
        ----------
        weights : CSRMatrix
        code : DeltaCode

        Returns
        -------
        DeltaMatrix
        """
        if not isinstance(weights, CSRMatrix):
            raise TypeError(f"weights must be a CSRMatrix, not {type(weights).__name__}")
        lengths, indices = weights.row_lengths(), weights.indices
        previous = np.concatenate([[-1], indices[:-1]])
        previous[weights.indptr[:-1][lengths > 0]] = -1  # a row counts from column -1
        gaps = indices - previous - 1
        # n escapes cover the part of a gap that a plain code cannot: all but the last move on
        # longest_escape columns, the last the rest, leaving a code of 0.
        longest = code.longest_escape
        escapes = np.where(gaps >= code.escape, -(-(gaps - code.escape + 1) // longest), 0)
        covered = np.minimum(gaps, escapes * longest)
        position = np.arange(len(indices)) + np.cumsum(escapes)
        total = len(indices) + int(escapes.sum())
        codes = np.full(total, code.escape, dtype=np.int64)
        values = np.zeros(total, dtype=np.uint8)
        codes[position] = gaps - covered
        values[position] = weights.data.view(np.uint8)
        owner = np.repeat(np.arange(len(indices)), escapes)
        nth = np.arange(len(owner)) - np.repeat(np.cumsum(escapes) - escapes, escapes)
        last = nth == escapes[owner] - 1
        steps = np.where(last, covered[owner] - (escapes[owner] - 1) * longest, longest)
        values[position[owner] - escapes[owner] + nth] = steps - code.escape
        rows = np.repeat(np.arange(weights.rows), lengths)
        row_lengths = lengths + np.bincount(rows, weights=escapes,
                                            minlength=weights.rows).astype(np.int64)
        return cls(code, row_lengths, codes, values.view(np.int8), weights.shape)

    @property
    def rows(self):
        return self.shape[0]

    @property
    def cols(self):
        return self.shape[1]

    @property
    def entries(self):
        """Entries streamed per pass, escapes included (the job's ``nnz`` field)."""
        return len(self.codes)

    @property
    def escapes(self):
        """Escape entries."""
        return int((self.codes == self.code.escape).sum())

    def _columns(self):
        """The column of every entry, as the decoder computes it; checks the format."""
        code, (rows, cols) = self.code, self.shape
        if len(self.row_lengths) != rows:
            raise DeltaFormatError(f"{len(self.row_lengths)} row lengths for {rows} rows")
        if (self.row_lengths < 0).any() or int(self.row_lengths.sum()) != len(self.codes):
            raise DeltaFormatError(f"the row lengths add up to {int(self.row_lengths.sum())} "
                                   f"entries, not the {len(self.codes)} given")
        longest_row = int(self.row_lengths.max(initial=0))
        if longest_row > (1 << DeltaCode.row_length.width) - 1:
            raise DeltaFormatError(f"a row of {longest_row} entries does not fit the "
                                   f"{DeltaCode.row_length.width}-bit row length")
        if len(self.values) != len(self.codes):
            raise DeltaFormatError(f"{len(self.values)} values for {len(self.codes)} codes")
        bad = np.flatnonzero((self.codes < 0) | (self.codes > code.escape))
        if bad.size:
            raise DeltaFormatError(f"entry {bad[0]} has code {self.codes[bad[0]]}, which does "
                                   f"not fit {code.bits} bits")
        steps = np.where(self.codes == code.escape,
                         code.escape + self.values.view(np.uint8).astype(np.int64),
                         self.codes + 1)
        reached = np.cumsum(steps)
        columns = reached - 1 - np.concatenate([[0], reached])[_row_starts(self.row_lengths)]
        bad = np.flatnonzero(columns >= cols)
        if bad.size:
            row = int(np.searchsorted(np.cumsum(self.row_lengths), bad[0], side="right"))
            raise DeltaFormatError(
                f"row {row} reaches column {columns[bad[0]]} at entry {bad[0]}, past the last "
                f"column ({cols - 1}): its gaps need more escape entries than it has")
        return columns

    def decoded(self):
        """Every entry as the decoder hands it on: its column, and its weight (0 for escapes).

        Returns
        -------
        columns : numpy.ndarray of int64
        weights : numpy.ndarray of int8
        """
        escape = self.codes == self.code.escape
        return self._columns(), np.where(escape, 0, self.values).astype(np.int8)

    def to_csr(self):
        """The matrix the entries stand for: escapes dropped, columns decoded.

        Returns
        -------
        CSRMatrix
        """
        columns = self._columns()
        weight = self.codes != self.code.escape
        rows = np.repeat(np.arange(self.rows), self.row_lengths)
        indptr = np.concatenate([[0], np.cumsum(np.bincount(rows[weight], minlength=self.rows))])
        return CSRMatrix(indptr=indptr, indices=columns[weight], data=self.values[weight],
                         shape=self.shape)

    def row_slice(self, start, stop):
        """Rows ``[start, stop)`` as a matrix of their own."""
        if not 0 <= start <= stop <= self.rows:
            raise InputError(f"row slice [{start}, {stop}) is not within the {self.rows} rows")
        ends = np.concatenate([[0], np.cumsum(self.row_lengths)])
        first, last = int(ends[start]), int(ends[stop])
        return DeltaMatrix(self.code, self.row_lengths[start:stop], self.codes[first:last],
                           self.values[first:last], (stop - start, self.cols))
