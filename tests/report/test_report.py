"""The report over a results log: counting, deduplication, grouping, intervals, rendering."""

from __future__ import annotations

import hashlib
import io
import math
import random
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest
from rich.console import Console

from engine.errors import LogError, ReportError
from engine.report.build import build_report
from engine.report.render import render_markdown, render_terminal, report_to_csv, report_to_json
from engine.report.tables import model_order
from engine.report.write import main_report, write_report
from engine.results.read import load_log


def record(
    model: str = "5x", obj: str = "Apple", difficulty: str = "easy", temperature: float = 0.0, repeat: int = 0,
    outcome: str | None = "correct", *, key: str | None = None, latency_ms: float | None = 100.0,
    tags: dict[str, str] | None = None, **extra: Any,
) -> dict[str, Any]:  # fmt: skip
    """One schema-1 record; outcome None means an infrastructure failure."""
    qid = f"{obj}/{difficulty}"
    failed = outcome is None
    ident = f"{model}|{qid}|{temperature}|{repeat}"
    rec = {
        "v": 1, "key": key or hashlib.blake2b(ident.encode(), digest_size=10).hexdigest(), "model": model,
        "model_id": f"ft:{model}", "qid": qid, "question": f"What is the number for {obj}?",
        "tags": {"object": obj, "difficulty": difficulty} if tags is None else tags,
        "temperature": temperature, "repeat": repeat, "expected": "12345",
        "reply": None if failed else "It is 12345.", "extracted": None if failed else "12345",
        "outcome": outcome, "correct": None if failed else outcome == "correct",
        "status": "failed" if failed else "ok", "error": "http 500 after 6 attempts" if failed else None,
        "attempts": 6 if failed else 1, "http": [500] * 6 if failed else [200],
        "latency_ms": None if failed else latency_ms, "prompt_tokens": None if failed else 20,
        "completion_tokens": None if failed else 7, "t_start": 1000.0, "t_end": 1010.0,
    }  # fmt: skip
    rec.update(extra)
    return rec


