"""The replication's evidence: a run directory packed for the repository, and its table re-made from it.

``pack`` copies what anyone needs to re-report a run into a folder meant to be committed
(``results/replication/``): the log gzip-compressed (``results.jsonl.gz``, which the log reader
reads as it is), ``grid.json`` (so the report scopes exactly the same tasks), ``run.json``,
``spec.toml``, ``training.json`` (each model's set, seed, settings and train key) and
``report.md``. ``table`` renders the study's table from such a folder with ``engine report``'s
own numbers (fixed bootstrap seed), the exact Markdown docs/results.md carries between the
markers ``<!-- evidence-table: FOLDER -->`` and ``<!-- /evidence-table -->``; a test re-makes it
from the committed folder and compares.

Usage::

    python -m engine.study.evidence pack runs/replication-v2 results/replication
    python -m engine.study.evidence table results/replication        # the Markdown table
    python -m engine.study.evidence docs results/replication docs/results.md   # refresh it in the docs
"""

from __future__ import annotations

import argparse
import gzip
import re
import shutil
import sys
from pathlib import Path

import polars as pl

from engine.errors import EngineError, ReportError
from engine.report.build import build_report
from engine.report.model import Report

__all__ = ["EVIDENCE_FILES", "pack", "refresh_docs", "table", "table_in_docs"]

EVIDENCE_FILES = ("grid.json", "run.json", "spec.toml", "training.json", "report.md")
"""Copied beside the compressed log when present."""

_MARKERS = re.compile(r"(<!-- evidence-table: (?P<folder>[^ ]+) -->\n)(?P<body>.*?)(<!-- /evidence-table -->)", re.DOTALL)


def pack(run_dir: Path, out_dir: Path) -> Path:
    """Copy a run's evidence into ``out_dir``, the log gzip-compressed (reproducibly: no time stamp).

    Usage: ``pack(Path("runs/replication-v2"), Path("results/replication"))``
    """
    log = run_dir / "results.jsonl"
    if not log.is_file():
        raise ReportError(f"no results log at {log}")
    out_dir.mkdir(parents=True, exist_ok=True)
    with (
        log.open("rb") as src,
        (out_dir / "results.jsonl.gz").open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as dst,
    ):
        shutil.copyfileobj(src, dst)
    for name in EVIDENCE_FILES:
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, out_dir / name)
    return out_dir


def _pct(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.2f}%"


def _span(lo: float | None, hi: float | None) -> str:
    return "n/a" if lo is None or hi is None or lo != lo or hi != hi else f"{100 * lo:.2f}–{100 * hi:.2f}%"


def _model_rows(report: Report) -> list[str]:
    by_difficulty = report.by_difficulty if report.by_difficulty is not None else pl.DataFrame()
    lines = ["| model | errors / n | error rate | Wilson 95% | cluster bootstrap 95% | easy | mid | hard |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in report.overall.iter_rows(named=True):
        cells = []
        for difficulty in ("easy", "mid", "hard"):
            rows = (by_difficulty.filter((pl.col("model") == r["model"]) & (pl.col("difficulty") == difficulty))
                    if by_difficulty.height else by_difficulty)  # fmt: skip
            cells.append(_pct(rows.row(0, named=True)["error_rate"]) if rows.height else "–")
        lines.append(f"| {r['model']} | {r['errors']}/{r['n']} | {_pct(r['error_rate'])} | "
                     f"{_span(r['wilson_lo'], r['wilson_hi'])} | {_span(r['boot_lo'], r['boot_hi'])} | "
                     + " | ".join(cells) + " |")  # fmt: skip
    return lines


def _seed_rows(report: Report) -> list[str]:
    if report.seed_groups is None:
        return []
    lines = ["", "| seed group | seeds | mean error rate | each seed | between-seed SD | 95% (objects × seeds) |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in report.seed_groups.iter_rows(named=True):
        sd = _pct(r["sd_rate"]) if r["sd_rate"] is not None else "–"
        each = " · ".join(_pct(x) for x in r["seed_rates"])
        lines.append(f"| {r['group']} | {r['seeds']} | {_pct(r['mean_rate'])} | {each} | {sd} | {_span(r['lo'], r['hi'])} |")
    if report.seed_comparisons is not None and report.seed_comparisons.height:
        lines += ["", "| a vs b (seed groups) | mean error rates | a − b | 95% (objects × seeds) | verdict |",
                  "|---|---:|---:|---:|---|"]  # fmt: skip
        for r in report.seed_comparisons.iter_rows(named=True):
            verdict = "differ" if r["differs"] else "no clear difference"
            lines.append(f"| {r['a']} vs {r['b']} | {_pct(r['rate_a'])} vs {_pct(r['rate_b'])} | "
                         f"{100 * r['diff']:+.2f} pp | {100 * r['lo']:+.2f} to {100 * r['hi']:+.2f} pp | {verdict} |")  # fmt: skip
    return lines


def table(folder: Path) -> str:
    """The study's table (per model, then per seed group) from an evidence folder or run directory.

    Usage: ``print(table(Path("results/replication")))``
    """
    report = build_report(folder, seed=0)
    return "\n".join([*_model_rows(report), *_seed_rows(report)]) + "\n"


def table_in_docs(doc: Path) -> dict[str, str]:
    """{folder: table body} of every evidence table in a Markdown file. Usage: ``table_in_docs(Path("docs/results.md"))``"""
    return {m.group("folder"): m.group("body") for m in _MARKERS.finditer(doc.read_text(encoding="utf-8"))}


def refresh_docs(root: Path, doc: Path) -> int:
    """Re-make every evidence table in ``doc`` (folders relative to ``root``); return how many.

    Usage: ``refresh_docs(Path("."), Path("docs/results.md"))``
    """
    text = doc.read_text(encoding="utf-8")
    count = 0

    def fill(match: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return match.group(1) + table(root / match.group("folder")) + match.group(4)

    doc.write_text(_MARKERS.sub(fill, text), encoding="utf-8")
    return count


def main(argv: list[str] | None = None) -> int:
    """``python -m engine.study.evidence pack RUN_DIR OUT | table FOLDER | docs ROOT DOC``."""
    parser = argparse.ArgumentParser(prog="python -m engine.study.evidence", description=main.__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("pack")
    p.add_argument("run_dir", type=Path)
    p.add_argument("out", type=Path)
    t = sub.add_parser("table")
    t.add_argument("folder", type=Path)
    d = sub.add_parser("docs")
    d.add_argument("root", type=Path)
    d.add_argument("doc", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.what == "pack":
            print(f"packed into {pack(args.run_dir, args.out)}")
        elif args.what == "table":
            print(table(args.folder), end="")
        else:
            print(f"refreshed {refresh_docs(args.root, args.doc)} table(s) in {args.doc}")
    except EngineError as exc:
        print(f"engine: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
