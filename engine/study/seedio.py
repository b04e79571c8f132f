"""The original experiment's CSV files, in and out of the engine's results log.

``import_seed`` turns the published ``Results-all-v2.csv`` (3,600 rows: four
fine-tuned models x 50 objects x 3 questions x 3 temperatures x 2 runs) into a run
directory with ``results.jsonl`` and ``run.json``, so ``engine report`` works on the
original numbers. ``export_seed_csv`` goes the other way, so tooling written for the
original's CSV keeps working on engine runs.

Usage::

    run_dir = import_seed("../shared/seed/Results-all-v2.csv", "runs/seed-v2")
    export_seed_csv("runs/memorisation", "runs/memorisation/results.csv")
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
import polars as pl

from engine.errors import LogError
from engine.experiment.scoring import Scorer, get_scorer
from engine.results.read import load_log
from engine.results.record import SCHEMA_VERSION, Record

__all__ = [
    "ALL_COLUMNS",
    "RESULTS_COLUMNS",
    "SeedCsv",
    "SeedExport",
    "export_seed_csv",
    "import_seed",
    "render_seed_csv",
    "seed_key",
]

RESULTS_COLUMNS = (
    "Object", "No", "Question", "Expected Answer", "Response", "Extracted Number", "Correct", "Temperature",
)  # fmt: skip
"""The columns of the ``results.csv`` one run of the original wrote."""

ALL_COLUMNS = ("Examples", "Run 1 or 2", *RESULTS_COLUMNS[:-1], "Temperature")
"""The columns of the original's combined file, ``Results-all-v2.csv``."""

_LEVELS = {"Q1": "easy", "Q2": "mid", "Q3": "hard"}
_RUNS = ("One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine", "Ten")
_EXAMPLES = re.compile(r"^\s*\d+\s*-\s*(\d+)\s*-\s*Examples\s*$", re.IGNORECASE)


def seed_key(model: str, qid: str, temperature: float, repeat: int) -> str:
    """The stable 20-hex-digit task key of an imported row.

    Usage: ``seed_key("5x", "Apple/easy", 0.0, 0)``
    """
    text = "\x1f".join(("seed", model, qid, repr(float(temperature)), str(repeat)))
    return hashlib.blake2b(text.encode(), digest_size=10).hexdigest()


def _model_label(examples: str) -> str:
    match = _EXAMPLES.match(examples)
    return f"{match.group(1)}x" if match else examples.strip()


def _repeat(run: str) -> int:
    text = run.strip()
    for i, word in enumerate(_RUNS):
        if text.casefold() == word.casefold():
            return i
    if text.isdigit() and int(text) >= 1:
        return int(text) - 1
    raise LogError(f"unknown run {run!r} in column 'Run 1 or 2' (expected One, Two, ...)")


def _read_rows(csv_path: Path) -> pl.DataFrame:
    if not csv_path.is_file():
        raise LogError(f"no seed CSV at {csv_path}")
    try:
        # Everything as text: answers like "01234" must keep their leading zero.
        df = pl.read_csv(csv_path, infer_schema=False, encoding="utf8-lossy")
    except pl.exceptions.PolarsError as exc:
        raise LogError(f"cannot read seed CSV {csv_path}: {exc}") from exc
    missing = [c for c in ALL_COLUMNS if c not in df.columns]
    if missing:
        raise LogError(f"seed CSV {csv_path} lacks column {missing[0]!r}")
    return df


_RUN_FILES = ("results.jsonl", "run.json")


def _refuse_existing_run(out: Path) -> None:
    for name in _RUN_FILES:
        if (out / name).exists():
            raise LogError(f"{out / name} already exists; choose another --out for the import")


def _write_new(path: Path, data: bytes) -> None:
    # Exclusive create: a run written into the directory since the check is still not overwritten.
    try:
        with path.open("xb") as f:
            f.write(data)
    except FileExistsError as exc:
        raise LogError(f"{path} already exists; choose another --out for the import") from exc
    except OSError as exc:
        raise LogError(f"cannot write {path}: {exc.strerror or exc}") from exc


