"""One layer, sparse against dense, under a memory model: cycles, what bounds them, energy.

:func:`memory_report` runs the exact throttled cycle model and the energy model over a layer in
both modes and returns a :class:`MemoryReport`: the fields a command prints (text with
:meth:`MemoryReport.sections`, JSON with :meth:`MemoryReport.as_json`) and the points of a
roofline plot (:func:`plot_roofline`).
"""

from dataclasses import asdict, dataclass

from ..hw.config import ArrayConfig
from ..hw.formats import ColumnIndex, Mode
from .csr import CSRMatrix
from .energy import EnergyReport, energy_events, energy_of, load_energy_table
from .memory import MemoryModel, check_fits_onchip
from .packing import weight_stream_bytes
from .throttled_cycle_model import LayerCycles, dual_layer_cycles, layer_cycles
from ..hw.errors import InputError

__all__ = ["ModeResult", "MemoryReport", "ModelMemoryReport", "memory_report",
           "recorded_memory_cycles", "plot_roofline"]


@dataclass(frozen=True)
class ModeResult:
    """One mode of a layer."""
    #: Memory-bound (``cycles.cycles``) and compute-bound (``cycles.compute_cycles``) cycles.
    cycles: LayerCycles
    #: The mode's energy events and what they cost under the report's table.
    energy: EnergyReport
    #: Multiply-accumulates the array performs usefully: nonzeros x tokens in sparse mode (the
    #: pairs of a nonzero weight and a nonzero activation, dual-sparse), rows x cols x tokens
    #: (zeros included) in dense mode.
    macs: int

    @property
    def macs_per_cycle(self):
        return self.macs / self.cycles.cycles

    @property
    def intensity(self):
        """MACs per byte streamed in (weights and activations)."""
        return self.macs / (self.cycles.weight_bytes + self.cycles.activation_bytes)


