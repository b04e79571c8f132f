"""Confidence intervals for error rates: Wilson, and bootstraps that resample clusters.

An evaluation asks each object (fact) many times: several wordings, temperatures and
repeats. Those answers are not independent, because a model that does not know a fact
tends to miss it every time. The Wilson interval treats every answer as an independent
coin flip and so is too narrow when errors cluster; the cluster bootstrap resamples
whole clusters (objects) with replacement and keeps the dependence inside each one.

Everything here is vectorised with numpy and seeded: the same inputs and seed give the
same interval on every machine.

Usage::

    lo, hi = wilson_interval(110, 900)
    lo, hi = cluster_bootstrap_interval(errors_per_object, answers_per_object, seed=0)
    diff, lo, hi = paired_bootstrap_difference(err_a, n_a, err_b, n_b, seed=0)
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

# Loaded with this module, which a run imports while its requests are in flight, instead of at the
# report's first bootstrap (numpy.random) and first Series made from an array (Polars reads it with
# numpy.ma): together about 0.1 s at the end of a run otherwise.
import numpy.ma
import numpy.random
from numpy.typing import ArrayLike, NDArray

DEFAULT_REPS = 2000
DEFAULT_CONFIDENCE = 0.95

# Bounds the replicate x cluster block drawn at once to about 32 MB of float64.
_MAX_DRAW_CELLS = 4_000_000

__all__ = [
    "DEFAULT_CONFIDENCE",
    "DEFAULT_REPS",
    "bootstrap_rates",
    "cluster_bootstrap_interval",
    "cluster_bootstrap_intervals",
    "derive_rng",
    "paired_bootstrap_difference",
    "pairwise_differences",
    "percentile_interval",
    "percentile_intervals",
    "resample_counts",
    "wilson_interval",
]


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(
    errors: ArrayLike, n: ArrayLike, *, confidence: float = DEFAULT_CONFIDENCE
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Wilson score interval for ``errors / n``, elementwise; NaN where ``n`` is 0.

    Scalars give 0-d arrays (``float(lo)`` works). Usage:
    ``lo, hi = wilson_interval([110, 22], [900, 900])``
    """
    k = np.asarray(errors, dtype=np.float64)
    m = np.asarray(n, dtype=np.float64)
    z = _z(confidence)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / m
        denom = 1.0 + z * z / m
        centre = (p + z * z / (2.0 * m)) / denom
        half = z * np.sqrt(p * (1.0 - p) / m + z * z / (4.0 * m * m)) / denom
        lo = np.clip(centre - half, 0.0, 1.0)
        hi = np.clip(centre + half, 0.0, 1.0)
    # Exact ends where the formula only rounds to them (0 errors, or all errors).
    lo = np.where(k <= 0, 0.0, lo)
    hi = np.where(k >= m, 1.0, hi)
    empty = m <= 0
    return np.where(empty, np.nan, lo), np.where(empty, np.nan, hi)


def derive_rng(seed: int, *parts: object) -> np.random.Generator:
    """A generator seeded by ``seed`` and a stable hash of ``parts``.

    Each group gets its own stream, so adding or removing a group never changes the
    interval of another. Usage: ``rng = derive_rng(0, "5x", "easy")``
    """
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return np.random.default_rng([int(seed), int.from_bytes(digest, "little")])


def resample_counts(rng: np.random.Generator, reps: int, k: int) -> NDArray[np.float64]:
    """How often each of ``k`` clusters is drawn in each of ``reps`` resamples with replacement: shape ``(reps, k)``.

    Each row is one resample of ``k`` draws; a matrix product with per-cluster sums then resamples
    any number of series at once. Usage: ``counts = resample_counts(derive_rng(0), 2000, 50)``
    """
    idx = rng.integers(0, k, size=(reps, k), dtype=np.int64)
    idx += (np.arange(reps, dtype=np.int64) * k)[:, None]
    return np.bincount(idx.ravel(), minlength=reps * k).reshape(reps, k).astype(np.float64)


