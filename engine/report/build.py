"""Building the report: error rates with honest intervals, model comparisons, latency and tokens.

A results log (``results.jsonl``, schema version 2 or 1) is read once by
:func:`engine.results.read.read_records` (bounded blocks, only the columns the report needs, an
unterminated last line left out), then deduplicated by task key (the last record wins,
so a resumed run counts each task once), scoped to the run directory's current grid
(:mod:`engine.report.scope`: records outside it are counted apart, ``all_records`` includes
them) and aggregated lazily with Polars. Memory follows the number of records and the
columns asked for, not the size of the replies.

Definitions used everywhere:

- ``n``: answered tasks (status ``ok`` with an outcome);
- ``errors``: answered tasks whose outcome is ``wrong`` or ``no_answer``;
- ``error_rate = errors / n``: errors over *all* answers, not over correct ones;
- ``failed``: infrastructure failures (status ``failed``), shown but never counted
  as model errors;
- any other record (a status engine does not write, or ``ok`` without an outcome) is
  neither: it is counted and named in the summary (``unknown``), never silently dropped.

Every model row says which target answered it (``targets``) and whether that was
engine's built-in simulation; a simulated report says so first.

Each rate carries a 95% Wilson interval (answers treated as independent) and a
cluster-bootstrap interval that resamples objects (tag ``object``; question ids when
there is none), which is the one to trust when errors cluster on a few facts.

The result is a :class:`engine.report.model.Report`; :mod:`engine.report.render` (terminal,
Markdown, JSON, CSV) and :mod:`engine.report.charts` draw it, :mod:`engine.report.write` saves it.

Usage::

    report = build_report("runs/memorisation", by=["model", "object"])
    render_terminal(report, rich.console.Console())
    paths = write_report("runs/memorisation")   # report.md + PNG charts
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from engine.errors import ReportError
from engine.report import stats
from engine.report.cost import COST_FIELDS, cost_query, cost_table, run_prices
from engine.report.extras import (
    REPLY_FIELDS,
    ReplyLimits,
    cluster_cells,
    histogram_query,
    replies_sample,
    traffic_of,
    traffic_query,
)
from engine.report.model import GROUPABLE_FIELDS, Report
from engine.report.scope import SCOPE_FIELDS, load_grid, split_scope
from engine.report.seeds import group_of, seed_comparisons, seed_groups
from engine.report.tables import RATE_SUMS, comparisons, model_order, rate_table, sorted_by_model
from engine.results.read import dedupe, load_raw, log_file, log_tags, tag_column
from engine.results.record import RECORD_SCHEMA

__all__ = ["build_report"]


def _resolve_by(by: str | Sequence[str] | None, tags: Sequence[str]) -> tuple[str, ...]:
    if by is None:
        return ()
    names = [b.strip() for b in (by.split(",") if isinstance(by, str) else by) if b.strip()]
    tag_cols = {tag_column(t) for t in tags}
    aliases = {f"tags.{t}": tag_column(t) for t in tags}
    out: list[str] = []
    for name in names:
        column = aliases.get(name, name)
        if column not in GROUPABLE_FIELDS and column not in tag_cols:
            known = ", ".join([*GROUPABLE_FIELDS, *sorted(tag_cols)])
            raise ReportError(f"unknown --by field {name!r} (known: {known})")
        out.append(column)
    if not out:
        raise ReportError("--by needs at least one field")
    return tuple(dict.fromkeys(out))


def build_report(
    path: str | Path,
    *,
    by: str | Sequence[str] | None = None,
    seed: int = 0,
    bootstrap: int = stats.DEFAULT_REPS,
    confidence: float = stats.DEFAULT_CONFIDENCE,
    all_records: bool = False,
    extras: bool = False,
    reply_limits: ReplyLimits | None = None,
) -> Report:
    """Aggregate a run directory or ``results.jsonl`` into a :class:`Report`.

    Only the records of the run directory's current grid (``grid.json``) are reported;
    the others are counted apart and named (``report.scope``). ``all_records`` includes
    them; a directory without ``grid.json`` is reported whole. ``by`` adds a custom table grouped by exactly those fields (record fields or tag
    names, e.g. ``["model", "object"]`` or ``"model,repeat"``); an unknown name raises
    :class:`ReportError`. ``seed`` and ``bootstrap`` (replicates) make the bootstrap
    intervals reproducible. ``extras`` adds what the HTML page shows besides (the heat map's
    cells, distributions, request counts and a table of replies, ``reply_limits`` long); it
    reads the replies too. Usage: ``build_report("runs/seed-v2").overall``
    """
    if bootstrap < 1:
        raise ReportError(f"bootstrap replicates must be at least 1, got {bootstrap}")
    file = log_file(path)
    grid = load_grid(file)
    cols = _columns(log_tags(file), by, has_grid=grid is not None)
    read = [*cols.read, *(f for f in REPLY_FIELDS if f not in cols.read)] if extras else cols.read
    raw = load_raw(file, read, compact=True)
    lines = raw.height
    scope = split_scope(dedupe(raw), grid, include_all=all_records)
    flags = _task_flags(scope.inside)
    del raw
    more = [histogram_query(flags), traffic_query(flags)] if extras else []
    cells, latency, span, unknown, targets, costs, *extra = pl.collect_all(
        [*_aggregates(flags, cols.cells), cost_query(flags), *more]
    )
    cells = cells.with_columns(pl.col(pl.Categorical).cast(pl.String))
    latency = latency.with_columns(pl.col(pl.Categorical).cast(pl.String))
    firsts = cells.group_by("model").agg(pl.col("first").min()).sort("first")
    models = model_order(firsts.get_column("model").fill_null("").to_list())
    cluster, by_cols = cols.cluster, cols.by

    def table(keys: Sequence[str], clus: str | None = cluster) -> pl.DataFrame:
        return rate_table(cells, keys, clus, models, seed=seed, reps=bootstrap, confidence=confidence)

    t0, t1 = span.row(0)[1:]
    seeds = seed_groups(cells, cluster=cluster, seed=seed, reps=bootstrap, confidence=confidence)
    seed_pairs = seed_comparisons(cells, cluster=cluster, seed=seed, reps=bootstrap, confidence=confidence,
                                  order=[group_of(m) for m in models])  # fmt: skip
    return Report(
        source=file, lines=lines, tasks=int(span["tasks"][0]),
        distinct=int(span["tasks"][0]) + (scope.summary.outside if scope.summary.kind == "grid" else 0),
        answered=int(cells["n"].sum()), failed=int(cells["failed"].sum()),
        unknown=tuple((str(w), int(n)) for w, n in unknown.iter_rows()), scope=scope.summary,
        targets=_target_table(targets, models),
        cluster=cluster, seed=seed, bootstrap=bootstrap, confidence=confidence, by=by_cols,
        span_s=(t1 - t0) if t0 is not None and t1 is not None and t1 >= t0 else None,
        overall=table(["model"]),
        by_difficulty=table(["model", "difficulty"]) if cols.has_difficulty else None,
        by_temperature=table(["model", "temperature"]),
        by_difficulty_temperature=table(["model", "difficulty", "temperature"]) if cols.has_difficulty else None,
        custom=table(list(by_cols), cols.custom_cluster) if by_cols else None,
        comparisons=comparisons(cells, cluster, models, seed=seed, reps=bootstrap, confidence=confidence),
        latency=sorted_by_model(latency, ["model"], models),
        by_cluster=cluster_cells(cells, cluster, models) if extras else None,
        histograms=extra[0] if extras else None,
        traffic=traffic_of(extra[1]) if extras else None,
        replies=replies_sample(flags, cols.has_difficulty, reply_limits or ReplyLimits()) if extras else None,
        seed_groups=seeds if seeds.height else None, seed_comparisons=seed_pairs if seed_pairs.height else None,
        cost=cost_table(costs, run_prices(file), models),
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Columns:
    """Which columns a report reads and groups by, from the log's tags and ``--by``."""

    by: tuple[str, ...]
    cluster: str  # what the bootstrap resamples: objects, or question ids when there are none
    custom_cluster: str | None  # the same for the --by table, None when --by groups by it already
    has_difficulty: bool
    cells: list[str]  # the finest grouping every table is summed from
    read: list[str]  # record fields and tags to read from the log


