"""One pruned BERT layer on a device, sparse against dense: :func:`simulate_layer`.

The layer's real weights are pruned and quantised, a real sentence's activations are captured
at its input, and the same device runs the product twice: in sparse (CSR) mode and in the dense
baseline mode. Both int32 results are checked bit for bit against the golden model and both
cycle counts against the cycle model. ``sparsemac simulate`` prints the report; from Python::

    from sparsemac.app.pipelines.simulate import simulate_layer
    report = simulate_layer(backend="reference", sparsity=0.8)
    print(report.speedup, report.bit_exact)
"""

import re
import time
from dataclasses import asdict, dataclass

import torch

from ...bitstreams.build import BoardEstimate
from ...devices import BACKENDS, open_device
from ...devices.reference import ReferenceDevice
from ...hw.config import DEFAULT_CONFIG, ArrayConfig, check_config
from ...hw.formats import ColumnIndex, Mode
from ...sw.calibration import check_pattern, prune_calibrated
from ...sw.energy import load_energy_table
from ...sw.golden import golden_matmul
from ...sw.memory import PRESETS, MemoryModel
from ...sw.memory_report import MemoryReport, memory_report
from ...sw.offloaded_linear import OffloadedLinear
from ...sw.packing import check_index
from ...sw.progress import phase, progress
from . import activation_calibration, check_output_path, check_port, method_calibration
from ...sw.activation_sparsity import parse_activation
from ...sw.pruning import choose_masks
from ...sw.quantisation import approximation_error, quantise_activations
from ...hw.errors import InputError

__all__ = ["DEFAULT_MODEL", "DEFAULT_LAYER", "DEFAULT_SPARSITY", "DEFAULT_FST_LIMIT",
           "BoardTimes", "SimulationReport", "simulate_layer", "estimate_fst_bytes",
           "prune_layer"]

DEFAULT_MODEL = "minilm"
DEFAULT_LAYER = "encoder.layer.0.intermediate.dense"
DEFAULT_SPARSITY = 0.9
#: The largest FST waveform written without raising ``fst_limit``: 1 GB.
DEFAULT_FST_LIMIT = 1_000_000_000
#: FST bytes per simulated clock cycle of the default array (K=8 T=4), measured: `sparsemac
#: simulate --fst` (MiniLM layer 0 FFN, 90 %, 16 tokens) wrote 77 884 820 bytes for 327 918
#: cycles. Other arrays are scaled with K x T.
FST_BYTES_PER_CYCLE = 238


@dataclass
class BoardTimes:
    """The layer's two runs timed on a board, from its committed build's manifest."""
    #: The board, a key of :data:`~sparsemac.hw.boards.BOARDS`.
    name: str
    #: The memory model feeding the core (its cycles are the memory-bound ones).
    memory: str
    #: The clock the core runs at.
    clock_mhz: float
    #: nextpnr's Fmax of the build.
    fmax_mhz: float
    #: The UART's rate.
    baud: int
    #: The sparse run's time.
    sparse: BoardEstimate
    #: The dense run's time.
    dense: BoardEstimate


