"""report.html: self-contained, the heat map ordered by errors, the replies sampled and saying so, the
traffic counted from the log, and a stamp that skips an unchanged log's report."""

from __future__ import annotations

import io
import re
from pathlib import Path

import orjson
import polars as pl
import pytest
from rich.console import Console

from engine.errors import ReportError
from engine.report.build import build_report
from engine.report.extras import ReplyLimits
from engine.report.html import RunInfo, heatmap_order, render_html
from engine.report.stamp import STAMP_FILE, report_is_current
from engine.report.vega import vega_bundle
from engine.report.write import main_report, write_report, write_run_report
from engine.run.runner import RunOptions, run_experiment
from engine.study.seedio import import_seed
from tests.conftest import BASE_SPEC, SEED_RESULTS, SpecDir
from tests.report.test_report import grid, record, write_log

SCRIPT = "/* the chart library would be here */"


def page_of(run: Path, **kwargs: object) -> str:
    report = build_report(run, extras=True, **kwargs)  # type: ignore[arg-type]
    return render_html(report, script=SCRIPT, info=RunInfo(name="t", spec_text='name = "t" # <b>'))


def chart_specs(page: str) -> list[dict[str, object]]:
    found = re.findall(r'<script type="application/json" id="spec-\d+">(.*?)</script>', page, flags=re.S)
    return [orjson.loads(text.replace("<\\/", "</")) for text in found]


def test_the_page_loads_nothing_from_anywhere_and_escapes_what_it_shows(tmp_path: Path) -> None:
    run = write_log(tmp_path / "run", [*grid(), record("5x", "<script>alert(1)</script>", outcome="wrong")])
    page = page_of(run)
    assert "default-src 'none'" in page  # the browser refuses any fetch, so the page cannot work only online
    assert not re.search(r"<(script|link|img|iframe)\b[^>]*\b(src|href)=", page)
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;" in page  # the spec text too
    assert SCRIPT in page
    assert len(chart_specs(page)) >= 6  # rates, comparisons, heat map, difficulty, temperature, 2 histograms


def test_heat_map_rows_put_the_objects_with_most_errors_first(tmp_path: Path) -> None:
    run = write_log(tmp_path / "run", grid(objects=8))
    report = build_report(run, extras=True)
    assert report.by_cluster is not None
    # 5x misses Obj0 and Obj1 on hard (2 temperatures), 10x misses Obj0: 4, 2, then the clean ones by name.
    assert heatmap_order(report.by_cluster)[:3] == ["Obj0", "Obj1", "Obj2"]
    obj0 = report.by_cluster.filter((pl.col("cluster") == "Obj0") & (pl.col("model") == "5x")).row(0, named=True)
    assert (obj0["errors"], obj0["n"]) == (2, 6) and obj0["error_rate"] == pytest.approx(1 / 3)
    heat = next(s for s in chart_specs(page_of(run)) if s.get("mark", {}) == {"type": "rect", "stroke": "#ffffff",
                                                                                "strokeWidth": 0.5})  # fmt: skip
    encoding = heat["encoding"]
    assert isinstance(encoding, dict)
    assert encoding["y"]["sort"][:2] == ["Obj0", "Obj1"]
    ramp = encoding["color"]["scale"]["range"]  # one hue, lighter to darker: readable in grey
    luminance = [0.299 * int(c[1:3], 16) + 0.587 * int(c[3:5], 16) + 0.114 * int(c[5:7], 16) for c in ramp]
    assert luminance == sorted(luminance, reverse=True) and luminance[0] > 240 and luminance[-1] < 80


@pytest.mark.skipif(not SEED_RESULTS.is_file(), reason=f"{SEED_RESULTS} not present (../shared is beside the clone)")
def test_the_original_studys_heat_map_starts_with_the_objects_carrying_most_errors(tmp_path: Path) -> None:
    run = import_seed(SEED_RESULTS, tmp_path / "seed")
    report = build_report(run, extras=True)
    assert report.by_cluster is not None
    per_object = report.by_cluster.group_by("cluster").agg(pl.col("errors").sum()).sort("errors", descending=True)
    order = heatmap_order(report.by_cluster)
    assert order[0] == per_object["cluster"][0] == "Unicorn"
    errors = dict(per_object.iter_rows())
    assert [errors[o] for o in order] == sorted(errors.values(), reverse=True)
    # Errors cluster: the ten objects at the top carry most of the 178 errors, the other forty the rest.
    assert sum(errors[o] for o in order[:10]) == 113 and sum(errors.values()) == 178


