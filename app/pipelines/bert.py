"""A whole BERT with its encoder linears pruned and offloaded to a device: :func:`measure_bert`.

Real sentences run through the model; the report gives the cycles saved per layer and what the
outputs lost against the model as given (a model pruned beforehand is its own baseline: its
zeros are kept, and :attr:`BertReport.sparsity_found` says how many there were).
``sparsemac bert`` prints the report; from Python::

    from sparsemac.app.pipelines.bert import measure_bert
    report = measure_bert(backend="reference", sparsity=0.5)
    print(report.speedup, report.embedding_cosine)
"""

import copy
import time
from dataclasses import asdict, dataclass

import torch

from ...devices import open_device
from ...hw.config import DEFAULT_CONFIG, check_config
from ...hw.formats import ColumnIndex
from . import activation_calibration, check_port, method_calibration
from ...sw.energy import load_energy_table
from ...sw.memory import PRESETS, MemoryModel
from ...sw.memory_report import ModelMemoryReport, memory_report
from ...sw.finetune import is_task_model, load_task_model, predict, score_predictions
from ...sw.model_offload import LayerFigures, cross_check, offload, run_on_host
from ...sw.packing import check_index
from ...sw.task import calibration_texts
from ...sw.models import (DEFAULT_SENTENCE, LoadedModel, load_model, ranking_agreement,
                      similarity_scores, tokenize)
from ...sw.progress import phase, progress, progress_bar
from ...sw.quantisation import DEFAULT_GRANULARITY
from ...hw.errors import InputError
from ...sw.stats import PairedComparison

__all__ = ["DEFAULT_SPARSITY", "BASELINE", "BertReport", "measure_bert", "mean_pooled"]

DEFAULT_SPARSITY = 0.9
#: What the fidelity figures compare with.
BASELINE = "the float model as given"


