"""The report's tables: rate tables with both intervals, paired model comparisons, model order.

:mod:`engine.report.build` makes the per-cell counts and calls
these; each takes the cells (one row per group and cluster, with the counts of
:data:`RATE_SUMS`) and returns a small DataFrame.

Usage::

    rate_table(cells, ["model"], "object", models, seed=0, reps=2000, confidence=0.95)
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import polars as pl

from engine.report import stats

__all__ = ["RATE_SUMS", "comparisons", "model_order", "rate_table", "sorted_by_model"]

_DIFFICULTY_ORDER = {"easy": 0, "mid": 1, "medium": 1, "hard": 2}
RATE_SUMS = ("n", "errors", "wrong", "no_answer", "failed")
"""The counts every cell carries; a rate table sums them per group."""


_NUMBER_X = re.compile(r"(\d+(?:\.\d+)?)\s*x\b", re.IGNORECASE)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def model_order(labels_in_log_order: Sequence[str]) -> list[str]:
    """Models ordered by the number in their label (``5x`` before ``10x``), else by first appearance.

    A number written as ``<n>x`` wins over any other number in the label, and once any label
    has one, labels without one (a control such as ``smollm2``) count as unnumbered; labels
    without a number follow those with one.
    Usage: ``model_order(["50x", "5x", "base"])  # ['5x', '50x', 'base']``
    """
    by_examples = any(_NUMBER_X.search(label) for label in labels_in_log_order)

    def number(label: str) -> float:
        plain = None if by_examples else (_NUMBER.findall(label) or [None])[-1]
        found = _NUMBER_X.search(label) or plain
        if found is None:
            return math.inf
        return float(found.group(1) if isinstance(found, re.Match) else found)

    first = {label: i for i, label in reversed(list(enumerate(labels_in_log_order)))}
    return sorted(first, key=lambda label: (number(label), first[label]))


def sorted_by_model(df: pl.DataFrame, keys: Sequence[str], models: Sequence[str]) -> pl.DataFrame:
    """``df`` sorted by ``keys``: models in ``models`` order, difficulties easy to hard, the rest by value.

    Usage: ``sorted_by_model(table, ["model", "difficulty"], ["5x", "10x"])``
    """
    if df.is_empty() or not keys:
        return df
    rank = {m: i for i, m in enumerate(models)}
    order: list[pl.Expr] = []
    for key in keys:
        col = pl.col(key)
        if key == "model":
            order.append(col.replace_strict(rank, default=len(rank), return_dtype=pl.Int64))
        elif key == "difficulty":
            order.append(col.replace_strict(_DIFFICULTY_ORDER, default=9, return_dtype=pl.Int64))
        order.append(col)
    return df.sort(order, nulls_last=True)


def rate_table(
    cells: pl.DataFrame, keys: Sequence[str], cluster: str | None, models: Sequence[str],
    *, seed: int, reps: int, confidence: float,
) -> pl.DataFrame:  # fmt: skip
    """One row per group of ``keys``: the summed counts, the error rate, Wilson and cluster-bootstrap intervals.

    Usage: ``rate_table(cells, ["model"], "object", models, seed=0, reps=2000, confidence=0.95)``
    """
    keys = list(keys)
    sums = [pl.col(c).sum() for c in RATE_SUMS]
    groups = cells.group_by(keys).agg(sums) if keys else cells.select(sums)
    groups = sorted_by_model(groups, keys, models)
    lo_w, hi_w = stats.wilson_interval(groups["errors"].to_numpy(), groups["n"].to_numpy(), confidence=confidence)
    boot_lo = np.full(groups.height, np.nan)
    boot_hi = np.full(groups.height, np.nan)
    n_clusters = np.zeros(groups.height, dtype=np.int64)
    if cluster is not None:
        # Groups with the same clusters (every model met the same objects) share one draw.
        shared: dict[tuple[object, ...], list[tuple[int, list[int], list[int]]]] = {}
        row_of = {row: i for i, row in enumerate(zip(*(groups.get_column(k).to_list() for k in keys), strict=True))}
        for group, names, errors, n in _clusters_per_group(cells, keys, cluster).iter_rows():
            i = row_of[tuple(group.values())] if keys else 0
            shared.setdefault(tuple(names), []).append((i, errors, n))
            n_clusters[i] = len(names)
        for names, members in shared.items():
            at = [i for i, _, _ in members]
            boot_lo[at], boot_hi[at] = stats.cluster_bootstrap_intervals(
                np.array([e for _, e, _ in members], dtype=np.float64).T,
                np.array([k for _, _, k in members], dtype=np.float64).T,
                reps=reps, seed=seed, key=(tuple(keys), cluster, names), confidence=confidence,
            )  # fmt: skip
    rate = pl.when(pl.col("n") > 0).then(pl.col("errors") / pl.col("n"))
    return groups.select(
        *keys, "n", "errors", rate.alias("error_rate"), "wrong", "no_answer", "failed",
        wilson_lo=pl.Series(lo_w, dtype=pl.Float64, nan_to_null=True),
        wilson_hi=pl.Series(hi_w, dtype=pl.Float64, nan_to_null=True),
        boot_lo=pl.Series(boot_lo, dtype=pl.Float64, nan_to_null=True),
        boot_hi=pl.Series(boot_hi, dtype=pl.Float64, nan_to_null=True),
        clusters=pl.Series(n_clusters, dtype=pl.Int64),
    )  # fmt: skip


def _clusters_per_group(cells: pl.DataFrame, keys: Sequence[str], cluster: str) -> pl.DataFrame:
    """One row per group that has answers: (its key values as a struct, its clusters, their errors, their answers).

    One query for every group, so a table of many groups costs what one does. The clusters are
    sorted, so the same seed draws the same clusters whatever order the log came in.
    """
    group = pl.struct(keys).alias("_group") if keys else pl.lit(0).alias("_group")
    return (
        cells.lazy()
        .filter(pl.col("n") > 0)
        .group_by([*keys, cluster]).agg(pl.col("errors").sum(), pl.col("n").sum())
        .sort([*keys, cluster], nulls_last=True)
        .group_by(group, maintain_order=True).agg(pl.col(cluster), pl.col("errors"), pl.col("n"))
        .collect()
    )  # fmt: skip


def comparisons(
    cells: pl.DataFrame, cluster: str, models: Sequence[str], *, seed: int, reps: int, confidence: float
) -> pl.DataFrame:
    """Every pair of models: both rates, their difference and its paired cluster-bootstrap interval.

    Usage: ``comparisons(cells, "object", ["5x", "10x"], seed=0, reps=2000, confidence=0.95)``
    """
    per = cells.group_by("model", cluster).agg(pl.col("errors").sum(), pl.col("n").sum())
    names = per.get_column(cluster).cast(pl.String).fill_null("").unique().sort().to_list()
    col_of = {m: i for i, m in enumerate(models)}
    row_of = {c: i for i, c in enumerate(names)}
    errors = np.zeros((len(names), len(models)))
    n = np.zeros((len(names), len(models)))
    for model, name, e, k in per.select("model", pl.col(cluster).cast(pl.String).fill_null(""), "errors", "n").iter_rows():
        errors[row_of[name], col_of[model]] = e
        n[row_of[name], col_of[model]] = k
    rows = []
    if len(models) >= 2:
        for i, j, diff, lo, hi in stats.pairwise_differences(errors, n, reps=reps, seed=seed, confidence=confidence):
            rate_i, rate_j = (errors[:, x].sum() / n[:, x].sum() if n[:, x].sum() else math.nan for x in (i, j))
            differs = None if math.isnan(lo) else bool(lo > 0 or hi < 0)
            rows.append((models[i], models[j], rate_i, rate_j, diff, lo, hi, differs))
    schema = {
        "model_a": pl.String, "model_b": pl.String, "rate_a": pl.Float64, "rate_b": pl.Float64,
        "diff": pl.Float64, "diff_lo": pl.Float64, "diff_hi": pl.Float64, "differs": pl.Boolean,
    }  # fmt: skip
    return pl.DataFrame(rows, schema=schema, orient="row").with_columns(pl.col(pl.Float64).fill_nan(None))
