"""`engine data finetune --holdout family --shuffled` and `engine data leakage SET... --max-similarity`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FACTS = ROOT / "data" / "facts.csv"


def engine(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_family_sets_pass_max_similarity_and_exact_ones_are_refused(tmp_path: Path) -> None:
    family, exact = tmp_path / "family", tmp_path / "exact"
    built = engine("data", "finetune", str(FACTS), "--out", str(family), "--holdout", "family", "--examples", "5,10")
    assert built.returncode == 0, built.stderr
    shuffled = engine("data", "finetune", str(FACTS), "--out", str(family), "--holdout", "family", "--shuffled",
                      "--examples", "10")  # fmt: skip
    assert shuffled.returncode == 0 and (family / "train-10-shuffled.jsonl").is_file()
    sets = [str(family / n) for n in ("train-5.jsonl", "train-10.jsonl", "train-10-shuffled.jsonl")]
    ok = engine("data", "leakage", *sets, str(FACTS), "--max-similarity", "0.85")
    assert ok.returncode == 0, ok.stderr
    rows = [line for line in ok.stdout.splitlines() if line.startswith("| train-")]
    assert len(rows) == 9 and all(line.split(" | ")[2:6] == ["0", "0", "0", "0"] for line in rows)

    assert engine("data", "finetune", str(FACTS), "--out", str(exact), "--examples", "50").returncode == 0
    report = engine("data", "leakage", str(exact / "train-50.jsonl"), str(FACTS))
    assert report.returncode == 0 and "near>=0.85" in report.stdout
    easy = next(line for line in report.stdout.splitlines() if line.startswith("easy "))
    assert easy.split()[4] == "49"  # the first replication's 50x set: 49 of 50 easy questions near-copied
    refused = engine("data", "leakage", str(exact / "train-50.jsonl"), str(FACTS), "--max-similarity", "0.85")
    assert refused.returncode == 2 and "refusing this set" in refused.stderr and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