def import_seed(
    csv_path: str | Path,
    out_dir: str | Path,
    *,
    scorer: str | None = None,
    scorer_options: dict[str, str] | None = None,
) -> Path:
    """Write the original's results CSV as an engine run directory; returns ``out_dir``.

    Model labels come from ``Examples`` (``4-5-Examples`` becomes ``5x``), repeat from
    ``Run 1 or 2``, difficulty from ``No`` (Q1/Q2/Q3 = easy/mid/hard). Correctness is
    the CSV's own ``Correct`` column (a FALSE row with an extracted number is
    ``wrong``, without one ``no_answer``), unless ``scorer`` names a scorer of
    :mod:`engine.experiment.scoring` (e.g. ``"number"``) to score the replies again.
    Raises :class:`~engine.errors.LogError` if ``out_dir`` already holds a
    ``results.jsonl`` or ``run.json``: an import never overwrites a run.
    Usage: ``import_seed("Results-all-v2.csv", "runs/seed-v2", scorer="number")``
    """
    source = Path(csv_path)
    out = Path(out_dir)
    _refuse_existing_run(out)
    df = _read_rows(source)
    score = None
    if scorer is not None:
        score = get_scorer(scorer, **(scorer_options or {}))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LogError(f"cannot create run directory {out}: {exc.strerror or exc}") from exc
    labels: dict[str, str] = {}
    lines = [orjson.dumps(_seed_record(source, i, row, score, labels)) for i, row in enumerate(df.iter_rows(named=True), start=2)]
    _write_new(out / "results.jsonl", b"\n".join(lines) + b"\n" if lines else b"")
    meta = {
        "v": 1, "name": out.name, "kind": "seed-import", "source": str(source), "rows": len(lines),
        "models": list(labels), "seed_examples": labels, "scorer": scorer or "seed-csv",
        "created": time.time(),
    }  # fmt: skip
    _write_new(out / "run.json", orjson.dumps(meta, option=orjson.OPT_INDENT_2))
    return out



def _seed_record(
    source: Path, line: int, row: Mapping[str, Any], score: Scorer | None, labels: dict[str, str]
) -> Record:
    """One row of the original's CSV as a log record; ``labels`` collects each model's ``Examples`` text."""
    examples = (row["Examples"] or "").strip()
    model = _model_label(examples)
    labels.setdefault(model, examples)
    level = (row["No"] or "").strip()
    difficulty = _LEVELS.get(level.upper(), level.lower())
    obj = (row["Object"] or "").strip()
    try:
        temperature = float(row["Temperature"])
    except (TypeError, ValueError) as exc:
        raise LogError(f"{source}: line {line}: bad Temperature {row['Temperature']!r}") from exc
    repeat = _repeat(row["Run 1 or 2"] or "")
    qid = f"{obj}/{difficulty}"
    expected = (row["Expected Answer"] or "").strip()
    reply = row["Response"] or ""
    extracted = (row["Extracted Number"] or "").strip() or None
    if score is not None:
        result = score(reply, expected)
        outcome, extracted, correct = result.outcome, result.extracted, result.outcome == "correct"
    else:
        correct = (row["Correct"] or "").strip().upper() == "TRUE"
        outcome = "correct" if correct else ("wrong" if extracted else "no_answer")
    return {
        # Schema 2; who answered is unknown (the original's fine-tuned models, through OpenAI's API),
        # but it was a language model, not engine's simulation.
        "v": SCHEMA_VERSION, "key": seed_key(model, qid, temperature, repeat), "model": model, "model_id": examples,
        "target": None, "simulated": False, "qid": qid, "question": row["Question"] or "", "tags": {"object": obj, "difficulty": difficulty},
        "temperature": temperature, "repeat": repeat, "expected": expected, "reply": reply,
        "extracted": extracted, "outcome": outcome, "correct": correct, "status": "ok", "error": None,
        # The original kept no timings, token counts or HTTP statuses.
        "attempts": 1, "http": [], "latency_ms": None, "prompt_tokens": None, "completion_tokens": None,
        "t_start": 0.0, "t_end": 0.0,
    }  # fmt: skip


def _temperature_text(value: float, layout: str) -> str:
    # results.csv came from pandas (floats as "0.0"); the combined file from a spreadsheet ("0").
    return repr(float(value)) if layout == "results" else f"{value:g}"


