"""The fidelity table: model variants (int8 granularities, SmoothQuant, one-shot methods at
several sparsities, N:M and K-aligned patterns) each built from a fresh model and scored on the
built-in task's quick check (:func:`fidelity_table`). docs/results.md's "Fidelity on the task"
figures come from it.
"""

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ...sw.task import (DEFAULT_SPLIT_SIZES, SplitSizes, TaskReport, embed_splits,
                        evaluate_embeddings, load_labelled, model_embedder, task_splits)

__all__ = ["DEFAULT_FIDELITY_POINTS", "FidelityPoint", "FidelityRow", "fidelity_table"]


@dataclass(frozen=True)
class FidelityPoint:
    """One model variant of :func:`fidelity_table`."""

    #: ``"float"`` (no pruning), ``"magnitude"`` (per layer, as
    #: :func:`~sparsemac.sw.pruning.prune_model`) or a calibrated method of
    #: :data:`~sparsemac.sw.calibration.PRUNERS`.
    method: str = "float"
    #: None with an N:M pattern.
    sparsity: float | None = 0.0
    #: ``"2:4"``-style, or ``"k-aligned"`` (calibrated methods only), or None.
    pattern: str | None = None
    #: None: float weights. Otherwise int8 (:class:`~sparsemac.sw.quantisation.Int8Linear`) with
    #: this activation granularity, after pruning.
    granularity: str | None = None
    #: SmoothQuant migration strength for int8, from the calibration split; None: none.
    alpha: float | None = None


#: The points of docs/results.md's "Fidelity on the task".
DEFAULT_FIDELITY_POINTS = (
    FidelityPoint(),
    *(FidelityPoint(granularity=granularity, alpha=alpha)
      for granularity in ("tensor", "token") for alpha in (None, 0.5)),
    *(FidelityPoint(method, sparsity) for method in ("magnitude", "wanda", "sparsegpt")
      for sparsity in (0.5, 0.7, 0.8, 0.9)),
    *(FidelityPoint(method, None, "2:4") for method in ("magnitude", "wanda", "sparsegpt")),
    *(FidelityPoint(method, sparsity, "k-aligned") for method in ("wanda", "sparsegpt")
      for sparsity in (0.5, 0.9)),
)


@dataclass
class FidelityRow:
    """One measured point of :func:`fidelity_table`."""

    #: The variant measured.
    point: FidelityPoint
    #: Achieved, over the pruned linears.
    sparsity: float
    #: Its figures on the task, against the float model.
    report: TaskReport
    #: Seconds of pruning and quantisation.
    prune_seconds: float
    #: Seconds of embedding and probing.
    evaluate_seconds: float

    def as_json(self) -> dict:
        """JSON-ready."""
        from dataclasses import asdict

        return asdict(self)


def fidelity_table(points: Iterable[FidelityPoint] = DEFAULT_FIDELITY_POINTS, *,
                   model: str = "minilm", seed: int = 0, sizes: SplitSizes = DEFAULT_SPLIT_SIZES,
                   lanes: int = 8, progress: Callable[[FidelityRow], None] | None = None
                   ) -> list[FidelityRow]:
    """Build each point's model from a fresh copy and score it on the built-in task.

    Calibrated pruning and the migration factors use the calibration split; the probe and the
    figures use the train and test splits, against the float, unpruned model.

    Parameters
    ----------
    points : iterable of FidelityPoint
    model : str
        A spec of :func:`~sparsemac.sw.models.load_model`.
    seed : int
        Of the splits (and of nothing else: every method is deterministic).
    sizes : SplitSizes
    lanes : int
        The array's K for ``"k-aligned"``.
    progress : callable, optional
        Called with each row as soon as it is measured.

    Returns
    -------
    list of FidelityRow
    """
    from ...sw.calibration import PRUNERS, activation_absmax, prune_calibrated
    from ...sw.models import load_model
    from ...sw.pruning import DEFAULT_BERT_PATTERNS, matching_linears, prune_model
    from ...sw.quantisation import quantise_model, smoothing_scales

    splits = task_splits(load_labelled(), seed=seed, sizes=sizes)
    dense_model = load_model(model)
    dense = embed_splits(model_embedder(dense_model.model, dense_model.tokenizer), splits)
    rows = []
    for point in points:
        started = time.perf_counter()
        loaded = load_model(model)
        if point.method in PRUNERS:
            prune_calibrated(loaded.model, loaded.tokenizer, point.method, point.sparsity,
                             splits.calibration.texts, pattern=point.pattern, lanes=lanes)
        elif point.method != "float":
            prune_model(loaded.model, point.sparsity, point.pattern or point.method, seed=seed)
        weights = [linear.weight for _, linear in matching_linears(loaded.model)]
        achieved = (sum(int((weight == 0).sum()) for weight in weights)
                    / sum(weight.numel() for weight in weights))
        if point.granularity is not None:
            smoothing = None
            if point.alpha is not None:
                maxima = activation_absmax(loaded.model, loaded.tokenizer,
                                           splits.calibration.texts)
                smoothing = {name: smoothing_scales(maximum,
                                                    loaded.model.get_submodule(name).weight,
                                                    point.alpha)
                             for name, maximum in maxima.items()}
            quantise_model(loaded.model, DEFAULT_BERT_PATTERNS, granularity=point.granularity,
                           smoothing=smoothing)
        prepared = time.perf_counter()
        report = evaluate_embeddings(dense, model_embedder(loaded.model, loaded.tokenizer),
                                     splits)
        rows.append(FidelityRow(point=point, sparsity=achieved, report=report,
                                prune_seconds=prepared - started,
                                evaluate_seconds=time.perf_counter() - prepared))
        if progress is not None:
            progress(rows[-1])
    return rows
