"""The report: error rates with honest intervals, model comparisons, latency and tokens.

A results log (``results.jsonl``, schema version 2 or 1) is read once by
:func:`engine.log.read_records` (bounded blocks, only the columns the report needs, an
unterminated last line left out), then deduplicated by task key (the last record wins,
so a resumed run counts each task once), scoped to the run directory's current grid
(:mod:`engine.scope`: records outside it are counted apart, ``all_records`` includes
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

The renderers (terminal, Markdown, JSON, CSV) live in :mod:`engine.report_render` and
are re-exported here.

Usage::

    report = build_report("runs/memorisation", by=["model", "object"])
    render_terminal(report, rich.console.Console())
    paths = write_report("runs/memorisation")   # report.md + PNG charts
"""

from __future__ import annotations

import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from rich.console import Console

from engine import stats
from engine.errors import ReportError
from engine.log import RECORD_FIELDS, RECORD_SCHEMA, read_records, tag_column, tag_names

# Rendering lives in its own module (size limit); re-exported so callers keep importing it from here.
from engine.report_render import render_markdown, render_terminal, report_to_csv, report_to_json
from engine.report_tables import RATE_SUMS, comparisons, model_order, rate_table, sorted_by_model
from engine.scope import SCOPE_FIELDS, ScopeSummary, load_grid, split_scope

__all__ = [
    "GROUPABLE_FIELDS",
    "RECORD_FIELDS",
    "Report",
    "build_report",
    "load_log",
    "model_order",
    "render_markdown",
    "render_terminal",
    "report_to_csv",
    "report_to_json",
    "write_report",
]

RESULTS_FILE = "results.jsonl"
REPORT_FILE = "report.md"

GROUPABLE_FIELDS: tuple[str, ...] = (
    "model", "model_id", "target", "simulated", "qid", "question", "temperature", "repeat", "expected",
    "extracted", "outcome", "correct", "status", "error", "attempts",
)  # fmt: skip
"""Record fields a report may group by (``--by``); tag names are allowed too."""



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


# --------------------------------------------------------------------------- reading


def _log_file(path: str | Path) -> Path:
    p = Path(path)
    if p.suffix == ".toml" and p.is_file():
        raise ReportError(f"{p} is a spec file; pass its run directory ({_run_dir_of(p)})")
    file = p / RESULTS_FILE if p.is_dir() else p
    if not file.is_file():
        raise ReportError(f"no results log at {file}")
    return file


def _run_dir_of(spec_path: Path) -> str:
    """Where ``engine run`` puts a spec's run by default, to name it in a hint."""
    try:
        name = tomllib.loads(spec_path.read_text(encoding="utf-8")).get("name")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        name = None
    where = f"runs/{name}" if isinstance(name, str) and name else "runs/<name>"
    return f"{where}, or the --out given to engine run"


def _tag_names(file: Path) -> list[str]:
    tags = tag_names(file)
    if tags is None:
        raise ReportError(f"results log {file} is empty")
    return tags


def _load_raw(file: Path, columns: Sequence[str] | None, *, compact: bool) -> pl.DataFrame:
    tags = _tag_names(file)
    tag_cols = {tag_column(t): t for t in tags}
    wanted = list(columns) if columns is not None else list(RECORD_FIELDS)
    unknown = [c for c in wanted if c not in RECORD_SCHEMA and c not in tag_cols and c != "tags"]
    if unknown:
        raise ReportError(f"unknown log field {unknown[0]!r}")
    fields = [c for c in wanted if c in RECORD_SCHEMA]
    picked = tags if "tags" in wanted else [tag_cols[c] for c in wanted if c in tag_cols]
    df = read_records(file, fields, picked, compact=compact)
    if df.is_empty():
        raise ReportError(f"results log {file} has no records")
    return df


def _dedupe(df: pl.DataFrame) -> pl.LazyFrame:
    return df.lazy().filter(pl.col("key").is_last_distinct())


