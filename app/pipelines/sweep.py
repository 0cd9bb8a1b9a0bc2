"""Design-space sweeps on Dask: array configs x models x layers x pruning methods x sparsities
(x feed-forward activations).

A spec (TOML, :func:`load_spec`) names the axes and their values; every combination is one
*point* (:class:`SweepPoint`), an independent task that carries only its small parameters. A
Dask worker loads the model, captures the layer's input on the built-in sentence, prunes and
quantises the layer, and returns a :class:`PointResult`: the exact cycle model's sparse and dense
cycles and the layer's fidelity against the float layer. Points drawn for verification also run
on the Verilator device (bit-exact sums and cycles); a ``[build]`` section adds one board build
per array config and placement seed.

Results go to one CSV in the output folder, one row per point, keyed by a hash of the point's
parameters and the design hash, appended and flushed as each point completes: a rerun computes
only the points not in the table, an interrupted sweep resumes, and rows of other specs or
designs stay untouched. A point that raises is recorded with its error and the sweep goes on.
"""

import contextlib
import copy
import csv
import dataclasses
import fcntl
import functools
import hashlib
import json
import os
import random
import re
import threading
import time
import tomllib
import types
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ...hw.board_link import design_digest
from ...hw.config import ArrayConfig
from ...sw.methods import parse_method
from ...sw.progress import progress, progress_bar
from . import check_output_folder, method_calibration, pareto_front
from ...hw.errors import InputError, MissingFileError, RunFailure

__all__ = ["RESULTS_FILE", "COLUMNS", "VerifySpec", "BuildSpec", "SweepSpec", "SweepPoint",
           "PointResult", "DesignPoint", "SweepReport", "load_spec", "parse_spec",
           "expand_points", "run_point", "run_sweep"]

#: The results table inside the output folder.
RESULTS_FILE = "sweep.csv"
#: Seconds to wait for a Dask scheduler to answer before giving up.
CONNECT_TIMEOUT_S = 3
#: Failed points listed in the summary (all of them are in the CSV).
LISTED_FAILURES = 10


# torch, transformers and the simulators are imported where they are used, so that an
# unreachable scheduler is reported in seconds, before they load.


# --- The spec ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class VerifySpec:
    """Run ``sample`` points, drawn with ``seed``, on the Verilator device too."""
    #: Points to run on the Verilator device too, at least 1.
    sample: int
    #: Seeds the draw of those points.
    seed: int


@dataclass(frozen=True)
class BuildSpec:
    """One board build per array config and nextpnr placement seed."""
    #: nextpnr placement seeds: one build per config and seed.
    seeds: tuple[int, ...]
    #: The board built for, a key of :data:`~sparsemac.hw.boards.BOARDS`.
    board: str


@dataclass(frozen=True)
class SweepSpec:
    """The axes of a sweep, validated (see :func:`parse_spec` for the TOML keys)."""
    #: The array configurations, none twice.
    configs: tuple[ArrayConfig, ...]
    #: ``"minilm"``, ``"bert-base"`` or checkpoint directories.
    models: tuple[str, ...]
    #: Layer names, or ``"all"``.
    layers: tuple[str, ...] | str
    #: Pruning methods in their canonical text (:attr:`~sparsemac.sw.methods.PruningMethod.text`).
    methods: tuple[str, ...]
    #: Targets of the unstructured methods (N:M points ignore them: one point per pattern).
    sparsities: tuple[float, ...] = ()
    #: Token counts; None is the built-in sentence as it is (16 tokens).
    tokens: tuple[int | None, ...] = (None,)
    #: Seeds random pruning and the random ``bert-base`` weights.
    seed: int = 0
    #: Which points also run on Verilator; None: none.
    verify: VerifySpec | None = None
    #: Feed-forward activations, canonical ``--activation`` specs; a sparse one makes points
    #: only of the layers it feeds (each ``output.dense``).
    activations: tuple[str, ...] = ("none",)
    #: The board builds; None: none.
    build: BuildSpec | None = None

    def digest(self):
        """A short hash naming this spec (its ``spec`` column in the results)."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


_AXES = {"configs", "models", "layers", "methods", "sparsities", "tokens", "activations"}
_TOP_KEYS = _AXES | {"seed", "verify", "build"}


def load_spec(path):
    """Reads and validates a sweep spec.

    Parameters
    ----------
    path : str or Path
        A TOML file (see :func:`parse_spec`).

    Returns
    -------
    SweepSpec

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If it is not TOML, or as :func:`parse_spec`.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"sweep spec {str(path)!r} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not a TOML file: {error}") from None
    return parse_spec(data, source=str(path))


