"""The report as one self-contained HTML page: tables in plain HTML, charts in Vega-Lite, all inline.

The page opens from disk with no network: its Content-Security-Policy forbids loading anything,
and the chart script (:func:`engine.report.vega.vega_bundle`) and styles sit inside it. Every
number is in a plain HTML table, so the page reads without JavaScript; the charts and the replies
table's filters are added by script. The report must be built with ``extras=True`` (heat map,
distributions, traffic, replies).

Usage::

    report = build_report("runs/memorisation", extras=True)
    Path("report.html").write_text(render_html(report, script=vega_bundle(), info=RunInfo(name="memorisation")))
"""

from __future__ import annotations

import datetime as dt
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import polars as pl

from engine.report.model import Report
from engine.report.render import report_sections, simulation_banner, summary_lines
from engine.report.tables import model_order
from engine.report.vega import comparison_spec, heatmap_spec, histogram_spec, rate_spec, split_spec

__all__ = ["HEATMAP_ROWS", "RunInfo", "heatmap_order", "render_html"]

HEATMAP_ROWS = 60
"""At most this many clusters (those with the most errors) are drawn in the heat map."""

_CSP = ("default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; "
        "img-src data: blob:")  # fmt: skip  # Vega compiles its expressions with Function(): 'unsafe-eval'

