"""The :class:`Report`: what a built report holds, read by the renderers and the charts.

Built by :func:`engine.report.build.build_report`; a plain frozen dataclass of Polars tables, so
the renderers (:mod:`engine.report.render`, :mod:`engine.report.charts`) depend on it alone.

Usage: ``report.models  # one row per model: n, errors, error_rate, intervals``
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from engine.report.scope import ScopeSummary

GROUPABLE_FIELDS: tuple[str, ...] = (
    "model", "model_id", "target", "simulated", "qid", "question", "temperature", "repeat", "expected",
    "extracted", "outcome", "correct", "status", "error", "attempts",
)  # fmt: skip
"""Record fields a report may group by (``--by``); tag names are allowed too."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Traffic:
    """What the log says about the requests behind its tasks (attempts and HTTP statuses)."""

    requests: int  # every attempt, the retried ones included
    retries: int
    rate_limited: int  # HTTP 429 answers
    tokens: int | None  # prompt + completion tokens of answered tasks, None when the log has no counts


@dataclass(frozen=True, kw_only=True, slots=True)
class Replies:
    """A table of replies for the HTML page: every wrong and failed task (up to a cap) and a sample of the rest.

    ``rows`` has ``model, difficulty, temperature, outcome, qid, expected, extracted, reply`` (reply
    cut short, failures show their error). Usage: ``report.replies.note  # 'all 3,600 replies'``
    """

    rows: pl.DataFrame
    total: int  # tasks in the report
    note: str  # what the table holds, said on the page


@dataclass(frozen=True, kw_only=True, slots=True)
class Report:
    """Everything a report says, as Polars DataFrames plus a few totals.

    Rate tables (``overall``, ``by_difficulty``, ``by_temperature``,
    ``by_difficulty_temperature``, ``custom``) have their group columns followed by
    ``n, errors, error_rate, wrong, no_answer, failed, wilson_lo, wilson_hi,
    boot_lo, boot_hi, clusters``. Tables that need a tag the log lacks are None.
    ``targets`` has one row per model: ``model, target`` (ids joined by ", " when several
    answered it, null when unknown) and ``simulated`` (null when mixed or unknown).
    Usage: ``build_report("runs/x").overall.filter(pl.col("model") == "5x")``
    """

    source: Path
    lines: int
    distinct: int  # tasks in the whole log, one per key, in scope or not
    tasks: int
    answered: int
    failed: int
    unknown: tuple[tuple[str, int], ...]  # records neither answered nor failed, by what they say
    scope: ScopeSummary
    targets: pl.DataFrame
    cluster: str
    seed: int
    bootstrap: int
    confidence: float
    by: tuple[str, ...]
    span_s: float | None
    overall: pl.DataFrame
    by_difficulty: pl.DataFrame | None
    by_temperature: pl.DataFrame
    by_difficulty_temperature: pl.DataFrame | None
    custom: pl.DataFrame | None
    comparisons: pl.DataFrame
    latency: pl.DataFrame
    # What the HTML page adds (engine.report.extras); None when the report was built without them.
    by_cluster: pl.DataFrame | None = None  # model, cluster, n, errors, error_rate: the heat map's cells
    histograms: pl.DataFrame | None = None  # measure, model, lo, hi, count: latency and token distributions
    traffic: Traffic | None = None
    replies: Replies | None = None
    # Models labelled GROUP-sK (training seeds), grouped (engine.report.seeds); None when no label names a seed.
    seed_groups: pl.DataFrame | None = None
    seed_comparisons: pl.DataFrame | None = None
    # Tokens and cost per model at the run's spec prices (engine.report.cost); None when the spec gives no price.
    cost: pl.DataFrame | None = None

    @property
    def duplicates(self) -> int:
        """Records dropped because a later record had the same task key."""
        return self.lines - self.distinct

    @property
    def simulated_models(self) -> list[str]:
        """Models answered by engine's built-in simulation only. Usage: ``report.simulated_models``"""
        return [m for m, sim in self.targets.select("model", "simulated").iter_rows() if sim]

    def rate_tables(self) -> dict[str, pl.DataFrame]:
        """The rate tables that exist, by name. Usage: ``for name, df in report.rate_tables().items()``"""
        tables = {
            "overall": self.overall,
            "by_difficulty": self.by_difficulty,
            "by_temperature": self.by_temperature,
            "by_difficulty_temperature": self.by_difficulty_temperature,
            "custom": self.custom,
        }
        return {name: df for name, df in tables.items() if df is not None}