def parse_spec(data, source="spec"):
    """Validates a sweep spec given as a dict (a parsed TOML file).

    Keys: ``configs`` (array config names as :meth:`ArrayConfig.key` writes them, such as
    ``"k8t4"`` or ``"k1t1i512"``, or tables of :class:`ArrayConfig` fields), ``models``
    (``"minilm"``, ``"bert-base"`` or checkpoint directories), ``layers`` (linear names, or
    ``"all"`` for every encoder linear), ``methods`` (every method ``--method`` takes:
    :func:`~sparsemac.sw.methods.parse_method`; calibrated ones prune on the built-in task's
    calibration text), ``sparsities`` (0 to 1; needed unless every method is N:M), optional
    ``tokens`` (2 or more; default the sentence itself), optional ``activations``
    (``--activation`` specs such as ``"relu"`` or ``"topk:0.1"``:
    :func:`~sparsemac.sw.activation_sparsity.parse_activation`; default ``["none"]``), ``seed``
    (default 0), ``[verify]`` with ``sample`` and ``seed``, and ``[build]`` with ``seeds`` and
    ``board`` (default ``"ulx3s-85f"``).

    Models and layer names are checked when the points are expanded (:func:`expand_points`),
    which loads each model.

    Returns
    -------
    SweepSpec

    Raises
    ------
    ValueError
        On an unknown key or value, an empty axis or a value of the wrong type; the message
        names ``source`` and the key.
    """
    def fail(message):
        raise InputError(f"{source}: {message}")

    if not isinstance(data, dict):
        fail("a spec is a table of axes")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        fail(f"unknown key {unknown[0]!r}: a spec has {', '.join(sorted(_TOP_KEYS))}")

    def axis(name, required=True):
        if name not in data:
            if required:
                fail(f"missing axis {name!r}")
            return None
        values = data[name]
        if isinstance(values, (str, int, float, dict)) and not isinstance(values, bool):
            values = [values]
        if not isinstance(values, list):
            fail(f"{name!r} must be a list, not {values!r}")
        if not values:
            fail(f"axis {name!r} is empty: give it at least one value")
        if len({json.dumps(value, sort_keys=True) for value in values}) != len(values):
            fail(f"axis {name!r} repeats a value: {values!r}")
        return values

    configs = tuple(_parse_config(value, fail) for value in axis("configs"))
    if len(set(configs)) != len(configs):
        fail("axis 'configs' names one array config twice: "
             + ", ".join(config.describe() for config in configs))
    models = tuple(_string(value, "models", fail) for value in axis("models"))
    layers = axis("layers")
    if layers == ["all"]:
        layers = "all"
    else:
        layers = tuple(_string(value, "layers", fail) for value in layers)
    methods = tuple(_parse_method(_string(value, "methods", fail), fail)
                    for value in axis("methods"))
    unstructured = [method for method in methods if not method.fixes_sparsity]
    sparsities = axis("sparsities", required=bool(unstructured)) or []
    for value in sparsities:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            fail(f"sparsities must be numbers from 0 to 1, not {value!r}")
    if sparsities and not unstructured:
        fail("'sparsities' is set but every method is N:M, whose pattern fixes the sparsity")
    tokens = axis("tokens", required=False) or [None]
    for value in tokens:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 2):
            fail(f"tokens must be integers of 2 or more, not {value!r}")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        fail(f"seed must be a non-negative integer, not {seed!r}")
    activations = tuple(_parse_activation(_string(value, "activations", fail), fail)
                        for value in axis("activations", required=False) or ["none"])
    if len(set(activations)) != len(activations):
        fail(f"axis 'activations' names one activation twice: {', '.join(activations)}")
    return SweepSpec(configs=configs, models=models, layers=layers,
                     methods=tuple(method.text for method in methods),
                     sparsities=tuple(float(value) for value in sparsities), tokens=tuple(tokens),
                     seed=seed, verify=_parse_verify(data.get("verify"), fail),
                     build=_parse_build(data.get("build"), fail), activations=activations)


def _string(value, name, fail):
    if not isinstance(value, str) or not value.strip():
        fail(f"{name} must be non-empty strings, not {value!r}")
    return value


