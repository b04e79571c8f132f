"""Resilience end to end: random SIGKILLs, the fault mix, and secrets that never leak."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson

from engine.run.runner import RunOptions, run_experiment
from tests.support.killharness import kill_and_resume

ROOT = Path(__file__).resolve().parents[2]
FACTS = ROOT / "data" / "facts.csv"
FAKE_KEY = "sk-test-RECOGNISABLE-0123456789"


def test_random_kills_lose_nothing_and_duplicate_only_in_flight_requests(tmp_path: Path) -> None:
    result = kill_and_resume(tmp_path, kills=4, seed=7)
    assert result.torn_writes >= 1
    assert result.unreadable_lines == 0
    assert result.records == result.unique_keys == result.grid
    assert 0 <= result.duplicates <= result.in_flight_bound, result.render()


FAULT_MIX = """
[sim]
latency_ms = 2
[sim.faults]
error_500 = 0.05
drop = 0.02
malformed = 0.01
slow = 0.01
slow_s = 2.0
"""


def fault_spec(tmp_path: Path, repeats: int) -> Path:
    spec = tmp_path / "faults.toml"
    spec.write_text(
        f'name = "faults"\nquestions = "{FACTS}"\ntemperatures = [1.0]\nrepeats = {repeats}\n'
        "timeout_s = 0.5\nmax_attempts = 6\nbackoff_base_s = 0.05\n"
        '[[models]]\nname = "m"\nbase_url = "sim"\nconcurrency = 64\n' + FAULT_MIX
    )
    return spec


def test_fault_mix_completes_every_task_ok_or_failed_with_reason(tmp_path: Path) -> None:
    spec = fault_spec(tmp_path, repeats=7)  # 1,050 tasks
    out = tmp_path / "run"
    summary = run_experiment(spec, options=RunOptions(out=out, quiet=True, report=False))
    records = [orjson.loads(line) for line in (out / "results.jsonl").read_bytes().splitlines()]
    assert len(records) == len({r["key"] for r in records}) == 1050 == summary.finished
    assert summary.retries > 0
    seen = set()
    for r in records:
        assert r["status"] in ("ok", "failed")
        if r["status"] == "failed":
            assert r["error"]
        else:
            assert r["reply"] is not None and r["outcome"] is not None
        seen.update(r["http"])
    assert 500 in seen  # the faults really happened


def test_api_key_never_reaches_log_report_progress_or_errors(tmp_path: Path) -> None:
    spec = tmp_path / "secret.toml"
    spec.write_text(
        f'name = "secret"\nquestions = "{FACTS}"\n'
        '[[models]]\nname = "m"\nbase_url = "sim"\napi_key_env = "ENGINE_TEST_KEY"\n'
        "[sim.faults]\nerror_500 = 0.2\n"
    )
    out = tmp_path / "run"
    env = {**os.environ, "ENGINE_TEST_KEY": FAKE_KEY}
    run = subprocess.run(
        [sys.executable, "-m", "engine", "run", str(spec), "--out", str(out)],
        capture_output=True, env=env, cwd=ROOT, timeout=120,
    )
    failed = sum(orjson.loads(line)["status"] == "failed" for line in (out / "results.jsonl").read_bytes().splitlines())
    assert run.returncode == (1 if failed else 0), run.stderr.decode()  # 1: a task failed all its attempts (rare)
    assert FAKE_KEY.encode() not in run.stdout + run.stderr
    written = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "report.md" for p in written)
    for path in written:
        assert FAKE_KEY.encode() not in path.read_bytes(), path

    # A missing variable is named; the key of another variable never appears.
    env.pop("ENGINE_TEST_KEY")
    env["OTHER_KEY"] = FAKE_KEY
    missing = subprocess.run(
        [sys.executable, "-m", "engine", "run", str(spec), "--out", str(tmp_path / "run2")],
        capture_output=True, env=env, cwd=ROOT, timeout=60,
    )
    assert missing.returncode == 2
    assert b"ENGINE_TEST_KEY" in missing.stderr and FAKE_KEY.encode() not in missing.stderr