@dataclass(frozen=True, kw_only=True, slots=True)
class SeedCsv:
    """A run's log as the original experiment's CSV text, and what went into it.

    Usage: ``sys.stdout.write(render_seed_csv("runs/x").text)``
    """

    text: str
    rows: int
    layout: str
    skipped_failed: int

    def describe(self) -> str:
        failed = f"; {self.skipped_failed} failed tasks left out" if self.skipped_failed else ""
        return f"{self.rows} rows, {self.layout} layout{failed}"


@dataclass(frozen=True, kw_only=True, slots=True)
class SeedExport:
    """What :func:`export_seed_csv` wrote: where, and the table's counts. Usage: ``print(export_seed_csv("runs/x"))``"""

    path: Path
    table: SeedCsv

    @property
    def rows(self) -> int:
        return self.table.rows

    def __str__(self) -> str:
        return f"{self.path} ({self.table.describe()})"


def export_seed_csv(
    run_dir: str | Path,
    out_path: str | Path | None = None,
    *,
    layout: Literal["auto", "results", "all"] = "auto",
) -> SeedExport:
    """Write a run's log in the original experiment's CSV columns (made by :func:`render_seed_csv`).

    Default ``out_path``: ``<run_dir>/results.csv``. Usage: ``export_seed_csv("runs/x").rows``
    """
    table = render_seed_csv(run_dir, layout=layout)
    run = Path(run_dir)
    target = Path(out_path) if out_path is not None else (run if run.is_dir() else run.parent) / "results.csv"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(table.text, encoding="utf-8", newline="")
    return SeedExport(path=target, table=table)


def render_seed_csv(run_dir: str | Path, *, layout: Literal["auto", "results", "all"] = "auto") -> SeedCsv:
    """A run's log in the original experiment's CSV columns, as text.

    ``layout="results"`` gives the columns of the original's ``results.csv`` (one model,
    one run); ``"all"`` those of ``Results-all-v2.csv`` (``Examples`` and ``Run 1 or 2``
    first, CRLF line ends); ``"auto"`` picks ``results`` for a log with one model and
    one repeat, else ``all``, so models and runs never blur together. Infrastructure
    failures are left out, as the original had no row for a failed call; each task
    appears once (last record wins), in log order. Usage: ``render_seed_csv("runs/x").text``
    """
    run = Path(run_dir)
    df = load_log(run, columns=["model", "qid", "question", "temperature", "repeat", "expected", "reply",
                                "extracted", "correct", "status", "tags"]).collect()  # fmt: skip
    labels: dict[str, str] = {}
    meta_file = (run if run.is_dir() else run.parent) / "run.json"
    if meta_file.is_file():
        try:
            labels = dict(orjson.loads(meta_file.read_bytes()).get("seed_examples") or {})
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            labels = {}
    failed = df.filter(pl.col("status") != "ok").height
    df = df.filter(pl.col("status") == "ok")
    if layout == "auto":
        single = df.get_column("model").n_unique() <= 1 and df.get_column("repeat").n_unique() <= 1
        layout = "results" if single else "all"
    if layout not in ("results", "all"):
        raise LogError(f"unknown seed-csv layout {layout!r} (expected auto, results or all)")
    columns = RESULTS_COLUMNS if layout == "results" else ALL_COLUMNS
    levels = {v: k for k, v in _LEVELS.items()}
    has_object = "object" in df.columns
    has_difficulty = "difficulty" in df.columns
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n" if layout == "all" else "\n")
    writer.writerow(columns)
    true_false = ("TRUE", "FALSE") if layout == "all" else ("True", "False")
    for rec in df.iter_rows(named=True):
        obj = rec["object"] if has_object and rec["object"] is not None else rec["qid"].split("/")[0]
        difficulty = rec["difficulty"] if has_difficulty else None
        row = [
            obj, levels.get(difficulty or "", difficulty or ""), rec["question"], rec["expected"],
            rec["reply"] or "", rec["extracted"] or "", true_false[0] if rec["correct"] else true_false[1],
            _temperature_text(rec["temperature"], layout),
        ]  # fmt: skip
        if layout == "all":
            repeat = rec["repeat"]
            run_word = _RUNS[repeat] if 0 <= repeat < len(_RUNS) else str(repeat + 1)
            row = [labels.get(rec["model"], rec["model"]), run_word, *row]
        writer.writerow(row)
    return SeedCsv(text=buffer.getvalue(), rows=df.height, layout=layout, skipped_failed=failed)
