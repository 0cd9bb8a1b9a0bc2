"""How far to trust an accuracy: intervals and paired comparisons on one test set.

Torch-free (numpy and the standard library), so reports and tests use it cheaply.

:func:`accuracy_estimate` gives an accuracy with its Wilson score interval.
:func:`compare_paired` compares two models scored on the same test items: the drop in accuracy
with a seeded paired-bootstrap interval (the items are resampled together, so what the two
models share cancels out), and McNemar's exact test on the items where they disagree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from ..hw.errors import InputError

__all__ = ["DEFAULT_LEVEL", "DEFAULT_RESAMPLES", "AccuracyEstimate", "Interval",
           "PairedComparison", "accuracy_estimate", "compare_paired", "mcnemar_exact",
           "paired_bootstrap", "wilson_interval"]

#: Coverage of every interval unless told otherwise.
DEFAULT_LEVEL = 0.95
#: Bootstrap resamples of :func:`paired_bootstrap`.
DEFAULT_RESAMPLES = 10000


@dataclass(frozen=True)
class Interval:
    """A two-sided confidence interval."""

    #: Its lower end, as a fraction (of items, or of accuracy).
    low: float
    #: Its upper end, likewise.
    high: float
    #: Its coverage, e.g. 0.95.
    level: float

    def points(self) -> str:
        """As percentage points, e.g. ``[68.12, 71.03]``."""
        return f"[{100 * self.low:.2f}, {100 * self.high:.2f}]"


@dataclass(frozen=True)
class AccuracyEstimate:
    """An accuracy on `n` test items."""

    #: Items right.
    correct: int
    #: Items in all.
    n: int
    #: Wilson score interval of the accuracy.
    interval: Interval

    @property
    def accuracy(self) -> float:
        return self.correct / self.n


@dataclass(frozen=True)
class PairedComparison:
    """A candidate against a baseline, both scored on the same `n` items."""

    #: Test items.
    n: int
    #: The baseline's accuracy with its interval.
    baseline: AccuracyEstimate
    #: The candidate's accuracy with its interval.
    candidate: AccuracyEstimate
    #: Items only the baseline gets right.
    baseline_only: int
    #: Items only the candidate gets right.
    candidate_only: int
    #: Paired-bootstrap interval of the drop (baseline minus candidate accuracy, a fraction).
    drop_interval: Interval
    #: Two-sided exact McNemar p-value of the two models being equally accurate.
    mcnemar_p: float
    #: Seed of the bootstrap.
    seed: int
    #: Its resample count.
    resamples: int

    @property
    def drop(self) -> float:
        """Baseline minus candidate accuracy, a fraction (positive: the candidate is worse)."""
        return (self.baseline_only - self.candidate_only) / self.n

    def within(self, points: float) -> bool:
        """Whether the upper end of the drop's interval is at most `points` percentage points."""
        return 100 * self.drop_interval.high <= points + 1e-9


def wilson_interval(successes: int, n: int, level: float = DEFAULT_LEVEL) -> Interval:
    """The Wilson score interval of a binomial proportion.

    Parameters
    ----------
    successes, n : int
        ``0 <= successes <= n``, ``n >= 1``.
    level : float
        Coverage, in (0, 1).

    Returns
    -------
    Interval
        Within [0, 1]; it does not collapse at 0 or `n` successes as the normal one does.

    Raises
    ------
    ValueError
        If the counts or the level are out of range.
    """
    _check_level(level)
    if not (isinstance(n, (int, np.integer)) and n >= 1 and 0 <= successes <= n):
        raise InputError(f"need 0 <= successes <= n and n >= 1, not {successes!r} of {n!r}")
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # At 0 or n successes the interval ends at 0 or 1 exactly; the float difference would not.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return Interval(low, high, level)


def accuracy_estimate(correct: Sequence[bool] | np.ndarray,
                      level: float = DEFAULT_LEVEL) -> AccuracyEstimate:
    """The accuracy of per-item outcomes, with its Wilson interval.

    Raises
    ------
    ValueError
        If there are no items.
    """
    correct = _outcomes(correct, "correct")
    hits = int(correct.sum())
    return AccuracyEstimate(hits, correct.size, wilson_interval(hits, correct.size, level))