def _parse_config(value, fail):
    fields_ = [item.name for item in dataclasses.fields(ArrayConfig)]
    if isinstance(value, str):
        try:
            return ArrayConfig.from_key(value)
        except ValueError as error:
            fail(f"{error}; or a table of {', '.join(fields_)}")
    if not isinstance(value, dict):
        fail(f"a config is a name or a table of {', '.join(fields_)}, not {value!r}")
    unknown = sorted(set(value) - set(fields_))
    if unknown:
        fail(f"unknown config field {unknown[0]!r}: ArrayConfig has {', '.join(fields_)}")
    try:
        return ArrayConfig(**value)
    except (TypeError, ValueError) as error:
        fail(f"config {value!r}: {error}")


def _parse_method(method, fail):
    try:
        return parse_method(method)
    except ValueError as error:
        fail(str(error))


def _parse_activation(text, fail):
    from ...sw.activation_sparsity import ActivationSpecError, parse_activation

    try:
        return str(parse_activation(text))
    except ActivationSpecError as error:
        fail(str(error))


def _parse_section(section, name, keys, fail):
    if section is None:
        return None
    if not isinstance(section, dict):
        fail(f"[{name}] must be a table, not {section!r}")
    unknown = sorted(set(section) - set(keys))
    if unknown:
        fail(f"unknown key {unknown[0]!r} in [{name}]: it takes {', '.join(keys)}")
    return section


def _non_negative_int(value, what, fail):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        fail(f"{what} must be a non-negative integer, not {value!r}")
    return value


def _parse_verify(section, fail):
    section = _parse_section(section, "verify", ("sample", "seed"), fail)
    if section is None:
        return None
    if "sample" not in section:
        fail("[verify] needs sample, the number of points to run on Verilator")
    sample = _non_negative_int(section["sample"], "[verify] sample", fail)
    if sample == 0:
        fail("[verify] sample must be 1 or more (leave [verify] out to verify nothing)")
    return VerifySpec(sample=sample,
                      seed=_non_negative_int(section.get("seed", 0), "[verify] seed", fail))


def _parse_build(section, fail):
    from ...bitstreams.build import BOARDS

    section = _parse_section(section, "build", ("seeds", "board"), fail)
    if section is None:
        return None
    seeds = section.get("seeds")
    if not isinstance(seeds, list) or not seeds:
        fail("[build] needs seeds, a non-empty list of nextpnr placement seeds")
    if len(set(seeds)) != len(seeds):
        fail(f"[build] seeds repeat a value: {seeds!r}")
    for seed in seeds:
        _non_negative_int(seed, "[build] seeds", fail)
    board = section.get("board", "ulx3s-85f")
    if board not in BOARDS:
        fail(f"unknown board {board!r} in [build]: choose one of {', '.join(BOARDS)}")
    return BuildSpec(seeds=tuple(seeds), board=board)


