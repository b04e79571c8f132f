"""--workers N and --shard K/N end to end: one record per key, the same numbers as one process."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson

from engine.cli import main
from engine.experiment.grid import shard_of
from engine.results.paths import run_logs
from tests.support.batchspec import batch_spec
from tests.support.specs import write_spec


def _statuses(run: Path) -> list[tuple[str, str]]:
    """(key, status) of every record in every log of the run."""
    return [(r["key"], r["status"]) for log in run_logs(run) for r in map(orjson.loads, log.read_bytes().splitlines())]


def _keys(run: Path) -> list[str]:
    return [key for key, _ in _statuses(run)]


def _overall(run: Path, capsys: object) -> object:
    assert main(["report", str(run), "--format", "json"]) == 0
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    doc = json.loads(out)
    return doc["overall"], doc["tasks"]


def test_workers_and_shards_match_one_process(tmp_path: Path, capsys: object) -> None:
    # Temperature 0: the built-in target answers each (model, question) alike, in any order of requests.
    spec = write_spec(tmp_path, name="fleet", repeats=4, temps="[0.0]")  # 2 models x 150 questions x 4 = 1,200
    assert main(["run", str(spec), "--out", str(tmp_path / "one"), "--quiet", "--no-report"]) == 0
    assert main(["run", str(spec), "--out", str(tmp_path / "two"), "--quiet", "--workers", "2"]) == 0
    for k in range(3):  # shards as separate commands, one of them twice (the rerun sends nothing)
        assert main(["run", str(spec), "--out", str(tmp_path / "three"), "--quiet", "--shard", f"{k}/3"]) == 0
    capsys.readouterr()  # type: ignore[attr-defined]
    assert main(["run", str(spec), "--out", str(tmp_path / "three"), "--quiet", "--shard", "1/3"]) == 0
    rerun = capsys.readouterr().out  # type: ignore[attr-defined]
    shard_done = int(re.search(r"\(([\d,]+) already in the log", rerun).group(1).replace(",", ""))  # type: ignore[union-attr]
    assert 300 < shard_done < 500  # its own slice of the 1,200 (a third, give or take the hash), not the grid
    one = _keys(tmp_path / "one")
    assert len(one) == 1200
    for name in ("two", "three"):
        keys = _keys(tmp_path / name)
        assert len(keys) == len(set(keys)) == 1200 and set(keys) == set(one)
    assert (tmp_path / "two" / "report.md").is_file()
    # The report names the set of shard logs it read, not one of them.
    assert f"Log `{tmp_path / 'two' / 'results'}/ (2 shard logs)`" in (tmp_path / "two" / "report.md").read_text()
    reference = _overall(tmp_path / "one", capsys)
    assert _overall(tmp_path / "two", capsys) == reference
    assert _overall(tmp_path / "three", capsys) == reference
    # Re-sharded with another count: every key is found done, nothing is sent.
    assert main(["run", str(spec), "--out", str(tmp_path / "three"), "--quiet", "--workers", "2"]) == 0
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert out.startswith("finished: 0 tasks this run") and "requests 0 " in out
    assert "(1,200 already in the log, 1,200 in the grid)" in out
    assert f"log: {tmp_path / 'three' / 'results'}/ (3 shard logs)" in out
    assert len(_keys(tmp_path / "three")) == 1200


def test_a_batch_mode_model_is_refused_in_a_fleet_with_one_line(tmp_path: Path, capsys: object) -> None:
    spec = batch_spec(tmp_path, questions=30)  # both models mode = "batch", on the built-in target
    for flags in (["--shard", "0/2"], ["--workers", "2"]):
        out = tmp_path / flags[0].strip("-")
        assert main(["run", str(spec), "--out", str(out), "--quiet", *flags]) == 2
        captured = capsys.readouterr()  # type: ignore[attr-defined]
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in captured.err and captured.out == "", captured.err
        assert "'ft-5x': batch mode runs in one process" in lines[0] and f"drop {' '.join(flags)}" in lines[0]
        assert not (out / "results.jsonl").exists() and not (out / "results").exists()  # refused before running
        assert not (out / "batches").exists()


def test_two_workers_hold_one_known_quota_that_the_target_enforces_over_one_second_windows(
    tmp_path: Path, capsys: object
) -> None:
    """The quota is the fleet's, not each worker's: two workers together stay under what the target allows."""
    rpm = 3000  # 50 a second, counted by the target over every sliding second
    spec = write_spec(tmp_path, name="quota", repeats=2, temps="[0.0]", models=1, concurrency=16, rpm=rpm,
                      sim=f"[sim]\nlatency_ms = 10\nrpm = {rpm}\nquota_window_s = 1.0\n")  # 150 x 2 = 300 tasks
    assert main(["run", str(spec), "--out", str(tmp_path / "run"), "--quiet", "--no-report", "--workers", "2"]) == 0
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    requests = int(re.search(r"requests ([\d,]+)", out).group(1).replace(",", ""))  # type: ignore[union-attr]
    limited = int(re.search(r"429s ([\d,]+)", out).group(1).replace(",", ""))  # type: ignore[union-attr]
    keys = _keys(tmp_path / "run")
    assert len(keys) == len(set(keys)) == 300
    # Each worker alone allowed the whole quota would send twice what the target takes: about half refused.
    assert limited <= 0.01 * requests, out


def _stall(run: Path, *, after: int, seconds: float) -> None:
    """Stop worker 0 (SIGSTOP, as a machine starving it of CPU would) once it has logged ``after``
    records, and let it go on ``seconds`` later."""
    log, lock = run / "results" / "shard-00-of-02.jsonl", run / "results" / ".shard-00-of-02.lock"
    deadline = time.monotonic() + 60
    while not (log.exists() and log.read_bytes().count(b"\n") >= after and lock.exists()):
        assert time.monotonic() < deadline, "worker 0 never got going"
        time.sleep(0.005)
    pid = orjson.loads(lock.read_bytes())["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)


def test_a_stalled_worker_gives_the_back_half_of_its_shard_to_one_that_ran_dry(tmp_path: Path, capsys: object) -> None:
    """Workers seldom run at one speed (on a busy machine the scheduler starves one for a while); the one
    that finishes its shard first takes the back half of what the other has left, so they end together,
    and every key is still run once."""
    spec = write_spec(tmp_path, name="stall", repeats=8, temps="[0.0]", models=1, latency_ms=20)  # 1,200 tasks
    run = tmp_path / "run"
    stall = threading.Thread(target=_stall, args=(run,), kwargs={"after": 40, "seconds": 2.0})
    stall.start()
    try:
        assert main(["run", str(spec), "--out", str(run), "--quiet", "--no-report", "--workers", "2"]) == 0
    finally:
        stall.join()
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert out.startswith("finished: 1,200 tasks this run"), out
    keys = _keys(run)
    assert len(keys) == len(set(keys)) == 1200
    second = [orjson.loads(line)["key"] for line in (run / "results" / "shard-01-of-02.jsonl").read_bytes().splitlines()]
    taken = sum(shard_of(key, 2) == 0 for key in second)
    # Worker 0 had about 560 left when stopped; worker 1 took about half of that once its own 600 were done.
    assert 100 <= taken <= 450, taken


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:  # a zombie is not running
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_workers_whose_parent_is_killed_outright_stop_and_leave_logs_that_resume(tmp_path: Path, capsys: object) -> None:
    """``kill -9`` of the fleet's parent passes no signal on; its workers see the hub's line close and
    stop as on Ctrl-C (they went on unseen before, against a target that died with the parent)."""
    spec = write_spec(tmp_path, name="orphans", repeats=20, temps="[0.0]", models=1, latency_ms=20)  # 3,000 tasks
    run = tmp_path / "run"
    parent = subprocess.Popen([sys.executable, "-m", "engine", "run", str(spec), "--out", str(run), "--quiet",
                               "--no-report", "--workers", "2"], start_new_session=True)  # fmt: skip
    try:
        pids = []
        deadline = time.monotonic() + 60
        for k in range(2):
            log, lock = run / "results" / f"shard-0{k}-of-02.jsonl", run / "results" / f".shard-0{k}-of-02.lock"
            while not (log.exists() and log.read_bytes().count(b"\n") >= 50 and lock.stat().st_size > 0):
                assert time.monotonic() < deadline and parent.poll() is None, "the fleet never got going"
                time.sleep(0.01)
            pids.append(orjson.loads(lock.read_bytes())["pid"])
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 30  # what was in flight may take the grace time (10 s) to give up
        while any(_alive(pid) for pid in pids):
            assert time.monotonic() < deadline, "a worker went on after its parent was killed"
            time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(parent.pid, signal.SIGKILL)
    first = _statuses(run)
    assert len(first) == len({key for key, _ in first}) < 3000
    assert main(["run", str(spec), "--out", str(run), "--quiet", "--no-report", "--workers", "2"]) == 0
    # The target died with the parent, so a request in flight then may have run out of attempts: that task
    # was logged failed (truly) and the rerun asks it again. Every key is answered once, and only those twice.
    failed = {key for key, status in first if status != "ok"}
    records = _statuses(run)
    answered = [key for key, status in records if status == "ok"]
    assert len(answered) == len(set(answered)) == 3000
    assert len(records) == 3000 + len(failed)
