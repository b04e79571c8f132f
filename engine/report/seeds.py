"""Training-seed spread: models trained alike but for the seed, grouped, with intervals that count both noises.

A model label ``NAME-sK`` (``5x-s0``, ``5x-s1``, ...) is seed ``K`` of group ``NAME``. For each
group the table gives the mean of its seeds' error rates, the seeds' own rates (their spread is
the training noise), and a 95% interval from a two-level bootstrap: each replicate draws the
objects with replacement (one draw shared by every model, since all are asked about the same
objects) and the group's seeds with replacement, and takes the mean over the drawn seeds of
each seed's error rate over the drawn objects. So the interval widens with evaluation noise
(which objects) and with training noise (which seeds). Group comparisons draw the seeds of each
group on their own and the objects once for both (paired by object), and call a difference
"differs" when its interval excludes 0. With three seeds the seed level has only ten distinct
draws: the interval is honest about the spread it saw, not about seeds it never saw.

Usage::

    table = seed_groups(cells, cluster="object", seed=0, reps=2000, confidence=0.95)
    table.filter(pl.col("group") == "5x")   # group, seeds, mean_rate, seed_rates, lo, hi
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl
from numpy.typing import NDArray

from engine.report.stats import derive_rng, percentile_interval, resample_counts

__all__ = ["SEED_LABEL", "group_of", "seed_comparisons", "seed_groups"]

_GROUP_SCHEMA: dict[str, Any] = {
    "group": pl.String, "seeds": pl.Int64, "mean_rate": pl.Float64, "min_rate": pl.Float64, "max_rate": pl.Float64,
    "sd_rate": pl.Float64, "seed_rates": pl.List(pl.Float64), "lo": pl.Float64, "hi": pl.Float64,
}  # fmt: skip
_COMPARISON_SCHEMA: dict[str, Any] = {
    "a": pl.String, "b": pl.String, "rate_a": pl.Float64, "rate_b": pl.Float64, "diff": pl.Float64,
    "lo": pl.Float64, "hi": pl.Float64, "differs": pl.Boolean,
}  # fmt: skip

SEED_LABEL = re.compile(r"^(?P<group>.+)-s(?P<seed>\d+)$")
"""A model label that names a training seed: ``GROUP-sK``."""


def group_of(label: str) -> str:
    """The group of a model label (the label itself when it names no seed). Usage: ``group_of("5x-s2") == "5x"``"""
    match = SEED_LABEL.match(label)
    return match.group("group") if match else label


def _matrices(cells: pl.DataFrame, cluster: str) -> tuple[list[str], dict[str, tuple[list[str], NDArray[np.float64], NDArray[np.float64]]]]:
    """(objects, {group: (labels, errors[seed, object], n[seed, object])}) for groups with a seed label."""
    per = cells.group_by(["model", cluster]).agg(pl.col("n").sum(), pl.col("errors").sum())
    objects = sorted(str(o) for o in per.get_column(cluster).unique().to_list())
    column = {o: i for i, o in enumerate(objects)}
    labels = sorted({str(m) for m in per.get_column("model").to_list() if SEED_LABEL.match(str(m))},
                    key=lambda m: (group_of(m), int(SEED_LABEL.match(m).group("seed"))))  # type: ignore[union-attr]  # fmt: skip
    groups: dict[str, list[str]] = {}
    for label in labels:
        groups.setdefault(group_of(label), []).append(label)
    out = {}
    for group, members in groups.items():
        errors = np.zeros((len(members), len(objects)))
        n = np.zeros((len(members), len(objects)))
        row = {m: i for i, m in enumerate(members)}
        for model, obj, count, wrong in per.filter(pl.col("model").is_in(members)).iter_rows():
            n[row[str(model)], column[str(obj)]] += count
            errors[row[str(model)], column[str(obj)]] += wrong
        out[group] = (members, errors, n)
    return objects, out


def _replicates(errors: NDArray[np.float64], n: NDArray[np.float64], weights: NDArray[np.float64],
                rng: np.random.Generator) -> NDArray[np.float64]:
    """Mean over resampled seeds of each seed's rate under each replicate's object weights."""
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = (weights @ errors.T) / (weights @ n.T)  # [reps, seeds]
    k = errors.shape[0]
    picks = rng.integers(0, k, size=(weights.shape[0], k))
    return np.asarray(np.nanmean(np.take_along_axis(rates, picks, axis=1), axis=1), dtype=np.float64)


def seed_groups(cells: pl.DataFrame, *, cluster: str, seed: int, reps: int, confidence: float) -> pl.DataFrame:
    """One row per seed group: group, seeds, mean_rate, min_rate, max_rate, sd_rate, seed_rates, lo, hi.

    ``cells`` has at least ``model``, ``cluster``, ``n`` and ``errors``; empty when no label names a seed.
    Usage: ``seed_groups(cells, cluster="object", seed=0, reps=2000, confidence=0.95)``
    """
    objects, groups = _matrices(cells, cluster)
    if not groups:  # no resampling at all then (the objects' stream is its own: no other number moves)
        return pl.DataFrame(schema=_GROUP_SCHEMA)
    rows = []
    weights = resample_counts(derive_rng(seed, "seed-groups", "objects"), reps, len(objects))
    for group, (members, errors, n) in groups.items():
        with np.errstate(invalid="ignore", divide="ignore"):
            rates = errors.sum(axis=1) / n.sum(axis=1)
        lo, hi = percentile_interval(_replicates(errors, n, weights, derive_rng(seed, "seed-groups", group)), confidence)
        rows.append({
            "group": group, "seeds": len(members), "mean_rate": float(np.mean(rates)),
            "min_rate": float(np.min(rates)), "max_rate": float(np.max(rates)),
            "sd_rate": float(np.std(rates, ddof=1)) if len(members) > 1 else None,
            "seed_rates": [float(r) for r in rates], "lo": lo, "hi": hi,
        })  # fmt: skip
    return pl.DataFrame(rows, schema=_GROUP_SCHEMA)


def seed_comparisons(
    cells: pl.DataFrame, *, cluster: str, seed: int, reps: int, confidence: float, order: Sequence[str] = ()
) -> pl.DataFrame:
    """Every pair of seed groups: a, b, rate_a, rate_b, diff, lo, hi, differs (interval excludes 0).

    Usage: ``seed_comparisons(cells, cluster="object", seed=0, reps=2000, confidence=0.95)``
    """
    objects, groups = _matrices(cells, cluster)
    names = [g for g in dict.fromkeys(order) if g in groups] + [g for g in groups if g not in order]
    if not groups:
        return pl.DataFrame(schema=_COMPARISON_SCHEMA)
    weights = resample_counts(derive_rng(seed, "seed-groups", "objects"), reps, len(objects))
    draws = {g: _replicates(e, n, weights, derive_rng(seed, "seed-compare", g)) for g, (_, e, n) in groups.items()}
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            rate_a = float(np.mean(groups[a][1].sum(axis=1) / groups[a][2].sum(axis=1)))
            rate_b = float(np.mean(groups[b][1].sum(axis=1) / groups[b][2].sum(axis=1)))
            lo, hi = percentile_interval(draws[a] - draws[b], confidence)
            rows.append({"a": a, "b": b, "rate_a": rate_a, "rate_b": rate_b, "diff": rate_a - rate_b,
                         "lo": lo, "hi": hi, "differs": bool(lo > 0 or hi < 0)})  # fmt: skip
    return pl.DataFrame(rows, schema=_COMPARISON_SCHEMA)