# --- Points -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SweepPoint:
    """One task of a sweep: a layer measurement (``kind="layer"``) or a board build
    (``kind="build"``). Small by design: it is what travels to the workers.
    """
    #: ``"layer"`` or ``"build"``.
    kind: str
    #: The array configuration.
    config: ArrayConfig
    #: The design hash of ``config`` when the sweep was expanded.
    design_hash: str
    #: The model of a layer point (empty for a build).
    model: str = ""
    #: Qualified name of the layer point's linear.
    layer: str = ""
    #: The layer point's pruning method, in its canonical text.
    method: str = ""
    #: Target sparsity; None for N:M.
    sparsity: float | None = None
    #: None: the built-in sentence as it is.
    tokens: int | None = None
    #: Seeds random pruning, bert-base's weights and the calibration split.
    seed: int = 0
    #: Also run on the Verilator device.
    verify: bool = False
    #: The board of a build point (empty for a layer).
    board: str = ""
    #: The build point's nextpnr placement seed.
    build_seed: int | None = None
    #: The feed-forward activation, a canonical ``--activation`` spec.
    activation: str = "none"

    @property
    def key(self):
        """16 hex digits hashing every parameter and the design hash: the row's key (GELU's
        points keep the keys they had before activations were an axis)."""
        parameters = dataclasses.asdict(self)
        if self.activation == "none":
            del parameters["activation"]
        blob = json.dumps(parameters, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def expand_points(spec):
    """Every point of ``spec``, models outermost (so a worker's model cache is reused).

    Loads each model once to check the layer names (and to list them for ``"all"``).

    Returns
    -------
    list of SweepPoint

    Raises
    ------
    ValueError, FileNotFoundError
        If a model or a layer name is unknown, or the verify sample is larger than the sweep.
    """
    from ...sw.ffn_activation import feed_forward_consumers
    from ...sw.models import encoder_linear_names, get_linear

    hashes = {config: _design_hash(config) for config in spec.configs}
    fixed = {method: parse_method(method).fixes_sparsity for method in spec.methods}
    prunings = [(method, None if fixed[method] else sparsity)
                for method in spec.methods
                for sparsity in ((None,) if fixed[method] else spec.sparsities)]
    points = []
    for model in spec.models:
        loaded = _loaded_model(model, spec.seed, "none")
        names = encoder_linear_names(loaded.model) if spec.layers == "all" else spec.layers
        fed = (set(feed_forward_consumers(loaded.model)) if spec.activations != ("none",)
               else set())
        for layer in names:
            get_linear(loaded.model, layer)
            points.extend(
                SweepPoint(kind="layer", config=config, design_hash=hashes[config], model=model,
                           layer=layer, method=method, sparsity=sparsity, tokens=tokens,
                           seed=spec.seed, activation=activation)
                for activation in spec.activations if activation == "none" or layer in fed
                for config in spec.configs for tokens in spec.tokens
                for method, sparsity in prunings)
    if spec.verify is not None:
        if spec.verify.sample > len(points):
            raise InputError(f"[verify] sample is {spec.verify.sample} but the sweep has only "
                             f"{len(points)} layer points")
        chosen = set(random.Random(spec.verify.seed).sample(range(len(points)),
                                                            spec.verify.sample))
        points = [dataclasses.replace(point, verify=True) if index in chosen else point
                  for index, point in enumerate(points)]
    if spec.build is not None:
        points.extend(SweepPoint(kind="build", config=config, design_hash=hashes[config],
                                 board=spec.build.board, build_seed=seed)
                      for config in spec.configs for seed in spec.build.seeds)
    return points


def _design_hash(config):
    """:func:`~sparsemac.hw.board_link.design_digest`'s hex of ``config``, kept on disk under a
    key of every gateware source and the Amaranth version: elaborating a large config takes
    seconds, and a sweep rerun with nothing to compute should not pay them again."""
    from importlib.metadata import version

    from ... import hw
    from ...sw.cache import cache_dir

    sources = hashlib.sha256(version("amaranth").encode())
    for path in sorted(Path(hw.__file__).parent.glob("*.py")):
        sources.update(path.name.encode() + b"\0" + path.read_bytes())
    path = cache_dir("design-hashes") / f"{config.key()}-{sources.hexdigest()[:16]}"
    if path.is_file():
        return path.read_text().strip()
    value = design_digest(config).hex
    partial = path.with_suffix(".partial")
    partial.write_text(value + "\n")
    os.replace(partial, path)  # a sweep on another worker may write the same file
    return value


# --- One point, on a worker -------------------------------------------------------------------

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
    #: A build's achieved Fmax.
    fmax_mhz: float | None = None
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
                   activation=point.activation if point.kind == "layer" else "")

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
    from ...sw.ffn_activation import sparsify_activations
    from ...sw.models import load_model
    from . import activation_calibration
    with _MODEL_LOCK:
        loaded = load_model(model, seed=seed)
        sparsify_activations(loaded.model, activation, tokenizer=loaded.tokenizer,
                             calibration=activation_calibration(activation, None, seed))
        return loaded


@functools.lru_cache(maxsize=256)
def _layer_inputs(model, seed, layer, tokens, activation):
    from ...sw.models import capture_linear_input
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

    from ...devices.reference import ReferenceDevice
    from ...hw.formats import Mode
    from ...sw.model_offload import matmul_cycles
    from ...sw.models import get_linear
    from ...sw.offload import OffloadedLinear
    from ...sw.quantisation import approximation_error
    from .simulate import prune_layer, simulate_layer

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
    from ...bitstreams.build import build_bitstream
    from ...sim.toolchain import cache_dir

    # Not the committed folder: a sweep never replaces a release bitstream.
    output = cache_dir("sweep-builds", f"{point.board}_{point.config.key()}_{point.design_hash}"
                                       f"_seed{point.build_seed}")
    built = build_bitstream(point.config, point.board, output, seed=point.build_seed,
                            log=lambda message: None)
    resources = built.resources
    result.lut4, result.ff, result.dsp, result.bram = (resources.lut4, resources.ff,
                                                       resources.dsp, resources.bram)
    result.fmax_mhz = resources.fmax_mhz


