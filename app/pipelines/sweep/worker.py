"""One point, on a worker: :func:`run_point` measures a layer or builds a board and returns the
point's row, a :class:`PointResult`.

Dask pickles :func:`run_point` by its module path: a worker imports this module, so torch,
transformers and the simulators are imported where they are used.
"""

import contextlib
import copy
import dataclasses
import functools
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from .. import method_calibration

__all__ = ["PointResult", "COLUMNS", "BERT_BASE_WORKLOAD", "bert_base_cycles", "run_point"]


@dataclass
class PointResult:
    """One row of the results table: a point's parameters and what it measured.

    Measurements a point did not make (a failed point, the board columns of a layer point)
    are None. ``relative_error``, ``max_abs_error`` and ``cosine`` compare the layer's int8
    output with the float, unpruned layer on the built-in sentence, as ``sparsemac simulate``
    does; ``cosine`` is the mean over tokens. ``activation_sparsity`` is the measured fraction
    of exactly-zero int8 activations the layer received, ``joint_ideal_speedup``
    ``1 / ((1 - sparsity)(1 - activation_sparsity))``. ``tokens`` is the count asked for (None: the
    sentence as it is), ``tokens_run`` the count run. ``bit_exact`` and ``cycles_match`` are set for
    verified points: Verilator's sums equal the golden model's and its cycle counts the cycle
    model's, in both modes. ``error`` is empty unless the point failed.
    """
    #: :attr:`SweepPoint.key`: the row's key.
    key: str
    #: The digest of the spec that computed the row (:meth:`SweepSpec.digest`).
    spec: str
    #: The design hash of the config when the row was computed.
    design_hash: str
    #: ``"layer"`` or ``"build"``.
    kind: str
    #: The array config's key, e.g. ``k8t4``.
    config: str
    #: K of the config.
    lanes: int
    #: T of the config.
    token_lanes: int
    #: The activation buffer depth of the config.
    max_in_features: int
    #: K x T.
    multipliers: int
    #: Bits of the activation buffer, all replicas.
    activation_buffer_bits: int
    #: As :attr:`SweepPoint.model`.
    model: str = ""
    #: As :attr:`SweepPoint.layer`.
    layer: str = ""
    #: As :attr:`SweepPoint.method`.
    method: str = ""
    #: The sparsity asked for; None for N:M.
    target_sparsity: float | None = None
    #: The token count asked for; None: the sentence as it is.
    tokens: int | None = None
    #: The layer point's seed; None for a build.
    seed: int | None = None
    #: The point also ran on Verilator.
    verify: bool = False
    #: As :attr:`SweepPoint.board`.
    board: str = ""
    #: As :attr:`SweepPoint.build_seed`.
    build_seed: int | None = None
    #: The token count run.
    tokens_run: int | None = None
    #: Output rows of the layer.
    rows: int | None = None
    #: Input columns of the layer.
    cols: int | None = None
    #: Fraction of zero int8 weights achieved.
    sparsity: float | None = None
    #: Sparse cycles, from the exact cycle model.
    sparse_cycles: int | None = None
    #: Dense cycles, from the exact cycle model.
    dense_cycles: int | None = None
    #: Dense over sparse cycles.
    speedup: float | None = None
    #: ``1 / (1 - sparsity)``; None for an all-zero layer.
    ideal_speedup: float | None = None
    #: Speedup over ideal speedup.
    efficiency: float | None = None
    #: ``||error|| / ||output||`` of the layer's int8 output against the float, unpruned layer on
    #: the built-in sentence, as ``sparsemac simulate`` measures it.
    relative_error: float | None = None
    #: The largest absolute error of that output.
    max_abs_error: float | None = None
    #: The mean over tokens of that output's cosine with the float layer's.
    cosine: float | None = None
    #: For a verified point: Verilator's sums equal the golden model's in both modes.
    bit_exact: bool | None = None
    #: For a verified point: Verilator's cycle counts equal the cycle model's in both modes.
    cycles_match: bool | None = None
    #: A build's logic cells (TRELLIS_COMB).
    lut4: int | None = None
    #: A build's flip-flops.
    ff: int | None = None
    #: A build's MULT18X18D multipliers.
    dsp: int | None = None
    #: A build's DP16KD block RAMs.
    bram: int | None = None
    #: A build's achieved Fmax (a placement's estimate if ``routed`` is False).
    fmax_mhz: float | None = None
    #: For a build: True if placed and routed, False if placed only.
    routed: bool | None = None
    #: A build's clock constraint, MHz.
    clock_mhz: float | None = None
    #: A build's critical path delay, ns.
    critical_ns: float | None = None
    #: A build's critical path, ``from -> to`` (nextpnr's cell names).
    critical_path: str = ""
    #: A build's config's cycles for BERT-base's encoder linears (:data:`BERT_BASE_WORKLOAD`).
    bert_base_cycles: int | None = None
    #: Those cycles' time at the build's achieved Fmax, s.
    bert_base_s: float | None = None
    #: The model's feed-forward activation (a canonical ``--activation`` spec).
    activation: str = ""
    #: Measured fraction of exactly-zero int8 activations the layer received.
    activation_sparsity: float | None = None
    #: ``1 / ((1 - sparsity)(1 - activation_sparsity))``.
    joint_ideal_speedup: float | None = None
    #: ``Type: message`` of the exception of a failed point; empty otherwise.
    error: str = ""
    #: The Dask worker that computed the row (``local`` off Dask).
    worker: str = ""
    #: Seconds the point took on its worker.
    seconds: float | None = None
    #: When it finished, ISO 8601 in UTC.
    finished: str = ""

    @classmethod
    def for_point(cls, point, spec=""):
        """The row of ``point`` with only its parameters filled in."""
        config = point.config
        return cls(key=point.key, spec=spec, design_hash=point.design_hash, kind=point.kind,
                   config=config.key(), lanes=config.lanes,
                   token_lanes=config.token_lanes, max_in_features=config.max_in_features,
                   multipliers=config.multipliers,
                   activation_buffer_bits=config.activation_buffer_bits, model=point.model,
                   layer=point.layer, method=point.method, target_sparsity=point.sparsity,
                   tokens=point.tokens, seed=point.seed if point.kind == "layer" else None,
                   verify=point.verify, board=point.board, build_seed=point.build_seed,
                   activation=point.activation if point.kind == "layer" else "",
                   clock_mhz=point.clock_mhz,
                   routed=point.route if point.kind == "build" else None)

    @property
    def failed(self):
        return bool(self.error)