@dataclass
class BertReport:
    """Everything ``sparsemac bert`` measured; :meth:`as_json` is its ``--json`` output."""
    #: The model's name: ``minilm``, ``bert-base`` or the checkpoint's directory.
    model: str
    #: Where its weights came from.
    source: str
    #: The back end the model ran on.
    backend: str
    #: The pruning method, in its canonical text.
    method: str
    #: The sparsity asked for; None for an N:M method, whose pattern fixes it.
    sparsity: float | None
    #: Fraction of zero weights the model had before pruning.
    sparsity_found: float
    #: Fraction of zero int8 weights applied: found, pruned, or rounded to zero.
    achieved_sparsity: float
    #: ``"local"`` or ``"global"`` pruning.
    scope: str
    #: Seeds random pruning and bert-base's random weights.
    seed: int
    #: Tokens of the sentence run.
    tokens: int
    #: The array's fields (:meth:`ArrayConfig.as_dict <sparsemac.hw.config.ArrayConfig.as_dict>`).
    config: dict[str, int]
    #: Device cycles of every offloaded call, sparse.
    sparse_cycles: int
    #: Cycles of the same calls with dense weights (predicted, or measured when `dense_measured`).
    dense_cycles: int
    #: Cycles of the same calls skipping zero weights only, on the same array: equal to
    #: `sparse_cycles` unless layers ran dual-sparse (their figure from the exact cycle model).
    weight_only_cycles: int
    #: Dense over sparse cycles.
    speedup: float | None
    #: ``1 / (1 - achieved_sparsity)``.
    ideal_speedup: float | None
    #: Dense cycles were measured on the device rather than predicted.
    dense_measured: bool
    #: Bytes of one pass of every layer's weights in CSR mode.
    sparse_weight_bytes: int
    #: Bytes of one pass in dense mode.
    dense_weight_bytes: int
    #: The int32 sums equal the reference back end's; None on the reference back end itself (nothing
    #: to compare with).
    bit_exact: bool | None
    #: The cycle counts equal the reference back end's; None on the reference back end.
    cycles_equal: bool | None
    #: What the fidelity figures compare with: the float model as given.
    baseline: str
    #: Cosine of the offloaded model's sentence embedding with the baseline's.
    embedding_cosine: float
    #: Spearman correlation of the similarity rankings of the built-in sentence pairs with the
    #: baseline's; None for a model without a tokenizer, or bert-base's random weights (nothing to
    #: rank).
    ranking_agreement: float | None
    #: Host wall time spent in the device for the sparse runs.
    device_s: float
    #: Wall time of the whole measurement.
    wall_s: float
    #: One dict per offloaded linear (:meth:`LayerReport.as_json
    #: <sparsemac.sw.model_offload.LayerReport.as_json>`), with ``bit_exact`` and
    #: ``cycles_equal`` when cross-checked.
    layers: list[LayerFigures]
    #: One inference's cycles (compute-bound and memory-bound) and energy per layer under the memory
    #: model, from the exact throttled cycle model and the energy model.
    memory: ModelMemoryReport | None = None
    #: How the sparse jobs sent column indices: ``csr`` or ``delta``.
    index: str = "csr"
    #: For a task model: the offloaded model's accuracy on its held-out test split against the
    #: float model's on the same items (intervals, paired drop, McNemar); None otherwise.
    task: PairedComparison | None = None
    #: The feed-forward activation (``str(ActivationSpec)``).
    activation: str = "none"
    #: Measured fraction of exactly-zero int8 activations sent, over every layer.
    activation_sparsity: float | None = None
    #: ``1 / ((1 - s_w)(1 - s_a))`` of each layer, weighted by its share of the products.
    joint_ideal_speedup: float | None = None
    #: SmoothQuant's migration strength of the int8 linears; None: no migration.
    smoothing: float | None = None

    @property
    def passed(self):
        """False only when a cross-check found a difference."""
        return False not in (self.bit_exact, self.cycles_equal)

    def as_json(self):
        result = asdict(self)
        result["memory"] = None if self.memory is None else self.memory.as_json()
        return result

    def csv_rows(self):
        """One dict per offloaded linear."""
        return self.layers

    def sections(self):
        """The human report as ``(title, header, rows)`` tables."""
        checked = self.bit_exact is not None
        config = self.config
        title = (f"{self.model} on {self.backend} (K={config['lanes']} "
                 f"T={config['token_lanes']}), {self.method} pruning to "
                 f"{self.achieved_sparsity:.1%} ({self.scope}), activation {self.activation}, "
                 + ("no SmoothQuant" if self.smoothing is None
                    else f"SmoothQuant alpha {self.smoothing:g}")
                 + f", {self.tokens} tokens, seed {self.seed}")
        header = ["layer", "shape", "sparsity", "act. zeros", "sparse cyc", "dense cyc",
                  "speedup", "ideal", "ideal w+a", *(["exact"] if checked else [])]
        rows = [[layer["name"], "x".join(map(str, layer["shape"])), f"{layer['sparsity']:.3f}",
                 _fraction(layer["activation_sparsity"]), f"{layer['sparse_cycles']:,}",
                 f"{layer['dense_cycles']:,}", _times(layer["speedup"]),
                 _times(layer["ideal_speedup"]), _times(layer["joint_ideal_speedup"]),
                 *([("yes" if layer["bit_exact"] else "NO")] if checked else [])]
                for layer in self.layers]
        rows.append(["total", "", f"{self.achieved_sparsity:.3f}",
                     _fraction(self.activation_sparsity), f"{self.sparse_cycles:,}",
                     f"{self.dense_cycles:,}", _times(self.speedup), _times(self.ideal_speedup),
                     _times(self.joint_ideal_speedup), *([""] if checked else [])])
        baseline = "measured on the device" if self.dense_measured else "exact cycle model"
        summary = [
            ["sparsity", f"found {self.sparsity_found:.1%} in the model as given, target "
                         + ("-" if self.sparsity is None else f"{self.sparsity:.1%}")
                         + f", applied {self.achieved_sparsity:.1%}"],
            ["activation", f"{self.activation}: {_fraction(self.activation_sparsity)} of the "
                           "int8 activations sent were zero (measured); ideal w+a = "
                           "1/((1-s_w)(1-s_a))"],
            ["dense baseline", baseline],
            *([["dual-sparse", f"{sum(layer['dual'] for layer in self.layers)} layers skip "
                               f"zero activations too: {self.sparse_cycles:,} cycles against "
                               f"{self.weight_only_cycles:,} skipping zero weights only "
                               f"({_times(self.weight_only_cycles / self.sparse_cycles)}) and "
                               f"{self.dense_cycles:,} dense ({_times(self.speedup)}), same "
                               "array and calls"]]
              if self.weight_only_cycles != self.sparse_cycles else []),
            ["weight bytes", f"{self.sparse_weight_bytes:,} {self.index.upper()} vs "
                             f"{self.dense_weight_bytes:,} dense"],
            ["embedding cosine", f"{self.embedding_cosine:.4f} (against {BASELINE})"],
        ]
        if self.ranking_agreement is not None:
            summary.append(["similarity ranking", f"Spearman {self.ranking_agreement:.3f} "
                                                  f"(against {BASELINE})"])
        if self.task is not None:
            task = self.task
            summary += [
                ["task accuracy", f"{task.candidate.accuracy:.2%} "
                                  f"{task.candidate.interval.points()} offloaded, "
                                  f"{task.baseline.accuracy:.2%} "
                                  f"{task.baseline.interval.points()} float, on {task.n} "
                                  "held-out test texts (95 % intervals)"],
                ["accuracy drop", f"{100 * task.drop:+.2f} points, 95 % interval "
                                  f"{task.drop_interval.points()} (paired bootstrap, seed "
                                  f"{task.seed}, {task.resamples:,} resamples); McNemar exact "
                                  f"p {task.mcnemar_p:.3g} ({task.baseline_only} items only "
                                  f"float gets right, {task.candidate_only} only offloaded)"]]
        if checked:
            exact = sum(layer["bit_exact"] for layer in self.layers)
            same = sum(layer["cycles_equal"] for layer in self.layers)
            summary.append([f"{self.backend} vs reference",
                            f"int32 sums bit-exact on {exact}/{len(self.layers)} layers, cycles "
                            f"equal on {same}/{len(self.layers)}: "
                            + ("PASS" if self.passed else "FAIL")])
        summary.append(["wall time", f"{self.wall_s:.1f} s (device {self.device_s:.1f} s)"])
        # The summary last, where a terminal leaves it in view.
        return [(title, header, rows),
                *([] if self.memory is None else self.memory.sections()),
                ("Summary", None, summary)]


