"""The example run's report.html in a real browser: every section and the heat map drawn, no console
error, nothing fetched from the network, the replies filter working, and the tables without JavaScript.

Needs Debian's ``chromium`` (``.ci/run`` installs it with apt-get) and Playwright's Python package;
skips saying which is missing. The screenshot is kept in the test's tmp_path.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from engine.cli import main
from engine.report.build import build_report
from engine.report.html import HEATMAP_ROWS, heatmap_order
from tests.support.browser import open_page, why_no_browser

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "data" / "memorisation.toml"
SECTIONS = ("simulation", "error-rate-per-model", "targets", "model-comparisons", "heatmap", "by-difficulty",
            "by-temperature", "by-difficulty-and-temperature", "distributions",
            "latency-and-tokens-answered-tasks", "replies-section", "spec")  # fmt: skip

pytestmark = pytest.mark.skipif(why_no_browser() is not None, reason=why_no_browser() or "")


@pytest.fixture(scope="module")
def example_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("browser") / "memorisation"
    assert main(["run", str(EXAMPLE), "--out", str(out), "--quiet"]) == 0
    assert (out / "report.html").is_file()
    return out


def test_example_report_renders_every_section_and_the_heat_map(example_run: Path, tmp_path: Path) -> None:
    report = build_report(example_run, extras=True)
    assert report.by_cluster is not None
    top = heatmap_order(report.by_cluster)
    with open_page(example_run / "report.html") as seen:
        page = seen.page
        page.wait_for_selector("body[data-charts=done]", timeout=30_000)
        for section in SECTIONS:
            assert page.locator(f"#{section}").count() == 1, section
        charts = page.locator("div.chart")
        assert charts.count() == page.locator("div.chart[data-rendered] svg").count() >= 7
        # The heat map: one rect per drawn object and model, rows ordered most errors first.
        cells = page.locator("#heatmap g.mark-rect.role-mark path")
        assert cells.count() == min(len(top), HEATMAP_ROWS) * 4
        labels = page.evaluate("""Array.from(document.querySelectorAll('#heatmap svg text'))
            .map(t => [t.textContent, t.getBoundingClientRect().top])""")
        rows = sorted((y, text) for text, y in labels if text in top)
        assert [text for _, text in rows] == top[:HEATMAP_ROWS]  # top to bottom: most errors first
        assert "Simulation" in page.locator("#simulation").inner_text()
        titles = page.evaluate("Array.from(document.querySelectorAll('div.chart svg g.role-title text'))"
                               ".map(t => t.textContent)")
        assert len([t for t in titles if t.startswith("[simulation] ")]) == charts.count()  # facet headers besides
        # Filtering the replies by outcome shows exactly the wrong ones.
        wrong = int(report.overall["wrong"].sum())
        page.select_option("#filters select[name=outcome]", "wrong")
        assert page.locator("#replies tbody tr:not([hidden])").count() == wrong
        assert f"{wrong:,} of 3,600 rows shown" in (page.locator("#shown").text_content() or "")
        page.screenshot(path=str(tmp_path / "report.png"))
        assert seen.errors == [] and seen.outside == []
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_tables_and_headline_numbers_work_without_javascript(example_run: Path) -> None:
    with open_page(example_run / "report.html", javascript=False) as seen:
        page = seen.page
        assert page.locator("dl.headline").inner_text().count("3,600") >= 2  # tasks, answered, requests
        rows = page.locator("#error-rate-per-model tbody tr").all_inner_texts()
        assert [r.split("\t")[0] for r in rows] == ["ft-5x", "ft-10x", "ft-25x", "ft-50x"]
        assert page.locator("#replies tbody tr").count() == 3_600  # every reply, none hidden
        assert page.locator("#filters").is_hidden()  # no dead controls without the script
        assert page.locator(".nojs").is_visible()
        assert page.locator("div.chart svg").count() == 0
        assert seen.errors == [] and seen.outside == []


def test_the_replies_filter_combines_model_and_temperature(example_run: Path) -> None:
    log = pl.read_ndjson(example_run / "results.jsonl")
    expected = log.filter((pl.col("model") == "ft-5x") & (pl.col("temperature") == 1.0)).height
    with open_page(example_run / "report.html") as seen:
        page = seen.page
        page.wait_for_selector("body[data-charts=done]", timeout=30_000)
        page.select_option("#filters select[name=model]", "ft-5x")
        page.select_option("#filters select[name=temperature]", "1")
        assert page.locator("#replies tbody tr:not([hidden])").count() == expected == 300
        assert seen.errors == []