def load_log(
    path: str | Path, *, columns: Sequence[str] | None = None, compact: bool = False
) -> pl.LazyFrame:
    """The log as a LazyFrame, one row per task (last record per key wins), in log order.

    ``path`` is a run directory or a ``results.jsonl`` file. ``columns`` picks record
    fields and tag names (tags become columns of their own, ``"tags"`` means all of
    them); ``key`` is always kept. Only those columns are parsed and held, so asking
    for few keeps memory low. ``compact`` holds text columns as categoricals. Usage:
    ``load_log("runs/x", columns=["model", "difficulty", "outcome"]).collect()``
    """
    return _dedupe(_load_raw(_log_file(path), columns, compact=compact))


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
) -> Report:
    """Aggregate a run directory or ``results.jsonl`` into a :class:`Report`.

    Only the records of the run directory's current grid (``grid.json``) are reported;
    the others are counted apart and named (``report.scope``). ``all_records`` includes
    them; a directory without ``grid.json`` is reported whole. ``by`` adds a custom table grouped by exactly those fields (record fields or tag
    names, e.g. ``["model", "object"]`` or ``"model,repeat"``); an unknown name raises
    :class:`ReportError`. ``seed`` and ``bootstrap`` (replicates) make the bootstrap
    intervals reproducible. Usage: ``build_report("runs/seed-v2").overall``
    """
    if bootstrap < 1:
        raise ReportError(f"bootstrap replicates must be at least 1, got {bootstrap}")
    file = _log_file(path)
    tags = _tag_names(file)
    by_cols = _resolve_by(by, tags)
    has_object = "object" in tags
    has_difficulty = "difficulty" in tags
    cluster = "object" if has_object else "qid"
    custom_cluster = "object" if has_object and "object" not in by_cols else ("qid" if "qid" not in by_cols else None)
    base = ["model", *(["difficulty"] if has_difficulty else []), "temperature"]
    cell_keys = list(dict.fromkeys([*base, *by_cols, cluster, *([custom_cluster] if custom_cluster else [])]))
    tag_fields = [c for c in cell_keys if c not in RECORD_SCHEMA]
    record_fields = [c for c in cell_keys if c in RECORD_SCHEMA]
    grid = load_grid(file)
    scope_fields = [f for f in SCOPE_FIELDS if f not in record_fields] if grid is not None else []
    fields = [*record_fields, *scope_fields, "status", "outcome", "latency_ms", "prompt_tokens",
              "completion_tokens", "t_start", "t_end", "simulated"]  # fmt: skip
    if "target" not in fields:
        fields.append("target")
    raw = _load_raw(file, [*fields, *tag_fields], compact=True)
    lines = raw.height
    scope = split_scope(_dedupe(raw), grid, include_all=all_records)
    # One pass makes the per-task flags; every table below is a small aggregate of them.
    answered = (pl.col("status") == "ok") & pl.col("outcome").is_in(["correct", "wrong", "no_answer"])
    failed = pl.col("status") == "failed"
    flags = (
        scope.inside
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
    del raw
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
    cells, latency, span, unknown, targets = pl.collect_all([cells_q, latency_q, span_q, unknown_q, targets_q])
    cells = cells.with_columns(pl.col(pl.Categorical).cast(pl.String))
    latency = latency.with_columns(pl.col(pl.Categorical).cast(pl.String))
    firsts = cells.group_by("model").agg(pl.col("first").min()).sort("first")
    models = model_order(firsts.get_column("model").fill_null("").to_list())

    def table(keys: Sequence[str], clus: str | None = cluster) -> pl.DataFrame:
        return rate_table(cells, keys, clus, models, seed=seed, reps=bootstrap, confidence=confidence)

    overall = table(["model"])
    t0, t1 = span.row(0)[1:]
    return Report(
        source=file, lines=lines, tasks=int(span["tasks"][0]),
        distinct=int(span["tasks"][0]) + (scope.summary.outside if scope.summary.kind == "grid" else 0),
        answered=int(cells["n"].sum()), failed=int(cells["failed"].sum()),
        unknown=tuple((str(w), int(n)) for w, n in unknown.iter_rows()), scope=scope.summary,
        targets=_target_table(targets, models),
        cluster=cluster, seed=seed, bootstrap=bootstrap, confidence=confidence, by=by_cols,
        span_s=(t1 - t0) if t0 is not None and t1 is not None and t1 >= t0 else None,
        overall=overall,
        by_difficulty=table(["model", "difficulty"]) if has_difficulty else None,
        by_temperature=table(["model", "temperature"]),
        by_difficulty_temperature=table(["model", "difficulty", "temperature"]) if has_difficulty else None,
        custom=table(list(by_cols), custom_cluster) if by_cols else None,
        comparisons=comparisons(cells, cluster, models, seed=seed, reps=bootstrap, confidence=confidence),
        latency=sorted_by_model(latency, ["model"], models),
    )  # fmt: skip


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


def write_report(
    run_dir: str | Path,
    *,
    by: str | Sequence[str] | None = None,
    seed: int = 0,
    bootstrap: int = stats.DEFAULT_REPS,
    charts: bool = True,
    report: Report | None = None,
) -> list[Path]:
    """Write ``report.md`` and the PNG charts beside the log; returns their paths.

    Pass ``report`` to reuse one already built (the other options are then unused).
    Usage: ``write_report("runs/memorisation")  # [.../report.md, .../chart_error_rate.png, ...]``
    """
    report = report or build_report(run_dir, by=by, seed=seed, bootstrap=bootstrap)
    out_dir = report.source.parent
    pngs: list[Path] = []
    if charts:
        from engine.charts import write_charts  # matplotlib is slow to import; only when drawing

        pngs = write_charts(report, out_dir)
    target = out_dir / REPORT_FILE
    try:
        target.write_text(render_markdown(report, charts=pngs), encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"cannot write {target}: {exc.strerror}") from exc
    return [target, *pngs]


def main_report(
    run_dir: str | Path, *, by: str | None = None, fmt: str = "table", seed: int = 0, all_records: bool = False,
    console: Console | None = None,
) -> int:  # fmt: skip
    """What ``engine report`` does: print the report, and save the run's default report.

    Only the default report (no ``by``, no ``all_records``) in ``table`` or ``md`` format
    writes ``report.md`` and the charts, so those files always describe the run's grid as
    ``engine run`` leaves it; a report grouped ``--by`` or with ``--all`` is printed only.
    ``json`` and ``csv`` only print, so their output can be piped. A run directory that
    cannot be written (read-only, archived) is still reported: the note goes to stderr.
    Returns the exit code. Usage: ``main_report("runs/seed-v2", fmt="json")``
    """
    console = console or Console()
    if fmt not in ("table", "md", "json", "csv"):
        raise ReportError(f"unknown report format {fmt!r} (expected table, md, json or csv)")
    report = build_report(run_dir, by=by, seed=seed, all_records=all_records)
    if fmt in ("json", "csv"):
        text = report_to_json(report) if fmt == "json" else report_to_csv(report)
        console.file.write(text if text.endswith("\n") else text + "\n")
        return 0
    paths: list[Path] = []
    note = None
    if by is None and not all_records:
        try:
            paths = write_report(run_dir, report=report)
        except ReportError as exc:
            note = f"engine: note: {exc}; the report is printed, not saved"
    else:
        note = "engine: note: report.md left as it is (only the default report, without --by or --all, writes it)"
    if fmt == "md":
        console.file.write(render_markdown(report, charts=paths[1:]))
    else:
        render_terminal(report, console)
        if paths:
            console.print(f"wrote {', '.join(str(p) for p in paths)}", highlight=False)
    if note is not None:
        print(note, file=sys.stderr)
    return 0