@dataclass
class SimulationReport:
    """Everything ``sparsemac simulate`` measured; :meth:`as_json` is its ``--json`` output."""
    #: The model's name: ``minilm``, ``bert-base`` or the checkpoint's directory.
    model: str
    #: Qualified name of the linear.
    layer: str
    #: Output rows of the layer.
    rows: int
    #: Input columns of the layer.
    cols: int
    #: Tokens run: the sentence's, or as many as asked.
    tokens: int
    #: The array's fields (:meth:`ArrayConfig.as_dict <sparsemac.hw.config.ArrayConfig.as_dict>`).
    config: dict[str, int]
    #: The back end both runs used.
    backend: str
    #: Seeds random pruning, bert-base's weights and the calibration split.
    seed: int
    #: The pruning method, in its canonical text.
    method: str
    #: The sparsity asked for; None for N:M pruning, whose pattern fixes it.
    target_sparsity: float | None
    #: Fraction of zero int8 weights achieved.
    sparsity: float
    #: Jobs each run took, one per :class:`~sparsemac.sw.cycle_model.JobTile`.
    jobs: int
    #: Device cycles of the sparse (CSR or delta) run.
    sparse_cycles: int
    #: Device cycles of the dense baseline run.
    dense_cycles: int
    #: Dense over sparse cycles.
    speedup: float
    #: ``1 / (1 - sparsity)``; None for an all-zero matrix.
    ideal_speedup: float | None
    #: Speedup over ideal speedup; None with it.
    efficiency: float | None
    #: Weight bytes the sparse run streamed.
    weight_bytes_sparse: int
    #: Weight bytes the dense run streamed.
    weight_bytes_dense: int
    #: The sparse run's int32 sums equal the golden model's.
    bit_exact_sparse: bool
    #: The dense run's int32 sums equal the golden model's.
    bit_exact_dense: bool
    #: The cycle model's count for the sparse run.
    predicted_sparse_cycles: int
    #: The cycle model's count for the dense run.
    predicted_dense_cycles: int
    #: Largest absolute error of the layer's output against the float layer as given.
    max_abs_error: float
    #: ``||error|| / ||output||`` against the float layer as given.
    relative_error: float
    #: Relative error against the float layer pruned the same way: the int8 quantisation's own.
    quantisation_relative_error: float
    #: Host wall time in the device, both runs.
    device_s: float
    #: Simulated cycles of both runs per second of `device_s`.
    sim_cycles_per_s: float
    #: Wall time of the whole simulation, model loading included.
    wall_s: float
    #: The FST waveform written, or None.
    fst: str | None
    #: The estimated wall time on a board from its committed build's manifest, or None without
    #: ``board``.
    board: BoardTimes | None = None
    #: The layer's cycles and energy under the memory model.
    memory: MemoryReport | None = None
    #: The model's feed-forward activation (``str(ActivationSpec)``).
    activation: str = "none"
    #: Measured fraction of exactly-zero int8 activations sent to the layer.
    activation_sparsity: float = 0.0

    @property
    def joint_ideal_speedup(self):
        """``1 / ((1 - s_w)(1 - s_a))``, weight and activation zeros both skipped; None for an
        all-zero matrix or input."""
        nonzero = (1.0 - self.sparsity) * (1.0 - self.activation_sparsity)
        return 1.0 / nonzero if nonzero else None

    @property
    def bit_exact(self):
        return self.bit_exact_sparse and self.bit_exact_dense

    @property
    def cycle_model_match(self):
        return (self.sparse_cycles == self.predicted_sparse_cycles
                and self.dense_cycles == self.predicted_dense_cycles)

    @property
    def passed(self):
        return self.bit_exact and self.cycle_model_match

    def as_json(self):
        result = asdict(self)
        result.update(bit_exact=self.bit_exact, cycle_model_match=self.cycle_model_match,
                      joint_ideal_speedup=self.joint_ideal_speedup,
                      memory=None if self.memory is None else self.memory.as_json())
        return result

    def csv_rows(self):
        """The report as one flat row (the config as its key, the board estimate's totals)."""
        row = {name: value for name, value in self.as_json().items()
               if name not in ("config", "board", "memory")}
        row["config"] = ArrayConfig(**self.config).key()
        if self.board is not None:
            row.update(board=self.board.name,
                       board_sparse_total_s=self.board.sparse.total_s,
                       board_dense_total_s=self.board.dense.total_s)
        if self.memory is not None:
            row.update(memory=self.memory.memory.name,
                       memory_sparse_energy_pj=self.memory.sparse.energy.total_pj,
                       memory_dense_energy_pj=self.memory.dense.energy.total_pj)
        return [row]

    def sections(self):
        """The human report as ``(title, header, rows)`` tables; later sections (a board
        estimate, say) are appended to this list."""
        yes = {True: "yes", False: "NO"}
        ideal = "-" if self.ideal_speedup is None else f"{self.ideal_speedup:.2f}x"
        joint = self.joint_ideal_speedup
        joint = "-" if joint is None else f"{joint:.2f}x"
        efficiency = "-" if self.efficiency is None else f"{self.efficiency:.1%}"
        config = ArrayConfig(**self.config)
        return [
            ("Job", None, [
                ["model", self.model],
                ["layer", self.layer],
                ["shape", f"{self.rows} x {self.cols} (out x in), {self.tokens} tokens, "
                          f"{self.jobs} job(s) per mode"],
                ["config", f"{config.key()}: {config.describe()}"],
                ["backend", self.backend],
                ["seed", str(self.seed)],
                ["pruning", f"{self.method}, "
                            + ("" if self.target_sparsity is None
                               else f"target {self.target_sparsity:.1%}, ")
                            + f"achieved {self.sparsity:.2%}"],
                ["activation", f"{self.activation}: {self.activation_sparsity:.2%} of the int8 "
                               "activations sent are zero (measured)"],
            ]),
            ("Sparse against dense, same device", ["", "sparse", "dense"], [
                ["cycles", f"{self.sparse_cycles:,}", f"{self.dense_cycles:,}"],
                ["cycle model", f"{self.predicted_sparse_cycles:,}",
                 f"{self.predicted_dense_cycles:,}"],
                ["cycles = model", yes[self.sparse_cycles == self.predicted_sparse_cycles],
                 yes[self.dense_cycles == self.predicted_dense_cycles]],
                ["weight bytes streamed", f"{self.weight_bytes_sparse:,}",
                 f"{self.weight_bytes_dense:,}"],
                ["int32 = golden model", yes[self.bit_exact_sparse], yes[self.bit_exact_dense]],
            ]),
            ("Summary", None, [
                ["speedup", f"{self.speedup:.2f}x"],
                ["ideal 1/(1-s)", ideal],
                ["ideal 1/((1-s_w)(1-s_a))", f"{joint} (weight and activation zeros skipped)"],
                ["efficiency", efficiency],
                ["bit-exact", yes[self.bit_exact]],
                ["max abs error", f"{self.max_abs_error:.4g} (vs the float layer as given)"],
                ["relative error", f"{self.relative_error:.2%} (vs the float layer as given)"],
                ["int8 error alone", f"{self.quantisation_relative_error:.2%} (relative, vs the "
                                     "float layer pruned the same way)"],
                ["device time", f"{self.device_s:.3f} s"],
                ["simulated cycles/s", f"{self.sim_cycles_per_s:,.0f}"],
                ["wall time", f"{self.wall_s:.1f} s"],
                *([["waveform", self.fst]] if self.fst else []),
            ]),
            *self._board_sections(),
            *([] if self.memory is None else self.memory.sections()),
        ]

    def _board_sections(self):
        if self.board is None:
            return []
        board, sparse, dense = self.board, self.board.sparse, self.board.dense
        title = (f"Estimated on the {board.name} (core at {board.clock_mhz:g} MHz, "
                 f"Fmax {board.fmax_mhz:g} MHz, fed by memory {board.memory}; UART "
                 f"{board.baud:,} baud)")
        return [(title, ["", "sparse", "dense"], [
            ["compute (cycles / clock)", f"{sparse.compute_s * 1e3:.3f} ms",
             f"{dense.compute_s * 1e3:.3f} ms"],
            ["link (bytes x 10 / baud)", f"{sparse.link_s * 1e3:.1f} ms",
             f"{dense.link_s * 1e3:.1f} ms"],
            ["total, at most", f"{sparse.total_s * 1e3:.1f} ms",
             f"{dense.total_s * 1e3:.1f} ms"],
        ])]


