"""PNG charts of a report, drawn headless with matplotlib's Agg canvas.

Three charts: the error rate per model with both 95% intervals (the original
experiment's headline chart, with errors divided by all answers and honest error
bars), and the error rate per model split by difficulty and by temperature. Figures
are built with :class:`matplotlib.figure.Figure` directly, never through pyplot, so
no global backend or figure registry is touched.

Usage::

    paths = write_charts(build_report("runs/seed-v2"), Path("runs/seed-v2"))
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import polars as pl
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from engine.errors import ReportError
from engine.report.model import Report

__all__ = ["CHART_FILES", "chart_error_rate", "chart_split", "write_charts"]

CHART_FILES: Mapping[str, str] = MappingProxyType({
    "overall": "chart_error_rate.png",
    "difficulty": "chart_error_rate_by_difficulty.png",
    "temperature": "chart_error_rate_by_temperature.png",
})
"""File names of the charts, by what they split the models by."""

_BAR = "#9ecae1"
_WILSON = "#252525"
_BOOT = "#d94801"
# Sequential palettes: darker means harder (or hotter), readable in grey too.
_SPLIT_COLOURS = {
    "difficulty": ("#c7e9c0", "#74c476", "#238b45", "#00441b"),
    "temperature": ("#fdd0a2", "#fd8d3c", "#d94801", "#7f2704"),
}
_DPI = 150


def _pct(values: list[float | None]) -> list[float]:
    return [math.nan if v is None else 100.0 * v for v in values]


def _yerr(rate: list[float], lo: list[float], hi: list[float]) -> list[list[float]]:
    # Negative lengths would draw inverted bars; NaN hides the bar for that group.
    return [
        [max(r - a, 0.0) if not math.isnan(a) else math.nan for r, a in zip(rate, lo, strict=True)],
        [max(b - r, 0.0) if not math.isnan(b) else math.nan for r, b in zip(rate, hi, strict=True)],
    ]


def _top(values: list[list[float]]) -> float:
    finite = [v for row in values for v in row if not math.isnan(v)]
    return max([*finite, 1.0])


def _percent_axis(ax: Axes, top: float, headroom: float) -> None:
    # Round steps (1, 2, 5, 10 ...) so every tick label is exact, e.g. never "2%" for 2.5.
    ax.yaxis.set_major_locator(MaxNLocator(nbins=8, steps=[1, 2, 5, 10]))
    ax.set_ylim(0, top * headroom)
    ticks = ax.get_yticks()
    step = float(ticks[1] - ticks[0]) if len(ticks) > 1 else 1.0
    ax.yaxis.set_major_formatter(PercentFormatter(decimals=0 if step >= 1 else 1 if step >= 0.1 else 2))
    ax.set_ylabel("error rate (errors ÷ answered)")
    ax.set_xlabel("model")
    ax.grid(axis="y", alpha=0.3, zorder=0)
    ax.spines[["top", "right"]].set_visible(False)


def _simulation_tag(report: Report) -> str:
    """What a chart's title starts with when answers were simulated: a reader of the PNG alone must see it."""
    simulated = report.simulated_models
    if not simulated:
        return ""
    if len(simulated) == report.targets.height:
        return "[simulation] "
    return f"[partly simulated: {', '.join(simulated)}] "


def _tick_labels(report: Report, models: list[str]) -> list[str]:
    """Model names, each simulated one marked, so a mixed chart says which bar is which."""
    simulated = set(report.simulated_models)
    mixed = 0 < len(simulated) < report.targets.height
    return [f"{m}\n[simulation]" if mixed and m in simulated else m for m in models]


