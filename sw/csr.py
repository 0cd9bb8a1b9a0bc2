"""The compressed sparse row (CSR) weight matrix the sparse MAC array streams.

See ``docs/csr-format.md`` for the wire layout. A :class:`CSRMatrix` always holds a valid
matrix: every constructor, including the dataclass one, runs :meth:`CSRMatrix.validate`.

Explicit zeros: :meth:`CSRMatrix.from_dense` never stores a zero value, but a stored zero is
valid (a pruned weight kept by the mask may still quantise to 0, and the hardware computes it
like any other value), so :meth:`CSRMatrix.validate` allows it and the other constructors keep
the structure they are given.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse
import torch

from sparsemac.hw.config import ArrayConfig

from ..hw.errors import InputError

__all__ = [
    "CSRFormatError",
    "CSRMatrix",
    "FORMAT_MAX_COLS",
    "FORMAT_MAX_ROWS",
]

#: The most input columns the wire format addresses (``ArrayConfig.max_in_features`` ceiling).
FORMAT_MAX_COLS = 1 << (ArrayConfig.COLUMN_WIDTH - 1)
#: The most rows one job header can carry (its 16-bit ``rows`` field).
FORMAT_MAX_ROWS = 65535

_INT8 = np.iinfo(np.int8)


class CSRFormatError(InputError):
    """A CSR matrix breaks the format; the message names the problem and where it is."""


def _is_int_dtype(dtype):
    return np.issubdtype(dtype, np.integer)


def _as_index_array(array):
    """An int64 copy of an integer index array (read-only, so a valid matrix stays valid)."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if array.size and not _is_int_dtype(array.dtype):
        return array  # left for validate() to refuse with its message
    out = np.array(array, dtype=np.int64)
    out.setflags(write=False)
    return out


