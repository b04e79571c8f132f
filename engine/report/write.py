"""Saving a report beside its log (``report.md``, ``report.html``, PNG charts), and ``engine report``.

``engine run`` saves report.md and report.html only (``charts=False``): the PNGs need matplotlib
(about 1.4 s to import and draw), while the page's charts cost nothing to write. ``engine report``
draws the PNGs too. Each default report leaves a stamp (:mod:`engine.report.stamp`) so a rerun that
added nothing to the log skips the report.

Usage::

    paths = write_report("runs/memorisation")        # [.../report.md, .../report.html, .../chart_error_rate.png, ...]
    main_report("runs/memorisation", fmt="json")     # what `engine report --format json` does
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from engine.errors import ReportError
from engine.report import stats
from engine.report.build import build_report
from engine.report.html import RunInfo, render_html
from engine.report.model import Report
from engine.report.render import render_markdown, render_terminal, report_to_csv, report_to_json
from engine.report.stamp import log_fingerprint, report_is_current, write_stamp
from engine.report.vega import vega_bundle
from engine.results.paths import run_dir_of_log

REPORT_FILE = "report.md"
HTML_FILE = "report.html"
FORMATS = ("table", "md", "json", "csv", "html")


def run_info(run_dir: Path) -> RunInfo:
    """The run's name, spec text and times, from spec.toml and run.json when present. Usage: ``run_info(run)``"""
    meta: dict[str, Any] = {}
    try:
        loaded = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        meta = loaded if isinstance(loaded, dict) else {}
    except (OSError, ValueError):
        pass
    try:
        spec_text: str | None = (run_dir / "spec.toml").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        spec_text = None

    def number(key: str) -> float | None:
        value = meta.get(key)
        return float(value) if isinstance(value, int | float) else None

    return RunInfo(name=str(meta.get("name") or run_dir.name), spec_text=spec_text, created=number("created"),
                   updated=number("updated"))  # fmt: skip


def write_run_report(run_dir: str | Path) -> list[Path]:
    """What ``engine run`` saves: report.md and report.html, skipped when the log is as the last report saw it.

    Returns the files written (none when skipped). Usage: ``write_run_report("runs/memorisation")``
    """
    root = Path(run_dir)
    if report_is_current(root, [REPORT_FILE, HTML_FILE]):
        return []
    return write_report(root, charts=False)


def write_report(
    run_dir: str | Path,
    *,
    by: str | Sequence[str] | None = None,
    seed: int = 0,
    bootstrap: int = stats.DEFAULT_REPS,
    charts: bool = True,
    report: Report | None = None,
) -> list[Path]:
    """Write ``report.md``, ``report.html`` and (``charts``) the PNG charts beside the log; returns their paths.

    Pass ``report`` to reuse one already built with ``extras=True`` (the other options are then
    unused). The default report (no ``by``) leaves a stamp, so an unchanged log is not reported again.
    Usage: ``write_report("runs/memorisation")  # [.../report.md, .../report.html, .../chart_error_rate.png, ...]``
    """
    stamp = log_fingerprint(Path(run_dir)) if Path(run_dir).is_dir() else None
    report = report or build_report(run_dir, by=by, seed=seed, bootstrap=bootstrap, extras=True)
    out_dir = run_dir_of_log(report.source)
    pngs: list[Path] = []
    if charts:
        from engine.report.charts import write_charts  # matplotlib is slow to import; only when drawing

        pngs = write_charts(report, out_dir)
    target, page = out_dir / REPORT_FILE, out_dir / HTML_FILE
    _save(target, render_markdown(report, charts=pngs, page=page.name))
    _save(page, render_html(report, script=vega_bundle(), info=run_info(out_dir)))
    if stamp is not None and not report.by:
        write_stamp(out_dir, stamp, [target.name, page.name, *(p.name for p in pngs)])
    return [target, page, *pngs]


def _save(target: Path, text: str) -> None:
    try:
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"cannot write {target}: {exc.strerror}") from exc


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
    if fmt not in FORMATS:
        raise ReportError(f"unknown report format {fmt!r} (expected table, md, json, csv or html)")
    default = by is None and not all_records
    if fmt == "html" and not default:
        raise ReportError("--format html writes the run's report.html, which describes its grid: drop --by and --all")
    report = build_report(run_dir, by=by, seed=seed, all_records=all_records, extras=default)
    if fmt in ("json", "csv"):
        text = report_to_json(report) if fmt == "json" else report_to_csv(report)
        console.file.write(text if text.endswith("\n") else text + "\n")
        return 0
    paths: list[Path] = []
    note = None
    if default:
        try:
            paths = write_report(run_dir, report=report, charts=fmt != "html")
        except ReportError as exc:
            note = f"engine: note: {exc}; the report is printed, not saved"
    else:
        note = "engine: note: report.md left as it is (only the default report, without --by or --all, writes it)"
    if fmt == "html":
        if paths:
            console.file.write(f"wrote {paths[1]}\n")  # one line, never wrapped: scripts read the path
    elif fmt == "md":
        console.file.write(render_markdown(report, charts=paths[2:], page=HTML_FILE if paths else None))
    else:
        render_terminal(report, console)
        if paths:
            console.print(f"wrote {', '.join(str(p) for p in paths)}", highlight=False)
    if note is not None:
        print(note, file=sys.stderr)
    return 0
