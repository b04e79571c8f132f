"""Why the HTML report draws with Vega-Lite: the same heat map as a self-contained page, two libraries.

Builds the example's heat map (error rate per object × model, from a run directory) twice, each page
with its library's script inline so it opens offline: Vega-Lite (vega + vega-lite + vega-embed from
vl-convert-python) and Plotly (plotly.min.js from the plotly package, which this benchmark needs:
``pip install plotly``; engine does not depend on it). Prints each page's size and the median time
from navigation until the chart is drawn in headless Chromium (5 loads, one browser).

Usage::

    engine run data/memorisation.toml && python benchmarks/bench_chartlib.py runs/memorisation
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import orjson

CHROMIUM_FLAGS = ("--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")  # fmt: skip


def vega_page(run: Path) -> str:
    from engine.report.build import build_report
    from engine.report.html import heatmap_order
    from engine.report.vega import heatmap_spec, vega_bundle

    report = build_report(run, extras=True)
    assert report.by_cluster is not None
    models = report.overall.get_column("model").to_list()
    spec = heatmap_spec(report.by_cluster, heatmap_order(report.by_cluster), models, report.cluster)
    data = orjson.dumps(spec).decode().replace("</", "<\\/")
    return (f"<!doctype html><meta charset=utf-8><div id=c></div><script>{vega_bundle()}</script><script>"
            f"vegaEmbed('#c', {data}, {{actions: false, renderer: 'svg', mode: 'vega-lite'}})"
            ".then(() => document.body.dataset.done = '1');</script>")  # fmt: skip


def plotly_page(run: Path) -> str:
    import plotly.graph_objects as go
    from plotly.offline import get_plotlyjs

    from engine.report.build import build_report
    from engine.report.html import heatmap_order

    report = build_report(run, extras=True)
    assert report.by_cluster is not None
    models = report.overall.get_column("model").to_list()
    order = heatmap_order(report.by_cluster)
    rate = {(m, c): r for m, c, r in report.by_cluster.select("model", "cluster", "error_rate").iter_rows()}
    z = [[rate.get((m, c)) for m in models] for c in order]
    fig = go.Figure(go.Heatmap(z=z, x=models, y=order, colorscale="Oranges"))
    fig.update_yaxes(autorange="reversed")
    div = fig.to_html(full_html=False, include_plotlyjs=False, div_id="c")
    return (f"<!doctype html><meta charset=utf-8><script>{get_plotlyjs()}</script>{div}<script>"
            "document.getElementById('c').on('plotly_afterplot', () => document.body.dataset.done = '1');"
            "if (document.querySelector('#c .main-svg')) document.body.dataset.done = '1';</script>")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run directory (e.g. runs/memorisation)")
    parser.add_argument("--loads", type=int, default=5)
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("no chromium on PATH (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(str(Path(tmp) / "profile"), executable_path=chromium,
                                                        headless=True, args=list(CHROMIUM_FLAGS))  # fmt: skip
        for name, make in (("Vega-Lite", vega_page), ("Plotly", plotly_page)):
            page_file = Path(tmp) / f"{name}.html"
            page_file.write_text(make(args.run), encoding="utf-8")
            times = []
            for _ in range(args.loads):
                page = context.new_page()
                t = time.perf_counter()
                page.goto(page_file.as_uri())
                page.wait_for_selector("body[data-done]", timeout=60_000)
                times.append(time.perf_counter() - t)
                page.close()
            print(f"{name}: page {page_file.stat().st_size / 2**20:.2f} MB, drawn in {statistics.median(times):.2f} s "
                  f"(median of {args.loads})")
        context.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
