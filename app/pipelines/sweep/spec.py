"""The spec of a sweep: its axes as a TOML file (:func:`load_spec`) or a dict
(:func:`parse_spec`), validated into a :class:`SweepSpec`."""

import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ....bitstreams.build import DEFAULT_PLACER, DEFAULT_ROUTER
from ....hw.board_link import DEFAULT_CLOCK_HZ
from ....hw.config import ArrayConfig
from ....hw.errors import InputError, MissingFileError
from ....sw.methods import parse_method

__all__ = ["VerifySpec", "BuildSpec", "SweepSpec", "load_spec", "parse_spec"]


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
    #: The clock each build is constrained to (the PLL's output), MHz.
    clock_mhz: float = DEFAULT_CLOCK_HZ / 1e6
    #: Wall time one build may take; past it the build stops and its point fails. None: none.
    time_limit_s: float | None = None
    #: False: synthesis and placement only, with nextpnr's Fmax estimate before routing
    #: (minutes a point instead of an hour or more for a large array).
    route: bool = True
    #: nextpnr's routing algorithm, one of :data:`~sparsemac.bitstreams.build.ROUTERS`.
    router: str = DEFAULT_ROUTER
    #: nextpnr's placement algorithm, one of :data:`~sparsemac.bitstreams.build.PLACERS`.
    placer: str = DEFAULT_PLACER


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
    from ....sw.activation_sparsity import ActivationSpecError, parse_activation

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
    from ....bitstreams.build import BOARDS, PLACERS, ROUTERS

    section = _parse_section(section, "build", ("seeds", "board", "clock_mhz",
                                                "time_limit_minutes", "route", "router",
                                                "placer"), fail)
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
    clock_mhz = section.get("clock_mhz", DEFAULT_CLOCK_HZ / 1e6)
    if isinstance(clock_mhz, bool) or not isinstance(clock_mhz, (int, float)) or not clock_mhz > 0:
        fail(f"[build] clock_mhz must be a positive number of MHz, not {clock_mhz!r}")
    minutes = section.get("time_limit_minutes")
    if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, (int, float))
                                or not minutes > 0):
        fail(f"[build] time_limit_minutes must be a positive number, not {minutes!r}")
    route = section.get("route", True)
    if not isinstance(route, bool):
        fail(f"[build] route must be true or false, not {route!r}")
    router = section.get("router", DEFAULT_ROUTER)
    if router not in ROUTERS:
        fail(f"[build] router must be one of {', '.join(ROUTERS)}, not {router!r}")
    if not route and "router" in section:
        fail("[build] router is for routed builds: drop it, or route = false")
    placer = section.get("placer", DEFAULT_PLACER)
    if placer not in PLACERS:
        fail(f"[build] placer must be one of {', '.join(PLACERS)}, not {placer!r}")
    return BuildSpec(seeds=tuple(seeds), board=board, clock_mhz=float(clock_mhz),
                     time_limit_s=None if minutes is None else 60.0 * minutes, route=route,
                     router=router, placer=placer)