_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:0 1.2em 3em;color:#111}
h1{margin-top:.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
.banner{background:#111;color:#fff;padding:.7em 1em;font-weight:600;margin-top:1em}
dl.headline{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:.6em;margin:1em 0}
dl.headline div{border:1px solid #ccc;padding:.4em .6em}dl.headline dt{font-size:.8em;color:#444}
dl.headline dd{margin:0;font-size:1.25em;font-weight:600}
table{border-collapse:collapse;margin:.6em 0;font-variant-numeric:tabular-nums}
th,td{border-bottom:1px solid #ddd;padding:.2em .6em;text-align:right;vertical-align:top}
th{background:#f2f2f2}td.k,th.k{text-align:left}
.scroll{max-height:36em;overflow:auto;border:1px solid #ddd}
.scroll th{position:sticky;top:0}
.chart{margin:.8em 0}.note{color:#444;font-size:.9em}
form.filters label{margin-right:1em}
html.js .nojs{display:none}
pre{background:#f6f6f6;padding:.6em;overflow:auto}
#replies-section{content-visibility:auto;contain-intrinsic-size:auto 40em}
"""
# content-visibility: the replies (thousands of rows) are laid out only when scrolled to; measured in
# headless Chromium it halves the time until the page is ready (docs/results.md).

_SCRIPT = """
document.documentElement.classList.add('js');
const charts = Array.from(document.querySelectorAll('div.chart'));
Promise.all(charts.map(el => {
  const spec = JSON.parse(document.getElementById(el.dataset.spec).textContent);
  return vegaEmbed(el, spec, {actions: false, renderer: 'svg', mode: 'vega-lite'})
    .then(() => { el.dataset.rendered = '1'; });
})).then(() => { document.body.dataset.charts = 'done'; },
         e => { document.body.dataset.charts = 'failed'; console.error(e); });
const form = document.getElementById('filters');
const rows = Array.from(document.querySelectorAll('#replies tbody tr'));
if (form) {
  form.hidden = false;
  const selects = Array.from(form.querySelectorAll('select'));
  for (const sel of selects) {
    const values = [...new Set(rows.map(r => r.dataset[sel.name]))];
    for (const v of values) { const o = document.createElement('option'); o.value = v; o.textContent = v; sel.append(o); }
  }
  const shown = document.getElementById('shown');
  form.addEventListener('change', () => {
    let n = 0;
    for (const r of rows) {
      const ok = selects.every(s => s.value === '' || r.dataset[s.name] === s.value);
      r.hidden = !ok; if (ok) n++;
    }
    shown.textContent = n.toLocaleString() + ' of ' + rows.length.toLocaleString() + ' rows shown';
  });
}
"""


@dataclass(frozen=True, kw_only=True, slots=True)
class RunInfo:
    """What the run directory says beside its log: the spec and when the run was made."""

    name: str
    spec_text: str | None = None
    created: float | None = None  # run.json's times (seconds since the epoch)
    updated: float | None = None


def heatmap_order(cells: pl.DataFrame) -> list[str]:
    """Clusters by their errors over all models, most first (then most answered, then name).

    Usage: ``heatmap_order(report.by_cluster)[:10]``
    """
    totals = cells.group_by("cluster").agg(pl.col("errors").sum(), pl.col("n").sum())
    return totals.sort(["errors", "n", "cluster"], descending=[True, True, False]).get_column("cluster").to_list()


def _e(text: object) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def _md(text: str) -> str:
    """Escape, then turn the Markdown `name` marks of the shared summary lines into <code>."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", _e(text))


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]], keys: int, *, attrs: str = "") -> str:
    head = "".join(f'<th scope="col"{" class=k" if i < keys else ""}>{_e(h)}</th>' for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(f"<td{' class=k' if i < keys else ''}>{_e(c)}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class _Charts:
    """Numbers each chart and keeps its spec as inline JSON beside the element it is drawn into."""

    def __init__(self, *, simulated: bool) -> None:
        self.count = 0
        self.simulated = simulated  # a chart copied out of the page still says it shows a simulation

    def __call__(self, spec: dict[str, Any], label: str) -> str:
        self.count += 1
        if self.simulated:
            spec = {"title": {"text": f"[simulation] {label}", "anchor": "start", "fontSize": 12}, **spec}
        data = orjson.dumps(spec).replace(b"</", b"<\\/").decode()
        return (f'<div class="chart" id="chart-{self.count}" data-spec="spec-{self.count}" role="img" '
                f'aria-label="{_e(label)}"></div>'
                f'<script type="application/json" id="spec-{self.count}">{data}</script>')  # fmt: skip


def _when(ts: float | None) -> str:
    return "unknown" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _headline(report: Report, info: RunInfo) -> str:
    t = report.traffic
    items = [
        ("tasks", f"{report.tasks:,}"), ("answered", f"{report.answered:,}"),
        ("infrastructure failures", f"{report.failed:,}"),
        ("requests", f"{t.requests:,}" if t else "n/a"), ("retries", f"{t.retries:,}" if t else "n/a"),
        ("429 answers", f"{t.rate_limited:,}" if t else "n/a"),
        ("tokens", f"{t.tokens:,}" if t and t.tokens is not None else "not counted"),
        ("cost", "not known"),  # the spec has no prices; tokens are the cost's measure
        ("time answering", f"{report.span_s:,.1f} s" if report.span_s else "n/a"),
        ("run made", _when(info.created)), ("last updated", _when(info.updated)),
    ]  # fmt: skip
    return '<dl class="headline">' + "".join(f"<div><dt>{_e(k)}</dt><dd>{_e(v)}</dd></div>" for k, v in items) + "</dl>"


def _heatmap(report: Report, models: Sequence[str], chart: _Charts) -> str:
    cells = report.by_cluster
    if cells is None or cells.is_empty():
        return ""
    order = heatmap_order(cells)
    drawn = order[:HEATMAP_ROWS]
    what = "object" if report.cluster == "object" else "question id"
    left = len(order) - len(drawn)
    note = (f"Rows: the {len(drawn):,} {what}s with the most errors over all models, most at the top"
            + (f"; {left:,} more with fewer errors are not drawn." if left else ".")
            + " Darker is a higher error rate (one hue, readable in grey).")  # fmt: skip
    shown = cells.filter(pl.col("cluster").is_in(drawn))
    by = {(m, c): (e, n) for m, c, e, n in shown.select("model", "cluster", "errors", "n").iter_rows()}
    rows = [[c, *(f"{by[(m, c)][0]}/{by[(m, c)][1]}" if (m, c) in by else "" for m in models)] for c in drawn[:20]]
    table = _table([what, *(f"{m} errors/n" for m in models)], rows, 1)
    return (f'<section id="heatmap"><h2>Where errors cluster: error rate per {_e(what)} × model</h2>'
            f'<p class="note">{_e(note)}</p>'
            + chart(heatmap_spec(shown, drawn, models, what), f"heat map of error rate per {what} and model")
            + f"<details><summary>The top {len(rows)} as a table</summary>{table}</details></section>")  # fmt: skip


def _distributions(report: Report, models: Sequence[str], chart: _Charts) -> str:
    bins = report.histograms
    if bins is None or bins.is_empty():
        return ""
    parts = []
    for measure in bins.get_column("measure").unique(maintain_order=True).to_list():
        sub = bins.filter(pl.col("measure") == measure)
        parts.append(f"<h3>{_e(measure)}</h3>" + chart(histogram_spec(sub, measure, models), f"distribution of {measure}"))
    return ('<section id="distributions"><h2>Latency and token distributions (answered tasks)</h2>'
            '<p class="note">Bins run up to the 99th percentile over all models; the last bin holds the tail.</p>'
            + "".join(parts) + "</section>")  # fmt: skip


def _escaped(column: str) -> pl.Expr:
    return pl.col(column).cast(pl.String).fill_null("").str.replace_many(
        ["&", "<", ">", '"'], ["&amp;", "&lt;", "&gt;", "&quot;"]
    )


def _reply_rows(rows: pl.DataFrame, has_difficulty: bool) -> str:
    """The replies' <tr> rows, built column-wise by Polars: thousands of rows in milliseconds."""
    temperature = pl.col("temperature").cast(pl.String).fill_null("").str.replace(r"\.0$", "")
    frame = rows.with_columns(temperature.alias("temperature"))
    cells = ["model", *(["difficulty"] if has_difficulty else []), "temperature", "outcome", "qid", "expected",
             "extracted", "reply"]  # fmt: skip
    parts: list[pl.Expr | str] = []
    for name in ("model", "difficulty", "temperature", "outcome"):
        parts += [pl.lit(f' data-{name}="'), _escaped(name), pl.lit('"')]
    row = pl.concat_str([pl.lit("<tr"), *parts, pl.lit(">"),
                         *(e for c in cells for e in (pl.lit("<td class=k>"), _escaped(c), pl.lit("</td>"))),
                         pl.lit("</tr>")])  # fmt: skip
    return "".join(frame.select(row.alias("row")).get_column("row").to_list())


def _replies(report: Report) -> str:
    replies = report.replies
    if replies is None:
        return ""
    filters = [("model", "model"), ("difficulty", "difficulty"), ("temperature", "temperature"), ("outcome", "outcome")]
    has_difficulty = replies.rows.get_column("difficulty").null_count() < replies.rows.height
    filters = [f for f in filters if f[0] != "difficulty" or has_difficulty]
    selects = "".join(f'<label>{_e(label)} <select name="{name}"><option value="">all</option></select></label>'
                      for name, label in filters)  # fmt: skip
    form = f'<form class="filters" id="filters" hidden>{selects} <span id="shown" class="note"></span></form>'
    headers = ["model", *(["difficulty"] if has_difficulty else []), "temperature", "outcome", "question id",
               "expected", "extracted", "reply (or error)"]  # fmt: skip
    body = _reply_rows(replies.rows, has_difficulty)
    head = "".join(f'<th scope="col" class=k>{_e(h)}</th>' for h in headers)
    return (f'<section id="replies-section"><h2>Replies</h2><p class="note">{_e(replies.note)}</p>{form}'
            f'<div class="scroll"><table id="replies"><thead><tr>{head}</tr></thead>'
            f'<tbody>{body}</tbody></table></div></section>')  # fmt: skip


def _section_chart(title: str, report: Report, models: Sequence[str], chart: _Charts) -> str:
    if title == "Error rate per model":
        return chart(rate_spec(report.overall, models), "error rate per model with both intervals")
    if title == "Model comparisons" and report.comparisons.height:
        return chart(comparison_spec(report.comparisons), "paired differences in error rate")
    if title == "By difficulty" and report.by_difficulty is not None:
        return chart(split_spec(report.by_difficulty, "difficulty", models), "error rate by difficulty")
    if title == "By temperature":
        return chart(split_spec(report.by_temperature, "temperature", models), "error rate by temperature")
    return ""


def render_html(report: Report, *, script: str, info: RunInfo) -> str:
    """The whole page. ``script`` is the chart library (see :func:`engine.report.vega.vega_bundle`).

    Usage: ``render_html(build_report(run, extras=True), script=vega_bundle(), info=RunInfo(name=run.name))``
    """
    models = model_order(report.targets.get_column("model").to_list()) if report.targets.height else []
    models = [m for m in report.overall.get_column("model").to_list() if m is not None] or models
    banner = simulation_banner(report)
    chart = _Charts(simulated=banner is not None)
    parts = [
        *([f'<p class="banner" id="simulation">{_e(banner[0])} — {_e(banner[1])}</p>'] if banner else []),
        f"<h1>Report: {_e(info.name)}</h1>", _headline(report, info),
        '<p class="nojs note">Charts need JavaScript; every number is also in the tables.</p>',
        *(f"<p>{_md(line)}</p>" for line in summary_lines(report)),
    ]
    heatmap = _heatmap(report, models, chart)
    for title, (headers, rows, keys) in report_sections(report):
        if title.startswith("By ") and heatmap:  # the heat map follows the model rows and comparisons
            parts.append(heatmap)
            heatmap = ""
        if title.startswith("Latency"):
            parts.append(_distributions(report, models, chart))
        parts.append(f'<section id="{_slug(title)}"><h2>{_e(title)}</h2>'
                     + _section_chart(title, report, models, chart) + _table(headers, rows, keys) + "</section>")  # fmt: skip
    parts.append(_replies(report))
    if info.spec_text:
        parts.append(f'<section id="spec"><h2>Spec</h2><details><summary>spec.toml</summary>'
                     f"<pre>{_e(info.spec_text)}</pre></details></section>")  # fmt: skip
    safe_script = script.replace("</script", "<\\/script")
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>Report: {_e(info.name)}</title><style>{_STYLE}</style></head><body>"
            + "\n".join(p for p in parts if p)
            + f"<script>{safe_script}</script><script>{_SCRIPT}</script></body></html>\n")  # fmt: skip