def _as_int8_values(values, what="value"):
    """Values as an int8 array, refusing (never wrapping or clipping) anything outside int8."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    values = np.asarray(values)
    if values.dtype == np.int8:
        return values
    if not _is_int_dtype(values.dtype):
        raise CSRFormatError(f"data must be int8, got {values.dtype}")
    bad = np.flatnonzero((values.ravel() < _INT8.min) | (values.ravel() > _INT8.max))
    if bad.size:
        where = np.unravel_index(bad[0], values.shape)
        location = ", ".join(str(int(i)) for i in where)
        raise CSRFormatError(f"value {values.ravel()[bad[0]]} outside int8 "
                             f"({what} at [{location}])")
    return values.astype(np.int8)


@dataclass(frozen=True, eq=False)
class CSRMatrix:
    """An int8 matrix in compressed sparse row form.

    The arrays are copied and made read-only, so a constructed matrix stays valid. Equality
    compares shape and all three arrays.

    Raises
    ------
    CSRFormatError
        If the arrays break the format (see :meth:`validate`).
    """

    #: ``rows + 1`` row pointers: row ``r`` holds nonzeros ``indptr[r]:indptr[r + 1]``;
    #: ``indptr[0] == 0`` and ``indptr[-1] == nnz``. Any integer dtype; stored as int64.
    indptr: np.ndarray
    #: Column of each nonzero, strictly ascending within a row. Stored as int64.
    indices: np.ndarray
    #: The int8 value of each nonzero.
    data: np.ndarray
    #: ``(rows, cols)``.
    shape: tuple[int, int]

    def __post_init__(self):
        object.__setattr__(self, "indptr", _as_index_array(self.indptr))
        object.__setattr__(self, "indices", _as_index_array(self.indices))
        data = self.data
        if isinstance(data, torch.Tensor):
            data = data.detach().cpu().numpy()
        data = np.array(data)  # dtype kept: a wrong one is validate()'s to report
        data.setflags(write=False)
        object.__setattr__(self, "data", data)
        shape = self.shape
        if isinstance(shape, (tuple, list, torch.Size)) and len(shape) == 2 and all(
                isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in shape):
            shape = (int(shape[0]), int(shape[1]))
        object.__setattr__(self, "shape", shape)
        self.validate()

    # Construction -------------------------------------------------------------------------

    @classmethod
    def from_dense(cls, dense: torch.Tensor | np.ndarray) -> CSRMatrix:
        """The CSR form of a dense integer matrix, storing only its nonzero values.

        Parameters
        ----------
        dense : torch.Tensor or numpy.ndarray
            2-D integer matrix. Wider integer types are accepted if every value fits in int8.

        Returns
        -------
        CSRMatrix

        Raises
        ------
        CSRFormatError
            If ``dense`` is not 2-D, not integer, or holds a value outside int8.
        """
        if isinstance(dense, torch.Tensor):
            dense = dense.detach().cpu().numpy()
        dense = np.asarray(dense)
        if dense.ndim != 2:
            raise CSRFormatError(f"a dense matrix must be 2-D, got shape {dense.shape}")
        dense = _as_int8_values(dense, "dense")
        rows, cols = np.nonzero(dense)  # row-major: rows grouped, columns ascending
        indptr = np.zeros(dense.shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=dense.shape[0]), out=indptr[1:])
        return cls(indptr=indptr, indices=cols, data=dense[rows, cols], shape=dense.shape)

    @classmethod
    def from_torch_sparse_csr(cls, tensor: torch.Tensor) -> CSRMatrix:
        """The matrix of a ``torch.sparse_csr`` tensor, stored entries kept as they are.

        Parameters
        ----------
        tensor : torch.Tensor
            2-D tensor with ``layout == torch.sparse_csr`` and integer values.

        Returns
        -------
        CSRMatrix

        Raises
        ------
        TypeError
            If ``tensor`` is not a sparse CSR tensor.
        CSRFormatError
            If its values are not integers that fit in int8, or it breaks the format.
        """
        if not isinstance(tensor, torch.Tensor) or tensor.layout != torch.sparse_csr:
            raise TypeError(f"expected a torch.sparse_csr tensor, got "
                            f"{getattr(tensor, 'layout', type(tensor).__name__)}")
        return cls(indptr=tensor.crow_indices(), indices=tensor.col_indices(),
                   data=_as_int8_values(tensor.values()), shape=tuple(tensor.shape))

    @classmethod
    def from_scipy(cls, matrix) -> CSRMatrix:
        """The matrix of a ``scipy.sparse`` CSR matrix or array, stored entries kept.

        Parameters
        ----------
        matrix : scipy.sparse.csr_matrix or scipy.sparse.csr_array
            Integer values. Its column indices must already be sorted within each row (call
            ``sort_indices()`` and ``sum_duplicates()`` first if they may not be).

        Returns
        -------
        CSRMatrix
            Same shape and stored entries as ``matrix``.

        Raises
        ------
        TypeError
            If ``matrix`` is not a scipy CSR matrix.
        CSRFormatError
            If ``matrix.data`` holds non-integers or values outside int8, or its indices are
            unsorted or otherwise break the format.
        """
        if not scipy.sparse.issparse(matrix) or matrix.format != "csr":
            raise TypeError(f"expected a scipy.sparse CSR matrix, got {type(matrix).__name__}"
                            " (convert other formats with .tocsr())")
        return cls(indptr=matrix.indptr, indices=matrix.indices,
                   data=_as_int8_values(matrix.data), shape=matrix.shape)

    # Conversion ---------------------------------------------------------------------------

    def to_dense(self) -> torch.Tensor:
        """The dense ``torch.int8`` matrix of shape ``(rows, cols)``."""
        dense = np.zeros(self.shape, dtype=np.int8)
        dense[self._row_of_each_nonzero(), self.indices] = self.data
        return torch.from_numpy(dense)

    def to_torch_sparse_csr(self) -> torch.Tensor:
        """The same matrix as a ``torch.sparse_csr`` tensor with int64 indices, int8 values."""
        with warnings.catch_warnings():
            # torch warns that sparse CSR is "beta" on every construction: noise for callers.
            warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support")
            return torch.sparse_csr_tensor(
                torch.from_numpy(self.indptr.copy()), torch.from_numpy(self.indices.copy()),
                torch.from_numpy(self.data.copy()), size=self.shape, check_invariants=False)

    def to_scipy(self) -> scipy.sparse.csr_array:
        """The same matrix as a ``scipy.sparse.csr_array`` with int8 values (a copy)."""
        return scipy.sparse.csr_array(
            (self.data.copy(), self.indices.copy(), self.indptr.copy()), shape=self.shape)

    # Properties ---------------------------------------------------------------------------

    @property
    def rows(self) -> int:
        """Output features."""
        return self.shape[0]

    @property
    def cols(self) -> int:
        """Input features."""
        return self.shape[1]

    @property
    def nnz(self) -> int:
        """Stored entries (explicit zeros included): what the hardware streams."""
        return int(self.data.size)

    @property
    def sparsity(self) -> float:
        """``1 - nnz / (rows * cols)``; 0.0 for a matrix with no elements."""
        size = self.rows * self.cols
        return 1.0 - self.nnz / size if size else 0.0

    def row_lengths(self) -> np.ndarray:
        """Stored entries of each row, as an int64 array of length ``rows``."""
        return np.diff(self.indptr)

    def row_slice(self, start: int, stop: int) -> CSRMatrix:
        """Rows ``[start, stop)`` as a matrix of their own (for tiling the output rows).

        Parameters
        ----------
        start, stop : int
            ``0 <= start <= stop <= rows``.

        Returns
        -------
        CSRMatrix
            Shape ``(stop - start, cols)``.

        Raises
        ------
        ValueError
            If the bounds are out of range.
        """
        if not 0 <= start <= stop <= self.rows:
            raise InputError(f"row slice [{start}, {stop}) is not within the {self.rows} rows")
        first, last = int(self.indptr[start]), int(self.indptr[stop])
        return CSRMatrix(indptr=self.indptr[start:stop + 1] - first,
                         indices=self.indices[first:last], data=self.data[first:last],
                         shape=(stop - start, self.cols))

    def __eq__(self, other):
        if not isinstance(other, CSRMatrix):
            return NotImplemented
        return (self.shape == other.shape and np.array_equal(self.indptr, other.indptr)
                and np.array_equal(self.indices, other.indices)
                and np.array_equal(self.data, other.data))

    __hash__ = None  # numpy arrays are unhashable, and hashing the contents would cost O(nnz)

    def _row_of_each_nonzero(self):
        return np.repeat(np.arange(self.rows, dtype=np.int64), self.row_lengths())

    # Validation ---------------------------------------------------------------------------

    def validate(self, max_rows: int | None = None, max_cols: int | None = None) -> None:
        """Check the format; the structure is always checked, size limits when given.

        Explicit zero values are allowed. The hardware's own limits are
        :data:`FORMAT_MAX_ROWS` and :data:`FORMAT_MAX_COLS`, and a given array configuration
        may be smaller (``max_out_features``, ``max_in_features``): whoever packs a job passes
        them here.

        Parameters
        ----------
        max_rows, max_cols : int or None
            The most rows and columns allowed; None for no limit.

        Raises
        ------
        CSRFormatError
            Naming the first problem found and where it is.
        """
        shape = self.shape
        if not (isinstance(shape, tuple) and len(shape) == 2
                and all(isinstance(s, int) and s >= 0 for s in shape)):
            raise CSRFormatError(f"shape must be (rows, cols) of non-negative integers, "
                                 f"got {shape!r}")
        rows, cols = shape
        for name, limit, size in (("rows", max_rows, rows), ("columns", max_cols, cols)):
            if limit is not None and size > limit:
                raise CSRFormatError(f"shape {shape} exceeds the configured limit of "
                                     f"{limit} {name}")
        self._validate_arrays(rows)
        self._validate_columns(rows, cols)

    def _validate_arrays(self, rows):
        for name in ("indptr", "indices", "data"):
            array = getattr(self, name)
            if array.ndim != 1:
                raise CSRFormatError(f"{name} must be 1-D, got shape {array.shape}")
        for name in ("indptr", "indices"):
            array = getattr(self, name)
            if array.size and not _is_int_dtype(array.dtype):
                raise CSRFormatError(f"{name} must be an integer array, got {array.dtype}")
        if self.data.dtype != np.int8:
            raise CSRFormatError(f"data must be int8, got {self.data.dtype}")
        indptr = self.indptr
        if indptr.size != rows + 1:
            raise CSRFormatError(f"indptr has {indptr.size} entries but {rows} rows need "
                                 f"{rows + 1}")
        if indptr[0] != 0:
            raise CSRFormatError(f"indptr[0] must be 0, got {indptr[0]}")
        falls = np.flatnonzero(indptr[1:] < indptr[:-1])
        if falls.size:
            i = int(falls[0])
            raise CSRFormatError(f"indptr must be non-decreasing "
                                 f"(indptr[{i}]={indptr[i]} > indptr[{i + 1}]={indptr[i + 1]})")
        if self.indices.size != self.data.size:
            raise CSRFormatError(f"indices has {self.indices.size} entries but data has "
                                 f"{self.data.size}")
        if indptr[-1] != self.data.size:
            raise CSRFormatError(f"indptr[-1]={indptr[-1]} does not match nnz={self.data.size}")

    def _validate_columns(self, rows, cols):
        indices = self.indices
        outside = np.flatnonzero((indices < 0) | (indices >= cols))
        if outside.size:
            k = int(outside[0])
            raise CSRFormatError(f"column index {indices[k]} out of range for {cols} columns "
                                 f"(nonzero {k}, row {self._row_of(k)})")
        # Pair (k, k + 1) must ascend unless k + 1 starts a new row.
        same_row = np.ones(max(indices.size - 1, 0), dtype=bool)
        starts = self.indptr[1:-1]
        starts = starts[(starts > 0) & (starts < indices.size)]
        same_row[starts - 1] = False
        bad = np.flatnonzero(same_row & (indices[1:] <= indices[:-1]))
        if bad.size:
            k = int(bad[0])
            row, first, second = self._row_of(k), indices[k], indices[k + 1]
            if first == second:
                raise CSRFormatError(f"row {row}: duplicate column {first}")
            raise CSRFormatError(f"row {row}: column indices not strictly ascending "
                                 f"({first} then {second})")

    def _row_of(self, k):
        """The row holding nonzero ``k`` (indptr is valid by now)."""
        return int(np.searchsorted(self.indptr, k, side="right")) - 1
