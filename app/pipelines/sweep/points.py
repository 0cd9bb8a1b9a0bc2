"""The points of a sweep: every combination of a spec's axes, one :class:`SweepPoint` each, the
small task that travels to a worker."""

import dataclasses
import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from ....bitstreams.build import DEFAULT_PLACER, DEFAULT_ROUTER
from ....hw.board_link import DEFAULT_CLOCK_HZ, design_digest
from ....hw.config import ArrayConfig
from ....hw.errors import InputError
from ....sw.methods import parse_method
from .worker import _loaded_model

__all__ = ["SweepPoint", "expand_points"]


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
    #: The build point's clock constraint, MHz (None for a layer).
    clock_mhz: float | None = None
    #: The build point's time limit, s; not part of the key (a failed row is recomputed anyway).
    time_limit_s: float | None = None
    #: False for a build point placed but not routed.
    route: bool = True
    #: A routed build point's nextpnr router.
    router: str = DEFAULT_ROUTER
    #: The build point's nextpnr placer.
    placer: str = DEFAULT_PLACER

    @property
    def key(self):
        """16 hex digits hashing every parameter but the time limit, and the design hash: the
        row's key (GELU's points and the default clock's builds keep the keys they had before
        activations and clocks were axes)."""
        parameters = dataclasses.asdict(self)
        del parameters["time_limit_s"]
        if self.activation == "none":
            del parameters["activation"]
        if self.clock_mhz is None or self.clock_mhz == DEFAULT_CLOCK_HZ / 1e6:
            del parameters["clock_mhz"]
        if self.route:
            del parameters["route"]
        if self.router == DEFAULT_ROUTER:
            del parameters["router"]
        if self.placer == DEFAULT_PLACER:
            del parameters["placer"]
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
    from ....sw.ffn_activation import feed_forward_consumers
    from ....sw.models import encoder_linear_names, get_linear

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
                                 board=spec.build.board, build_seed=seed,
                                 clock_mhz=spec.build.clock_mhz,
                                 time_limit_s=spec.build.time_limit_s,
                                 route=spec.build.route, router=spec.build.router,
                                 placer=spec.build.placer)
                      for config in spec.configs for seed in spec.build.seeds)
    return points


def _design_hash(config):
    """:func:`~sparsemac.hw.board_link.design_digest`'s hex of ``config``, kept on disk under a
    key of every gateware source and the Amaranth version: elaborating a large config takes
    seconds, and a sweep rerun with nothing to compute should not pay them again."""
    from importlib.metadata import version

    from .... import hw
    from ....sw.cache import cache_dir

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
