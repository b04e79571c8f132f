"""The batch route end to end against the built-in target's Batch APIs (OpenAI Batch, Anthropic Message Batches):
10,000 tasks in two chunks, kill -9 at five steps and at a random moment, errored and expired items resubmitted."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from engine.experiment.questions import load_questions
from engine.run.runner import RunOptions, run_experiment
from engine.run.targets import facts_from_questions
from engine.sim.config import SimConfig
from engine.sim.process import SimProcess
from tests.support.batchspec import batch_spec, ledger_steps, read_log, write_questions

ROOT = Path(__file__).resolve().parents[2]
ACCURACY = {"ft-5x": {"easy": 0.99, "mid": 0.94, "hard": 0.7}, "ft-50x": {"easy": 1.0, "hard": 0.91}}
STEPS = {"chat": ("uploaded", "created", "polled", "downloading", "writing"),
         "anthropic": ("chunked", "created", "polled", "downloading", "writing")}


def sim_for(work: Path, questions: int, **batch: object) -> SimProcess:
    """A target outside the runs, so its counts span every run of a test."""
    facts = facts_from_questions(load_questions(write_questions(work / f"facts-{questions}.jsonl", questions)))
    return SimProcess(SimConfig(facts=facts, accuracy=ACCURACY, **batch))  # type: ignore[arg-type]


def chunks(run: Path) -> int:
    return ledger_steps(run).count("chunked")


def error_rates(records: list[dict[str, object]]) -> dict[str, float]:
    by_model: dict[str, list[bool]] = {}
    for r in records:
        by_model.setdefault(str(r["model"]), []).append(r["outcome"] != "correct")
    return {m: sum(v) / len(v) for m, v in by_model.items()}


@pytest.mark.parametrize("api", ["chat", "anthropic"])
def test_10000_tasks_go_in_two_chunks_and_match_the_online_route(tmp_path: Path, api: str) -> None:
    with sim_for(tmp_path, 5000, batch_delay_s=0.2) as sim:
        common = {"questions": 5000, "api": api, "base_url": sim.base_url}
        online = batch_spec(tmp_path, mode="online", filename="online.toml", **common)  # type: ignore[arg-type]
        batch = batch_spec(tmp_path, batch="max_requests = 5000", filename="batch.toml", **common)  # type: ignore[arg-type]
        run_experiment(online, options=RunOptions(out=tmp_path / "online", quiet=True, report=False))
        summary = run_experiment(batch, options=RunOptions(out=tmp_path / "batch", quiet=True, report=False))
        counts = sim.stats()["batch"]
    records = read_log(tmp_path / "batch")
    keys = Counter(r["key"] for r in records)
    assert len(records) == len(keys) == 10_000 == summary.finished and set(keys.values()) == {1}
    assert all(r["route"] == "batch" and r["batch_id"] and r["status"] == "ok" for r in records)
    assert chunks(tmp_path / "batch") == 2 == counts["created"]
    assert counts.get("uploads", 0) == (2 if api == "chat" else 0)  # Message Batches take no upload
    reference = {r["key"]: r for r in read_log(tmp_path / "online")}
    assert set(reference) == set(keys)  # the route is not part of a key: one grid, either way
    # Greedy answers are a function of model and question: the same outcome for every key, so the same rates.
    assert all(r["outcome"] == reference[r["key"]]["outcome"] for r in records)
    rates = error_rates(records)
    assert rates == error_rates(list(reference.values()))
    assert 0.05 < rates["ft-5x"] < 0.2 and 0.0 < rates["ft-50x"] < 0.08  # the configured accuracies show


def _command(spec: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "engine", "run", str(spec), "--out", str(out), "--quiet", "--no-report"]


def _run(spec: Path, out: Path, kill_at: str | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "ENGINE_BATCH_KILL_AT"}
    if kill_at is not None:
        env["ENGINE_BATCH_KILL_AT"] = kill_at
    return subprocess.run(_command(spec, out), capture_output=True, cwd=ROOT, env=env, timeout=300)


def _kill_at_random(spec: Path, out: Path, seed: int) -> None:
    """A real kill -9 from outside, at a random moment once batches exist (mostly: while polling)."""
    proc = subprocess.Popen(_command(spec, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.monotonic() + 60
    while "created" not in ledger_steps(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(random.Random(seed).uniform(0, 0.3))
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


@pytest.mark.parametrize("api", ["chat", "anthropic"])
def test_kill_9_at_five_steps_and_at_random_uploads_and_creates_once_per_chunk(tmp_path: Path, api: str) -> None:
    out = tmp_path / "run"
    with sim_for(tmp_path, 300, batch_delay_s=0.5) as sim:
        spec = batch_spec(tmp_path, questions=300, api=api, base_url=sim.base_url, batch="max_requests = 200")
        for step in STEPS[api]:
            before = len(ledger_steps(out))
            done = _run(spec, out, kill_at=step)
            assert done.returncode == -signal.SIGKILL, (step, done.stderr.decode()[-400:])
            # Each run got further before it died (a poll is not a step of the ledger).
            assert len(ledger_steps(out)) > before or step == "polled"
        assert "written" not in ledger_steps(out)[-1:]  # the last kill left a chunk half written
        _kill_at_random(spec, out, seed=3)
        final = _run(spec, out)
        assert final.returncode == 0, final.stderr.decode()[-400:]
        counts = sim.stats()["batch"]
    steps = ledger_steps(out)
    made = chunks(out)
    assert made == 4  # 300 tasks per model in chunks of at most 200: 200 + 100, twice
    assert counts["created"] == made == steps.count("created") == steps.count("written")
    assert counts.get("uploads", 0) == (made if api == "chat" else 0)
    records = read_log(out)
    assert len(records) == len({r["key"] for r in records}) == 600
    assert all(r["status"] == "ok" and r["route"] == "batch" for r in records)


def test_errored_and_expired_items_are_resubmitted_with_their_reasons(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with sim_for(tmp_path, 1000, batch_error_rate=0.02, batch_expire=(2,)) as sim:
        spec = batch_spec(tmp_path, questions=1000, base_url=sim.base_url, batch="max_requests = 500")
        summary = run_experiment(spec, options=RunOptions(out=out, quiet=True, report=False))
        counts = sim.stats()["batch"]
    records = read_log(out)
    assert len(records) == len({r["key"] for r in records}) == 2000 == summary.finished
    assert all(r["status"] == "ok" for r in records)  # every resubmitted task finished
    requeued = [r for r in records if r.get("requeued")]
    expired = [r for r in requeued if any(reason.startswith("expired") for reason in r["requeued"])]
    errored = [r for r in requeued if any("server_error" in reason for reason in r["requeued"])]
    assert len(expired) == 250 and counts["expired"] == 1  # half of the second batch's 500
    assert 20 <= len(errored) <= 80  # 2 % of about 2,250 items answered
    assert counts["errored_items"] == sum(sum("server_error" in x for x in r.get("requeued", [])) for r in records)
    assert all(r["attempts"] == len(r["requeued"]) + 1 and r["batch_id"] not in r["requeued"][0] for r in requeued)
    ledger = [orjson.loads(line) for line in (out / "batches" / "ledger.jsonl").read_bytes().splitlines()]
    reasons = {k: v for e in ledger if e["step"] == "written" for k, v in e["requeued"].items()}
    assert len(reasons) == len(requeued)  # the reasons are in the ledger too
    assert counts["created"] == chunks(out) >= 5  # four first-round chunks, then the resubmitted ones



def _online_run(tmp_path: Path, out: Path, kill_at: str | None) -> tuple[list[dict[str, object]], dict[str, int]]:
    """2 % of items errored and the second batch expired half done, with resubmit = "online"."""
    with sim_for(tmp_path, 1000, batch_error_rate=0.02, batch_expire=(2,)) as sim:
        spec = batch_spec(tmp_path, questions=1000, base_url=sim.base_url,
                          batch='max_requests = 500\nresubmit = "online"')  # fmt: skip
        if kill_at is not None:
            killed = _run(spec, out, kill_at=kill_at)
            assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-400:]
            assert "results.jsonl" not in os.listdir(out) or not any(r.get("route") == "online" for r in read_log(out))
        done = _run(spec, out)
        assert done.returncode == 0, done.stderr.decode()[-400:]
        stats = sim.stats()
    return read_log(out), {"created": stats["batch"]["created"], "chat": stats["chat_requests"],
                           "expired": stats["batch"]["expired"]}  # fmt: skip


@pytest.mark.parametrize("kill_at", [None, "online"])
def test_resubmit_online_asks_errored_and_expired_items_through_the_online_api(
    tmp_path: Path, kill_at: str | None
) -> None:
    out = tmp_path / "run"
    records, counts = _online_run(tmp_path, out, kill_at)
    assert len(records) == len({r["key"] for r in records}) == 2000
    assert all(r["status"] == "ok" for r in records)
    online = [r for r in records if r["route"] == "online"]
    assert counts["created"] == chunks(out) == 4 and counts["expired"] == 1  # no second-round batch, even resumed
    assert counts["chat"] == len(online)  # each asked online once (the target has no online faults here)
    # Each online record says why: the batch it expired in, or the item's error, with that batch's id.
    assert all(len(r["requeued"]) == 1 and "(batch " in r["requeued"][0] and r["attempts"] == 2  # type: ignore[arg-type,index]
               and r.get("batch_id") is None for r in online)  # fmt: skip
    expired = [r for r in online if r["requeued"][0].startswith("expired")]  # type: ignore[index]
    errored = [r for r in online if "server_error" in r["requeued"][0]]  # type: ignore[index]
    assert len(expired) == 250 and 15 <= len(errored) <= 70 and len(expired) + len(errored) == len(online)
    assert all(r["route"] == "batch" and "requeued" not in r for r in records if r["route"] != "online")
