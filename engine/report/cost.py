"""Tokens and cost per model, at the prices the run's spec gives (``price = {input, output}`` per million tokens).

The prices come from the copy of the spec the run directory keeps (``spec.toml``), never from the
network: the cost is what the spec said a token cost when the run was made. A record of the batch
route (``route: "batch"``) costs half (:data:`engine.experiment.settings.BATCH_DISCOUNT`); every other
record (online, or asked online after its batches failed) costs the full price. Tokens are the
provider's own counts in the log, summed over every task the report covers, failed ones included
(a reply cut short is billed too); earlier records of a task that was asked again are not counted.

Usage::

    prices = run_prices(Path("runs/x/results.jsonl"))     # {} when the spec gives none
    table = cost_table(cost_query(flags).collect(), prices, models)   # None without prices
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path

import polars as pl

from engine.errors import SpecError
from engine.experiment.settings import BATCH_DISCOUNT, Price, TableChecker
from engine.results.paths import run_dir_of_log

__all__ = ["COST_FIELDS", "cost_query", "cost_table", "run_prices"]

COST_FIELDS = ("route", "prompt_tokens", "completion_tokens")
"""Record fields the cost table reads (besides the model)."""

_SCHEMA = {"model": pl.String, "tasks": pl.Int64, "batch_tasks": pl.Int64, "prompt_tokens": pl.Int64,
           "completion_tokens": pl.Int64, "cost_online": pl.Float64, "cost": pl.Float64}  # fmt: skip


def run_prices(log: Path) -> dict[str, Price]:
    """Each model's price as the run directory's ``spec.toml`` gives it ({} without the file or any price).

    A spec the run accepted is read again with the same check; one that no longer parses gives no
    prices rather than no report. Usage: ``run_prices(Path("runs/x/results.jsonl"))["gpt-4o-mini"].input``
    """
    path = run_dir_of_log(log) / "spec.toml"
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}
    models = raw.get("models")
    checker = TableChecker(path)
    prices: dict[str, Price] = {}
    for index, model in enumerate(models if isinstance(models, list) else []):
        if not isinstance(model, dict) or not isinstance(model.get("name"), str):
            continue
        try:
            price = checker.price(model.get("price"), f"models[{index}].")
        except SpecError:
            continue
        if price is not None:
            prices[model["name"]] = price
    return prices


def cost_query(flags: pl.LazyFrame) -> pl.LazyFrame:
    """Tasks and token sums per model and route (batch or not). Usage: ``cost_query(flags).collect()``"""

    def total(col: str) -> pl.Expr:  # null, not 0, when no record of the group has counts
        return pl.when(pl.col(col).count() > 0).then(pl.col(col).sum())

    batch = pl.col("route").cast(pl.String).fill_null("") == "batch"
    return flags.group_by(pl.col("model").cast(pl.String), batch.alias("batch")).agg(
        tasks=pl.len().cast(pl.Int64),
        prompt_tokens=total("prompt_tokens").cast(pl.Int64),
        completion_tokens=total("completion_tokens").cast(pl.Int64),
    )


def cost_table(agg: pl.DataFrame, prices: Mapping[str, Price], models: Sequence[str]) -> pl.DataFrame | None:
    """One row per model: ``model, tasks, batch_tasks, prompt_tokens, completion_tokens, cost_online, cost``.

    ``cost_online`` is what the tokens cost at the online price, ``cost`` what they cost by the
    route each took; both null for a model with no price or no token counts. None when no model
    of the report has a price. Usage: ``cost_table(agg, {"m1": Price(input=1, output=2)}, ["m1"])``
    """
    if not any(m in prices for m in models):
        return None
    rows = []
    for model in models:
        mine = agg.filter(pl.col("model") == model)
        tokens = {c: _sum(mine, c) for c in ("prompt_tokens", "completion_tokens")}
        batch = mine.filter(pl.col("batch"))
        price = prices.get(model)
        online = cost = None
        if price is not None and None not in tokens.values():
            online = price.cost(tokens["prompt_tokens"] or 0, tokens["completion_tokens"] or 0)
            saved = price.cost(_sum(batch, "prompt_tokens") or 0, _sum(batch, "completion_tokens") or 0)
            cost = online - saved * (1 - BATCH_DISCOUNT)
        rows.append((model, int(mine["tasks"].sum()), int(batch["tasks"].sum()), tokens["prompt_tokens"],
                     tokens["completion_tokens"], online, cost))  # fmt: skip
    return pl.DataFrame(rows, schema=_SCHEMA, orient="row")  # in the report's model order


def _sum(df: pl.DataFrame, col: str) -> int | None:
    """A token column's sum, None when no row has counts."""
    values = df[col].drop_nulls()
    return int(values.sum()) if len(values) else None
