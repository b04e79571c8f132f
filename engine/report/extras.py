"""What the HTML page shows beyond the rate tables: the heat map's cells, distributions, traffic, replies.

:func:`engine.report.build.build_report` calls these with ``extras=True`` on the frames it already
holds (the per-task flags, the per-cell counts), so the page costs no second read of the log. Each
result is small whatever the log's size: a cell per cluster and model, a bin per model and measure,
and at most :data:`ReplyLimits` rows of replies.

Usage::

    cluster_cells(cells, "object", ["5x", "10x"])   # model, cluster, n, errors, error_rate
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from engine.report.model import Replies, Traffic
from engine.report.tables import sorted_by_model

__all__ = ["REPLY_FIELDS", "ReplyLimits", "cluster_cells", "histogram_query", "replies_sample", "traffic_of", "traffic_query"]

REPLY_FIELDS = ("qid", "expected", "extracted", "reply", "error", "attempts", "http")
"""Record fields read in addition to the report's own when the page's replies and traffic are wanted."""

HISTOGRAM_BINS = 24
_REPLY_CHARS = 160  # a reply is a short answer; a runaway one is cut so 8,000 rows stay a few MB


@dataclass(frozen=True, kw_only=True, slots=True)
class ReplyLimits:
    """How many replies the page lists: the errors and failures up to ``errors``, a sample of ``rest``."""

    errors: int = 4_000
    rest: int = 4_000  # a run of a few thousand tasks lists every reply
    seed: int = 0


def cluster_cells(cells: pl.DataFrame, cluster: str, models: Sequence[str]) -> pl.DataFrame:
    """Error rate per cluster (object, or question id) and model: the heat map's cells.

    Usage: ``cluster_cells(cells, "object", models)``
    """
    per = (
        cells.group_by("model", cluster)
        .agg(pl.col("n").sum(), pl.col("errors").sum(), pl.col("failed").sum())
        .rename({cluster: "cluster"})
        .with_columns(pl.col("cluster").cast(pl.String).fill_null("(none)"))
        .with_columns(error_rate=pl.when(pl.col("n") > 0).then(pl.col("errors") / pl.col("n")))
    )
    return sorted_by_model(per, ["model", "cluster"], models)


def histogram_query(flags: pl.LazyFrame) -> pl.LazyFrame:
    """Latency (ms) and completion tokens of answered tasks, binned alike for every model.

    The bins run from 0 to the 99th percentile of all models; the last bin holds the tail.
    Usage: ``histogram_query(flags).collect()  # measure, model, lo, hi, count``
    """
    answered = flags.filter(pl.col("n"))
    parts = []
    for measure, column, whole in (("latency (ms)", "latency_ms", False), ("completion tokens", "completion_tokens", True)):
        x = pl.col(column).cast(pl.Float64)
        top = x.quantile(0.99).over(pl.lit(1))
        width = (top / HISTOGRAM_BINS).ceil().clip(1, None) if whole else (top / HISTOGRAM_BINS).clip(1e-9, None)
        index = (x / width).floor().clip(0, HISTOGRAM_BINS - 1)
        parts.append(
            answered.filter(x.is_not_null())
            .select(pl.col("model").cast(pl.String), lo=index * width, hi=(index + 1) * width)
            .group_by("model", "lo", "hi").agg(count=pl.len().cast(pl.Int64))
            .select(pl.lit(measure).alias("measure"), "model", "lo", "hi", "count")
        )  # fmt: skip
    return pl.concat(parts).sort("measure", "model", "lo")


def traffic_query(flags: pl.LazyFrame) -> pl.LazyFrame:
    """Requests (attempts), retries, 429 answers and tokens over the report's tasks.

    Usage: ``traffic_of(traffic_query(flags).collect())``
    """
    attempts = pl.col("attempts").fill_null(1).clip(1, None)
    tokens = pl.col("prompt_tokens").filter(pl.col("n")).sum() + pl.col("completion_tokens").filter(pl.col("n")).sum()
    return flags.select(
        requests=attempts.sum().cast(pl.Int64),
        retries=(attempts - 1).sum().cast(pl.Int64),
        rate_limited=pl.col("http").list.count_matches(429).sum().cast(pl.Int64),
        tokens=pl.when(pl.col("prompt_tokens").count() > 0).then(tokens).cast(pl.Int64),
    )


def traffic_of(row: pl.DataFrame) -> Traffic:
    """The one-row result of :func:`traffic_query` as a :class:`Traffic`. Usage: ``traffic_of(df).requests``"""
    r = row.row(0, named=True)
    return Traffic(requests=r["requests"] or 0, retries=r["retries"] or 0, rate_limited=r["rate_limited"] or 0,
                   tokens=r["tokens"])  # fmt: skip


def replies_sample(flags: pl.LazyFrame, has_difficulty: bool, limits: ReplyLimits) -> Replies:
    """Every wrong, unanswered and failed task (up to ``limits.errors``) and a seeded sample of the rest.

    Usage: ``replies_sample(flags, True, ReplyLimits()).note``
    """
    outcome = (pl.when(pl.col("failed")).then(pl.lit("failed"))
               .otherwise(pl.col("outcome").cast(pl.String).fill_null(pl.col("status").cast(pl.String))))  # fmt: skip
    text = pl.when(pl.col("failed")).then(pl.col("error")).otherwise(pl.col("reply")).fill_null("")
    rows = flags.select(
        pl.col("_row"), pl.col("model").cast(pl.String),
        (pl.col("difficulty").cast(pl.String) if has_difficulty else pl.lit(None, pl.String)).alias("difficulty"),
        pl.col("temperature"), outcome.alias("outcome"), pl.col("qid").cast(pl.String),
        pl.col("expected").cast(pl.String), pl.col("extracted").cast(pl.String),
        pl.when(text.str.len_chars() > _REPLY_CHARS).then(text.str.slice(0, _REPLY_CHARS) + "…").otherwise(text)
        .alias("reply"),
    ).collect()  # fmt: skip
    total = rows.height
    bad = rows.filter(pl.col("outcome") != "correct")
    good = rows.filter(pl.col("outcome") == "correct")
    bad_kept = bad if bad.height <= limits.errors else bad.sample(limits.errors, seed=limits.seed)
    good_kept = good if good.height <= limits.rest else good.sample(limits.rest, seed=limits.seed)
    kept = pl.concat([bad_kept, good_kept]).sort("_row").drop("_row")
    if kept.height == total:
        note = f"All {total:,} replies."
    else:
        errors = (f"all {bad.height:,} wrong, unanswered or failed" if bad_kept.height == bad.height
                  else f"a random {bad_kept.height:,} of the {bad.height:,} wrong, unanswered or failed")  # fmt: skip
        note = (f"{kept.height:,} of {total:,} replies: {errors}, and a random {good_kept.height:,} of the "
                f"{good.height:,} correct ones (seed {limits.seed}). The rates above count every reply.")  # fmt: skip
    return Replies(rows=kept, total=total, note=note)