#: The columns of the results table, in order: the fields of PointResult.
COLUMNS = tuple(item.name for item in dataclasses.fields(PointResult))


# Capturing a layer's input hooks the shared model: threads of one worker take turns (loading
# models too, so that two threads do not load one side by side).
_MODEL_LOCK = threading.RLock()


@functools.lru_cache(maxsize=4)
def _loaded_model(model, seed, activation):
    from ....sw.ffn_activation import sparsify_activations
    from ....sw.models import load_model
    from .. import activation_calibration
    with _MODEL_LOCK:
        loaded = load_model(model, seed=seed)
        sparsify_activations(loaded.model, activation, tokenizer=loaded.tokenizer,
                             calibration=activation_calibration(activation, None, seed))
        return loaded


@functools.lru_cache(maxsize=256)
def _layer_inputs(model, seed, layer, tokens, activation):
    from ....sw.models import capture_linear_input
    with _MODEL_LOCK:
        return capture_linear_input(_loaded_model(model, seed, activation), layer,
                                    tokens=tokens)


def run_point(point, spec=""):
    """Measures one point; what runs on a Dask worker.

    Never raises for a failing point: its exception is recorded in :attr:`PointResult.error`.

    Parameters
    ----------
    point : SweepPoint
    spec : str
        The spec's digest, stored in the row.

    Returns
    -------
    PointResult
    """
    started = time.perf_counter()
    result = PointResult.for_point(point, spec)
    try:
        if point.kind == "build":
            _measure_build(point, result)
        else:
            _measure_layer(point, result)
    except Exception as error:  # noqa: BLE001 - a sweep records any failure and goes on
        result.error = f"{type(error).__name__}: {error}"
    result.seconds = round(time.perf_counter() - started, 4)
    result.worker = _worker_name()
    result.finished = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    return result


def _worker_name():
    try:
        from distributed import get_worker
        return str(get_worker().name)
    except ValueError:  # not on a Dask worker
        return "local"


