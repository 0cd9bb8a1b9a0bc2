"""Tests of sparsemac.sw.csr: exact round trips, every validation error, stream byte counts."""

import dataclasses

import numpy as np
import pytest
import scipy.sparse
import torch
from hypothesis import given, settings, strategies as st

from sparsemac.hw.config import ArrayConfig
from sparsemac.hw.formats import CoreFormats, Mode
from sparsemac.sw.csr import FORMAT_MAX_COLS, FORMAT_MAX_ROWS, CSRFormatError, CSRMatrix
from sparsemac.sw.packing import weight_stream_bytes

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)  # same cases every run

# The worked example of docs/csr-format.md.
EXAMPLE = np.array([
    [0, 3, 0, 0, 0, -2, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0],
    [7, 0, 1, 0, 0, 0, 0, -5],
    [0, 0, 0, 0, 9, 0, 0, 0],
], dtype=np.int8)


def random_int8(rows, cols, density, seed):
    rng = np.random.default_rng(seed)
    dense = rng.integers(-128, 128, size=(rows, cols), dtype=np.int8)
    dense[rng.random((rows, cols)) >= density] = 0
    return dense


matrices = st.builds(random_int8, rows=st.integers(0, 12), cols=st.integers(0, 12),
                     density=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
                     seed=st.integers(0, 2**31 - 1))


def csr(indptr, indices, data, shape, data_dtype=np.int8):
    return CSRMatrix(indptr=np.array(indptr), indices=np.array(indices, dtype=np.int64),
                     data=np.array(data, dtype=data_dtype), shape=shape)


# Round trips ----------------------------------------------------------------------------------

@SETTINGS
@given(dense=matrices)
def test_dense_round_trip_matches_scipy(dense):
    matrix = CSRMatrix.from_dense(torch.from_numpy(dense))
    assert matrix == CSRMatrix.from_dense(dense)  # numpy input too
    assert matrix.to_dense().dtype == torch.int8
    assert np.array_equal(matrix.to_dense().numpy(), dense)
    # An independent construction of the same arrays.
    reference = scipy.sparse.csr_array(dense)
    assert np.array_equal(matrix.indptr, reference.indptr)
    assert np.array_equal(matrix.indices, reference.indices)
    assert np.array_equal(matrix.data, reference.data)
    assert matrix.indptr.dtype == matrix.indices.dtype == np.int64
    assert 0 not in matrix.data  # from_dense stores no zeros
    assert matrix.nnz == np.count_nonzero(dense)
    assert np.array_equal(matrix.row_lengths(), np.count_nonzero(dense, axis=1))
    if dense.size:
        assert matrix.sparsity == pytest.approx(1 - np.count_nonzero(dense) / dense.size)


@SETTINGS
@given(dense=matrices)
def test_torch_and_scipy_round_trips(dense):
    matrix = CSRMatrix.from_dense(dense)
    sparse = matrix.to_torch_sparse_csr()
    assert sparse.layout == torch.sparse_csr and sparse.dtype == torch.int8
    assert torch.equal(sparse.to_dense(), torch.from_numpy(dense))
    assert CSRMatrix.from_torch_sparse_csr(sparse) == matrix
    array = matrix.to_scipy()
    assert array.dtype == np.int8
    assert np.array_equal(array.toarray(), dense)
    assert CSRMatrix.from_scipy(array) == matrix
    assert CSRMatrix.from_scipy(scipy.sparse.csr_matrix(dense)) == matrix


@SETTINGS
@given(dense=matrices, cut=st.floats(0, 1))
def test_row_slices_tile_the_matrix(dense, cut):
    matrix = CSRMatrix.from_dense(dense)
    middle = round(cut * matrix.rows)
    top, bottom = matrix.row_slice(0, middle), matrix.row_slice(middle, matrix.rows)
    assert top.shape == (middle, matrix.cols)
    assert np.array_equal(np.vstack([top.to_dense(), bottom.to_dense()]), dense)
    assert top.nnz + bottom.nnz == matrix.nnz


def test_explicit_zeros_are_kept_through_every_form():
    matrix = csr([0, 2, 2], [1, 3], [0, 5], (2, 4))
    assert matrix.nnz == 2 and matrix.sparsity == 1 - 2 / 8
    assert CSRMatrix.from_scipy(matrix.to_scipy()) == matrix
    assert CSRMatrix.from_torch_sparse_csr(matrix.to_torch_sparse_csr()) == matrix
    assert CSRMatrix.from_dense(matrix.to_dense()).nnz == 1  # but from_dense drops it


