"""End to end against the built-in target: run, resume, kill -9, Ctrl-C, faults."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from engine.runner import RunOptions, run_experiment
from engine.sim import SimConfig, SimProcess, facts_from_csv

ROOT = Path(__file__).resolve().parents[1]
FACTS = ROOT / "data" / "facts.csv"


def write_spec(tmp_path: Path, *, base_url: str = "sim", models: int = 2, temps: str = "[0.0, 1.0]",
               repeats: int = 2, extra: str = "", concurrency: int = 8, sim: str = "") -> Path:
    model_tables = "\n".join(
        f'[[models]]\nname = "m{i}"\nbase_url = "{base_url}"\nconcurrency = {concurrency}\n' for i in range(models)
    )
    spec = tmp_path / "spec.toml"
    spec.write_text(
        f'name = "t"\nquestions = "{FACTS}"\ntemperatures = {temps}\nrepeats = {repeats}\n{extra}\n'
        f"{model_tables}\n{sim}\n"
    )
    return spec


def read_log(run_dir: Path) -> list[dict]:
    return [orjson.loads(line) for line in (run_dir / "results.jsonl").read_bytes().splitlines()]


def test_run_completes_the_grid_and_a_rerun_sends_nothing(tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    out = tmp_path / "run"
    first = run_experiment(spec, options=RunOptions(out=out, quiet=True, report=False))
    records = read_log(out)
    assert first.total == 2 * 150 * 2 * 2 == len(records) == first.finished
    assert len({r["key"] for r in records}) == len(records)
    assert all(r["status"] == "ok" and r["outcome"] in ("correct", "wrong", "no_answer") for r in records)
    assert first.target_requests == first.total
    before = hashlib.sha256((out / "results.jsonl").read_bytes()).hexdigest()

    second = run_experiment(spec, options=RunOptions(out=out, quiet=True, report=False))
    assert second.finished == 0 and second.already_done == first.total
    assert second.target_requests == 0  # the target's own count: nothing was asked again
    assert hashlib.sha256((out / "results.jsonl").read_bytes()).hexdigest() == before


def test_failed_tasks_are_logged_with_reason_and_retried_on_resume(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, models=1, temps="[0.0]", repeats=1, extra="max_attempts = 2",
                      sim="[sim.faults]\nerror_500 = 1.0")
    out = tmp_path / "run"
    summary = run_experiment(spec, options=RunOptions(out=out, quiet=True, report=False))
    records = read_log(out)
    assert summary.failed == len(records) == 150
    assert all(r["status"] == "failed" and "http 500" in r["error"] and r["attempts"] == 2 for r in records)
    assert all(r["outcome"] is None and r["correct"] is None for r in records)

    spec = write_spec(tmp_path, models=1, temps="[0.0]", repeats=1, extra="max_attempts = 2")
    resumed = run_experiment(spec, options=RunOptions(out=out, quiet=True, report=False))
    assert resumed.finished == 150 and resumed.ok == 150


def test_429s_and_500s_still_complete_every_task(tmp_path: Path) -> None:
    # A known (generous) quota: the 429s here are injected faults, so the endpoint pauses but keeps its pace.
    sim = (
        "[sim]\nlatency_ms = 2\n[sim.faults]\nrate_429 = 0.08\nrate_429_bare = 0.005\nerror_500 = 0.05\n"
        "error_503 = 0.03\ndrop = 0.02\nmalformed = 0.02\nempty_choices = 0.01\nretry_after_s = 0.05\n"
    )
    spec = write_spec(tmp_path, models=2, temps="[0.0]", repeats=1, extra="max_attempts = 8\nbackoff_base_s = 0.05", sim=sim)
    spec.write_text(spec.read_text().replace("concurrency = 8", "concurrency = 8\nrpm = 60000"))
    out = tmp_path / "run"
    summary = run_experiment(spec, options=RunOptions(out=out, quiet=True, report=False))
    records = read_log(out)
    assert len(records) == len({r["key"] for r in records}) == 300
    assert summary.retries > 0 and summary.rate_limited > 0
    for r in records:
        assert r["status"] in ("ok", "failed")
        assert (r["status"] == "failed") == (r["error"] is not None)
    assert sum(r["status"] == "ok" for r in records) >= 295  # 8 attempts at ~24% faults: failures are rare


def _spawn_run(spec: Path, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "engine", "run", str(spec), "--out", str(out), "--quiet", "--no-report"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
    )


def _wait_for_records(out: Path, at_least: int, timeout: float = 30) -> None:
    log = out / "results.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and log.read_bytes().count(b"\n") >= at_least:
            return
        time.sleep(0.02)
    raise AssertionError(f"no {at_least} records within {timeout}s")


def test_kill_9_then_resume_loses_nothing_and_resends_only_what_was_in_flight(tmp_path: Path) -> None:
    concurrency = 8
    config = SimConfig(facts=facts_from_csv(FACTS), latency_ms=15, jitter_ms=5)
    with SimProcess(config) as sim:
        spec = write_spec(tmp_path, base_url=sim.base_url, models=2, concurrency=concurrency)
        out = tmp_path / "run"
        kills = 0
        for at_least in (50, 300, 700):
            proc = _spawn_run(spec, out)
            _wait_for_records(out, at_least)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        final = subprocess.run(
            [sys.executable, "-m", "engine", "run", str(spec), "--out", str(out), "--quiet", "--no-report"],
            capture_output=True, cwd=ROOT, timeout=120,
        )
        assert final.returncode == 0, final.stderr.decode()
        answered = sim.stats()["chat_requests"]
    records = read_log(out)
    keys = [r["key"] for r in records]
    assert len(keys) == len(set(keys)) == 2 * 150 * 2 * 2  # exactly one result per grid key
    duplicates = answered - len(keys)
    # A request re-sent after a kill was in flight at that kill: at most `concurrency` per endpoint each time.
    assert 0 <= duplicates <= kills * concurrency


def test_ctrl_c_stops_cleanly_with_exit_130_and_resume_finishes(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, sim="[sim]\nlatency_ms = 20")
    out = tmp_path / "run"
    proc = _spawn_run(spec, out)
    _wait_for_records(out, 100)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr.decode()
    assert b"Traceback" not in stderr
    data = (out / "results.jsonl").read_bytes()
    assert data.endswith(b"\n")  # a graceful stop leaves no torn line
    partial = len(data.splitlines())
    assert 100 <= partial < 1200
    summary = run_experiment(spec, options=RunOptions(out=out, quiet=True, report=False))
    assert summary.finished == 1200 - partial
    assert len({r["key"] for r in read_log(out)}) == 1200


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs a POSIX system")
def test_fresh_renames_the_old_log_aside(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, models=1, temps="[0.0]", repeats=1)
    out = tmp_path / "run"
    run_experiment(spec, options=RunOptions(out=out, quiet=True, report=False))
    again = run_experiment(spec, options=RunOptions(out=out, quiet=True, report=False, fresh=True))
    assert again.finished == 150
    assert len(list(out.glob("results.*.jsonl.old"))) == 1
