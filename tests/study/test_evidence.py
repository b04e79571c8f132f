"""The committed evidence re-reports to exactly the table docs/results.md shows."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from engine.errors import LogError
from engine.report.build import build_report
from engine.study.evidence import pack, table, table_in_docs

ROOT = Path(__file__).resolve().parents[2]
EVIDENCE = ROOT / "results" / "replication"


def test_docs_tables_are_remade_exactly_from_the_committed_evidence() -> None:
    tables = table_in_docs(ROOT / "docs" / "results.md")
    assert "results/replication" in tables  # the replication's table is one of them
    for folder, body in tables.items():
        assert (ROOT / folder / "results.jsonl.gz").is_file(), f"{folder}: no committed log"
        assert table(ROOT / folder) == body, f"docs/results.md's table for {folder} is not what its log gives"


def test_the_evidence_holds_what_re_reporting_needs() -> None:
    for name in ("results.jsonl.gz", "grid.json", "run.json", "spec.toml", "training.json", "report.md"):
        assert (EVIDENCE / name).is_file(), name
    assert b'"train_key"' in (EVIDENCE / "training.json").read_bytes()


def test_a_compressed_log_reports_exactly_as_the_plain_one(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "results.jsonl").write_bytes(gzip.decompress((EVIDENCE / "results.jsonl.gz").read_bytes()))
    shutil.copyfile(EVIDENCE / "grid.json", plain / "grid.json")
    packed = pack(plain, tmp_path / "packed")
    assert (packed / "results.jsonl.gz").read_bytes() == (EVIDENCE / "results.jsonl.gz").read_bytes()  # reproducible
    a, b = build_report(plain), build_report(packed)
    assert a.overall.equals(b.overall) and a.tasks == b.tasks > 0
    assert table(plain) == table(packed)


def test_a_damaged_compressed_log_is_one_log_error(tmp_path: Path) -> None:
    data = (EVIDENCE / "results.jsonl.gz").read_bytes()
    (tmp_path / "results.jsonl.gz").write_bytes(data[: len(data) // 2])
    shutil.copyfile(EVIDENCE / "grid.json", tmp_path / "grid.json")
    with pytest.raises(LogError, match="cannot read"):
        build_report(tmp_path)