def _columns(tags: Sequence[str], by: str | Sequence[str] | None, *, has_grid: bool) -> _Columns:
    """Step 1: the columns to read, the cell grouping and the clusters."""
    by_cols = _resolve_by(by, tags)
    has_object = "object" in tags
    has_difficulty = "difficulty" in tags
    cluster = "object" if has_object else "qid"
    custom_cluster = "object" if has_object and "object" not in by_cols else ("qid" if "qid" not in by_cols else None)
    base = ["model", *(["difficulty"] if has_difficulty else []), "temperature"]
    cell_keys = list(dict.fromkeys([*base, *by_cols, cluster, *([custom_cluster] if custom_cluster else [])]))
    tag_fields = [c for c in cell_keys if c not in RECORD_SCHEMA]
    record_fields = [c for c in cell_keys if c in RECORD_SCHEMA]
    scope_fields = [f for f in SCOPE_FIELDS if f not in record_fields] if has_grid else []
    fields = [*record_fields, *scope_fields, "status", "outcome", "latency_ms", "prompt_tokens",
              "completion_tokens", "t_start", "t_end", "simulated"]  # fmt: skip
    fields += [f for f in ("target", *COST_FIELDS) if f not in fields]
    return _Columns(
        by=by_cols, cluster=cluster, custom_cluster=custom_cluster, has_difficulty=has_difficulty,
        cells=cell_keys, read=[*fields, *tag_fields],
    )