def test_wider_integer_inputs_accepted_when_they_fit():
    dense = torch.tensor([[0, -128], [127, 0]], dtype=torch.int32)
    matrix = CSRMatrix.from_dense(dense)
    assert matrix.data.dtype == np.int8 and matrix.data.tolist() == [-128, 127]
    assert CSRMatrix.from_scipy(scipy.sparse.csr_array(dense.numpy().astype(np.int64))) == matrix
    # Any integer index dtype is stored as int64.
    direct = CSRMatrix(indptr=np.array([0, 1, 2], dtype=np.int32),
                       indices=torch.tensor([1, 0], dtype=torch.int16),
                       data=np.array([-128, 127], dtype=np.int8), shape=[2, 2])
    assert direct == matrix and direct.indices.dtype == np.int64 and direct.shape == (2, 2)


def test_matrix_is_immutable():
    matrix = CSRMatrix.from_dense(EXAMPLE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        matrix.shape = (1, 1)
    with pytest.raises(ValueError, match="read-only"):
        matrix.indices[0] = 7
    source = np.array([0, 1])
    CSRMatrix(indptr=source, indices=np.array([0]), data=np.array([1], np.int8), shape=(1, 1))
    source[1] = 5  # the caller's array is copied, not frozen
    assert matrix != "not a matrix"


def test_worked_example_arrays():
    matrix = CSRMatrix.from_dense(EXAMPLE)
    assert matrix.indptr.tolist() == [0, 2, 2, 5, 6]
    assert matrix.indices.tolist() == [1, 5, 0, 2, 7, 4]
    assert matrix.data.tolist() == [3, -2, 7, 1, -5, 9]
    assert matrix.row_lengths().tolist() == [2, 0, 3, 1]
    assert matrix.sparsity == 1 - 6 / 32


# Validation -----------------------------------------------------------------------------------

@pytest.mark.parametrize("arrays, message", [
    (([0, 1, 2, 3, 5], [0, 1, 2, 7, 5], [1] * 5, (4, 8)),
     r"^row 3: column indices not strictly ascending \(7 then 5\)$"),
    (([0, 2], [4, 4], [1, 1], (1, 8)), r"^row 0: duplicate column 4$"),
    (([0, 0, 1], [800], [1], (2, 768)),
     r"^column index 800 out of range for 768 columns \(nonzero 0, row 1\)$"),
    (([0, 1], [-1], [1], (1, 8)), r"^column index -1 out of range for 8 columns"),
    (([0, 1, 2, 3, 10, 9], list(range(10)), [1] * 10, (5, 16)),
     r"^indptr must be non-decreasing \(indptr\[4\]=10 > indptr\[5\]=9\)$"),
    (([0, 2], [0, 1, 2], [1, 1, 1], (1, 8)), r"^indptr\[-1\]=2 does not match nnz=3$"),
    (([1, 2], [0], [1], (1, 8)), r"^indptr\[0\] must be 0, got 1$"),
    (([0, 1], [0, 1], [1], (1, 8)), r"^indices has 2 entries but data has 1$"),
    (([0, 1], [0], [1], (2, 8)), r"^indptr has 2 entries but 2 rows need 3$"),
    (([0, 1], [0], [1], (1, 8, 1)), r"^shape must be \(rows, cols\)"),
    (([0, 1], [0], [1], (1, -8)), r"^shape must be \(rows, cols\)"),
])
def test_structure_errors(arrays, message):
    with pytest.raises(CSRFormatError, match=message):
        csr(*arrays)


def test_duplicate_reported_at_its_row():
    # Five rows, the duplicate in row 5 at column 12; equal columns across rows are fine.
    indptr = [0, 1, 2, 3, 4, 5, 7]
    with pytest.raises(CSRFormatError, match=r"^row 5: duplicate column 12$"):
        csr(indptr, [12, 12, 12, 12, 12, 12, 12], [1] * 7, (6, 16))


def test_column_error_names_nonzero_and_row():
    indptr = np.arange(0, 19 * 100, 100)  # 18 rows of 100 nonzeros
    indices = np.tile(np.arange(100), 18)
    indices[1234] = 800
    with pytest.raises(CSRFormatError, match=r"column index 800 out of range for 768 columns "
                                             r"\(nonzero 1234, row 12\)"):
        csr(indptr, indices, np.ones(1800), (18, 768))


def test_dtype_and_dimension_errors():
    with pytest.raises(CSRFormatError, match="^data must be int8, got float32$"):
        csr([0, 1], [0], [1.0], (1, 8), data_dtype=np.float32)
    with pytest.raises(CSRFormatError, match="^data must be int8, got int16$"):
        csr([0, 1], [0], [1], (1, 8), data_dtype=np.int16)
    with pytest.raises(CSRFormatError, match="^indptr must be an integer array, got float64$"):
        CSRMatrix(indptr=np.array([0.0, 1.0]), indices=np.array([0]),
                  data=np.array([1], np.int8), shape=(1, 8))
    with pytest.raises(CSRFormatError, match="^indices must be 1-D"):
        CSRMatrix(indptr=np.array([0, 1]), indices=np.array([[0]]),
                  data=np.array([1], np.int8), shape=(1, 8))
    with pytest.raises(CSRFormatError, match=r"^a dense matrix must be 2-D, got shape \(8,\)$"):
        CSRMatrix.from_dense(np.zeros(8, np.int8))
    with pytest.raises(CSRFormatError, match="^data must be int8, got float32$"):
        CSRMatrix.from_dense(torch.zeros(2, 2))


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("make", [
    lambda: CSRMatrix.from_dense(torch.tensor([[0, 1], [300, 0]], dtype=torch.int16)),
    lambda: CSRMatrix.from_dense(np.array([[0, 1], [300, 0]], dtype=np.int64)),
    lambda: CSRMatrix.from_scipy(scipy.sparse.csr_array(np.array([[0, 1], [300, 0]]))),
    lambda: CSRMatrix.from_torch_sparse_csr(
        torch.tensor([[0, 1], [300, 0]], dtype=torch.int32).to_sparse_csr()),
])
def test_wider_values_are_refused_not_wrapped(make):
    with pytest.raises(CSRFormatError, match="value 300 outside int8"):
        make()


def test_value_error_names_its_place_in_a_dense_matrix():
    with pytest.raises(CSRFormatError, match=r"value -129 outside int8 \(dense at \[1, 0\]\)"):
        CSRMatrix.from_dense(np.array([[0, 1], [-129, 0]]))


def test_size_limits():
    tall = CSRMatrix(indptr=np.zeros(70001, np.int64), indices=np.zeros(0, np.int64),
                     data=np.zeros(0, np.int8), shape=(70000, 10))
    with pytest.raises(CSRFormatError,
                       match=r"^shape \(70000, 10\) exceeds the configured limit of 65535 rows$"):
        tall.validate(max_rows=FORMAT_MAX_ROWS)
    wide = CSRMatrix.from_dense(np.zeros((2, 5000), np.int8))
    wide.validate(max_cols=FORMAT_MAX_COLS)
    with pytest.raises(CSRFormatError,
                       match=r"^shape \(2, 5000\) exceeds the configured limit of 4096 columns$"):
        wide.validate(max_rows=16, max_cols=ArrayConfig().max_in_features)
    assert FORMAT_MAX_COLS == 32768


def test_constructor_type_errors_and_slice_bounds():
    with pytest.raises(TypeError, match="scipy.sparse CSR matrix, got csc_array"):
        CSRMatrix.from_scipy(scipy.sparse.csc_array(EXAMPLE))
    with pytest.raises(TypeError, match="torch.sparse_csr tensor, got torch.strided"):
        CSRMatrix.from_torch_sparse_csr(torch.from_numpy(EXAMPLE))
    with pytest.raises(ValueError, match=r"row slice \[3, 5\) is not within the 4 rows"):
        CSRMatrix.from_dense(EXAMPLE).row_slice(3, 5)
    with pytest.raises(ValueError, match=r"row slice \[2, 1\)"):
        CSRMatrix.from_dense(EXAMPLE).row_slice(2, 1)


def test_unsorted_scipy_input_is_refused():
    unsorted = scipy.sparse.csr_array((np.array([1, 2], np.int8), np.array([3, 1]),
                                       np.array([0, 2])), shape=(1, 4))
    with pytest.raises(CSRFormatError, match=r"row 0: column indices not strictly ascending "
                                             r"\(3 then 1\)"):
        CSRMatrix.from_scipy(unsorted)


# Stream bytes ---------------------------------------------------------------------------------

def stream_bytes(matrix, lanes, mode):
    """weight_stream_bytes on the smallest array of ``lanes`` lanes."""
    smallest = ArrayConfig(lanes=lanes, max_in_features=1 << max(3, (lanes - 1).bit_length()))
    return weight_stream_bytes(smallest, matrix, mode)


def pack_csr_stream(matrix, lanes):
    """The CSR weight stream as bytes, built independently of weight_stream_bytes."""
    pad = (-matrix.nnz) % lanes
    row_ends = matrix.indptr[1:].astype("<u4").tobytes()
    columns = np.concatenate([matrix.indices, np.zeros(pad, np.int64)]).astype("<u2").tobytes()
    values = np.concatenate([matrix.data, np.zeros(pad, np.int8)]).tobytes()
    return row_ends, columns, values


def test_worked_example_bytes():
    row_ends, columns, values = pack_csr_stream(CSRMatrix.from_dense(EXAMPLE), lanes=4)
    assert row_ends.hex(" ") == "02 00 00 00 02 00 00 00 05 00 00 00 06 00 00 00"
    assert columns.hex(" ") == "01 00 05 00 00 00 02 00 07 00 04 00 00 00 00 00"
    assert values.hex(" ") == "03 fe 07 01 fb 09 00 00"
    assert stream_bytes(CSRMatrix.from_dense(EXAMPLE), 4, Mode.SPARSE) == 16 + 16 + 8 == 40
    assert stream_bytes(CSRMatrix.from_dense(EXAMPLE), 4, Mode.DENSE) == 32


@SETTINGS
@given(dense=matrices, lanes=st.integers(1, 32))
def test_stream_bytes_match_packed_streams(dense, lanes):
    matrix = CSRMatrix.from_dense(dense)
    assert stream_bytes(matrix, lanes, Mode.SPARSE) == sum(map(len, pack_csr_stream(matrix,
                                                                                    lanes)))
    padded_dense = np.concatenate([dense.ravel(), np.zeros((-dense.size) % lanes, np.int8)])
    assert stream_bytes(matrix, lanes, Mode.DENSE) == padded_dense.nbytes


@pytest.mark.parametrize("lanes", [1, 4, 8, 32])
def test_byte_widths_agree_with_the_hardware_formats(lanes):
    formats = CoreFormats(ArrayConfig(lanes=lanes, max_in_features=max(lanes, 32)))
    one_word = CSRMatrix.from_dense(np.ones((1, lanes), np.int8))
    row_end_bytes = formats.row_pointer.width // 8
    word_bytes = (formats.column_word.size + formats.value_word.size) // 8
    assert stream_bytes(one_word, lanes, Mode.SPARSE) == row_end_bytes + word_bytes
    assert stream_bytes(one_word, lanes, Mode.DENSE) == formats.value_word.size // 8


@pytest.mark.parametrize("per_row, csr_wins", [(307, False), (261, False), (253, True),
                                              (77, True)])
def test_csr_beats_dense_only_above_two_thirds_sparsity(per_row, csr_wins):
    # 3072 x 768 rows of per_row nonzeros: sparsity 60 %, 66 %, 67 % and 90 %. CSR costs
    # 3 bytes a nonzero + 4 a row, dense 1 a weight: break-even at 254.7 nonzeros a row.
    rows, cols, lanes = 3072, 768, 8
    matrix = CSRMatrix(indptr=np.arange(rows + 1) * per_row,
                       indices=np.tile(np.arange(per_row), rows),
                       data=np.ones(rows * per_row, np.int8), shape=(rows, cols))
    csr_bytes = stream_bytes(matrix, lanes, Mode.SPARSE)
    assert (csr_bytes < stream_bytes(matrix, lanes, Mode.DENSE)) == csr_wins


def test_stream_bytes_validation():
    matrix = CSRMatrix.from_dense(EXAMPLE)
    with pytest.raises(TypeError, match="config must be an ArrayConfig, not 4"):
        weight_stream_bytes(4, matrix)
    with pytest.raises(TypeError, match="weights must be a CSRMatrix, not ndarray"):
        weight_stream_bytes(ArrayConfig(), EXAMPLE)