def estimate_fst_bytes(cycles, config):
    """The estimated size of an FST waveform of ``cycles`` clock cycles of ``config``'s core.

    The default array's measured rate (:data:`FST_BYTES_PER_CYCLE`), scaled with the number of
    multipliers K x T, which the traced signals grow with.
    """
    return int(cycles * FST_BYTES_PER_CYCLE * config.multipliers / DEFAULT_CONFIG.multipliers)


def _check_options(backend, port, fst, fst_limit, memory):
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if not isinstance(memory, MemoryModel):
        raise TypeError(f"memory must be a MemoryModel, not {memory!r}")
    if backend == "fpga" and not memory.ideal:
        raise InputError(f"memory {memory.name} needs a simulated backend: the board's streams "
                         "run at its link's own rate")
    check_port(backend, port)
    if fst is not None:
        if backend != "verilator":
            raise InputError("--fst needs --backend verilator")
        check_output_path(fst, "waveform")
        if fst_limit <= 0:
            raise InputError(f"the FST size limit must be positive, not {fst_limit!r}")


def simulate_layer(model=DEFAULT_MODEL, layer=DEFAULT_LAYER, *, sparsity=None,
                   method="magnitude", tokens=None, backend="verilator", config=DEFAULT_CONFIG,
                   seed=0, fst=None, fst_limit=DEFAULT_FST_LIMIT, port=None, board=None,
                   memory=PRESETS["ideal"], energy_table=None, index=ColumnIndex.CSR,
                   calibration=None, activation=None):
    """Runs one pruned layer sparse and dense on a device and checks both runs.

    Parameters
    ----------
    model : str
        ``minilm``, ``bert-base`` or a local checkpoint folder (see
        :func:`~sparsemac.sw.models.load_model`).
    layer : str
        Qualified name of the linear.
    sparsity : float or None
        Fraction of weights to prune; None for :data:`DEFAULT_SPARSITY`, or for the ``1 - N/M``
        of an N:M method, whose pattern fixes it (another value is refused).
    method : str or PruningMethod
        ``magnitude``, ``random``, an explicit ``N:M`` such as ``2:4``, or a calibrated method
        (``wanda``, ``sparsegpt``, ``sparsegpt-2:4``, ``wanda-k-aligned``: see
        :func:`~sparsemac.sw.methods.parse_method`), which prunes the layer on its inputs
        for the calibration text, K-aligned to ``config.lanes``.
    tokens : int or None
        Repeat the sentence to exactly this many tokens.
    backend : str
        A back end of :func:`~sparsemac.devices.open_device`.
    config : ArrayConfig
    seed : int
        Seeds random pruning and bert-base's weights.
    fst : str or Path or None
        Write an FST waveform of both runs here (``verilator`` only).
    fst_limit : int
        The largest estimated waveform, in bytes, that is written; a larger one is refused
        before the run.
    port : str or None
        The board's serial port (``fpga`` only).
    board : str or None
        Add the estimated wall time on this board, from its committed bitstream.
    memory : MemoryModel
        Feed the device's input streams at this model's rates (:mod:`sparsemac.sw.memory`);
        the report's ``memory`` holds the layer's cycles and energy under it.
    energy_table : str or Path or None
        Per-event energies as JSON; None for the default table
        (:func:`~sparsemac.sw.energy.load_energy_table`).
    calibration : str or Path or None
        Calibration text of a calibrated method: a UTF-8 file, one text a line; None for the
        built-in task's calibration split (seeded by `seed`, disjoint from its evaluation text).
        Only with a calibrated method.
    index : ColumnIndex
        How the sparse jobs send their column indices; DELTA needs a config with the delta
        decoder (``ArrayConfig.delta_bits``).
    activation : ActivationSpec or str or None
        Replace the model's feed-forward GELU
        (:func:`~sparsemac.sw.ffn_activation.sparsify_activations`; ``relu@S`` calibrates on
        the calibration text), so that an ``output.dense`` layer receives sparse activations;
        refused for any other layer, whose input it does not change. None: as the model
        carries it (a ``sparsemac prune`` checkpoint may).

    Returns
    -------
    SimulationReport

    Raises
    ------
    ValueError, FileNotFoundError
        If an option, the model, layer, config or token count is wrong, or the calibration file
        is missing, empty or not UTF-8; every option and file is checked before the model is
        loaded or a device opened. An activation that the model's checkpoint contradicts, or
        given for a layer it does not feed, is refused once the model is loaded, before any
        device is opened.
    DeviceError
        If the device cannot be built or fails.
    """
    started = time.perf_counter()
    check_config(config)
    _check_options(backend, port, fst, fst_limit, memory)
    method, texts = method_calibration(method, calibration, seed=seed)
    structured = method.fixes_sparsity
    if structured and sparsity is not None:  # 0.6 with 2:4: refused before any work
        check_pattern(sparsity, method.pattern, config.lanes)
    elif sparsity is None and not structured:
        sparsity = DEFAULT_SPARSITY
    check_index(config, index)
    if activation is not None:
        activation = parse_activation(activation)
    activation_texts = activation_calibration(activation, texts, seed)
    table = load_energy_table(energy_table)
    # transformers takes seconds to import: only a run pays for it, not `sparsemac --help`,
    # whose `simulate` options read this module's defaults.
    from ...sw.ffn_activation import (feed_forward_consumers, model_activation,
                                  sparsify_activations)
    from ...sw.models import capture_linear_input, get_linear, load_model
    progress(f"loading {model} (seed {seed})")
    loaded = load_model(model, seed=seed)
    linear = get_linear(loaded.model, layer)
    if activation is not None:
        consumers = feed_forward_consumers(loaded.model)
        if activation.sparse and layer not in consumers:
            raise InputError(f"--activation {activation} changes the inputs of the "
                             f"feed-forward output linears only ({consumers[0]} ...), not of "
                             f"{layer}: simulate one of them, or leave the option out")
        sparsify_activations(loaded.model, activation, tokenizer=loaded.tokenizer,
                             calibration=activation_texts)
    inputs = capture_linear_input(loaded, layer, tokens=tokens)
    with torch.no_grad():
        float_output = linear(inputs)  # before a calibrated method changes the weights
    mask, target = prune_layer(loaded, layer, method, sparsity, texts=texts, lanes=config.lanes,
                               seed=seed)
    weight = linear.weight.detach().float()
    throttled = None if memory.ideal else memory
    reference = ReferenceDevice(config, memory=throttled)
    predicted = OffloadedLinear.from_linear(linear, reference, mask=mask)
    activations = quantise_activations(inputs, predicted.granularity).values
    weights = predicted.weights
    predicted_sparse = reference.matmul(weights, activations, Mode.SPARSE, index)
    predicted_dense = reference.matmul(weights, activations, Mode.DENSE)
    # The memory model's figures, and an onchip layer's fit, before any device work.
    with phase(f"cycle and energy model under memory {memory.name}"):
        memory_figures = memory_report(weights, inputs.shape[0], config, memory, table=table,
                                       layer=layer, index=index)
    if fst is not None:
        estimate = estimate_fst_bytes(predicted_sparse.cycles + predicted_dense.cycles, config)
        if estimate > fst_limit:
            raise InputError(f"the waveform of {predicted_sparse.cycles + predicted_dense.cycles:,}"
                             f" cycles would be about {estimate / 1e9:.2f} GB, over the "
                             f"{fst_limit / 1e9:.2f} GB limit: raise it with --fst-limit, or use "
                             "fewer --tokens or a smaller layer")
        progress(f"waveform estimate: {estimate / 1e6:,.0f} MB")

    options = {"fst_path": fst} if fst is not None else {}
    if port is not None:
        options["port"] = port
    if throttled is not None:
        options["memory"] = throttled
    progress(f"opening the {backend} device ({config.describe()})")
    with open_device(backend, config, **options) as device:
        offloaded = OffloadedLinear.from_linear(linear, device, mask=mask)
        offloaded.index = ColumnIndex(index)
        with phase(f"sparse run: {weights.nnz:,} nonzeros x {inputs.shape[0]} tokens"):
            with torch.no_grad():
                output = offloaded(inputs)
        with phase("dense baseline run"):
            dense = device.matmul(weights, activations, Mode.DENSE)
    sparse = offloaded.stats
    golden = golden_matmul(weights, activations)
    with torch.no_grad():
        error = approximation_error(float_output, output)
        # Against the pruned float layer, what is left is the int8 quantisation's own error.
        quantisation = approximation_error(
            torch.nn.functional.linear(inputs, weight * mask, linear.bias), output)

    board_figures = None if board is None else _board_estimate(
        board, config, memory, sparse.cycles, dense.cycles,
        sparse.weight_bytes + dense.activation_bytes + dense.output_bytes,
        dense.weight_bytes + dense.activation_bytes + dense.output_bytes)

    achieved = weights.sparsity
    ideal = 1.0 / (1.0 - achieved) if achieved < 1.0 else None
    speedup = dense.cycles / sparse.cycles
    device_s = sparse.device_s + dense.wall_s
    return SimulationReport(
        model=loaded.name, layer=layer, rows=weights.rows, cols=weights.cols,
        tokens=inputs.shape[0], config=config.as_dict(), backend=backend, seed=seed,
        method=method.text, target_sparsity=None if structured else target,
        sparsity=achieved, jobs=sparse.jobs,
        sparse_cycles=sparse.cycles, dense_cycles=dense.cycles, speedup=speedup,
        ideal_speedup=ideal, efficiency=None if ideal is None else speedup / ideal,
        weight_bytes_sparse=sparse.weight_bytes, weight_bytes_dense=dense.weight_bytes,
        bit_exact_sparse=bool(torch.equal(offloaded.last_sums, golden)),
        bit_exact_dense=bool(torch.equal(dense.sums, golden)),
        predicted_sparse_cycles=predicted_sparse.cycles,
        predicted_dense_cycles=predicted_dense.cycles,
        max_abs_error=error.max_abs, relative_error=error.relative,
        quantisation_relative_error=quantisation.relative, device_s=device_s,
        sim_cycles_per_s=(sparse.cycles + dense.cycles) / device_s if device_s else 0.0,
        wall_s=time.perf_counter() - started, fst=None if fst is None else str(fst),
        board=board_figures, memory=memory_figures,
        activation=model_activation(loaded.model).spec,
        activation_sparsity=float((activations == 0).sum()) / activations.numel())