# --- The results table ------------------------------------------------------------------------

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


# --- Running on Dask --------------------------------------------------------------------------

def _default_workers():
    return len(os.sched_getaffinity(0))


#: A TCP scheduler address as ``--scheduler`` takes it: an optional scheme, a host, a port.
_TCP_ADDRESS = re.compile(r"(?:(?:tcp|tls)://)?(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+)"
                          r":(?P<port>\d{1,5})")
#: Dask's other transports, whose addresses its client checks itself.
_OTHER_SCHEMES = ("inproc://", "ws://", "wss://", "ucx://")


def check_scheduler_address(scheduler):
    """``(host, port)`` of a TCP scheduler address such as ``tcp://127.0.0.1:8786``, or None
    for an address of another Dask transport (``inproc://``, ``ws://``, ...).

    Raises
    ------
    ValueError
        If the address is of no Dask transport, or a TCP one is not ``[tcp://|tls://]HOST:PORT``
        with a port from 1 to 65535.
    """
    if not isinstance(scheduler, str):
        raise TypeError(f"scheduler must be an address string, not {scheduler!r}")
    if scheduler.startswith(_OTHER_SCHEMES):
        return None
    match = _TCP_ADDRESS.fullmatch(scheduler.strip())
    if match is None or not 1 <= int(match["port"]) <= 65535:
        raise InputError(f"--scheduler {scheduler!r} is not a scheduler address: write "
                         "tcp://HOST:PORT (or tls://HOST:PORT) with a port from 1 to 65535, "
                         "e.g. tcp://127.0.0.1:8786")
    return match["host"].strip("[]"), int(match["port"])


