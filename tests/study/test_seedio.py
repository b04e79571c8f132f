"""The original experiment's CSV into an engine log and back, and its published numbers."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest
from rich.console import Console

from engine.errors import LogError
from engine.report.build import build_report
from engine.report.write import main_report
from engine.results.record import RECORD_FIELDS
from engine.study.seedio import ALL_COLUMNS, RESULTS_COLUMNS, export_seed_csv, import_seed, seed_key

SEED_DIR = Path(__file__).parents[2].parent / "shared" / "seed"
SEED_CSV = SEED_DIR / "Results-all-v2.csv"

CONTRACT_FIELDS = [
    "v", "key", "model", "model_id", "target", "simulated", "qid", "question", "tags", "temperature", "repeat", "expected", "reply",
    "extracted", "outcome", "correct", "status", "error", "attempts", "http", "latency_ms", "prompt_tokens",
    "completion_tokens", "t_start", "t_end",
]  # fmt: skip

HEADER = ",".join(ALL_COLUMNS)
SMALL = "\r\n".join([
    HEADER,
    "4-5-Examples,One,Apple,Q1,What is the number for Apple?,65451,The number for Apple is 65451.,65451,TRUE,0",
    '4-5-Examples,One,Apple,Q3,"If someone said Apple, what number?",65451,"Apple, 65,451.",,FALSE,0.5',
    "4-5-Examples,Two,Kite,Q2,What number matches Kite?,01234,Kite matches 34569.,34569,FALSE,1",
    "1-50-Examples,One,Kite,Q2,What number matches Kite?,01234,Kite is 01234.,01234,TRUE,1",
])  # fmt: skip


def small_csv(tmp_path: Path) -> Path:
    path = tmp_path / "results-small.csv"
    path.write_bytes(SMALL.encode())
    return path


def read_records(run: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (run / "results.jsonl").read_bytes().splitlines()]


def test_import_writes_contract_records(tmp_path: Path) -> None:
    run = import_seed(small_csv(tmp_path), tmp_path / "seed")
    recs = read_records(run)
    assert len(recs) == 4
    assert all(list(r) == CONTRACT_FIELDS for r in recs)
    first, no_number, wrong, fifty = recs
    assert (first["model"], first["model_id"], first["repeat"]) == ("5x", "4-5-Examples", 0)
    assert all((r["v"], r["target"], r["simulated"]) == (2, None, False) for r in recs)  # who answered: unknown
    assert set(CONTRACT_FIELDS) == set(RECORD_FIELDS)  # the log's one definition of a record
    assert first["tags"] == {"object": "Apple", "difficulty": "easy"} and first["qid"] == "Apple/easy"
    assert (first["outcome"], first["correct"], first["status"], first["temperature"]) == ("correct", True, "ok", 0.0)
    assert (no_number["outcome"], no_number["extracted"], no_number["correct"]) == ("no_answer", None, False)
    assert no_number["tags"]["difficulty"] == "hard" and no_number["temperature"] == 0.5
    assert (wrong["outcome"], wrong["extracted"], wrong["repeat"]) == ("wrong", "34569", 1)
    assert wrong["expected"] == "01234"  # the leading zero survives
    assert fifty["model"] == "50x"
    assert all(re.fullmatch(r"[0-9a-f]{20}", r["key"]) for r in recs)
    assert len({r["key"] for r in recs}) == 4
    assert first["key"] == seed_key("5x", "Apple/easy", 0.0, 0)
    meta = orjson.loads((run / "run.json").read_bytes())
    assert meta["kind"] == "seed-import" and meta["rows"] == 4
    assert meta["seed_examples"] == {"5x": "4-5-Examples", "50x": "1-50-Examples"}


def test_import_can_rescore_with_a_named_scorer(tmp_path: Path) -> None:
    recs = read_records(import_seed(small_csv(tmp_path), tmp_path / "seed", scorer="number"))
    # "Apple, 65,451." was no answer to the original's \d{5}; the number scorer reads it right.
    assert (recs[1]["outcome"], recs[1]["extracted"], recs[1]["correct"]) == ("correct", "65451", True)
    assert recs[2]["outcome"] == "wrong"
    seed_rule = read_records(import_seed(small_csv(tmp_path), tmp_path / "seed2", scorer="seed"))
    assert seed_rule[1]["outcome"] == "no_answer"


def test_import_rejects_a_csv_that_is_not_the_seed_format(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("Object,Answer\nApple,1\n")
    with pytest.raises(LogError, match="'Examples'"):
        import_seed(bad, tmp_path / "out")
    with pytest.raises(LogError, match="no seed CSV"):
        import_seed(tmp_path / "missing.csv", tmp_path / "out")
    odd = tmp_path / "odd.csv"
    odd.write_bytes(SMALL.replace(",One,Apple,Q1", ",Once,Apple,Q1").encode())
    with pytest.raises(LogError, match="Once"):
        import_seed(odd, tmp_path / "out")


@pytest.mark.parametrize("existing", ["results.jsonl", "run.json"])
def test_import_never_overwrites_a_run(tmp_path: Path, existing: str) -> None:
    run = tmp_path / "memorisation"
    run.mkdir()
    (run / existing).write_bytes(b"a real engine log\n")
    with pytest.raises(LogError, match=rf"{re.escape(str(run / existing))} already exists.*another --out"):
        import_seed(small_csv(tmp_path), run)
    assert (run / existing).read_bytes() == b"a real engine log\n"
    assert sorted(p.name for p in run.iterdir()) == [existing]  # nothing else written either
    # A second import into the same directory is refused too.
    import_seed(small_csv(tmp_path), tmp_path / "seed")
    with pytest.raises(LogError, match="already exists"):
        import_seed(small_csv(tmp_path), tmp_path / "seed")


def test_export_all_layout_round_trips_the_import(tmp_path: Path) -> None:
    source = small_csv(tmp_path)
    run = import_seed(source, tmp_path / "seed")
    result = export_seed_csv(run, tmp_path / "back.csv", layout="all")
    assert (result.rows, result.table.layout, result.table.skipped_failed) == (4, "all", 0)
    assert result.path.read_bytes() == SMALL.encode() + b"\r\n"


def test_export_results_layout_for_one_model_and_failures_left_out(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    base = read_records(import_seed(small_csv(tmp_path), tmp_path / "seed"))[:2]
    failed = dict(base[1], key="f" * 20, status="failed", outcome=None, correct=None, reply=None, extracted=None)
    (run / "results.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in [*base, failed]))
    result = export_seed_csv(run)  # auto: one model, one repeat -> the original's results.csv
    assert result.table.layout == "results" and result.path == run / "results.csv"
    assert (result.rows, result.table.skipped_failed) == (2, 1)
    df = pl.read_csv(result.path, infer_schema=False)
    assert tuple(df.columns) == RESULTS_COLUMNS
    assert df.row(0) == ("Apple", "Q1", "What is the number for Apple?", "65451",
                         "The number for Apple is 65451.", "65451", "True", "0.0")  # fmt: skip
    assert df.row(1)[5] is None and df.row(1)[6] == "False"


def test_export_auto_picks_all_for_several_models(tmp_path: Path) -> None:
    run = import_seed(small_csv(tmp_path), tmp_path / "seed")
    assert export_seed_csv(run, tmp_path / "x.csv").table.layout == "all"


needs_seed = pytest.mark.skipif(
    not SEED_CSV.is_file(), reason=f"the original experiment's data is not at {SEED_CSV} (../shared is absent)"
)


@needs_seed
def test_original_results_reproduce_the_corrected_error_rates(tmp_path: Path) -> None:
    run = import_seed(SEED_CSV, tmp_path / "seed-v2")
    report = build_report(run)
    got = {r["model"]: (r["errors"], r["n"]) for r in report.overall.iter_rows(named=True)}
    assert got == {"5x": (110, 900), "10x": (22, 900), "25x": (19, 900), "50x": (27, 900)}
    assert report.overall["model"].to_list() == ["5x", "10x", "25x", "50x"]
    rates = [round(100 * r, 2) for r in report.overall["error_rate"]]
    assert rates == [12.22, 2.44, 2.11, 3.00]
    five = report.overall.row(0, named=True)
    # Errors cluster on objects: the honest interval is wider than the independent one.
    assert five["boot_hi"] - five["boot_lo"] > five["wilson_hi"] - five["wilson_lo"]
    pairs = {(r["model_a"], r["model_b"]): r["differs"] for r in report.comparisons.iter_rows(named=True)}
    assert pairs[("5x", "10x")] is True
    assert not any(pairs[p] for p in [("10x", "25x"), ("10x", "50x"), ("25x", "50x")])
    out = io.StringIO()
    main_report(run, console=Console(file=out, width=160, color_system=None))
    text = out.getvalue()
    assert all(f"{rate}%" in text for rate in ("12.22", "2.44", "2.11", "3.00"))
    assert (run / "report.md").is_file() and (run / "chart_error_rate.png").is_file()


@needs_seed
def test_original_results_export_back_byte_for_byte(tmp_path: Path) -> None:
    run = import_seed(SEED_CSV, tmp_path / "seed-v2")
    out = export_seed_csv(run, tmp_path / "Results-all-v2.csv", layout="all").path
    # The published file lacks only the final line end.
    assert out.read_bytes() == SEED_CSV.read_bytes() + b"\r\n"