def prune_layer(loaded, layer, method, sparsity, *, texts=None, lanes=DEFAULT_CONFIG.lanes,
                seed=None):
    """The keep-mask of one linear of a loaded model, by any pruning method.

    Parameters
    ----------
    loaded : LoadedModel
        A calibrated method prunes (and, SparseGPT, updates) the linear in place, on what it
        receives for `texts`; the other methods leave the model as it is.
    layer : str
        Qualified name of the linear.
    method : PruningMethod
    sparsity : float or None
        As :func:`~sparsemac.sw.pruning.choose_masks`.
    texts : list of str, optional
        The calibration text of a calibrated method (required there).
    lanes : int
        The array's K, for ``k-aligned``.
    seed : int or None
        For random pruning.

    Returns
    -------
    mask : torch.Tensor
        Bool keep-mask of the linear's weight.
    target : float or None
        The sparsity aimed at.

    Raises
    ------
    ValueError
        If the sparsity does not suit the method, or a calibrated method has no tokenizer.
    """
    linear = loaded.model.get_submodule(layer)
    if not method.calibrated:
        [mask], target = choose_masks([linear.weight.detach().float()], sparsity, method,
                                      seed=seed)
        return mask, target
    if loaded.tokenizer is None:
        raise InputError(f"{method.kind} needs a tokenizer for its calibration text, and "
                         f"{loaded.name} has none")
    with phase(f"{method.kind} on {len(texts)} calibration texts"):
        report = prune_calibrated(loaded.model, loaded.tokenizer, method.kind, sparsity,
                                  texts, pattern=method.pattern, lanes=lanes,
                                  patterns=(f"^{re.escape(layer)}$",))
    return report.masks[layer], report.sparsity_target


def _board_estimate(board, config, memory, sparse_cycles, dense_cycles, sparse_bytes,
                    dense_bytes):
    """The board's estimated wall time for both runs, from its committed build's manifest.

    The cycles are the device's under ``memory``, so the compute time is the memory-bound one.
    """
    from ...bitstreams.build import board_estimate, committed_folder, read_manifest

    manifest = read_manifest(committed_folder(board))
    built = ArrayConfig(**manifest["config"])
    if built != config:
        raise InputError(f"the committed {board} bitstream is built for {built.describe()}, "
                         f"not {config.describe()}: pass --config {built.key()} (or no "
                         "--config), or build one for this config with `sparsemac build`")
    sparse = board_estimate(sparse_cycles, sparse_bytes, manifest)
    dense = board_estimate(dense_cycles, dense_bytes, manifest)
    return BoardTimes(name=board, memory=memory.name, clock_mhz=sparse.clock_mhz,
                      fmax_mhz=sparse.fmax_mhz, baud=sparse.baud, sparse=sparse, dense=dense)