def _connect_remote(scheduler):
    """A client of the running Dask cluster at ``scheduler``, or a ValueError in seconds."""
    import socket

    from distributed import Client

    address = check_scheduler_address(scheduler)
    advice = ("start one with `dask scheduler` and workers with `dask worker ADDRESS` (see "
              "docs/sweeps.md)")
    try:  # a closed port or an unknown host answers at once: no Dask client to clean up
        if address is not None:
            socket.create_connection(address, timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise InputError(f"no Dask scheduler answers at {scheduler!r} "
                         f"({error.strerror or type(error).__name__}): {advice}") from None
    try:
        client = Client(scheduler, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except Exception as error:  # noqa: BLE001 - whatever answers there, it is no scheduler
        # Not the error's own text: whatever answered there speaks no Dask, and what the
        # client made of its bytes (a 3 EiB message length, say) tells the user nothing.
        raise InputError(f"no Dask scheduler answers at {scheduler!r} within "
                         f"{CONNECT_TIMEOUT_S} s ({type(error).__name__}): {advice}") from None
    count = len(client.scheduler_info()["workers"])
    return client, f"the Dask cluster at {scheduler} ({count} worker(s) when the sweep began)"


def _start_local(workers, threads_per_worker, processes):
    """A client of a new local cluster (closed with :meth:`Client.close` of its
    ``cluster``), and where it runs."""
    import logging

    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker,
                           processes=processes, dashboard_address=":0",
                           silence_logs=logging.ERROR)
    where = (f"a local cluster of {workers} worker(s) x {threads_per_worker} thread(s)"
             + ("" if processes else " in this process"))
    return Client(cluster, set_as_default=False), cluster, where


def _compute(points, table, spec_digest, client):
    """Submits ``points``; appends each row to ``table`` as it completes. A task that fails
    outside :func:`run_point` (a worker killed too often, say) is recorded as failed.

    Raises
    ------
    RuntimeError
        After the other rows are written, if tasks were cancelled (the scheduler went away).
    """
    from distributed import as_completed

    futures = {client.submit(run_point, point, spec_digest, key=f"sparsemac-{point.key}",
                             pure=False): point for point in points}
    bar = progress_bar(len(points), desc="sweep", unit="point")
    cancelled = 0
    try:
        for future in as_completed(futures, loop=client.loop):
            if future.status == "cancelled":
                # Lost with the scheduler, not failed: no row, so that a rerun computes it.
                cancelled += 1
                continue
            if future.status == "finished":
                result = future.result()
            else:
                result = PointResult.for_point(futures[future], spec_digest)
                error = future.exception()
                result.error = f"{type(error).__name__}: {error}"
            table.append(result)
            future.release()
            bar.update()
    finally:
        bar.close()
    if cancelled:
        raise RunFailure(f"{cancelled} of {len(points)} points were cancelled (did the Dask "
                           "scheduler stop?): run the same sweep again to compute them")


@dataclass
class SweepReport:
    """What :func:`run_sweep` did and found."""
    #: The spec run.
    spec: SweepSpec
    #: The output folder; ``results`` is its CSV.
    output: str
    #: The rows of this spec's points, in point order (earlier runs' rows included).
    results: list[PointResult]
    #: Points in the spec.
    points: int
    #: Points found done in the table.
    skipped: int
    #: Points computed now.
    computed: int
    #: Rows of this spec whose point failed.
    failed: int
    #: Wall time from the start of a local cluster (or from the connection to a running one) to the
    #: last row.
    wall_s: float
    #: Points computed per second from the first submission, each worker's first model load included
    #: (0 when nothing was computed).
    points_per_s: float
    #: Where the points ran.
    cluster: str
    #: The Pareto plots written (PNG paths); empty without plots.
    plots: list[str] = field(default_factory=list)

    @property
    def table(self):
        return str(Path(self.output) / RESULTS_FILE)

    @property
    def passed(self):
        """Whether every point of the spec has a result."""
        return self.failed == 0

    def as_json(self):
        return {"passed": self.passed, "table": self.table, "seed": self.spec.seed,
                "points": self.points, "skipped": self.skipped, "computed": self.computed,
                "failed": self.failed, "wall_s": self.wall_s, "points_per_s": self.points_per_s,
                "cluster": self.cluster, "plots": self.plots,
                "results": [dataclasses.asdict(row) for row in self.results]}

    def design_points(self):
        """Layer rows summed over the layers of each (model, tokens, config, method, sparsity):
        the designs the Pareto plots compare. See :func:`_design_points`."""
        return _design_points(self.results)

    def sections(self):
        """The summary as ``(title, header, rows)`` tables."""
        sections = [("Sweep", None, [
            ["results", self.table],
            ["points", f"{self.points} ({self.skipped} done before, {self.computed} computed "
                       f"now, {self.failed} failed)"],
            ["ran on", self.cluster],
            ["wall time", f"{self.wall_s:.1f} s"
                          + (f"; {self.points_per_s:.2f} points/s from the first submission "
                             "(workers' model loads included)" if self.computed else "")],
            ["seed", str(self.spec.seed)],
            *([["plots", ", ".join(self.plots)]] if self.plots else []),
        ])]
        for workload, designs in _by_workload(self.design_points()).items():
            front = [designs[index]
                     for index in pareto_front(designs, "sparse_cycles", "relative_error")]
            sections.append((f"Pareto front, cycles against relative error: {workload} "
                             f"({len(front)} of {len(designs)} designs)",
                             ["config", "method", "sparsity", "cycles", "speedup",
                              "rel. error", "cosine"],
                             [[design.config, design.method, _sparsity(design.target_sparsity),
                               f"{design.sparse_cycles:,}", f"{design.speedup:.2f}x",
                               f"{design.relative_error:.2%}", f"{design.cosine:.4f}"]
                              for design in front]))
        verified = [row for row in self.results if row.verify and not row.failed]
        if verified:
            sections.append(("Verified on Verilator", None, [
                ["points", str(len(verified))],
                ["bit-exact", f"{sum(row.bit_exact for row in verified)} of {len(verified)}"],
                ["cycles = model",
                 f"{sum(row.cycles_match for row in verified)} of {len(verified)}"]]))
        builds = [row for row in self.results if row.kind == "build" and not row.failed]
        if builds:
            sections.append(("Board builds", ["config", "seed", "Fmax", "LUT4", "DSP", "BRAM"],
                             [[row.config, str(row.build_seed), f"{row.fmax_mhz:.2f} MHz",
                               f"{row.lut4:,}", str(row.dsp), str(row.bram)] for row in builds]))
        failures = [row for row in self.results if row.failed]
        if failures:
            more = len(failures) - LISTED_FAILURES
            sections.append((f"Failed points ({len(failures)}"
                             + (f"; the first {LISTED_FAILURES} here, all in the CSV"
                                if more > 0 else "") + ")",
                             None, [[_describe(row), row.error]
                                    for row in failures[:LISTED_FAILURES]]))
        return sections


def _sparsity(target):
    return "N:M" if target is None else f"{target:.0%}"


def _describe(row):
    if row.kind == "build":
        return f"build {row.config} seed {row.build_seed}"
    return (f"{row.model} {row.layer} {row.config} {_method(row)} "
            f"{_sparsity(row.target_sparsity)}")


def _method(row):
    """A layer row's method, with its activation when that is not GELU."""
    return row.method if row.activation in ("", "none") else f"{row.method} {row.activation}"


@dataclass
class DesignPoint:
    """A design, summed over the sweep's layers of one workload (model, tokens run)."""
    #: The model of the workload.
    model: str
    #: Tokens run.
    tokens: int
    #: The array config's key.
    config: str
    #: The pruning method.
    method: str
    #: The sparsity asked for; None for N:M.
    target_sparsity: float | None
    #: Layers summed.
    layers: int
    #: K x T of the config.
    multipliers: int
    #: Bits of its activation buffer.
    activation_buffer_bits: int
    #: Sparse cycles summed over the layers.
    sparse_cycles: int
    #: Dense cycles summed over the layers.
    dense_cycles: int
    #: The layers' mean relative error.
    relative_error: float
    #: The layers' mean cosine.
    cosine: float

    @property
    def speedup(self):
        return self.dense_cycles / self.sparse_cycles


def _design_points(results):
    """Groups layer rows by (model, requested tokens, config, method and activation, target
    sparsity): cycles add up over the layers, relative error and cosine are averaged. A group
    with a failed layer is left out (its failure is listed on its own)."""
    groups = {}
    for row in results:
        if row.kind == "layer":
            groups.setdefault((row.model, row.tokens, row.config, _method(row),
                               row.target_sparsity), []).append(row)
    designs = []
    for (model, _, config, method, sparsity), rows in groups.items():
        if any(row.failed for row in rows):
            continue
        designs.append(DesignPoint(
            model=model, tokens=rows[0].tokens_run, config=config, method=method,
            target_sparsity=sparsity, layers=len(rows), multipliers=rows[0].multipliers,
            activation_buffer_bits=rows[0].activation_buffer_bits,
            sparse_cycles=sum(row.sparse_cycles for row in rows),
            dense_cycles=sum(row.dense_cycles for row in rows),
            relative_error=sum(row.relative_error for row in rows) / len(rows),
            cosine=sum(row.cosine for row in rows) / len(rows)))
    return designs


def _by_workload(designs):
    workloads = {}
    for design in designs:
        name = f"{design.model}, {design.layers} layer(s), {design.tokens} tokens"
        workloads.setdefault(name, []).append(design)
    return workloads


def _plot(designs, folder):
    """The Pareto plots as PNGs in ``folder``: cycles against relative error, and cycles
    against the array's multipliers and activation buffer. Returns their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = _by_workload(designs)
    if not workloads:
        return []
    configs = sorted({design.config for design in designs})
    colours = {config: plt.get_cmap("tab10")(index % 10) for index, config in enumerate(configs)}
    methods = sorted({design.method for design in designs})
    markers = {method: "osD^v<>P*X"[index % 10] for index, method in enumerate(methods)}

    def scatter(axes, designs, x, y, scale=1.0):
        for design in designs:
            axes.scatter(getattr(design, x) / scale, getattr(design, y),
                         color=colours[design.config], marker=markers[design.method], s=28,
                         alpha=0.8)
        front = [designs[index] for index in pareto_front(designs, x, y)]
        axes.step([getattr(item, x) / scale for item in front],
                  [getattr(item, y) for item in front], where="post", color="black",
                  linewidth=1)
        axes.grid(alpha=0.3)

    def legend(figure):
        handles = [plt.Line2D([], [], color=colours[config], marker="o", linestyle="",
                              label=config) for config in configs]
        handles += [plt.Line2D([], [], color="grey", marker=markers[method], linestyle="",
                               label=method) for method in methods]
        handles.append(plt.Line2D([], [], color="black", label="Pareto front"))
        figure.legend(handles=handles, loc="outside right upper", fontsize="small")

    paths = []
    figure, axes = plt.subplots(1, len(workloads), figsize=(6 * len(workloads), 4.5),
                                squeeze=False, layout="constrained")
    for ax, (workload, items) in zip(axes[0], workloads.items()):
        scatter(ax, items, "sparse_cycles", "relative_error")
        ax.set(title=workload, xlabel="sparse cycles (cycle model, summed over layers)",
               ylabel="relative error vs float layer (mean)", xscale="log")
    legend(figure)
    paths.append(folder / "pareto_fidelity.png")
    figure.savefig(paths[-1], dpi=110)
    plt.close(figure)

    figure, axes = plt.subplots(len(workloads), 2, figsize=(11, 4.2 * len(workloads)),
                                squeeze=False, layout="constrained")
    for row, (workload, items) in zip(axes, workloads.items()):
        scatter(row[0], items, "multipliers", "sparse_cycles")
        row[0].set(title=workload, xlabel="int8 multipliers (K x T)",
                   ylabel="sparse cycles", yscale="log")
        scatter(row[1], items, "activation_buffer_bits", "sparse_cycles", scale=1024)
        row[1].set(title=workload, xlabel="activation buffer (kbit)", ylabel="sparse cycles",
                   xscale="log", yscale="log")
    legend(figure)
    paths.append(folder / "pareto_resources.png")
    figure.savefig(paths[-1], dpi=110)
    plt.close(figure)
    return [str(path) for path in paths]


def run_sweep(spec, output, scheduler=None, workers=None, threads_per_worker=1,
              processes=True, plots=True):
    """Runs every point of ``spec`` not yet in ``output``'s table, on Dask.

    Parameters
    ----------
    spec : SweepSpec or str or Path
        A spec, or the path of its TOML file.
    output : str or Path
        The folder of the results table (:data:`RESULTS_FILE`) and plots; created if missing.
        Rows already there are kept: those of this spec's points are not computed again.
    scheduler : str or None
        Address of a running Dask scheduler, e.g. ``tcp://10.0.0.5:8786``; None starts a
        local cluster.
    workers : int or None
        Local cluster workers; None: one per CPU core this process may use.
    threads_per_worker : int
        Threads of each local worker.
    processes : bool
        Local workers as processes (parallel in Python code) or threads of this process.
    plots : bool
        Write the Pareto plots.

    Returns
    -------
    SweepReport

    Raises
    ------
    ValueError, FileNotFoundError
        For a bad spec, a model or layer that does not exist, an output folder in use by
        another sweep or holding a table of other columns, local cluster sizes given with
        ``scheduler``, or a scheduler that does not answer within :data:`CONNECT_TIMEOUT_S`
        seconds. All of these are raised before any point is computed.
    """
    check_output_folder(output, "sweep table")
    if scheduler is not None:
        check_scheduler_address(scheduler)
    if scheduler is not None and (workers is not None or threads_per_worker != 1):
        raise InputError("--workers and --threads-per-worker size the local cluster: with "
                         "--scheduler, the cluster's size is set where its workers start")
    workers = _default_workers() if workers is None else workers
    for name, value in (("workers", workers), ("threads_per_worker", threads_per_worker)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive integer, not {value!r}")
    client, cluster, where = None, None, "nothing to compute"
    if scheduler is not None:
        client, where = _connect_remote(scheduler)
    table = None
    try:
        if not isinstance(spec, SweepSpec):
            spec = load_spec(spec)
        points = expand_points(spec)
        table = _ResultsTable(output)
        done = {row.key for row in table.rows}
        todo = [point for point in points if point.key not in done]
        progress(f"sweep: {len(points)} points (seed {spec.seed}"
             + (f", verify seed {spec.verify.seed}" if spec.verify else "")
             + f"), {len(points) - len(todo)} already in {table.path}, {len(todo)} to compute")
        started = time.perf_counter()
        compute_s = 0.0
        if todo:
            if client is None:
                client, cluster, where = _start_local(workers, threads_per_worker, processes)
            progress(f"sweep: running on {where}")
            computing = time.perf_counter()
            _compute(todo, table, spec.digest(), client)
            compute_s = time.perf_counter() - computing
        wall = time.perf_counter() - started
        by_key = {row.key: row for row in table.rows}
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
        if table is not None:
            table.close()
    results = [by_key[point.key] for point in points]
    report = SweepReport(spec=spec, output=str(output), results=results, points=len(points),
                         skipped=len(points) - len(todo), computed=len(todo),
                         failed=sum(row.failed for row in results), wall_s=wall,
                         points_per_s=len(todo) / compute_s if todo else 0.0, cluster=where)
    if plots:
        report.plots = _plot(report.design_points(), Path(output))
    return report
