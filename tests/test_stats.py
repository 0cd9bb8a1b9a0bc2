"""Intervals and paired comparisons against cases worked out by hand."""

import numpy as np
import pytest

from sparsemac.sw.stats import (accuracy_estimate, compare_paired, mcnemar_exact,
                                paired_bootstrap, wilson_interval)


def test_wilson_seven_of_ten():
    # z = 1.959964: centre (0.7 + z^2/20) / (1 + z^2/10) = 0.644493, half-width
    # z sqrt(0.021 + z^2/400) / (1 + z^2/10) = 0.247716.
    interval = wilson_interval(7, 10)
    assert interval.low == pytest.approx(0.39678, abs=1e-5)
    assert interval.high == pytest.approx(0.89221, abs=1e-5)
    assert interval.level == 0.95


def test_wilson_at_the_edges_stays_in_range():
    # 0 of 10: [0, z^2 / (n + z^2)] = [0, 3.841459 / 13.841459].
    none = wilson_interval(0, 10)
    assert none.low == 0.0 and none.high == pytest.approx(0.277533, abs=1e-6)
    every = wilson_interval(10, 10)
    assert every.high == 1.0 and every.low == pytest.approx(1 - 0.277533, abs=1e-6)


def test_wilson_refuses_bad_counts():
    with pytest.raises(ValueError, match="0 <= successes <= n"):
        wilson_interval(11, 10)
    with pytest.raises(ValueError, match="level"):
        wilson_interval(1, 10, level=1.0)


def test_accuracy_estimate():
    estimate = accuracy_estimate([True] * 7 + [False] * 3)
    assert (estimate.correct, estimate.n, estimate.accuracy) == (7, 10, 0.7)
    assert estimate.interval == wilson_interval(7, 10)
    with pytest.raises(ValueError, match="non-empty"):
        accuracy_estimate([])


def test_mcnemar_exact_by_hand():
    # b = 1, c = 7: P(X <= 1) for X ~ Bin(8, 1/2) is 9/256, two-sided 18/256.
    assert mcnemar_exact(1, 7) == pytest.approx(18 / 256)
    assert mcnemar_exact(7, 1) == pytest.approx(18 / 256)
    # b = c = 3: 2 P(X <= 3) of Bin(6, 1/2) = 84/64, capped at 1.
    assert mcnemar_exact(3, 3) == 1.0
    assert mcnemar_exact(0, 0) == 1.0
    # b = 0, c = 5: 2 / 32.
    assert mcnemar_exact(0, 5) == pytest.approx(1 / 16)
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


def test_bootstrap_of_identical_models_is_zero():
    outcomes = np.array([True, False, True, True, False] * 20)
    interval = paired_bootstrap(outcomes, outcomes, seed=3, resamples=500)
    assert (interval.low, interval.high) == (0.0, 0.0)


def test_bootstrap_of_a_constant_difference_is_that_difference():
    # The candidate is wrong exactly where the baseline is right: every resample drops by 1.
    baseline = np.ones(50, dtype=bool)
    interval = paired_bootstrap(baseline, ~baseline, seed=0, resamples=200)
    assert (interval.low, interval.high) == (1.0, 1.0)


def test_bootstrap_is_seeded_and_brackets_the_drop():
    rng = np.random.default_rng(1)
    baseline = rng.random(400) < 0.7
    candidate = baseline.copy()
    candidate[:20] = ~candidate[:20]
    first = compare_paired(baseline, candidate, seed=5, resamples=2000)
    again = compare_paired(baseline, candidate, seed=5, resamples=2000)
    assert first == again
    assert first.drop_interval.low <= first.drop <= first.drop_interval.high
    assert first.n == 400 and first.seed == 5 and first.resamples == 2000
    assert first.baseline_only + first.candidate_only == 20
    assert first.drop == pytest.approx((first.baseline_only - first.candidate_only) / 400)
    assert first.mcnemar_p == mcnemar_exact(first.baseline_only, first.candidate_only)
    # 20 flips among 400 items: the interval's width is a few points, not more.
    assert 0.0 < first.drop_interval.high - first.drop_interval.low < 0.05


def test_within_reads_the_upper_end():
    baseline = np.ones(100, dtype=bool)
    candidate = baseline.copy()
    candidate[:1] = False  # a drop of exactly 1 point, every resample between 0 and a few
    comparison = compare_paired(baseline, candidate, seed=0, resamples=500)
    assert comparison.drop == pytest.approx(0.01)
    assert comparison.within(100 * comparison.drop_interval.high)
    assert not comparison.within(0.5)


def test_paired_outcomes_must_pair():
    with pytest.raises(ValueError, match="one length"):
        paired_bootstrap([True, False], [True], seed=0)
    with pytest.raises(ValueError, match="resamples"):
        paired_bootstrap([True], [True], seed=0, resamples=0)
