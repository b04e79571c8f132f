"""Which records of a log a report describes: those of the run directory's current grid.

A run directory's log keeps every record it was ever given, but its report describes
the current grid (``grid.json``, written by every ``engine run``): the records of other
temperatures, models, targets or questions stay in the log and are counted apart, each
group named by what left it outside (``temperature 1.0: 300``, ``model ft-5x @
sim:3f2a9c01d4e5: 112``). ``--all`` reports them too. A run directory without
``grid.json`` (an imported seed log, or one written by an older engine) is reported
whole, and the report says so.

Usage::

    grid = load_grid(Path("runs/memorisation"))
    scope = split_scope(deduped, grid, include_all=False)
    scope.inside, scope.summary.outside
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from engine.errors import ReportError
from engine.experiment.grid import Grid
from engine.results.paths import RunPaths, run_dir_of_log

__all__ = ["SCOPE_FIELDS", "Scope", "ScopeSummary", "load_grid", "split_scope"]

SCOPE_FIELDS = ("model", "target", "temperature", "repeat", "qid")
"""Record fields the scope needs, besides ``key``, to name why a record is outside the grid."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ScopeSummary:
    """What a report's scope is and what it left out.

    ``kind`` is ``"grid"`` (the current grid only), ``"all"`` (``--all``: every record,
    with ``outside`` of them outside the grid) or ``"log"`` (no ``grid.json``: every record).
    Usage: ``f"{s.outside} records outside the current grid"``
    """

    kind: str
    grid_tasks: int | None
    outside: int
    reasons: tuple[tuple[str, int], ...]

    def describe(self) -> str | None:
        """The sentence the report prints about its scope; None when there is nothing to say."""
        named = ", ".join(f"{why}: {n:,}" for why, n in self.reasons)
        if self.kind == "log":
            return ("This directory has no grid.json (an imported log, or one written by an older engine): "
                    "every record of the log is reported.")  # fmt: skip
        if not self.outside:
            return None
        if self.kind == "all":
            return f"--all: {self.outside:,} records outside the current grid ({named}) are included."
        return f"{self.outside:,} records outside the current grid ({named}), not reported; --all to include."


@dataclass(frozen=True, kw_only=True, slots=True)
class Scope:
    """The records a report describes, and the summary of what it left out. Usage: ``scope.inside.collect()``"""

    inside: pl.LazyFrame
    summary: ScopeSummary


def load_grid(path: str | Path) -> Grid | None:
    """The current grid of a run directory (or of the directory a ``results.jsonl`` is in); None without one.

    Usage: ``load_grid(Path("runs/x"))``
    """
    p = Path(path)
    root = p if p.is_dir() else run_dir_of_log(p)
    file = RunPaths(root).grid
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ReportError(f"cannot read {file}: {exc.strerror or exc}") from exc
    return Grid.from_json(data, where=str(file))


def split_scope(deduped: pl.LazyFrame, grid: Grid | None, *, include_all: bool) -> Scope:
    """Keep the records of ``grid`` (all of them with ``include_all`` or no grid), count and name the rest.

    ``deduped`` has one row per key and the columns ``key`` and :data:`SCOPE_FIELDS`. The
    filter is one Polars ``is_in`` over the grid's keys: no Python loop over records.
    Usage: ``split_scope(frame.lazy(), load_grid(run_dir), include_all=False)``
    """
    if grid is None:
        return Scope(inside=deduped, summary=ScopeSummary(kind="log", grid_tasks=None, outside=0, reasons=()))
    keys = pl.Series("key", grid.keys(), dtype=pl.String)
    in_grid = pl.col("key").cast(pl.String).is_in(keys.implode())
    reasons = (
        deduped.filter(~in_grid)
        .select(why=_why_outside(grid))
        .group_by("why")
        .agg(n=pl.len())
        .sort(["n", "why"], descending=[True, False])
        .collect()
    )
    counted = tuple((str(why), int(n)) for why, n in reasons.iter_rows())
    summary = ScopeSummary(
        kind="all" if include_all else "grid", grid_tasks=grid.size,
        outside=sum(n for _, n in counted), reasons=counted,
    )  # fmt: skip
    return Scope(inside=deduped if include_all else deduped.filter(in_grid), summary=summary)


def _why_outside(grid: Grid) -> pl.Expr:
    """What left a record outside the grid, tested from the coarsest reason down."""
    model = pl.col("model").cast(pl.String)
    target = pl.col("target").cast(pl.String)
    targets = {m.name: m.target for m in grid.models}
    expected = model.replace_strict(targets, default=None, return_dtype=pl.String)
    temperature = pl.col("temperature")
    return (
        pl.when(~model.is_in(list(targets)))
        .then(pl.format("model {}", model))
        .when(target.is_null())
        .then(pl.format("model {} @ unknown target (written before targets were recorded)", model))
        .when(target != expected)
        .then(pl.format("model {} @ {}", model, target))
        .when(~temperature.is_in(list(grid.temperatures)))
        .then(pl.format("temperature {}", temperature))
        .when(pl.col("repeat") >= grid.repeats)
        .then(pl.format("repeat {}", pl.col("repeat")))
        .when(~pl.col("qid").cast(pl.String).is_in([p.qid for p in grid.prompts]))
        .then(pl.lit("questions no longer in the set"))
        .otherwise(pl.lit("prompt, max_tokens or params changed"))
    )
