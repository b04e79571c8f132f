"""Wilson and cluster-bootstrap intervals: known values, seeding, and what clustering does."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.report.stats import (
    bootstrap_rates,
    cluster_bootstrap_interval,
    cluster_bootstrap_intervals,
    derive_rng,
    paired_bootstrap_difference,
    pairwise_differences,
    percentile_intervals,
    wilson_interval,
)


def _wilson_by_hand(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize(("k", "n"), [(110, 900), (22, 900), (1, 10), (50, 100)])
def test_wilson_matches_the_formula(k: int, n: int) -> None:
    lo, hi = wilson_interval(k, n)
    want_lo, want_hi = _wilson_by_hand(k, n)
    assert float(lo) == pytest.approx(want_lo, abs=1e-12)
    assert float(hi) == pytest.approx(want_hi, abs=1e-12)
    assert float(lo) < k / n < float(hi)


def test_wilson_known_value_for_the_original_5x_model() -> None:
    lo, hi = wilson_interval(110, 900)
    assert (round(float(lo), 4), round(float(hi), 4)) == (0.1024, 0.1452)


def test_wilson_edges_and_vectorised() -> None:
    lo, hi = wilson_interval([0, 10, 0], [10, 10, 0])
    assert lo[0] == 0.0 and 0.2 < hi[0] < 0.35  # no errors still leaves room above zero
    assert hi[1] == 1.0 and 0.65 < lo[1] < 0.8
    assert math.isnan(lo[2]) and math.isnan(hi[2])  # nothing answered: no interval
    wide_lo, wide_hi = wilson_interval(5, 50, confidence=0.99)
    narrow_lo, narrow_hi = wilson_interval(5, 50, confidence=0.90)
    assert wide_lo < narrow_lo and wide_hi > narrow_hi


def test_wilson_rejects_a_silly_confidence() -> None:
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(1, 10, confidence=1.5)


def _clustered() -> tuple[np.ndarray, np.ndarray]:
    # 50 objects asked 18 times each; 5 objects are always wrong, the rest always right.
    errors = np.zeros(50)
    errors[:5] = 18
    return errors, np.full(50, 18.0)


def test_bootstrap_is_reproducible_and_seeded() -> None:
    errors, n = _clustered()
    a = cluster_bootstrap_interval(errors, n, seed=0, key=("5x",))
    b = cluster_bootstrap_interval(errors, n, seed=0, key=("5x",))
    c = cluster_bootstrap_interval(errors, n, seed=1, key=("5x",))
    d = cluster_bootstrap_interval(errors, n, seed=0, key=("10x",))
    assert a == b
    assert a != c and a != d


def test_bootstrap_is_wider_than_wilson_when_errors_cluster() -> None:
    errors, n = _clustered()
    rate = errors.sum() / n.sum()
    b_lo, b_hi = cluster_bootstrap_interval(errors, n, seed=0)
    w_lo, w_hi = wilson_interval(errors.sum(), n.sum())
    assert b_lo <= rate <= b_hi
    # 900 answers but really 50 independent objects: the honest interval is far wider.
    assert (b_hi - b_lo) > 2.5 * float(w_hi - w_lo)


def test_bootstrap_matches_wilson_roughly_when_answers_are_independent() -> None:
    rng = np.random.default_rng(3)
    outcomes = rng.random(2000) < 0.1  # one answer per cluster: clusters are answers
    b_lo, b_hi = cluster_bootstrap_interval(outcomes.astype(float), np.ones(2000), seed=0)
    w_lo, w_hi = wilson_interval(outcomes.sum(), 2000)
    assert b_lo == pytest.approx(float(w_lo), abs=0.006)
    assert b_hi == pytest.approx(float(w_hi), abs=0.006)


def test_bootstrap_needs_two_clusters() -> None:
    assert all(math.isnan(x) for x in cluster_bootstrap_interval([3], [10]))


def test_bootstrap_rates_shapes_chunking_and_empty_replicates() -> None:
    rates = bootstrap_rates(np.ones(3), np.full(3, 2.0), reps=50, rng=derive_rng(0))
    assert rates.shape == (50,) and np.allclose(rates, 0.5)
    # Many clusters force several draw blocks; every replicate is still a valid rate.
    k = 5000
    big = bootstrap_rates(np.ones(k), np.full(k, 4.0), reps=1000, rng=derive_rng(0))
    assert big.shape == (1000,) and np.allclose(big, 0.25)
    # A replicate drawing only clusters with no answers has no rate (NaN), not 0.
    sparse = bootstrap_rates(np.array([0.0, 1.0]), np.array([0.0, 1.0]), reps=400, rng=derive_rng(0))
    assert np.isnan(sparse).any() and np.nanmax(sparse) == 1.0
    two = bootstrap_rates(np.ones((4, 2)), np.full((4, 2), 2.0), reps=10, rng=derive_rng(0))
    assert two.shape == (10, 2)
    with pytest.raises(ValueError):
        bootstrap_rates(np.ones(3), np.ones(4), rng=derive_rng(0))


def test_two_series_that_agree_everywhere_get_newcombes_interval_not_zero_to_zero() -> None:
    errors, n = _clustered()
    diff, lo, hi = paired_bootstrap_difference(errors, n, errors, n, seed=0)
    # Paired, every replicate is 0: the sample shows no difference, which is not a difference known
    # to be 0. Newcombe's interval from the two Wilson intervals (symmetric here).
    w_lo, w_hi = (float(x) for x in wilson_interval(errors.sum(), n.sum()))
    p = errors.sum() / n.sum()
    assert diff == 0.0 and hi == pytest.approx(np.hypot(w_hi - p, p - w_lo)) and lo == pytest.approx(-hi)
    zero = np.zeros(50)
    both_perfect = paired_bootstrap_difference(zero, np.full(50, 18.0), zero, np.full(50, 18.0), seed=0)
    upper = float(wilson_interval(0, 900)[1])
    assert both_perfect == pytest.approx((0.0, -upper, upper))  # about -0.43 to +0.43 pp


def test_paired_difference_finds_a_real_gap_and_no_gap() -> None:
    errors_a, n = _clustered()
    errors_b = errors_a.copy()
    errors_b[5:20] = 9  # model b also misses half the time on 15 more objects
    diff, lo, hi = paired_bootstrap_difference(errors_a, n, errors_b, n, seed=0)
    assert diff == pytest.approx(-(15 * 9) / 900)
    assert lo <= diff <= hi < 0
    nearly = errors_a.copy()
    nearly[6] = 1
    _, lo2, hi2 = paired_bootstrap_difference(errors_a, n, nearly, n, seed=0)
    assert lo2 <= 0 <= hi2


def test_pairwise_differences_cover_every_pair() -> None:
    errors = np.array([[1, 0, 2], [0, 0, 3], [2, 1, 1]], dtype=float)
    n = np.full((3, 3), 10.0)
    pairs = pairwise_differences(errors, n, reps=200, seed=0)
    assert [(i, j) for i, j, *_ in pairs] == [(0, 1), (0, 2), (1, 2)]
    assert pairs[0][2] == pytest.approx(3 / 30 - 1 / 30)
    assert pairwise_differences(errors, n, reps=200, seed=0) == pairs


def _objects(errors_per_object: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """50 objects asked 18 times each (900 answers), with these errors on the first objects."""
    errors = np.zeros(50)
    errors[: len(errors_per_object)] = errors_per_object
    return errors, np.full(50, 18.0)


@pytest.mark.parametrize(
    ("case", "errors_per_object"),
    [("0/900", []), ("1/900", [1]), ("900/900", [18] * 50), ("2/900 on two objects", [1, 1]),
     ("90/900 clustered on 5 objects", [18] * 5), ("45/900 spread", [1] * 45)],
)
def test_bootstrap_interval_is_never_narrower_than_wilson_and_holds_the_estimate(
    case: str, errors_per_object: list[float]
) -> None:
    errors, n = _objects(errors_per_object)
    k, total = errors.sum(), n.sum()
    rate = k / total
    lo, hi = cluster_bootstrap_interval(errors, n, seed=0, key=(case,))
    w_lo, w_hi = (float(x) for x in wilson_interval(k, total))
    assert 0.0 <= lo <= rate <= hi <= 1.0, (lo, rate, hi)
    assert lo <= w_lo and hi >= w_hi, ((lo, hi), (w_lo, w_hi))  # never claims more certainty than Wilson
    assert hi - lo > 0.003  # never 0.00-0.00 %: 900 answers cannot pin a rate down to a point


def test_bootstrap_interval_at_the_edges_is_wilsons() -> None:
    # At 0 and at all errors every replicate is the same: the spread comes from Wilson alone.
    none_lo, none_hi = cluster_bootstrap_interval(*_objects([]), seed=0)
    assert none_lo == 0.0 and none_hi == pytest.approx(float(wilson_interval(0, 900)[1]))
    assert 0.003 < none_hi < 0.005  # "fewer than about 1 in 235", not "exactly none"
    all_lo, all_hi = cluster_bootstrap_interval(*_objects([18] * 50), seed=0)
    assert all_hi == 1.0 and all_lo == pytest.approx(float(wilson_interval(900, 900)[0]))
    one_hi = cluster_bootstrap_interval(*_objects([1]), seed=0)[1]
    assert one_hi == pytest.approx(float(wilson_interval(1, 900)[1]))  # the percentile end alone is ~3/900


def test_bootstrap_intervals_of_several_groups_are_each_floored_by_their_own_wilson() -> None:
    errors = np.zeros((50, 3))
    errors[:5, 1] = 18  # group 1 clustered; group 0 clean; group 2 one error
    errors[7, 2] = 1
    n = np.full((50, 3), 18.0)
    lo, hi = cluster_bootstrap_intervals(errors, n, seed=0)
    w_lo, w_hi = wilson_interval(errors.sum(axis=0), n.sum(axis=0))
    assert np.all(lo <= w_lo) and np.all(hi >= w_hi)
    assert hi[1] - lo[1] > 2.5 * float(w_hi[1] - w_lo[1])  # clustered: still the bootstrap's wider interval
    assert hi[0] > 0.0


def test_percentile_intervals_equal_numpy_quantile_per_column_with_nans_left_out() -> None:
    rng = np.random.default_rng(7)
    for trial in range(300):
        values = rng.random((int(rng.integers(1, 40)), int(rng.integers(1, 4))))
        if trial % 3 == 0:
            values = np.round(values * 5) / 5  # ties, as rates of few clusters have
        values[rng.random(values.shape) < rng.random() * 0.6] = np.nan
        confidence = float(rng.choice([0.5, 0.9, 0.95, 0.99]))
        lo, hi = percentile_intervals(values, confidence)
        alpha = (1 - confidence) / 2
        for c in range(values.shape[1]):
            finite = values[:, c][np.isfinite(values[:, c])]
            if finite.size == 0:
                assert np.isnan(lo[c]) and np.isnan(hi[c])
            else:  # exactly: the report's numbers must not move by a rounding
                assert (lo[c], hi[c]) == tuple(np.quantile(finite, [alpha, 1 - alpha]))