@dataclass(frozen=True)
class MemoryReport:
    """A layer under one memory model, sparse against dense."""
    #: Qualified name of the linear.
    layer: str
    #: Output rows of the layer.
    rows: int
    #: Input columns of the layer.
    cols: int
    #: Tokens of the call.
    tokens: int
    #: Nonzero int8 weights.
    nnz: int
    #: The array.
    config: ArrayConfig
    #: The memory model the streams were fed at.
    memory: MemoryModel
    #: The layer in sparse (CSR or delta) mode.
    sparse: ModeResult
    #: The layer in dense mode, the baseline.
    dense: ModeResult
    #: How the sparse jobs send their column indices.
    index: ColumnIndex = ColumnIndex.CSR

    @property
    def speedup(self):
        """Dense over sparse cycles with the memory counted."""
        return self.dense.cycles.cycles / self.sparse.cycles.cycles

    @property
    def compute_speedup(self):
        """Dense over sparse cycles with ideal streams."""
        return self.dense.cycles.compute_cycles / self.sparse.cycles.compute_cycles

    @property
    def bytes_per_nonzero(self):
        """Sparse weight bytes per nonzero and pass (row pointers, padding and a delta job's
        escape entries included)."""
        passes = -(-self.tokens // self.config.token_lanes)
        return self.sparse.cycles.weight_bytes / max(1, self.nnz * passes)

    @property
    def energy_ratio(self):
        """Sparse over dense energy."""
        return self.sparse.energy.total_pj / self.dense.energy.total_pj

    def as_json(self):
        """A JSON-ready dict of every figure."""
        def mode(result):
            cycles = asdict(result.cycles)
            return {"cycles": result.cycles.cycles, "compute_cycles": result.cycles.compute_cycles,
                    "bound": result.cycles.bound, "schedule": cycles, "macs": result.macs,
                    "energy_pj": result.energy.total_pj,
                    "energy_events": asdict(result.energy.events),
                    "energy_by_event_pj": asdict(result.energy.picojoules)}
        return {"layer": self.layer, "rows": self.rows, "cols": self.cols,
                "tokens": self.tokens, "nnz": self.nnz, "config": self.config.as_dict(),
                "memory": asdict(self.memory), "energy_table": self.sparse.energy.table,
                "index": self.index.name.lower(),
                "sparse": mode(self.sparse), "dense": mode(self.dense),
                "speedup": self.speedup, "compute_speedup": self.compute_speedup,
                "bytes_per_nonzero": self.bytes_per_nonzero, "energy_ratio": self.energy_ratio}

    def sections(self):
        """``(title, header, rows)`` tables for a text report."""
        cycles = []
        cycles.append(("compute-bound cycles", f"{self.sparse.cycles.compute_cycles:,}",
                       f"{self.dense.cycles.compute_cycles:,}", f"{self.compute_speedup:.2f}x"))
        cycles.append((f"memory-bound cycles ({self.memory.name})",
                       f"{self.sparse.cycles.cycles:,}", f"{self.dense.cycles.cycles:,}",
                       f"{self.speedup:.2f}x"))
        cycles.append(("bound by", self.sparse.cycles.bound, self.dense.cycles.bound, ""))
        cycles.append((f"weight bytes per nonzero ({self.index.name.lower()} index)",
                       f"{self.bytes_per_nonzero:.3f}", "", ""))
        energy = []
        energy.append(("energy (uJ)", f"{self.sparse.energy.total_uj:.3f}",
                       f"{self.dense.energy.total_uj:.3f}", f"{self.energy_ratio:.3f}"))
        energy.append(("of which memory (uJ)", f"{self.sparse.energy.memory_pj * 1e-6:.3f}",
                       f"{self.dense.energy.memory_pj * 1e-6:.3f}", ""))
        return [(f"{self.layer} under {self.memory.describe()}",
                 ("", "sparse", "dense", "dense/sparse"), cycles),
                (f"energy ({self.sparse.energy.table})", ("", "sparse", "dense", "sparse/dense"),
                 energy)]


@dataclass(frozen=True)
class ModelMemoryReport:
    """Every offloaded layer of one inference under one memory model, and their totals."""
    #: One per layer, all under the same memory model and energy table.
    layers: tuple[MemoryReport, ...]

    def _total(self, mode, figure):
        return sum(figure(getattr(report, mode)) for report in self.layers)

    @property
    def cycles(self):
        """Memory-bound cycles, ``{"sparse": ..., "dense": ...}``."""
        return {mode: self._total(mode, lambda result: result.cycles.cycles)
                for mode in ("sparse", "dense")}

    @property
    def compute_cycles(self):
        """Compute-bound (ideal-stream) cycles, ``{"sparse": ..., "dense": ...}``."""
        return {mode: self._total(mode, lambda result: result.cycles.compute_cycles)
                for mode in ("sparse", "dense")}

    @property
    def energy_pj(self):
        """Energy of the inference, ``{"sparse": ..., "dense": ...}``."""
        return {mode: self._total(mode, lambda result: result.energy.total_pj)
                for mode in ("sparse", "dense")}

    def as_json(self):
        """A JSON-ready dict: the totals, then every layer's :meth:`MemoryReport.as_json`."""
        first = self.layers[0]
        cycles, compute, energy = self.cycles, self.compute_cycles, self.energy_pj
        return {"memory": asdict(first.memory), "energy_table": first.sparse.energy.table,
                "cycles": cycles, "compute_cycles": compute, "energy_pj": energy,
                "speedup": cycles["dense"] / cycles["sparse"],
                "compute_speedup": compute["dense"] / compute["sparse"],
                "energy_ratio": energy["sparse"] / energy["dense"],
                "layers": [report.as_json() for report in self.layers]}

    def sections(self):
        """One ``(title, header, rows)`` table: a row per layer and the inference's total."""
        def row(name, compute, cycles, energy, bound):
            return [name, f"{compute['dense'] / compute['sparse']:.2f}x",
                    f"{cycles['dense'] / cycles['sparse']:.2f}x", bound,
                    f"{energy['sparse'] * 1e-6:.3f}", f"{energy['dense'] * 1e-6:.3f}"]
        rows = [row(report.layer,
                    {mode: getattr(report, mode).cycles.compute_cycles
                     for mode in ("sparse", "dense")},
                    {mode: getattr(report, mode).cycles.cycles for mode in ("sparse", "dense")},
                    {mode: getattr(report, mode).energy.total_pj
                     for mode in ("sparse", "dense")},
                    report.sparse.cycles.bound)
                for report in self.layers]
        rows.append(row("inference", self.compute_cycles, self.cycles, self.energy_pj, ""))
        first = self.layers[0]
        return [(f"Under {first.memory.describe()}, energy from {first.sparse.energy.table}",
                 ["layer", "compute-bound speedup", "memory-bound speedup", "sparse bound by",
                  "sparse uJ", "dense uJ"], rows)]


def memory_report(weights, tokens, config, memory, table=None, layer="layer",
                  index=ColumnIndex.CSR, activations=None):
    """Runs the throttled cycle model and the energy model over one layer, sparse and dense.

    Parameters
    ----------
    weights : CSRMatrix
    tokens : int
    config : ArrayConfig
    memory : MemoryModel
    table : EnergyTable or None
        None loads the default (Horowitz 45 nm).
    layer : str
        The layer's name, for the report and errors.
    index : ColumnIndex
        How the sparse jobs send their column indices (DELTA: ``config`` needs the decoder).
    activations : torch.Tensor of int8 or None
        ``[tokens, cols]``: the call's activations, for a layer that runs dual-sparse (a
        dual-sparse ``config``); its sparse mode is then the DUAL jobs, whose cycles and energy
        follow those activations' zeros (:func:`~sparsemac.sw.throttled_cycle_model.
        dual_layer_cycles`), and its useful MACs are the pairs issued.

    Returns
    -------
    MemoryReport

    Raises
    ------
    MemoryModelError
        If ``memory`` keeps weights on chip and the layer's weights do not fit, in either mode.
    ValueError
        If ``index`` is DELTA and ``config`` has no delta decoder.
    """
    if not isinstance(weights, CSRMatrix):
        raise TypeError(f"weights must be a CSRMatrix, not {type(weights).__name__}")
    table = load_energy_table() if table is None else table
    index = ColumnIndex(index)
    for mode in Mode:
        check_fits_onchip(memory, config, weight_stream_bytes(config, weights, mode, index),
                          f"{layer} ({mode.name.lower()} mode)")
    results = {}
    for mode, macs in ((Mode.SPARSE, weights.nnz * tokens),
                       (Mode.DENSE, weights.rows * weights.cols * tokens)):
        if mode == Mode.SPARSE and activations is not None:
            cycles = dual_layer_cycles(weights, activations, config, memory)
            macs = cycles.pairs
        else:
            cycles = layer_cycles(weights, tokens, config, mode, memory, index)
        energy = energy_of(energy_events(cycles, config, memory), table)
        results[mode] = ModeResult(cycles=cycles, energy=energy, macs=macs)
    return MemoryReport(layer=layer, rows=weights.rows, cols=weights.cols, tokens=tokens,
                        nnz=weights.nnz, config=config, memory=memory,
                        sparse=results[Mode.SPARSE], dense=results[Mode.DENSE], index=index)


def recorded_memory_cycles(report, config, memory, index=ColumnIndex.CSR):
    """Sparse and dense cycles that an offloaded model's recorded calls take under ``memory``.

    The memory-bound counterpart of ``OffloadReport.cycles_for``: every call of every layer,
    from the exact throttled cycle model.

    Parameters
    ----------
    report : OffloadReport
        Of :func:`~sparsemac.sw.model_offload.offload`, after the model has run.
    config : ArrayConfig
    memory : MemoryModel
    index : ColumnIndex
        Of the sparse jobs.

    Returns
    -------
    tuple of int
        ``(sparse, dense)``.

    Raises
    ------
    MemoryModelError
        If ``memory`` keeps weights on chip and a layer's weights do not fit.
    """
    for layer, module in zip(report.layers, report.modules):
        for mode in Mode:
            check_fits_onchip(memory, config, weight_stream_bytes(config, module.weights, mode,
                                                                  index),
                              f"{layer.name} ({mode.name.lower()} mode)")
    sparse = dense = 0
    for layer, module in zip(report.layers, report.modules):
        for tokens in layer.call_tokens:
            sparse += layer_cycles(module.weights, tokens, config, Mode.SPARSE, memory,
                                   index).cycles
            dense += layer_cycles(module.weights, tokens, config, Mode.DENSE, memory).cycles
    return sparse, dense


def plot_roofline(reports, path):
    """Saves a roofline plot of ``reports`` (all under one config and memory model) as PNG.

    x is the operational intensity (MACs per byte streamed in), y the MACs per cycle attained;
    each layer is one point per mode, labelled in sparse mode. The roof is the array's K x T MACs
    per cycle, and the slanted line the weight path's bandwidth times the intensity.

    Parameters
    ----------
    reports : list of MemoryReport
    path : str or Path
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if not reports:
        raise InputError("plot_roofline needs at least one report")
    config, memory = reports[0].config, reports[0].memory
    peak = config.multipliers
    bandwidth = memory.weight_bytes_per_cycle
    intensities = [getattr(report, mode).intensity for report in reports
                   for mode in ("sparse", "dense")]
    ridge = max(intensities) if bandwidth is None else peak / bandwidth
    x = np.logspace(np.log10(min(intensities) / 2), np.log10(max(max(intensities), ridge) * 2),
                    200)
    roof = np.full_like(x, peak) if bandwidth is None else np.minimum(peak, bandwidth * x)
    figure, axes = plt.subplots(figsize=(7, 4.5))
    axes.plot(x, roof, color="black", label=f"roof: {peak} MACs/cycle"
              + ("" if bandwidth is None else f", {bandwidth:.3g} weight B/cycle"))
    for mode, marker in (("sparse", "o"), ("dense", "s")):
        results = [getattr(report, mode) for report in reports]
        axes.scatter([result.intensity for result in results],
                     [result.macs_per_cycle for result in results], marker=marker, label=mode)
        # Dense points are not labelled: a dense layer streams one byte per weight and pass, so
        # every dense layer with the same tokens sits at about T MACs per byte.
        for report, result in zip(reports, results if mode == "sparse" else []):
            axes.annotate(report.layer, (result.intensity, result.macs_per_cycle), fontsize=6,
                          xytext=(5, -3), textcoords="offset points")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("operational intensity (MACs per byte streamed in)")
    axes.set_ylabel("attained MACs per cycle")
    axes.set_title(f"{config.describe()}, memory {memory.name}")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
