"""The HTML page's charts: Vega-Lite specifications, and the Vega JavaScript that draws them, inline.

Why Vega-Lite (measured, see docs/results.md "The HTML report"): a page must open offline, so the
library's script goes inside it. Vega + Vega-Lite + vega-embed is about 0.9 MB minified, Plotly's
plotly.min.js about 4.8 MB; a Vega-Lite chart is a small JSON document (data and encoding), and the
same page drew faster in headless Chromium. The specifications are written here as plain dicts:
Altair would only build the same JSON, and its import (about 0.3 s, jsonschema) would sit on every
report's path.

The script comes from ``vl-convert-python`` (a pinned Vega, Vega-Lite and vega-embed, bundled with
no network). Bundling takes about 2 s, so it is kept in a cache file per vl-convert version
(``$XDG_CACHE_HOME/engine``, else ``~/.cache/engine``) and read back in a millisecond.

Colour: one sequential single-hue scale (light to dark orange) for rates, so the heat map reads in
grey too; intervals are drawn as a light thick bar (cluster bootstrap) over a thin dark one (Wilson).

Usage::

    script = vega_bundle()                        # window.vegaEmbed, window.vega, window.vegaLite
    spec = heatmap_spec(cells, order, models, "object")
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from engine.errors import ReportError
from engine.results.cache import user_cache_dir

__all__ = [
    "comparison_spec", "heatmap_spec", "histogram_spec", "rate_spec", "split_spec", "vega_bundle",
]  # fmt: skip

Spec = dict[str, Any]

_DARK = "#7f2704"  # the darkest orange: the point estimate
_LIGHT = "#fdae6b"  # the cluster bootstrap interval
_WILSON = "#252525"
# Sequential, one hue (ColorBrewer's Oranges): lightness alone carries the value, so it reads in grey;
# it starts at near-white, where Vega's own "oranges" starts at a tint, so a cell with no error looks empty.
_RAMP = ["#fff5eb", "#fdbe85", "#fd8d3c", "#d94701", "#7f2704"]
_WIDTH = 520


def vega_bundle(cache_dir: Path | None = None) -> str:
    """The Vega, Vega-Lite and vega-embed script, from the cache or bundled by vl-convert once.

    A cache that cannot be written is not an error: the script is bundled again next time.
    Usage: ``f"<script>{vega_bundle()}</script>"``
    """
    try:
        version = importlib.metadata.version("vl-convert-python")
    except importlib.metadata.PackageNotFoundError as exc:
        raise ReportError("report.html needs the vl-convert-python package (pip install vl-convert-python)") from exc
    cached = (cache_dir or user_cache_dir()) / f"vega-bundle-{version}.js"
    try:
        return cached.read_text(encoding="utf-8")
    except OSError:
        pass
    import vl_convert  # only on a cache miss; bundling starts a JavaScript runtime

    try:
        # Without a snippet it bundles all of Vega, Vega-Lite and vega-embed; the stub wrongly requires one.
        script = str(vl_convert.javascript_bundle())  # type: ignore[call-arg]
    except Exception as exc:  # vl-convert raises plain RuntimeErrors from its Rust side
        raise ReportError(f"cannot bundle the chart script with vl-convert: {exc}".splitlines()[0]) from exc
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(script, encoding="utf-8")
        os.replace(partial, cached)  # whole or absent: a concurrent report never reads half a script
    except OSError:
        pass
    return script


def _values(df: pl.DataFrame, columns: Sequence[str]) -> list[dict[str, Any]]:
    return df.select(columns).to_dicts()


def _pct_axis(title: str) -> dict[str, Any]:
    return {"title": title, "format": ".0%"}


def _interval_layers(y: str, y_sort: Sequence[Any], y_title: str) -> list[Spec]:
    y_enc = {"field": y, "type": "nominal", "sort": list(y_sort), "title": y_title}
    tooltip = [
        {"field": y, "type": "nominal"},
        {"field": "error_rate", "type": "quantitative", "format": ".2%", "title": "error rate"},
        {"field": "boot_lo", "type": "quantitative", "format": ".2%", "title": "bootstrap low"},
        {"field": "boot_hi", "type": "quantitative", "format": ".2%", "title": "bootstrap high"},
        {"field": "wilson_lo", "type": "quantitative", "format": ".2%", "title": "Wilson low"},
        {"field": "wilson_hi", "type": "quantitative", "format": ".2%", "title": "Wilson high"},
    ]
    return [
        {"mark": {"type": "rule", "strokeWidth": 9, "color": _LIGHT},
         "encoding": {"y": y_enc, "x": {"field": "boot_lo", "type": "quantitative",
                                         "axis": _pct_axis("error rate (errors ÷ answered)")},
                      "x2": {"field": "boot_hi"}}},
        {"mark": {"type": "rule", "strokeWidth": 2, "color": _WILSON},
         "encoding": {"y": y_enc, "x": {"field": "wilson_lo", "type": "quantitative"}, "x2": {"field": "wilson_hi"}}},
        {"mark": {"type": "point", "filled": True, "size": 70, "color": _DARK},
         "encoding": {"y": y_enc, "x": {"field": "error_rate", "type": "quantitative"}, "tooltip": tooltip}},
    ]  # fmt: skip


_RATE_COLUMNS = ("error_rate", "wilson_lo", "wilson_hi", "boot_lo", "boot_hi")


def rate_spec(overall: pl.DataFrame, models: Sequence[str]) -> Spec:
    """Error rate per model: the point, the cluster bootstrap (light, thick) and Wilson (dark, thin) intervals.

    Usage: ``rate_spec(report.overall, models)``
    """
    return {
        "width": _WIDTH, "height": {"step": 28},
        "data": {"values": _values(overall, ["model", *_RATE_COLUMNS])},
        "layer": _interval_layers("model", models, "model"),
    }  # fmt: skip


def split_spec(table: pl.DataFrame, key: str, models: Sequence[str]) -> Spec:
    """Error rate per model split by ``key`` (difficulty, temperature), one row of panels per model.

    Usage: ``split_spec(report.by_difficulty, "difficulty", models)``
    """
    df = table.with_columns(pl.col(key).cast(pl.String))
    order = list(dict.fromkeys(df.get_column(key).to_list()))
    return {
        "data": {"values": _values(df, ["model", key, *_RATE_COLUMNS])},
        "facet": {"row": {"field": "model", "type": "nominal", "sort": list(models), "title": None}},
        "spec": {"width": _WIDTH, "height": {"step": 22}, "layer": _interval_layers(key, order, key)},
    }  # fmt: skip


def comparison_spec(comparisons: pl.DataFrame) -> Spec:
    """Each pair's difference in error rate with its paired cluster-bootstrap interval; a rule marks zero.

    Usage: ``comparison_spec(report.comparisons)``
    """
    df = comparisons.with_columns(pair=pl.format("{} − {}", "model_a", "model_b"))
    pairs = df.get_column("pair").to_list()
    y = {"field": "pair", "type": "nominal", "sort": pairs, "title": "a − b"}
    return {
        "width": _WIDTH, "height": {"step": 24},
        "data": {"values": _values(df, ["pair", "diff", "diff_lo", "diff_hi"])},
        "layer": [
            {"mark": {"type": "rule", "strokeWidth": 9, "color": _LIGHT},
             "encoding": {"y": y, "x": {"field": "diff_lo", "type": "quantitative",
                                         "axis": _pct_axis("difference in error rate (a − b)")},
                          "x2": {"field": "diff_hi"}}},
            {"mark": {"type": "point", "filled": True, "size": 60, "color": _DARK},
             "encoding": {"y": y, "x": {"field": "diff", "type": "quantitative"},
                          "tooltip": [{"field": "pair"}, {"field": "diff", "format": "+.2%", "type": "quantitative"},
                                      {"field": "diff_lo", "format": "+.2%", "type": "quantitative"},
                                      {"field": "diff_hi", "format": "+.2%", "type": "quantitative"}]}},
            {"data": {"values": [{"zero": 0}]}, "mark": {"type": "rule", "strokeDash": [4, 3], "color": _WILSON},
             "encoding": {"x": {"field": "zero", "type": "quantitative"}}},
        ],
    }  # fmt: skip


def heatmap_spec(cells: pl.DataFrame, order: Sequence[str], models: Sequence[str], cluster: str) -> Spec:
    """Error rate per cluster (rows, in ``order``: most errors first) and model (columns).

    Usage: ``heatmap_spec(report.by_cluster, ["Harbor", "Kettle"], models, "object")``
    """
    top = cells.get_column("error_rate").max()
    peak = float(top) if isinstance(top, float) and top > 0 else 1.0
    return {
        "width": {"step": 64}, "height": {"step": 14},
        "data": {"values": _values(cells, ["model", "cluster", "n", "errors", "error_rate"])},
        "mark": {"type": "rect", "stroke": "#ffffff", "strokeWidth": 0.5},
        "encoding": {
            "x": {"field": "model", "type": "nominal", "sort": list(models), "title": "model",
                  "axis": {"orient": "top", "labelAngle": 0}},
            "y": {"field": "cluster", "type": "nominal", "sort": list(order), "title": cluster},
            "color": {"field": "error_rate", "type": "quantitative", "title": "error rate",
                      "scale": {"range": _RAMP, "domain": [0, peak]}, "legend": {"format": ".0%"}},
            "tooltip": [{"field": "cluster", "title": cluster}, {"field": "model"},
                        {"field": "errors", "type": "quantitative"}, {"field": "n", "type": "quantitative",
                                                                      "title": "answered"},
                        {"field": "error_rate", "type": "quantitative", "format": ".1%", "title": "error rate"}],
        },
    }  # fmt: skip


def histogram_spec(bins: pl.DataFrame, measure: str, models: Sequence[str]) -> Spec:
    """One measure's distribution (latency, completion tokens), a row of bars per model on one x scale.

    Usage: ``histogram_spec(report.histograms.filter(pl.col("measure") == "latency (ms)"), "latency (ms)", models)``
    """
    return {
        "data": {"values": _values(bins, ["model", "lo", "hi", "count"])},
        "facet": {"row": {"field": "model", "type": "nominal", "sort": list(models), "title": None}},
        "spec": {
            "width": _WIDTH, "height": 70,
            "mark": {"type": "bar", "color": _DARK, "opacity": 0.85},
            "encoding": {
                "x": {"field": "lo", "type": "quantitative", "bin": {"binned": True}, "title": measure},
                "x2": {"field": "hi"},
                "y": {"field": "count", "type": "quantitative", "title": "tasks"},
                "tooltip": [{"field": "lo", "title": "from"}, {"field": "hi", "title": "to"}, {"field": "count"}],
            },
        },
        "resolve": {"scale": {"y": "independent"}},
    }  # fmt: skip