def mcnemar_exact(baseline_only: int, candidate_only: int) -> float:
    """Two-sided exact McNemar p-value from the two discordant counts.

    Under the hypothesis of equal accuracy each discordant item is the baseline's with
    probability 1/2: the p-value is ``min(1, 2 P(X <= min(b, c)))`` for ``X ~ Binomial(b + c,
    1/2)``, and 1 when the models never disagree.

    Raises
    ------
    ValueError
        If a count is negative.
    """
    if min(baseline_only, candidate_only) < 0:
        raise InputError(f"counts must not be negative: {baseline_only!r}, {candidate_only!r}")
    total = baseline_only + candidate_only
    tail = sum(math.comb(total, k) for k in range(min(baseline_only, candidate_only) + 1))
    return min(1.0, 2 * tail / 2 ** total)


def paired_bootstrap(baseline_correct, candidate_correct, *, seed: int,
                     resamples: int = DEFAULT_RESAMPLES,
                     level: float = DEFAULT_LEVEL) -> Interval:
    """Percentile bootstrap interval of the accuracy drop of paired outcomes.

    Each resample draws `n` item indices with replacement (``numpy.random.default_rng(seed)``)
    and takes the baseline's minus the candidate's accuracy on them.

    Parameters
    ----------
    baseline_correct, candidate_correct : sequence of bool
        Per item, in the same item order, of the same length.
    seed : int
    resamples : int
    level : float

    Returns
    -------
    Interval
        Of the drop, as a fraction; the same seed gives the same interval.

    Raises
    ------
    ValueError
        If the outcomes are empty or of different lengths, or `resamples` is below 1.
    """
    _check_level(level)
    baseline = _outcomes(baseline_correct, "baseline_correct")
    candidate = _outcomes(candidate_correct, "candidate_correct")
    if baseline.size != candidate.size:
        raise InputError(f"paired outcomes need one length, not {baseline.size} and "
                         f"{candidate.size}")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise InputError(f"resamples must be a positive integer, not {resamples!r}")
    difference = baseline.astype(np.int64) - candidate.astype(np.int64)
    drops = np.empty(resamples)
    rng = np.random.default_rng(seed)
    # Chunks of resamples keep the index array small for test sets of thousands of items.
    chunk = max(1, 2 ** 22 // difference.size)
    for start in range(0, resamples, chunk):
        count = min(chunk, resamples - start)
        picks = rng.integers(0, difference.size, size=(count, difference.size))
        drops[start:start + count] = difference[picks].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(drops, [tail, 1 - tail])
    return Interval(float(low), float(high), level)


def compare_paired(baseline_correct, candidate_correct, *, seed: int = 0,
                   resamples: int = DEFAULT_RESAMPLES,
                   level: float = DEFAULT_LEVEL) -> PairedComparison:
    """Compare two models' per-item outcomes on the same test items.

    Parameters
    ----------
    baseline_correct, candidate_correct : sequence of bool
        Per item, in the same order.
    seed, resamples, level
        Of the bootstrap (:func:`paired_bootstrap`) and the intervals.

    Returns
    -------
    PairedComparison

    Raises
    ------
    ValueError
        As :func:`paired_bootstrap`.
    """
    interval = paired_bootstrap(baseline_correct, candidate_correct, seed=seed,
                                resamples=resamples, level=level)
    baseline = _outcomes(baseline_correct, "baseline_correct")
    candidate = _outcomes(candidate_correct, "candidate_correct")
    baseline_only = int((baseline & ~candidate).sum())
    candidate_only = int((candidate & ~baseline).sum())
    return PairedComparison(
        n=baseline.size, baseline=accuracy_estimate(baseline, level),
        candidate=accuracy_estimate(candidate, level), baseline_only=baseline_only,
        candidate_only=candidate_only, drop_interval=interval,
        mcnemar_p=mcnemar_exact(baseline_only, candidate_only), seed=seed,
        resamples=resamples)


def _outcomes(values, name):
    array = np.asarray(values)
    if array.ndim != 1 or array.size == 0:
        raise InputError(f"{name} must be a non-empty 1-D sequence of outcomes, not shape "
                         f"{array.shape}")
    return array.astype(bool)


def _check_level(level):
    if isinstance(level, bool) or not 0 < level < 1:
        raise InputError(f"level must be between 0 and 1, not {level!r}")