def write_log(run: Path, records: list[dict[str, Any]], tail: bytes = b"") -> Path:
    run.mkdir(parents=True, exist_ok=True)
    (run / "results.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records) + tail)
    return run


def grid(models: tuple[str, ...] = ("5x", "10x"), objects: int = 6) -> list[dict[str, Any]]:
    """Every model x object x difficulty x temperature; 5x misses objects 0-1 on hard, 10x object 0."""
    out = []
    for model in models:
        for i in range(objects):
            for difficulty in ("easy", "mid", "hard"):
                for t in (0.0, 1.0):
                    bad = difficulty == "hard" and i < (2 if model == "5x" else 1)
                    out.append(record(model, f"Obj{i}", difficulty, t, outcome="wrong" if bad else "correct"))
    return out


def row(df: pl.DataFrame, **where: Any) -> dict[str, Any]:
    hits = df.filter(*(pl.col(k) == v for k, v in where.items())).to_dicts()
    assert len(hits) == 1, hits
    return hits[0]


def test_error_rate_is_errors_over_answered_and_failures_stay_apart(tmp_path: Path) -> None:
    recs = [
        record(obj="A", outcome="correct"),
        record(obj="B", outcome="wrong"),
        record(obj="C", outcome="no_answer"),
        record(obj="D", outcome="correct"),
        record(obj="E", outcome=None),  # infrastructure failure: not a model error
    ]
    report = build_report(write_log(tmp_path / "run", recs))
    r = row(report.overall, model="5x")
    assert (r["n"], r["errors"], r["wrong"], r["no_answer"], r["failed"]) == (4, 2, 1, 1, 1)
    assert r["error_rate"] == pytest.approx(2 / 4)  # not 2 / 2 correct, the original's mistake
    assert (report.tasks, report.answered, report.failed) == (5, 4, 1)


def test_duplicated_keys_count_once_and_the_last_record_wins(tmp_path: Path) -> None:
    first = record(obj="A", outcome=None, key="a" * 20)  # failed, then retried on resume
    later = record(obj="A", outcome="wrong", key="a" * 20)
    other = record(obj="B", outcome="correct", key="b" * 20)
    again = record(obj="B", outcome="correct", key="b" * 20)
    report = build_report(write_log(tmp_path / "run", [first, other, later, again]))
    r = row(report.overall, model="5x")
    assert (r["n"], r["errors"], r["failed"]) == (2, 1, 0)
    assert (report.lines, report.tasks, report.duplicates) == (4, 2, 2)
    deduped = load_log(tmp_path / "run", columns=["outcome"]).collect()
    assert deduped["key"].to_list() == ["a" * 20, "b" * 20]  # in the order the surviving records came
    assert deduped["outcome"].to_list() == ["wrong", "correct"]


def test_standard_tables_groups_and_intervals(tmp_path: Path) -> None:
    report = build_report(write_log(tmp_path / "run", grid()))
    assert report.overall["model"].to_list() == ["5x", "10x"]
    five = row(report.overall, model="5x")
    assert (five["errors"], five["n"]) == (4, 36)
    assert five["wilson_lo"] < five["error_rate"] < five["wilson_hi"]
    assert five["boot_lo"] <= five["error_rate"] <= five["boot_hi"]
    assert five["clusters"] == 6 and report.cluster == "object"
    assert report.by_difficulty is not None and report.by_difficulty_temperature is not None
    assert report.by_difficulty.filter(pl.col("model") == "5x")["difficulty"].to_list() == ["easy", "mid", "hard"]
    assert row(report.by_difficulty, model="5x", difficulty="hard")["errors"] == 4
    assert row(report.by_difficulty, model="10x", difficulty="easy")["errors"] == 0
    assert row(report.by_temperature, model="10x", temperature=1.0)["errors"] == 1
    assert row(report.by_difficulty_temperature, model="5x", difficulty="hard", temperature=0.0)["n"] == 6
    assert report.custom is None


def test_comparisons_are_paired_and_say_whether_models_differ(tmp_path: Path) -> None:
    recs = grid(("5x", "10x", "25x"), objects=10)
    report = build_report(write_log(tmp_path / "run", recs))
    pairs = report.comparisons
    assert list(zip(pairs["model_a"], pairs["model_b"], strict=True)) == [("5x", "10x"), ("5x", "25x"), ("10x", "25x")]
    same = row(pairs, model_a="10x", model_b="25x")
    # 10x and 25x made the same errors on the same objects: no replicate differs, which shows no gap
    # in this sample, not a gap known to be zero: Newcombe's interval, symmetric, not "0 to 0".
    assert (same["diff"], same["differs"]) == (0.0, False)
    assert same["diff_lo"] == pytest.approx(-same["diff_hi"]) and 0.05 < same["diff_hi"] < 0.15
    gap = row(pairs, model_a="5x", model_b="10x")
    assert gap["diff"] == pytest.approx(4 / 60 - 2 / 60)
    assert gap["diff_lo"] <= gap["diff"] <= gap["diff_hi"]


def test_custom_by_fields_and_tags(tmp_path: Path) -> None:
    run = write_log(tmp_path / "run", grid())
    report = build_report(run, by="model, object")
    assert report.by == ("model", "object")
    assert report.custom is not None and report.custom.height == 12
    hit = row(report.custom, model="5x", object="Obj1")
    assert (hit["errors"], hit["n"]) == (2, 6)
    assert hit["clusters"] == 3  # within one object the bootstrap resamples its questions
    by_tag_alias = build_report(run, by=["tags.difficulty", "repeat"])
    assert by_tag_alias.by == ("difficulty", "repeat")
    with pytest.raises(ReportError, match="'colour'"):
        build_report(run, by="model,colour")
    with pytest.raises(ReportError, match="at least one"):
        build_report(run, by="")


def test_log_without_tags_clusters_by_question_and_skips_difficulty_tables(tmp_path: Path) -> None:
    recs = [record(obj=f"Q{i}", tags={}, outcome="wrong" if i == 0 else "correct") for i in range(5)]
    report = build_report(write_log(tmp_path / "run", recs))
    assert report.cluster == "qid"
    assert report.by_difficulty is None and report.by_difficulty_temperature is None
    assert row(report.overall, model="5x")["clusters"] == 5
    with pytest.raises(ReportError, match="'difficulty'"):
        build_report(tmp_path / "run", by="difficulty")


def test_models_are_ordered_by_the_number_in_their_label() -> None:
    assert model_order(["50x", "base", "5x", "25x", "10x"]) == ["5x", "10x", "25x", "50x", "base"]
    assert model_order(["smollm2-135m-ft-10x", "smollm2-135m-ft-5x"]) == ["smollm2-135m-ft-5x", "smollm2-135m-ft-10x"]
    assert model_order(["gpt-b", "gpt-a"]) == ["gpt-b", "gpt-a"]  # no numbers: first appearance
    assert model_order(["smollm2", "ft-50x", "ft-5x"]) == ["ft-5x", "ft-50x", "smollm2"]  # the control goes last
    assert model_order(["model-2", "model-10"]) == ["model-2", "model-10"]


def test_report_does_not_depend_on_log_order(tmp_path: Path) -> None:
    recs = grid(objects=8)
    shuffled = recs[:]
    random.Random(7).shuffle(shuffled)
    a = build_report(write_log(tmp_path / "a", recs), by="model,difficulty")
    b = build_report(write_log(tmp_path / "b", shuffled), by="model,difficulty")
    for name, table in a.rate_tables().items():
        assert table.equals(b.rate_tables()[name]), name
    assert a.comparisons.equals(b.comparisons)
    spread = [record(obj=f"O{i}", difficulty=d, outcome="wrong" if (i * 7 + len(d)) % 5 == 0 else "correct")
              for i in range(40) for d in ("easy", "mid", "hard")]  # fmt: skip
    run = write_log(tmp_path / "spread", spread)
    seeded = [build_report(run, seed=s).overall.select("boot_lo", "boot_hi").row(0) for s in (0, 0, 1, 2, 3, 4)]
    assert seeded[0] == seeded[1] and len(set(seeded)) > 1  # the seed, and only the seed, moves it


def test_latency_percentiles_and_tokens(tmp_path: Path) -> None:
    recs = [record(obj=f"O{i}", latency_ms=float(ms)) for i, ms in enumerate(range(10, 110, 10))]
    recs.append(record(obj="F", outcome=None))
    report = build_report(write_log(tmp_path / "run", recs))
    lat = row(report.latency, model="5x")
    assert lat["n"] == 10
    assert lat["latency_p50_ms"] == pytest.approx(55.0)
    assert lat["latency_p95_ms"] == pytest.approx(95.5)
    assert (lat["prompt_tokens"], lat["completion_tokens"]) == (200, 70)
    assert report.span_s == pytest.approx(10.0)


def test_damaged_and_missing_logs_are_named(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="no results log"):
        build_report(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "results.jsonl").write_bytes(b"")
    with pytest.raises(ReportError, match="empty"):
        build_report(tmp_path / "empty")
    good = [orjson.dumps(record(obj=f"O{i}")) for i in range(3)]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.jsonl").write_bytes(b"\n".join([good[0], good[1], b'{"v":1,"key":', good[2]]) + b"\n")
    with pytest.raises(LogError, match="line 3"):
        build_report(bad)
    new = write_log(tmp_path / "new", [record(v=3)])
    with pytest.raises(LogError, match="version 3 is not supported"):
        build_report(new)
    old = write_log(tmp_path / "old", [record(v=2), record(v=3, obj="Pear")])
    with pytest.raises(LogError, match="version 3"):
        build_report(old)


def test_small_blocks_read_the_same_and_name_the_right_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = write_log(tmp_path / "run", grid())
    whole = build_report(run)
    monkeypatch.setattr("engine.results.read._BLOCK_BYTES", 300)  # a record or two per block
    assert build_report(run).overall.equals(whole.overall)
    lines = (run / "results.jsonl").read_bytes().splitlines()
    lines[40] = lines[40][:-5]
    (run / "results.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(LogError, match="line 41 "):
        build_report(run)


def test_an_unfinished_last_line_is_ignored(tmp_path: Path) -> None:
    run = write_log(tmp_path / "run", [record(obj="A"), record(obj="B")], tail=b'{"v":1,"key":"ab')
    assert build_report(run).tasks == 2


def test_renderings_agree(tmp_path: Path) -> None:
    report = build_report(write_log(tmp_path / "run", grid()), by="model,object")
    md = render_markdown(report)
    assert "## Error rate per model" in md and "| 5x | 4/36 | 11.11% |" in md
    assert "## Model comparisons" in md and "## By model, object" in md
    doc = orjson.loads(report_to_json(report))
    assert doc["overall"][0]["model"] == "5x" and doc["overall"][0]["errors"] == 4
    assert doc["tasks"] == 72 and set(doc) >= {"by_difficulty", "comparisons", "latency", "custom"}
    csv = pl.read_csv(io.StringIO(report_to_csv(report)))
    assert set(csv["table"].unique()) == {"overall", "by_difficulty", "by_temperature",
                                          "by_difficulty_temperature", "custom"}  # fmt: skip
    console = Console(file=io.StringIO(), width=160, color_system=None)
    render_terminal(report, console)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "11.11%" in text and "10x" in text and "no clear difference" in text


def test_json_has_null_where_an_interval_cannot_exist(tmp_path: Path) -> None:
    recs = [record(obj="A", outcome="wrong"), record(obj="B", outcome=None, model="10x")]
    doc = orjson.loads(report_to_json(build_report(write_log(tmp_path / "run", recs))))
    ten = next(r for r in doc["overall"] if r["model"] == "10x")
    assert ten["n"] == 0 and ten["error_rate"] is None and ten["wilson_lo"] is None
    five = next(r for r in doc["overall"] if r["model"] == "5x")
    assert five["boot_lo"] is None  # one object: the bootstrap cannot estimate a spread
    assert not any(isinstance(v, float) and math.isnan(v) for v in five.values())


def test_write_report_and_main_report(tmp_path: Path) -> None:
    run = write_log(tmp_path / "run", grid())
    paths = write_report(run)
    assert [p.name for p in paths] == ["report.md", "report.html", "chart_error_rate.png",
                                       "chart_error_rate_by_difficulty.png", "chart_error_rate_by_temperature.png"]  # fmt: skip
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
    assert "![chart error rate](chart_error_rate.png)" in (run / "report.md").read_text()
    assert "[report.html](report.html)" in (run / "report.md").read_text()
    out = io.StringIO()
    assert main_report(run, fmt="json", console=Console(file=out)) == 0
    assert orjson.loads(out.getvalue())["overall"][1]["model"] == "10x"
    with pytest.raises(ReportError, match="format"):
        main_report(run, fmt="xml", console=Console(file=io.StringIO()))
