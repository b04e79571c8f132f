"""Saving a report beside its log (``report.md`` and PNG charts), and ``engine report``.

Usage::

    paths = write_report("runs/memorisation")        # [.../report.md, .../chart_error_rate.png, ...]
    main_report("runs/memorisation", fmt="json")     # what `engine report --format json` does
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from engine.errors import ReportError
from engine.report import stats
from engine.report.build import build_report
from engine.report.model import Report
from engine.report.render import render_markdown, render_terminal, report_to_csv, report_to_json

REPORT_FILE = "report.md"


def write_report(
    run_dir: str | Path,
    *,
    by: str | Sequence[str] | None = None,
    seed: int = 0,
    bootstrap: int = stats.DEFAULT_REPS,
    charts: bool = True,
    report: Report | None = None,
) -> list[Path]:
    """Write ``report.md`` and the PNG charts beside the log; returns their paths.

    Pass ``report`` to reuse one already built (the other options are then unused).
    Usage: ``write_report("runs/memorisation")  # [.../report.md, .../chart_error_rate.png, ...]``
    """
    report = report or build_report(run_dir, by=by, seed=seed, bootstrap=bootstrap)
    out_dir = report.source.parent
    pngs: list[Path] = []
    if charts:
        from engine.report.charts import write_charts  # matplotlib is slow to import; only when drawing

        pngs = write_charts(report, out_dir)
    target = out_dir / REPORT_FILE
    try:
        target.write_text(render_markdown(report, charts=pngs), encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"cannot write {target}: {exc.strerror}") from exc
    return [target, *pngs]


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
    if fmt not in ("table", "md", "json", "csv"):
        raise ReportError(f"unknown report format {fmt!r} (expected table, md, json or csv)")
    report = build_report(run_dir, by=by, seed=seed, all_records=all_records)
    if fmt in ("json", "csv"):
        text = report_to_json(report) if fmt == "json" else report_to_csv(report)
        console.file.write(text if text.endswith("\n") else text + "\n")
        return 0
    paths: list[Path] = []
    note = None
    if by is None and not all_records:
        try:
            paths = write_report(run_dir, report=report)
        except ReportError as exc:
            note = f"engine: note: {exc}; the report is printed, not saved"
    else:
        note = "engine: note: report.md left as it is (only the default report, without --by or --all, writes it)"
    if fmt == "md":
        console.file.write(render_markdown(report, charts=paths[1:]))
    else:
        render_terminal(report, console)
        if paths:
            console.print(f"wrote {', '.join(str(p) for p in paths)}", highlight=False)
    if note is not None:
        print(note, file=sys.stderr)
    return 0
