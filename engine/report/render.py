"""Rendering a :class:`~engine.report.model.Report`: rich terminal tables, Markdown, JSON and CSV.

Depends on the report's model alone (:mod:`engine.report.model`), not on how it was built.

Usage::

    report = build_report("runs/memorisation")
    render_terminal(report, rich.console.Console())
    Path("report.md").write_text(render_markdown(report))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import orjson
import polars as pl
from rich import box
from rich.console import Console
from rich.table import Table

from engine.report.model import Report
from engine.results.paths import describe_logs, run_dir_of_log
from engine.results.shards import SHARD_DIR

__all__ = [
    "render_markdown", "render_terminal", "report_sections", "report_to_csv", "report_to_json", "simulation_banner",
    "summary_lines",
]  # fmt: skip

_RATE_HEADERS = ("errors / n", "error rate", "Wilson 95%", "cluster bootstrap 95%", "wrong", "no answer", "failed")


def _pct(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:.{digits}f}%"


def _span(lo: float | None, hi: float | None, *, signed: bool = False) -> str:
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return "n/a"
    if signed:
        return f"{100 * lo:+.2f} to {100 * hi:+.2f} pp"
    return f"{100 * lo:.2f}–{100 * hi:.2f}%"


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return "" if value is None else str(value)


_Rows = tuple[list[str], list[list[str]], int]  # headers, rows, how many leading columns are labels


def _rate_rows(df: pl.DataFrame, keys: Sequence[str]) -> _Rows:
    rows = [
        [*(_cell(r[k]) for k in keys), f"{r['errors']}/{r['n']}", _pct(r["error_rate"]),
         _span(r["wilson_lo"], r["wilson_hi"]), _span(r["boot_lo"], r["boot_hi"]),
         str(r["wrong"]), str(r["no_answer"]), str(r["failed"])]
        for r in df.iter_rows(named=True)
    ]  # fmt: skip
    return [*keys, *_RATE_HEADERS], rows, len(keys)


def _comparison_rows(df: pl.DataFrame) -> _Rows:
    rows = []
    for r in df.iter_rows(named=True):
        verdict = {True: "differ", False: "no clear difference", None: "n/a"}[r["differs"]]
        diff = "n/a" if r["diff"] is None else f"{100 * r['diff']:+.2f} pp"
        rows.append([f"{r['model_a']} vs {r['model_b']}", f"{_pct(r['rate_a'])} vs {_pct(r['rate_b'])}",
                     diff, _span(r["diff_lo"], r["diff_hi"], signed=True), verdict])  # fmt: skip
    return ["models (a vs b)", "error rates", "a − b", "paired cluster bootstrap 95%", "verdict"], rows, 1


def _seed_rows(df: pl.DataFrame) -> _Rows:
    headers = ["group", "seeds", "mean error rate", "seed rates", "between-seed SD", "95% (objects × seeds)"]
    rows = [[g, str(k), _pct(mean), " · ".join(_pct(r) for r in rates), _pct(sd) if sd is not None else "–",
             _span(lo, hi)]
            for g, k, mean, rates, sd, lo, hi in df.select("group", "seeds", "mean_rate", "seed_rates", "sd_rate",
                                                           "lo", "hi").iter_rows()]  # fmt: skip
    return headers, rows, 1


def _seed_comparison_rows(df: pl.DataFrame) -> _Rows:
    headers = ["a vs b", "mean error rates", "a − b", "95% (objects × seeds)", "verdict"]
    rows = [[f"{a} vs {b}", f"{_pct(ra)} vs {_pct(rb)}", f"{d * 100:+.2f} pp", _span(lo, hi, signed=True),
             "differ" if differs else "no clear difference"]
            for a, b, ra, rb, d, lo, hi, differs in df.iter_rows()]  # fmt: skip
    return headers, rows, 1


def _latency_rows(df: pl.DataFrame) -> _Rows:
    def num(x: float | int | None, fmt: str = "{:,.0f}") -> str:
        if x is None or (isinstance(x, float) and math.isnan(x)):
            return "n/a"
        return f"{x:.1f}" if isinstance(x, float) and x < 100 and fmt == "{:,.0f}" else fmt.format(x)

    rows = [
        [r["model"], num(r["n"]), num(r["latency_p50_ms"]), num(r["latency_p95_ms"]), num(r["latency_mean_ms"]),
         num(r["prompt_tokens"]), num(r["completion_tokens"]), num(r["completion_tokens_mean"], "{:.1f}")]
        for r in df.iter_rows(named=True)
    ]  # fmt: skip
    headers = ["model", "answered", "p50 ms", "p95 ms", "mean ms", "prompt tokens", "completion tokens",
               "completion tokens / answer"]  # fmt: skip
    return headers, rows, 1


def _cost_rows(df: pl.DataFrame) -> _Rows:
    def dollars(x: float | None) -> str:
        return "n/a" if x is None else f"${x:,.2f}" if x >= 0.01 or x == 0 else f"${x:.6f}"

    def num(x: int | None) -> str:
        return "n/a" if x is None else f"{x:,}"

    rows = [[r["model"], num(r["tasks"]), num(r["batch_tasks"]), num(r["prompt_tokens"]), num(r["completion_tokens"]),
             dollars(r["cost_online"]), dollars(r["cost"])] for r in df.iter_rows(named=True)]  # fmt: skip
    priced = df.drop_nulls("cost")
    if priced.height > 1:
        rows.append(["all priced models", num(int(priced["tasks"].sum())), num(int(priced["batch_tasks"].sum())),
                     num(int(priced["prompt_tokens"].sum())), num(int(priced["completion_tokens"].sum())),
                     dollars(float(priced["cost_online"].sum())), dollars(float(priced["cost"].sum()))])  # fmt: skip
    headers = ["model", "tasks", "via batch", "prompt tokens", "completion tokens", "cost all online",
               "cost (batch at half)"]  # fmt: skip
    return headers, rows, 1


def _target_rows(df: pl.DataFrame) -> _Rows:
    said = {True: "yes: engine's built-in simulation", False: "no", None: "mixed or unknown"}
    rows = [[r["model"], r["target"] or "unknown", said[r["simulated"]]] for r in df.iter_rows(named=True)]
    return ["model", "target (who answered)", "simulated"], rows, 3


def report_sections(report: Report) -> list[tuple[str, _Rows]]:
    """(title, (headers, rows, label columns)) of every table, as text. Usage: ``for title, (h, rows, k) in ...``"""
    out = [("Error rate per model", _rate_rows(report.overall, ["model"]))]
    if report.targets.height:
        out.append(("Targets", _target_rows(report.targets)))
    if report.comparisons.height:
        out.append(("Model comparisons", _comparison_rows(report.comparisons)))
    if report.by_difficulty is not None:
        out.append(("By difficulty", _rate_rows(report.by_difficulty, ["model", "difficulty"])))
    out.append(("By temperature", _rate_rows(report.by_temperature, ["model", "temperature"])))
    if report.by_difficulty_temperature is not None:
        keys = ["model", "difficulty", "temperature"]
        out.append(("By difficulty and temperature", _rate_rows(report.by_difficulty_temperature, keys)))
    if report.custom is not None:
        out.append((f"By {', '.join(report.by)}", _rate_rows(report.custom, report.by)))
    if report.seed_groups is not None:
        out.append(("Training seeds (intervals over objects and seeds)", _seed_rows(report.seed_groups)))
    if report.seed_comparisons is not None:
        out.append(("Seed-group comparisons (objects and seeds resampled)", _seed_comparison_rows(report.seed_comparisons)))
    out.append(("Latency and tokens (answered tasks)", _latency_rows(report.latency)))
    if report.cost is not None:
        out.append(("Tokens and cost (every task, at the spec's prices)", _cost_rows(report.cost)))
    return out


_SIMULATION = ("engine's built-in simulated target (a lookup table playing configured rates), "
               "not from a language model")  # fmt: skip


def simulation_banner(report: Report) -> tuple[str, str] | None:
    """(headline, sentence) opening a report with simulated answers; None when no answer was simulated.

    Usage: ``simulation_banner(report)  # ('Simulation', 'every answer below came from ...')``
    """
    simulated = report.simulated_models
    if not simulated:
        return None
    if len(simulated) == report.targets.height:
        return "Simulation", f"every answer below came from {_SIMULATION}."
    others = [m for m in report.targets["model"].to_list() if m not in simulated]
    return "Partly simulated", (f"the answers of {', '.join(simulated)} came from {_SIMULATION}; "
                                f"{', '.join(others)}: real targets (see Targets).")  # fmt: skip



def _log_label(source: Path) -> str:
    """The log a report read: the file, or for a sharded run the set of its shard logs."""
    return describe_logs(run_dir_of_log(source)) if source.parent.name == SHARD_DIR else str(source)

def summary_lines(report: Report) -> list[str]:
    """The paragraphs opening a report (Markdown backticks for names). Usage: ``summary_lines(report)[0]``"""
    cluster = "objects (tag `object`)" if report.cluster == "object" else "question ids (no `object` tag)"
    span = f" over {report.span_s:,.1f} s" if report.span_s else ""
    scope = report.scope
    grid = f" of the current grid's {scope.grid_tasks:,}" if scope.kind == "grid" and scope.grid_tasks is not None else ""
    unknown = ""
    if report.unknown:
        named = ", ".join(f"{what}: {n:,}" for what, n in report.unknown)
        unknown = (f" {sum(n for _, n in report.unknown):,} records are neither answered nor failed ({named}): "
                   "counted here, in no rate.")  # fmt: skip
    described = scope.describe()
    return [
        f"Log `{_log_label(report.source)}`: {report.tasks:,} tasks{grid}{span} ({report.duplicates:,} duplicate records "
        f"dropped, last record per task wins); {report.answered:,} answered, {report.failed:,} infrastructure "
        f"failures.{unknown}",
        *([described] if described else []),
        "Error rate = errors / answered tasks; an error is a wrong answer or no answer. Infrastructure failures "
        "(status failed) are shown apart and are not model errors.",
        f"Intervals are {100 * report.confidence:g}%. Wilson treats every answer as independent; the cluster "
        f"bootstrap resamples {cluster}, {report.bootstrap:,} replicates, seed {report.seed}, and is the one to "
        "trust when errors cluster. It is never narrower than Wilson's (widened to cover it), so a group "
        "with no or very few errors still shows how high its rate could be. A paired difference where no "
        "replicate differed (two models that agree on every cluster) shows Newcombe's interval instead of "
        "0 to 0.",
    ]


_SHORT = {
    "errors / n": "errors/n", "error rate": "rate", "cluster bootstrap 95%": "bootstrap 95%",
    "no answer": "no ans.", "temperature": "temp", "models (a vs b)": "a vs b",
    "paired cluster bootstrap 95%": "paired bootstrap 95%", "prompt tokens": "prompt tok.",
    "completion tokens": "compl. tok.", "completion tokens / answer": "compl./answer",
}  # fmt: skip
# Narrow terminals: headers stacked on two lines or cut to the width of their numbers.
_NARROW = {
    **_SHORT, "difficulty": "diff.", "errors / n": "errors\n/n", "Wilson 95%": "Wilson\n95%",
    "cluster bootstrap 95%": "bootstrap\n95%", "no answer": "no\nans.",
    "paired cluster bootstrap 95%": "paired\nbootstrap 95%", "prompt tokens": "prompt\ntok.",
    "completion tokens": "compl.\ntok.", "completion tokens / answer": "compl.\n/answer",
}  # fmt: skip
# (headers, spaces between columns), roomiest first.
_LAYOUTS: tuple[tuple[dict[str, str], int], ...] = ((_SHORT, 3), (_NARROW, 2), (_NARROW, 1))


def _terminal_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]], keys: int,
                    names: dict[str, str], gap: int, *, wrap: bool = False) -> Table:  # fmt: skip
    # SIMPLE_HEAD draws a one-space divider; cell padding (collapsed between cells) adds the rest.
    table = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, pad_edge=False,
                  show_edge=False, padding=(0, 1 if gap > 1 else 0), collapse_padding=gap == 2)  # fmt: skip
    for i, header in enumerate(headers):
        # A number or interval split over two lines misreads, so cells only wrap when even the
        # tightest layout is too wide; they then fold, since cropping would lose digits.
        table.add_column(names.get(header, header), justify="left" if i < keys else "right",
                         no_wrap=i < keys or not wrap, overflow="fold")  # fmt: skip
    for row in rows:
        table.add_row(*row)
    return table


def render_terminal(report: Report, console: Console) -> None:
    """Print the report's tables with rich, each in the roomiest layout that fits the console.

    Usage: ``render_terminal(report, Console())``
    """
    if (banner := simulation_banner(report)) is not None:
        console.print(f"{banner[0]} — {banner[1]}", style="bold", highlight=False)
    for line in summary_lines(report):
        console.print(line.replace("`", ""), highlight=False)
    unbounded = console.options.update_width(1 << 16)  # measured against the console, a table never exceeds it
    for title, (headers, rows, keys) in report_sections(report):
        for names, gap in _LAYOUTS:
            table = _terminal_table(title, headers, rows, keys, names, gap)
            if console.measure(table, options=unbounded).maximum <= console.width:
                break
        else:
            table = _terminal_table(title, headers, rows, keys, names, gap, wrap=True)
        console.print()
        console.print(table)
    console.print()


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]], keys: int) -> list[str]:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return [line(headers), "|" + "|".join("---" if i < keys else "---:" for i in range(len(headers))) + "|",
            *(line(r) for r in rows)]  # fmt: skip


def render_markdown(report: Report, *, charts: Sequence[Path] = (), page: str | None = None) -> str:
    """The report as Markdown; ``charts`` are linked by file name (they sit beside report.md), as is
    ``page``, the HTML report with the interactive charts, heat map and replies.

    Usage: ``Path("report.md").write_text(render_markdown(report))``
    """
    banner = simulation_banner(report)
    lines = [*([f"> **{banner[0]}** — {banner[1]}", ""] if banner else []), f"# Report: {run_dir_of_log(report.source).name}", "",
             *(f"{s}\n" for s in summary_lines(report))]  # fmt: skip
    for title, (headers, rows, keys) in report_sections(report):
        lines += [f"## {title}", "", *_md_table(headers, rows, keys), ""]
    if charts or page:
        lines += ["## Charts", ""]
    if page:
        lines += [f"Charts, the heat map of errors per {report.cluster} and model, and the replies: [{page}]({page}).", ""]
    if charts:
        lines += [f"![{p.stem.replace('_', ' ')}]({p.name})\n" for p in charts]
    return "\n".join(lines).rstrip() + "\n"


def report_to_json(report: Report) -> str:
    """The report as JSON: totals plus every table as a list of rows (NaN becomes null).

    Usage: ``orjson.loads(report_to_json(report))["overall"][0]["error_rate"]``
    """
    scope = report.scope
    banner = simulation_banner(report)
    doc = {
        "simulation": None if banner is None else f"{banner[0]} — {banner[1]}", "source": str(report.source), "lines": report.lines,
        "tasks": report.tasks, "duplicates": report.duplicates, "answered": report.answered,
        "failed": report.failed, "unknown_status": dict(report.unknown),
        "scope": scope.kind, "grid_tasks": scope.grid_tasks, "outside_grid": scope.outside,
        "outside_grid_by": dict(scope.reasons),
        "cluster": report.cluster, "seed": report.seed, "bootstrap": report.bootstrap,
        "confidence": report.confidence, "by": list(report.by), "span_s": report.span_s,
        "models": report.targets.to_dicts(),
        **{name: _with_targets(df, report).to_dicts() for name, df in report.rate_tables().items()},
        "comparisons": report.comparisons.to_dicts(), "latency": report.latency.to_dicts(),
        "cost": None if report.cost is None else report.cost.to_dicts(),
    }  # fmt: skip
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode()


def report_to_csv(report: Report) -> str:
    """Every rate table stacked into one long CSV, the first column naming the table.

    Usage: ``pl.read_csv(io.StringIO(report_to_csv(report)))``
    """
    frames = [_with_targets(df, report).select(pl.lit(name).alias("table"), pl.all())
              for name, df in report.rate_tables().items()]  # fmt: skip
    stacked = pl.concat(frames, how="diagonal_relaxed")
    metrics = report.overall.columns[1:]
    keys = [c for c in stacked.columns if c not in metrics]  # "table", then every group column
    return stacked.select(*keys, *metrics).write_csv()


def _with_targets(df: pl.DataFrame, report: Report) -> pl.DataFrame:
    """A rate table with each model's ``target`` and ``simulated`` beside its ``model`` column."""
    if "model" not in df.columns:
        return df
    target = dict(report.targets.select("model", "target").iter_rows())
    simulated = dict(report.targets.select("model", "simulated").iter_rows())
    model = pl.col("model").cast(pl.String)
    at = df.columns.index("model") + 1
    columns = [*df.columns[:at], "target", "simulated", *df.columns[at:]]
    return df.with_columns(
        target=model.replace_strict(target, default=None, return_dtype=pl.String),
        simulated=model.replace_strict(simulated, default=None, return_dtype=pl.Boolean),
    ).select(columns)