def test_replies_list_every_error_and_a_sample_of_the_rest_saying_so(tmp_path: Path) -> None:
    run = write_log(tmp_path / "run", [*grid(objects=20), record("10x", "Obj0", "easy", 0.5, outcome=None)])
    full = build_report(run, extras=True).replies
    assert full is not None and full.rows.height == full.total == 241 and full.note == "All 241 replies."
    small = build_report(run, extras=True, reply_limits=ReplyLimits(errors=100, rest=10)).replies
    assert small is not None
    outcomes = small.rows.get_column("outcome").value_counts().sort("outcome")
    assert dict(outcomes.iter_rows()) == {"correct": 10, "failed": 1, "wrong": 6}
    assert "all 7 wrong, unanswered or failed" in small.note and "a random 10 of the 234 correct" in small.note
    failed = small.rows.filter(pl.col("outcome") == "failed").row(0, named=True)
    assert failed["reply"].startswith("http 500")  # a failure shows its error where the reply would be
    capped = build_report(run, extras=True, reply_limits=ReplyLimits(errors=3, rest=0)).replies
    assert capped is not None and capped.rows.height == 3 and "a random 3 of the 7" in capped.note


def test_traffic_counts_attempts_retries_and_429s_from_the_log(tmp_path: Path) -> None:
    records = [*grid(objects=2), record("5x", "Obj9", attempts=3, http=[429, 429, 200])]
    report = build_report(write_log(tmp_path / "run", records), extras=True)
    assert report.traffic is not None
    assert (report.traffic.requests, report.traffic.retries, report.traffic.rate_limited) == (24 + 3, 2, 2)
    assert report.traffic.tokens == 25 * 27
    page = page_of(tmp_path / "run")
    assert "<dt>429 answers</dt><dd>2</dd>" in page and "<dt>retries</dt><dd>2</dd>" in page


def test_an_unchanged_log_is_not_reported_again(tmp_path: Path) -> None:
    run = write_log(tmp_path / "run", grid())
    assert [p.name for p in write_run_report(run)] == ["report.md", "report.html"]
    assert (run / STAMP_FILE).is_file() and report_is_current(run, ["report.md", "report.html"])
    assert write_run_report(run) == []
    with (run / "results.jsonl").open("ab") as f:
        f.write(orjson.dumps(record("10x", "ObjNew")) + b"\n")
    assert len(write_run_report(run)) == 2
    (run / "report.html").unlink()
    assert not report_is_current(run, ["report.md", "report.html"])
    assert len(write_run_report(run)) == 2
    write_report(run, by="model,repeat", charts=False)  # a grouped report is not the run's: no stamp of it
    assert write_run_report(run) == []


def test_a_rerun_rewrites_the_grid_but_keeps_the_report_a_changed_grid_does_not(spec_dir: SpecDir) -> None:
    spec = spec_dir.write()
    out = spec_dir.root / "run"
    run_experiment(spec, options=RunOptions(out=out, quiet=True))
    page = (out / "report.html").stat().st_mtime_ns
    grid_before = (out / "grid.json").stat()
    run_experiment(spec, options=RunOptions(out=out, quiet=True))
    grid_after = (out / "grid.json").stat()
    assert (grid_after.st_ino, grid_after.st_mtime_ns) != (grid_before.st_ino, grid_before.st_mtime_ns)
    assert (out / "report.html").stat().st_mtime_ns == page  # same log, same grid: not rendered again
    spec = spec_dir.write(BASE_SPEC.replace("temperatures = [0.0, 1.0]", "temperatures = [0.0]"))
    run_experiment(spec, options=RunOptions(out=out, quiet=True))  # nothing to send, but a new grid
    assert (out / "report.html").stat().st_mtime_ns != page
    assert "12 tasks of the current grid" in (out / "report.md").read_text()


def test_format_html_writes_the_page_and_refuses_by(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = write_log(tmp_path / "run", grid())
    out = io.StringIO()
    assert main_report(run, fmt="html", console=Console(file=out)) == 0
    assert out.getvalue().strip() == f"wrote {run / 'report.html'}"
    assert (run / "report.html").stat().st_size > 1000 and not list(run.glob("*.png"))
    with pytest.raises(ReportError, match="drop --by and --all"):
        main_report(run, fmt="html", by="model", console=Console(file=io.StringIO()))


def test_the_chart_script_is_bundled_once_and_read_from_the_cache(tmp_path: Path) -> None:
    import importlib.metadata

    version = importlib.metadata.version("vl-convert-python")
    (tmp_path / f"vega-bundle-{version}.js").write_text("window.vegaEmbed = 1;")
    assert vega_bundle(tmp_path) == "window.vegaEmbed = 1;"  # read back, not bundled again