def bootstrap_rates(
    errors: ArrayLike, n: ArrayLike, *, reps: int = DEFAULT_REPS, rng: np.random.Generator
) -> NDArray[np.float64]:
    """Bootstrap replicates of pooled error rates, resampling clusters with replacement.

    ``errors`` and ``n`` are per-cluster sums, shape ``(clusters,)`` or
    ``(clusters, series)``; every series is resampled with the *same* clusters, which
    is what makes a paired comparison paired. Returns shape ``(reps,)`` or
    ``(reps, series)``; a replicate whose clusters hold no answers is NaN.
    Usage: ``rates = bootstrap_rates(e, n, reps=2000, rng=derive_rng(0))``
    """
    e = np.asarray(errors, dtype=np.float64)
    m = np.asarray(n, dtype=np.float64)
    if e.shape != m.shape or e.ndim not in (1, 2):
        raise ValueError("errors and n must have the same shape, (clusters,) or (clusters, series)")
    if reps < 1:
        raise ValueError(f"reps must be at least 1, got {reps}")
    flat = e.ndim == 1
    if flat:
        e, m = e[:, None], m[:, None]
    k = e.shape[0]
    out = np.full((reps, e.shape[1]), np.nan)
    if k == 0:
        return out[:, 0] if flat else out
    step = max(1, _MAX_DRAW_CELLS // k)
    for start in range(0, reps, step):
        rows = min(step, reps - start)
        # Each row of idx is one replicate: k clusters drawn with replacement. Turned into
        # counts per cluster, one matrix product then resamples every series at once.
        counts = resample_counts(rng, rows, k)
        e_star = counts @ e
        n_star = counts @ m
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start : start + rows] = np.where(n_star > 0, e_star / n_star, np.nan)
    return out[:, 0] if flat else out


def percentile_intervals(values: NDArray[np.float64], confidence: float) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The central ``confidence`` interval of each column of ``values``, NaNs left out; NaN where a column has none.

    Numbers equal to ``np.quantile(finite, [alpha, 1 - alpha])`` column by column (its default
    "linear" method, and its way of interpolating), computed for every column at once and without
    ``np.quantile``, whose first call imports ``numpy.ma`` (about 0.05 s at the end of a run).
    Usage: ``lo, hi = percentile_intervals(rates, 0.95)  # rates: (replicates, groups)``
    """
    v = np.asarray(values, dtype=np.float64)
    flat = v.ndim == 1
    if flat:
        v = v[:, None]
    finite = np.isfinite(v)
    count = finite.sum(axis=0)
    ordered = np.sort(np.where(finite, v, np.inf), axis=0)  # the finite values first, in order
    alpha = (1.0 - confidence) / 2.0
    columns = np.arange(v.shape[1])
    ends = []
    last = np.maximum(count - 1, 0)
    for q in np.array([alpha, 1.0 - alpha]):
        virtual = (count - 1) * q
        below = np.clip(np.floor(virtual).astype(np.int64), 0, last)
        above = np.clip(below + 1, 0, last)
        gamma = virtual - below
        a, b = ordered[below, columns], ordered[above, columns]
        with np.errstate(invalid="ignore"):
            diff = b - a
            # As numpy's lerp: from below for gamma < 0.5, from above otherwise (the same rounding).
            value = np.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)
        ends.append(np.where(count > 0, value, np.nan))
    lo, hi = ends
    return (lo[:1], hi[:1]) if flat else (lo, hi)


def percentile_interval(values: NDArray[np.float64], confidence: float) -> tuple[float, float]:
    """:func:`percentile_intervals` of one series. Usage: ``lo, hi = percentile_interval(diffs, 0.95)``"""
    lo, hi = percentile_intervals(values, confidence)
    return float(lo[0]), float(hi[0])


def cluster_bootstrap_interval(
    errors: ArrayLike,
    n: ArrayLike,
    *,
    reps: int = DEFAULT_REPS,
    seed: int = 0,
    key: Sequence[object] = (),
    confidence: float = DEFAULT_CONFIDENCE,
) -> tuple[float, float]:
    """Interval of the pooled error rate from a bootstrap resampling clusters, never narrower than Wilson's.

    ``errors[i]`` and ``n[i]`` are the errors and answers of cluster ``i`` (e.g. one
    object). ``key`` names the group so each group draws its own seeded stream. With
    fewer than two clusters the spread cannot be estimated: ``(nan, nan)``. See
    :func:`cluster_bootstrap_intervals` for why Wilson is the floor.
    Usage: ``lo, hi = cluster_bootstrap_interval([3, 0, 1], [18, 18, 18], seed=0)``
    """
    column = np.asarray(errors, dtype=np.float64)[:, None]
    lo, hi = cluster_bootstrap_intervals(
        column, np.asarray(n, dtype=np.float64)[:, None], reps=reps, seed=seed, key=key, confidence=confidence
    )
    return float(lo[0]), float(hi[0])


def cluster_bootstrap_intervals(
    errors: ArrayLike,
    n: ArrayLike,
    *,
    reps: int = DEFAULT_REPS,
    seed: int = 0,
    key: Sequence[object] = (),
    confidence: float = DEFAULT_CONFIDENCE,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Cluster-bootstrap intervals for several groups that share one set of clusters, in one pass.

    ``errors`` and ``n`` have shape ``(clusters, groups)``: e.g. the 50 objects of a
    model at each temperature. The groups are resampled with the same draws (each
    interval on its own is an ordinary cluster bootstrap), which costs one matrix
    product instead of a bootstrap per group. Each interval is the percentile interval
    widened to cover the Wilson interval of the same counts (see below), so it is never
    narrower than Wilson's. NaN with fewer than two clusters.
    Usage: ``lo, hi = cluster_bootstrap_intervals(E, N, seed=0, key=("by_temperature",))``
    """
    e = np.asarray(errors, dtype=np.float64)
    m = np.asarray(n, dtype=np.float64)
    if e.ndim != 2 or e.shape != m.shape:
        raise ValueError("errors and n must both have shape (clusters, groups)")
    if e.shape[0] < 2:
        return np.full(e.shape[1], np.nan), np.full(e.shape[1], np.nan)
    rates = bootstrap_rates(e, m, reps=reps, rng=derive_rng(seed, *key))
    lo, hi = percentile_intervals(rates, confidence)
    # The percentile bootstrap only sees variation it happens to resample. With no errors every
    # replicate is 0, so it claims 0.00-0.00 %; with one error in 50 objects the erring object is
    # drawn about Poisson(1) times, so its upper end (about 3/900) sits below even Wilson's (6.3/900),
    # which assumes independent answers. Repeated answers about one fact are positively correlated,
    # which can only widen the honest interval, never narrow it: so Wilson for the same counts is
    # the floor, and the interval reported is the smallest one holding both. Where errors cluster
    # (the case the bootstrap is for) it is the bootstrap's; at 0 or all errors it is Wilson's.
    w_lo, w_hi = wilson_interval(e.sum(axis=0), m.sum(axis=0), confidence=confidence)
    return np.minimum(lo, w_lo), np.maximum(hi, w_hi)