def _task_flags(inside: pl.LazyFrame) -> pl.LazyFrame:
    """Step 2: one pass makes the per-task flags; every table is a small aggregate of them."""
    answered = (pl.col("status") == "ok") & pl.col("outcome").is_in(["correct", "wrong", "no_answer"])
    failed = pl.col("status") == "failed"
    return (
        inside
        .drop("key")
        .with_row_index("_row")
        .with_columns(
            n=answered,
            errors=answered & pl.col("outcome").is_in(["wrong", "no_answer"]),
            wrong=answered & (pl.col("outcome") == "wrong"),
            no_answer=answered & (pl.col("outcome") == "no_answer"),
            failed=failed,
            unknown=~(answered.fill_null(False) | failed.fill_null(False)),
        )
        .collect()
        .lazy()
    )  # fmt: skip


def _aggregates(flags: pl.LazyFrame, cell_keys: Sequence[str]) -> list[pl.LazyFrame]:
    """Step 3: the queries collected together: cells, latency, span, unknown records, targets."""
    counts = [pl.col(c).sum().cast(pl.Int64) for c in RATE_SUMS]
    cells_q = flags.group_by(cell_keys).agg(*counts, first=pl.col("_row").min())

    def total(col: str) -> pl.Expr:  # null, not 0, when the log has no counts at all
        return pl.when(pl.col(col).count() > 0).then(pl.col(col).sum())

    latency_q = flags.filter(pl.col("n")).group_by("model").agg(
        n=pl.len().cast(pl.Int64),
        latency_p50_ms=pl.col("latency_ms").quantile(0.5, interpolation="linear"),
        latency_p95_ms=pl.col("latency_ms").quantile(0.95, interpolation="linear"),
        latency_mean_ms=pl.col("latency_ms").mean(),
        prompt_tokens=total("prompt_tokens"),
        completion_tokens=total("completion_tokens"),
        completion_tokens_mean=pl.col("completion_tokens").mean(),
    )
    status = pl.col("status").cast(pl.String)
    unknown_q = (
        flags.filter(pl.col("unknown"))
        .select(what=pl.when(status == "ok")
                .then(pl.format("status ok without an outcome ({})", pl.col("outcome").cast(pl.String).fill_null("null")))
                .otherwise(pl.format("status {}", status.fill_null("null"))))
        .group_by("what").agg(n=pl.len()).sort(["n", "what"], descending=[True, False])
    )  # fmt: skip
    targets_q = flags.group_by("model").agg(
        targets=pl.col("target").cast(pl.String).drop_nulls().unique().sort(),
        unknown_target=pl.col("target").is_null().any(),
        sim_unknown=pl.col("simulated").is_null().any(),
        sim_all=pl.col("simulated").all(),
        sim_any=pl.col("simulated").any(),
    )
    span_q = flags.select(
        tasks=pl.len(),
        t0=pl.col("t_start").filter(pl.col("t_start") > 0).min(),
        t1=pl.col("t_end").filter(pl.col("t_end") > 0).max(),
    )
    return [cells_q, latency_q, span_q, unknown_q, targets_q]


def _target_table(agg: pl.DataFrame, models: Sequence[str]) -> pl.DataFrame:
    """One row per model: who answered it (ids joined; "unknown" for records that do not say) and
    whether that was the built-in simulation (None when some records do not say, or it is mixed)."""
    rows = []
    for r in agg.with_columns(pl.col("model").cast(pl.String)).iter_rows(named=True):
        ids = [*r["targets"], *(["unknown"] if r["unknown_target"] else [])]
        simulated = None if r["sim_unknown"] else (True if r["sim_all"] else (False if not r["sim_any"] else None))
        rows.append((r["model"], ", ".join(ids) or None, simulated))
    table = pl.DataFrame(rows, schema={"model": pl.String, "target": pl.String, "simulated": pl.Boolean}, orient="row")
    return sorted_by_model(table, ["model"], models)