def _measure_layer(point, result):
    import torch

    from ....devices.reference import ReferenceDevice
    from ....hw.formats import Mode
    from ....sw.model_offload import matmul_cycles
    from ....sw.models import get_linear
    from ....sw.offloaded_linear import OffloadedLinear
    from ....sw.quantisation import approximation_error
    from ..simulate import prune_layer, simulate_layer

    config = point.config
    method, texts = method_calibration(point.method, seed=point.seed)
    loaded = _loaded_model(point.model, point.seed, point.activation)
    inputs = _layer_inputs(point.model, point.seed, point.layer, point.tokens,
                           point.activation)
    with torch.no_grad():
        reference = get_linear(loaded.model, point.layer)(inputs)
    # A calibrated method changes the weights of the model it runs, and feeds the shared
    # tokenizer: it prunes a copy of its own, one thread at a time.
    with _MODEL_LOCK if method.calibrated else contextlib.nullcontext():
        if method.calibrated:
            loaded = dataclasses.replace(loaded, model=copy.deepcopy(loaded.model))
        mask, _ = prune_layer(loaded, point.layer, method, point.sparsity, texts=texts,
                              lanes=config.lanes, seed=point.seed)
    layer = OffloadedLinear.from_linear(get_linear(loaded.model, point.layer),
                                        ReferenceDevice(config), mask=mask)
    with torch.no_grad():
        output = layer(inputs)
    weights, tokens = layer.weights, inputs.shape[0]
    error = approximation_error(reference, output)
    sparse = layer.stats.cycles
    # The cycle model alone: the reference device would compute the dense sums for nothing.
    dense = matmul_cycles(weights, tokens, config, Mode.DENSE)
    sparsity = weights.sparsity
    ideal = 1.0 / (1.0 - sparsity) if sparsity < 1.0 else None
    result.rows, result.cols, result.tokens_run = weights.rows, weights.cols, tokens
    result.sparsity, result.sparse_cycles, result.dense_cycles = sparsity, sparse, dense
    result.speedup = dense / sparse
    result.ideal_speedup = ideal
    result.efficiency = None if ideal is None else result.speedup / ideal
    result.relative_error, result.max_abs_error = error.relative, error.max_abs
    result.cosine = float(torch.nn.functional.cosine_similarity(
        output.double(), reference.double(), dim=-1).mean())
    sent = layer.quantise_input(inputs).values
    result.activation_sparsity = float((sent == 0).sum()) / sent.numel()
    nonzero = (1.0 - sparsity) * (1.0 - result.activation_sparsity)
    result.joint_ideal_speedup = 1.0 / nonzero if nonzero else None
    if point.verify:
        # A small sample: `sparsemac simulate` itself, on the Verilator device (it loads its own
        # copy of the model and opens its own device, so no lock is needed).
        report = simulate_layer(point.model, point.layer, sparsity=point.sparsity,
                                method=point.method, tokens=point.tokens, backend="verilator",
                                config=config, seed=point.seed,
                                activation=None if point.activation == "none"
                                else point.activation)
        result.bit_exact, result.cycles_match = report.bit_exact, report.cycle_model_match


def _measure_build(point, result):
    from ....bitstreams.build import build_bitstream, place_design
    from ....sim.toolchain import cache_dir

    clock_hz = round(point.clock_mhz * 1e6)
    options = dict(clock_hz=clock_hz, seed=point.build_seed, time_limit=point.time_limit_s,
                   placer=point.placer, log=lambda message: None)
    if point.route:
        # Not the committed folder: a sweep never replaces a release bitstream. The point's key
        # names the folder, so builds with another router or placer do not share one.
        output = cache_dir("sweep-builds", f"{point.board}_{point.config.key()}_{point.key}")
        built = build_bitstream(point.config, point.board, output, router=point.router,
                                **options)
    else:
        built = place_design(point.config, point.board, **options)
    resources = built.resources
    result.lut4, result.ff, result.dsp, result.bram = (resources.lut4, resources.ff,
                                                       resources.dsp, resources.bram)
    result.fmax_mhz = resources.fmax_mhz
    result.critical_ns = resources.critical_ns or None
    result.critical_path = (f"{resources.critical_from} -> {resources.critical_to}"
                            if resources.critical_from else "")
    result.bert_base_cycles = bert_base_cycles(point.config)
    result.bert_base_s = result.bert_base_cycles / (resources.fmax_mhz * 1e6)


#: The workload a build's speed is read on: BERT-base's 72 encoder linears (seeded random
#: weights), magnitude pruning to 90 %, one call of 128 tokens each, plain int8 weights.
BERT_BASE_WORKLOAD = {"model": "bert-base", "seed": 0, "sparsity": 0.9, "tokens": 128}


@functools.lru_cache(maxsize=16)
def bert_base_cycles(config):
    """Cycles of :data:`BERT_BASE_WORKLOAD` on `config` (the exact cycle model, as the
    reference device counts them)."""
    from ....sw.model_offload import model_cycles
    from ....sw.pruning import prune_model

    with _MODEL_LOCK:
        model = copy.deepcopy(_loaded_model(BERT_BASE_WORKLOAD["model"], BERT_BASE_WORKLOAD["seed"],
                                            "none").model)
    prune_model(model, BERT_BASE_WORKLOAD["sparsity"], "magnitude")
    return model_cycles(model, BERT_BASE_WORKLOAD["tokens"], config)
