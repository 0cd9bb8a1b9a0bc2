"""Packs a job into the core's stream beats, from the layouts in :mod:`sparsemac.hw.formats`.

Each stream becomes a ``uint8`` array of shape ``[beats, bytes per beat]``: the little-endian
bytes of the payload bit vector, exactly what a bus or the Verilator harness carries. The
element types and counts come from the hardware layouts, so the host never restates them.
"""

import functools
from dataclasses import dataclass

import numpy as np
import torch
from amaranth.hdl import Shape
from amaranth.lib import data

from ..hw.config import ArrayConfig
from ..hw.formats import CoreFormats, Mode
from ..hw.link_formats import layout_bytes
from .csr import CSRMatrix
from .cycle_model import token_blocks

__all__ = ["PackedJob", "pack_job", "unpack_sums", "beats_to_ints", "weight_stream_bytes"]


@functools.lru_cache(maxsize=None)
def _formats(config):
    return CoreFormats(config)


def weight_stream_bytes(config, weights, mode=Mode.SPARSE):
    """Bytes of one pass of ``weights`` to the core, counted from the stream layouts.

    Sparse mode: one row pointer per row, then ``ceil(nnz / K)`` column words and as many value
    words. Dense mode: every weight, row after row, in ``ceil(rows * cols / K)`` value words.
    The weights are streamed again for every token block; this is one pass.

    Parameters
    ----------
    config : ArrayConfig
    weights : CSRMatrix
        In dense mode only its shape matters.
    mode : Mode

    Returns
    -------
    int
        Whole stream words, each counted at its wire width rounded up to whole bytes.

    Raises
    ------
    TypeError
        If ``config`` is not an ArrayConfig or ``weights`` not a CSRMatrix.
    """
    if not isinstance(config, ArrayConfig):
        raise TypeError(f"config must be an ArrayConfig, not {config!r}")
    if not isinstance(weights, CSRMatrix):
        raise TypeError(f"weights must be a CSRMatrix, not {type(weights).__name__}")
    formats, lanes = _formats(config), config.lanes
    value_word = layout_bytes(formats.value_word)
    if Mode(mode) == Mode.DENSE:
        return -(-weights.rows * weights.cols // lanes) * value_word
    return (weights.rows * layout_bytes(formats.row_pointer)
            + -(-weights.nnz // lanes) * (layout_bytes(formats.column_word) + value_word))


def _element_dtype(layout):
    """The numpy dtype and count of the elements of an array payload (or a plain shape)."""
    if isinstance(layout, data.ArrayLayout):
        shape, count = Shape.cast(layout.elem_shape), layout.length
    else:
        shape, count = Shape.cast(layout), 1
    if shape.width not in (8, 16, 32, 64):
        raise ValueError(f"cannot pack elements of {shape!r}: only whole 8/16/32/64-bit elements")
    kind = "i" if shape.signed else "u"
    return np.dtype(f"<{kind}{shape.width // 8}"), count


def _pack_elements(layout, elements):
    dtype, count = _element_dtype(layout)
    elements = np.asarray(elements)
    info = np.iinfo(dtype)
    if elements.size and (elements.min() < info.min or elements.max() > info.max):
        raise ValueError(f"values from {elements.min()} to {elements.max()} do not fit {dtype}")
    beats = elements.astype(dtype).reshape(-1, count)
    return beats.view(np.uint8).reshape(len(beats), count * dtype.itemsize)


def _words(elements, lanes):
    """``elements`` padded with zeros to whole words of ``lanes``: a pass's padding."""
    padded = np.zeros(-(-len(elements) // lanes) * lanes, dtype=elements.dtype)
    padded[:len(elements)] = elements
    return padded


@dataclass
class PackedJob:
    """The beats of every input stream of one job.

    Attributes
    ----------
    mode : Mode
    rows, cols, tokens, token_blocks, nnz : int
    job : int
        The ``job`` payload as an integer.
    activations, row_pointers, columns, values : numpy.ndarray of uint8, [beats, bytes]
        Empty (zero beats) where the mode sends nothing.
    """
    mode: Mode
    rows: int
    cols: int
    tokens: int
    token_blocks: int
    nnz: int
    job: int
    activations: np.ndarray
    row_pointers: np.ndarray
    columns: np.ndarray
    values: np.ndarray

    @property
    def weight_bytes(self):
        """Bytes of weight traffic over the whole job (every pass)."""
        return self.row_pointers.size + self.columns.size + self.values.size


def pack_job(config, weights, activations, mode=Mode.SPARSE):
    """Packs one job: ``weights`` (rows x cols) against ``activations`` (tokens x cols).

    Parameters
    ----------
    config : ArrayConfig
    weights : CSRMatrix
        In dense mode its dense form is streamed, zeros included.
    activations : torch.Tensor of int8, [tokens, cols]
    mode : Mode

    Returns
    -------
    PackedJob

    Raises
    ------
    TypeError, ValueError
        If the job does not fit one job of ``config`` or the operands disagree.
    """
    if not isinstance(config, ArrayConfig):
        raise TypeError(f"config must be an ArrayConfig, not {config!r}")
    if not isinstance(weights, CSRMatrix):
        raise TypeError(f"weights must be a CSRMatrix, not {type(weights).__name__}")
    mode = Mode(mode)
    check_job_fits(config, weights, activations)
    formats = CoreFormats(config)
    lanes, token_lanes = config.lanes, config.token_lanes
    rows, cols = weights.shape
    tokens = activations.shape[0]
    blocks = token_blocks(tokens, config)

    padded = np.zeros((blocks * token_lanes, cols), dtype=np.int8)
    padded[:tokens] = activations.numpy()
    # One beat per column of a block: block-major, then column, then token lane.
    columns_of_blocks = padded.reshape(blocks, token_lanes, cols).transpose(0, 2, 1)
    activation_beats = _pack_elements(formats.activation_column, columns_of_blocks.reshape(-1))

    # Pack one pass, then repeat its bytes for every token block: the weights are re-streamed
    # per block, and repeating 8-bit bytes rather than 64-bit integers keeps big layers cheap.
    empty = np.zeros((0, 0), dtype=np.uint8)
    if mode == Mode.SPARSE:
        nnz = weights.nnz
        row_pointers = _pack_elements(formats.row_pointer, weights.indptr[1:])
        columns = _pack_elements(formats.column_word, _words(weights.indices, lanes))
        values = _pack_elements(formats.value_word, _words(weights.data, lanes))
    else:
        nnz = rows * cols
        dense = weights.to_dense().numpy().reshape(-1)
        row_pointers, columns = empty, empty
        values = _pack_elements(formats.value_word, _words(dense, lanes))
    row_pointers, columns, values = (np.tile(stream, (blocks, 1)) if stream.size else stream
                                     for stream in (row_pointers, columns, values))

    job = formats.job.const({"mode": mode, "rows": rows, "cols": cols, "token_blocks": blocks,
                             "nnz": nnz}).as_value().value
    return PackedJob(mode=mode, rows=rows, cols=cols, tokens=tokens, token_blocks=blocks,
                     nnz=nnz, job=job, activations=activation_beats, row_pointers=row_pointers,
                     columns=columns, values=values)


def check_job_fits(config, weights, activations):
    """Raises a clear error unless ``weights`` and ``activations`` make one job of ``config``."""
    if not isinstance(activations, torch.Tensor) or activations.dtype != torch.int8:
        raise TypeError("activations must be an int8 torch.Tensor, not "
                        f"{getattr(activations, 'dtype', type(activations).__name__)}")
    if activations.dim() != 2:
        raise ValueError(f"activations must be 2-D [tokens, in_features], not "
                         f"{tuple(activations.shape)}")
    rows, cols = weights.shape
    tokens = activations.shape[0]
    if activations.shape[1] != cols:
        raise ValueError(f"activations have {activations.shape[1]} features but the weights "
                         f"have {cols} input features")
    if not 1 <= cols <= config.max_in_features:
        raise ValueError(f"the layer has {cols} input features but this array holds at most "
                         f"{config.max_in_features}: use a config with max_in_features >= {cols}")
    if not 1 <= rows <= config.max_out_features:
        raise ValueError(f"one job takes 1 to {config.max_out_features} rows, not {rows}: "
                         "split the rows (the driver does this)")
    if not 1 <= tokens <= config.max_tokens:
        raise ValueError(f"one job takes 1 to {config.max_tokens} tokens, not {tokens}: "
                         "split the tokens (the driver does this)")


def unpack_sums(config, beats, rows, tokens):
    """Turns the ``sums`` beats of a job back into an int32 tensor [tokens, rows].

    Parameters
    ----------
    config : ArrayConfig
    beats : numpy.ndarray of uint8, [token_blocks * rows, bytes per beat]
    rows, tokens : int

    Returns
    -------
    torch.Tensor of int32
    """
    formats = CoreFormats(config)
    dtype, count = _element_dtype(formats.sums)
    blocks = token_blocks(tokens, config)
    beats = np.ascontiguousarray(beats, dtype=np.uint8)
    expected = (blocks * rows, count * dtype.itemsize)
    if beats.shape != expected:
        raise ValueError(f"expected {expected[0]} sums beats of {expected[1]} bytes, "
                         f"got an array of shape {beats.shape}")
    sums = beats.view(dtype).reshape(blocks, rows, count).transpose(0, 2, 1)
    return torch.from_numpy(sums.reshape(blocks * count, rows)[:tokens].astype(np.int32).copy())


def beats_to_ints(beats):
    """Each beat of a ``[beats, bytes]`` array as a Python integer (little-endian)."""
    return [int.from_bytes(beat.tobytes(), "little") for beat in beats]