def paired_bootstrap_difference(
    errors_a: ArrayLike,
    n_a: ArrayLike,
    errors_b: ArrayLike,
    n_b: ArrayLike,
    *,
    reps: int = DEFAULT_REPS,
    seed: int = 0,
    key: Sequence[object] = (),
    confidence: float = DEFAULT_CONFIDENCE,
) -> tuple[float, float, float]:
    """Difference of error rates ``a - b`` with a paired cluster-bootstrap interval.

    Inputs are aligned per cluster (cluster ``i`` of ``a`` is cluster ``i`` of ``b``;
    use zeros where a model never met a cluster). Each replicate draws one set of
    clusters and uses it for both models, so what the clusters share (an object hard
    for every model) cancels out. Usage:
    ``diff, lo, hi = paired_bootstrap_difference(ea, na, eb, nb, seed=0)``
    """
    e = np.column_stack([np.asarray(errors_a, float), np.asarray(errors_b, float)])
    m = np.column_stack([np.asarray(n_a, float), np.asarray(n_b, float)])
    results = pairwise_differences(e, m, reps=reps, seed=seed, key=key, confidence=confidence)
    _, _, diff, lo, hi = results[0]
    return diff, lo, hi


def pairwise_differences(
    errors: ArrayLike,
    n: ArrayLike,
    *,
    reps: int = DEFAULT_REPS,
    seed: int = 0,
    key: Sequence[object] = (),
    confidence: float = DEFAULT_CONFIDENCE,
) -> list[tuple[int, int, float, float, float]]:
    """Every pairwise difference of error rates between series, from one paired bootstrap.

    ``errors`` and ``n`` have shape ``(clusters, series)``. Returns
    ``(i, j, rate_i - rate_j, lo, hi)`` for every ``i < j``; the interval is NaN with
    fewer than two clusters, and Newcombe's hybrid score interval where no replicate differed. Usage: ``for i, j, d, lo, hi in pairwise_differences(E, N): ...``
    """
    e = np.asarray(errors, dtype=np.float64)
    m = np.asarray(n, dtype=np.float64)
    if e.ndim != 2 or e.shape != m.shape:
        raise ValueError("errors and n must both have shape (clusters, series)")
    with np.errstate(invalid="ignore", divide="ignore"):
        point = e.sum(axis=0) / m.sum(axis=0)
    series = e.shape[1]
    rates = bootstrap_rates(e, m, reps=reps, rng=derive_rng(seed, "pairwise", *key)) if e.shape[0] >= 2 else None
    w_lo, w_hi = wilson_interval(e.sum(axis=0), m.sum(axis=0), confidence=confidence)
    out: list[tuple[int, int, float, float, float]] = []
    for i in range(series):
        for j in range(i + 1, series):
            d = float(point[i] - point[j])
            if rates is None:
                lo, hi = float("nan"), float("nan")
            else:
                lo, hi = percentile_interval(rates[:, i] - rates[:, j], confidence)
            if lo == hi:
                # No replicate differed: the two series agree on every cluster (e.g. both answered
                # all correctly). That shows no difference in this sample, not a difference known to
                # be exactly zero, so the interval is Newcombe's (from both Wilson intervals).
                lo = d - math.hypot(point[i] - w_lo[i], w_hi[j] - point[j])
                hi = d + math.hypot(w_hi[i] - point[i], point[j] - w_lo[j])
            out.append((i, j, d, float(lo), float(hi)))
    return out