def chart_error_rate(report: Report) -> Figure:
    """Error rate per model, with the Wilson and the cluster-bootstrap 95% intervals side by side.

    Usage: ``chart_error_rate(report).savefig("chart.png")``
    """
    df = report.overall
    models = [str(m) for m in df["model"].to_list()]
    rate = _pct(df["error_rate"].to_list())
    w_lo, w_hi = _pct(df["wilson_lo"].to_list()), _pct(df["wilson_hi"].to_list())
    b_lo, b_hi = _pct(df["boot_lo"].to_list()), _pct(df["boot_hi"].to_list())
    fig = Figure(figsize=(max(6.0, 1.5 * len(models) + 2.5), 4.8), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = list(range(len(models)))
    ax.bar(x, rate, width=0.6, color=_BAR, edgecolor="#3182bd", zorder=2)
    ax.errorbar([i - 0.1 for i in x], rate, yerr=_yerr(rate, w_lo, w_hi), fmt="none", ecolor=_WILSON,
                elinewidth=1.2, capsize=5, zorder=3, label="Wilson 95% (answers treated as independent)")  # fmt: skip
    what = "objects" if report.cluster == "object" else "question ids"
    ax.errorbar([i + 0.1 for i in x], rate, yerr=_yerr(rate, b_lo, b_hi), fmt="none", ecolor=_BOOT,
                elinewidth=2.4, capsize=5, zorder=3, label=f"cluster bootstrap 95% (resampling {what})")  # fmt: skip
    top = _top([rate, w_hi, b_hi])
    for i, row in enumerate(df.iter_rows(named=True)):
        if row["error_rate"] is None:
            continue
        label_y = max(v for v in (rate[i], w_hi[i], b_hi[i]) if not math.isnan(v)) + 0.02 * top
        ax.text(i, label_y, f"{rate[i]:.2f}%\n{row['errors']}/{row['n']}", ha="center", va="bottom", fontsize=9)
    ax.set_xticks(x, _tick_labels(report, models))
    _percent_axis(ax, top, 1.3)
    ax.set_title(f"{_simulation_tag(report)}Error rate per model, with 95% intervals\n{report.tasks:,} tasks; bootstrap: "
                 f"{report.bootstrap:,} replicates, seed {report.seed}", fontsize=11)  # fmt: skip
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    return fig


def _split_label(key: str, value: object) -> str:
    if key == "temperature" and isinstance(value, float):
        return f"T = {value:g}"
    return str(value)


def chart_split(report: Report, key: str) -> Figure:
    """Error rate per model split by ``difficulty`` or ``temperature``, cluster-bootstrap 95% bars.

    Usage: ``chart_split(report, "difficulty").savefig("by_difficulty.png")``
    """
    table = {"difficulty": report.by_difficulty, "temperature": report.by_temperature}.get(key)
    if table is None:
        raise ReportError(f"the report has no per-{key} table to chart")
    models = report.overall["model"].to_list()
    levels = table[key].unique(maintain_order=True).to_list()
    width = 0.8 / max(len(levels), 1)
    palette = _SPLIT_COLOURS.get(key, _SPLIT_COLOURS["difficulty"])
    fig = Figure(figsize=(max(7.0, 1.9 * len(models) + 2.5), 4.8), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    tops: list[list[float]] = []
    labels: list[tuple[list[float], list[dict[str, Any] | None], list[float]]] = []
    for j, level in enumerate(levels):
        part = table.filter(pl.col(key) == level)
        by_model = {r["model"]: r for r in part.iter_rows(named=True)}
        rows = [by_model.get(m) for m in models]
        rate = _pct([r["error_rate"] if r else None for r in rows])
        lo = _pct([r["boot_lo"] if r else None for r in rows])
        hi = _pct([r["boot_hi"] if r else None for r in rows])
        xs = [i + (j - (len(levels) - 1) / 2) * width for i in range(len(models))]
        colour = palette[min(j, len(palette) - 1)]
        ax.bar(xs, rate, width=width * 0.92, color=colour, edgecolor="#404040", linewidth=0.5,
               label=_split_label(key, level), zorder=2)  # fmt: skip
        ax.errorbar(xs, rate, yerr=_yerr(rate, lo, hi), fmt="none", ecolor=_WILSON, elinewidth=1.0,
                    capsize=3, zorder=3)  # fmt: skip
        tops.append([max(a, b) if not math.isnan(b) else a for a, b in zip(rate, hi, strict=True)])
        labels.append((xs, rows, tops[-1]))
    top = _top(tops)
    for xs, rows, heights in labels:
        for x, r, y in zip(xs, rows, heights, strict=True):
            if r is not None and r["n"]:
                ax.text(x, (0 if math.isnan(y) else y) + 0.015 * top, f"{r['errors']}/{r['n']}", ha="center",
                        va="bottom", fontsize=6.5, rotation=90)  # fmt: skip
    ax.set_xticks(range(len(models)), _tick_labels(report, [str(m) for m in models]))
    _percent_axis(ax, top, 1.25)
    what = "objects" if report.cluster == "object" else "question ids"
    ax.set_title(f"{_simulation_tag(report)}Error rate per model by {key}\nbars: cluster bootstrap 95% (resampling {what}); "
                 "labels: errors/answered", fontsize=10)  # fmt: skip
    ax.legend(title=key, loc="upper right", fontsize=8, title_fontsize=8, frameon=False)
    return fig


def write_charts(report: Report, out_dir: str | Path) -> list[Path]:
    """Draw every chart the report supports as PNG into ``out_dir``; returns the paths.

    Usage: ``write_charts(report, Path("runs/seed-v2"))``
    """
    out = Path(out_dir)
    figures = [("overall", chart_error_rate(report))]
    if report.by_difficulty is not None:
        figures.append(("difficulty", chart_split(report, "difficulty")))
    figures.append(("temperature", chart_split(report, "temperature")))
    paths = []
    for name, fig in figures:
        path = out / CHART_FILES[name]
        try:
            fig.savefig(path, format="png")
        except OSError as exc:
            raise ReportError(f"cannot write chart {path}: {exc.strerror}") from exc
        paths.append(path)
    return paths