def _times(value):
    return "-" if value is None else f"{value:.2f}x"


def _fraction(value):
    return "-" if value is None else f"{value:.3f}"


def measure_bert(model="minilm", *, backend="verilator", sparsity=None, method="magnitude",
                 scope="local", granularity=DEFAULT_GRANULARITY, text=None, tokens=None, seed=0,
                 config=DEFAULT_CONFIG, verify=False, port=None, memory=PRESETS["ideal"],
                 energy_table=None, index=ColumnIndex.CSR, calibration=None, activation=None,
                 smoothing=None):
    """Offloads every encoder linear of a BERT to a device, runs a sentence, and measures.

    Parameters
    ----------
    model : str
        ``minilm``, ``bert-base`` or a local BERT checkpoint folder.
    backend : str
        A back end of :func:`~sparsemac.devices.open_device`; any other than ``reference`` is
        cross-checked bit for bit and cycle for cycle against ``reference``.
    sparsity : float or None
        Fraction of weights pruned (default :data:`DEFAULT_SPARSITY`; None for N:M methods,
        whose pattern fixes it).
    method, scope, granularity, seed
        As in :func:`~sparsemac.sw.model_offload.offload`; a calibrated method (``wanda``,
        ``sparsegpt``, ``sparsegpt-2:4`` ...) is run on each device's copy of the model, so
        with a cross-check it runs twice (deterministic: the same weights both times).
    text : str or None
        The sentence (default: the built-in 16-token sentence).
    tokens : int or None
        Exact sequence length: the text is repeated or cut to fill it.
    config : ArrayConfig
    verify : bool
        Measure the dense baseline on the device instead of predicting it.
    port : str or None
        The board's serial port (``fpga`` only).
    memory : MemoryModel
        The memory feeding the array: the report's ``memory`` gives each layer's cycles and
        energy under it for one inference of the sentence (the device itself runs with its own
        streams: ideal ones on the simulators).
    energy_table, calibration, index
        As in :func:`~sparsemac.app.pipelines.simulate.simulate_layer`.
    activation : ActivationSpec or str or None
        The feed-forward activation, as :func:`~sparsemac.sw.model_offload.offload` takes it
        (``relu@S`` calibrates on the calibration text); None: as the model carries it.
    smoothing : float or None
        SmoothQuant's migration strength (the ``bert`` command's default is
        :data:`~sparsemac.sw.quantisation.DEFAULT_SMOOTHING_ALPHA`), from the calibration text's
        activations (the calibrated method's text, else the built-in task's calibration split);
        None: no migration.

    Returns
    -------
    BertReport

    Raises
    ------
    ValueError, FileNotFoundError
        If an option, the model or the calibration file is wrong; options and the file are
        checked before anything is loaded.
    DeviceError
        If the device cannot be built or fails.
    """
    started = time.perf_counter()
    check_config(config)
    # A bad method or calibration file fails before any work.
    method, texts = method_calibration(method, calibration, seed=seed)
    structured = method.fixes_sparsity
    check_port(backend, port)
    if not isinstance(memory, MemoryModel):
        raise TypeError(f"memory must be a MemoryModel, not {memory!r}")
    check_index(config, index)
    if text is not None and not text.strip():
        raise InputError("--text is empty: give a sentence, or leave --text out for the "
                         "built-in one")
    activation_texts = activation_calibration(activation, texts, seed)
    # SmoothQuant's channel maxima come from calibration text whatever the method.
    texts = texts or activation_texts
    if smoothing is not None and texts is None:
        texts = calibration_texts(seed=seed)
    table = load_energy_table(energy_table)
    # Per-layer work here is small and elementwise (quantise, pack, check): one thread beats
    # two that wait on each other, by an order of magnitude when the machine is busy.
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    if sparsity is None and not structured:
        sparsity = DEFAULT_SPARSITY
    task = None
    with phase(f"loading {model} (seed {seed})"):
        if is_task_model(model):  # its encoder is offloaded inside the classifier
            task = load_task_model(model)
            loaded = LoadedModel(name=task.name, model=task.model.bert,
                                 tokenizer=task.tokenizer, source=task.source)
        else:
            loaded = load_model(model, seed=seed)
    inputs = tokenize(loaded, text or DEFAULT_SENTENCE, tokens)
    length = int(inputs["input_ids"].shape[1])
    float_embedding = mean_pooled(loaded.model, inputs)
    # A random BERT-base has nothing to rank; a trained model and its tokenizer do.
    rank = loaded.tokenizer is not None and loaded.name != "bert-base"
    float_scores = similarity_scores(loaded.model, loaded.tokenizer) if rank else None
    check = backend != "reference"
    reference_model = copy.deepcopy(loaded.model) if check else None
    if task is not None:
        test = task.task.splits().test
        with phase(f"float task model on {len(test)} held-out test texts"):
            baseline = predict(task.model, task.tokenizer, test.texts)

    if method.calibrated and loaded.tokenizer is None:
        raise InputError(f"{method} needs a tokenizer for its calibration text, and "
                         f"{loaded.name} has none")
    options = dict(seed=seed, granularity=granularity, scope=scope,
                   calibration=texts, tokenizer=loaded.tokenizer, index=index,
                   activation=activation, smoothing=smoothing)
    device_options = {} if port is None else {"port": port}
    progress(f"opening the {backend} device ({config.describe()})")
    with open_device(backend, config, **device_options) as device:
        offloaded, report = offload(loaded.model, device, sparsity, method, progress=True,
                                    measure_dense=verify, keep_sums=check, **options)
        # Before the sentence runs: an onchip layer that does not fit is refused here.
        with phase(f"cycle and energy model under memory {memory.name}"):
            memory_figures = ModelMemoryReport(tuple(
                memory_report(module.weights, length, config, memory, table=table,
                              layer=layer.name, index=index)
                for layer, module in zip(report.layers, report.modules)))
        sent = _DualInputs(report)
        try:
            embedding = mean_pooled(offloaded, inputs, report, f"{backend} run")
        finally:
            sent.close()
        if sent.inputs:  # a dual layer's cycles and energy follow its activations' zeros
            memory_figures = ModelMemoryReport(tuple(
                memory_report(module.weights, length, config, memory, table=table,
                              layer=layer.name, index=index,
                              activations=sent.inputs[layer.name])
                if layer.name in sent.inputs else figures
                for layer, module, figures in zip(report.layers, report.modules,
                                                  memory_figures.layers)))
    if report.sparsity_target is not None and report.sparsity_found > report.sparsity_target:
        progress(f"the model as given is already {report.sparsity_found:.1%} sparse, more than "
                 f"the {report.sparsity_target:.1%} asked: its zeros are kept")
    cosine = float(torch.nn.functional.cosine_similarity(embedding, float_embedding).mean())

    crosscheck = None
    if check:
        reference_model, reference = offload(reference_model, open_device("reference", config),
                                             sparsity, method, keep_sums=True,
                                             measure_dense=verify, **options)
        mean_pooled(reference_model, inputs, reference, "reference run")
        crosscheck = cross_check(reference, report)
        offloaded = reference_model  # bit-exact or not, the ranking runs on the reference
    # The figures of the one sentence, taken before the ranking sentences run through the
    # same offloaded layers (on the reference back end they would add to its counters).
    summary = report.as_json()
    agreement = None
    if rank:
        agreement = ranking_agreement(similarity_scores(offloaded, loaded.tokenizer),
                                      float_scores)

    paired = None
    if task is not None:
        with phase(f"offloaded task model on {len(test)} held-out test texts (host int8, "
                   "bit-exact with the device)"):
            run_on_host(loaded.model, report)
            paired = score_predictions(test.labels, predict(task.model, task.tokenizer,
                                                            test.texts),
                                       baseline, seed=seed).paired

    layers = summary.pop("layers")
    if crosscheck is not None:
        for layer in layers:
            layer["bit_exact"] = layer["name"] not in crosscheck.sums_mismatch
            layer["cycles_equal"] = layer["name"] not in crosscheck.cycles_mismatch
    return BertReport(
        model=loaded.name, source=loaded.source, backend=backend, method=method.text,
        sparsity=summary["sparsity_target"], sparsity_found=summary["sparsity_found"],
        achieved_sparsity=summary["sparsity"], scope=scope, seed=seed, tokens=length,
        config=summary["config"], sparse_cycles=summary["sparse_cycles"],
        weight_only_cycles=summary["weight_only_cycles"],
        dense_cycles=summary["dense_cycles"], speedup=summary["speedup"],
        ideal_speedup=summary["ideal_speedup"], dense_measured=summary["dense_measured"],
        sparse_weight_bytes=summary["sparse_weight_bytes"],
        dense_weight_bytes=summary["dense_weight_bytes"],
        bit_exact=None if crosscheck is None else crosscheck.bit_exact,
        cycles_equal=None if crosscheck is None else crosscheck.cycles_equal,
        baseline=BASELINE, embedding_cosine=cosine, ranking_agreement=agreement,
        device_s=summary["device_s"], wall_s=time.perf_counter() - started, layers=layers,
        memory=memory_figures, index=summary["index"], task=paired,
        activation=summary["activation"], activation_sparsity=summary["activation_sparsity"],
        joint_ideal_speedup=summary["joint_ideal_speedup"], smoothing=smoothing)


class _DualInputs:
    """The int8 activations each dual-sparse layer of ``report`` receives while it is open
    (``inputs``, by layer name, ``[tokens, cols]``); :meth:`close` stops recording."""

    def __init__(self, report):
        self.inputs = {}
        self._handles = [module.register_forward_hook(self._recorder(layer.name))
                         for layer, module in zip(report.layers, report.modules) if module.dual]

    def _recorder(self, name):
        def record(module, args, _output):
            self.inputs[name] = module.quantise_input(args[0]).values.reshape(
                -1, module.in_features)
        return record

    def close(self):
        for handle in self._handles:
            handle.remove()


def mean_pooled(model, inputs, report=None, desc=None):
    """The sentence embedding of ``inputs`` (mean pooling, L2 norm), with a per-layer progress
    bar when the model is offloaded (``report`` is its OffloadReport)."""
    bar, handles = None, []
    if report is not None:
        bar = progress_bar(len(report.modules), desc, "layer", leave=False)
        handles = [module.register_forward_hook(lambda *_: bar.update())
                   for module in report.modules]
    try:
        with torch.no_grad():
            hidden = model(**inputs).last_hidden_state
    finally:
        for handle in handles:
            handle.remove()
        if bar is not None:
            bar.close()
    mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=1)
