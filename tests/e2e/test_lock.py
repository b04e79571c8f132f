"""The run-directory lock: one run per directory, the second refused with the holder named, stale locks harmless."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from engine.errors import EndpointError, LogError
from engine.results.lock import HOLDER_FILE, RunLock
from engine.run.runner import RunOptions, run_experiment
from tests.support import specs
from tests.support.net import refusing_port

ROOT = Path(__file__).resolve().parents[2]
FACTS = specs.FACTS
ANSWERED = re.compile(r"built-in target \(a simulation\) answered ([\d,]+) chat requests")


def write_spec(tmp_path: Path, *, base_url: str = "sim", latency_ms: float = 50, concurrency: int = 8) -> Path:
    """Two models × 150 questions × 2 temperatures = 600 tasks on one endpoint."""
    return specs.write_spec(tmp_path, name="lock", base_url=base_url, latency_ms=latency_ms, concurrency=concurrency)


def engine_run(spec: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "engine", "run", str(spec), "--out", str(out), "--quiet", "--no-report", *extra]


def keys(out: Path) -> list[str]:
    return [orjson.loads(line)["key"] for line in (out / "results.jsonl").read_bytes().splitlines()]


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_two_runs_started_0_7_s_apart_send_the_grid_once_and_the_second_names_the_holder(tmp_path: Path) -> None:
    # 600 tasks, 8 in flight, 50 ms each: the first run holds the directory for about 4 s.
    spec, out, grid, in_flight = write_spec(tmp_path), tmp_path / "run", 600, 8
    first = subprocess.Popen(engine_run(spec, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    time.sleep(0.7)
    second = subprocess.run(engine_run(spec, out), capture_output=True, text=True, cwd=ROOT, timeout=120)
    stdout, stderr = first.communicate(timeout=120)

    assert second.returncode == 2, second.stderr
    assert second.stdout == "" and "Traceback" not in second.stderr
    lines = second.stderr.splitlines()
    assert len(lines) == 1, second.stderr
    assert f"{out} is in use by another run (PID {first.pid}, started " in lines[0], lines[0]
    assert "`" in lines[0] and " run " in lines[0]  # the holder's command line

    assert first.returncode == 0, stderr.decode()
    match = ANSWERED.search(stdout.decode())
    assert match is not None, stdout.decode()
    # The target (the first run's own) answered the grid once: at most what was in flight on top.
    assert grid <= int(match.group(1).replace(",", "")) <= grid + in_flight
    logged = keys(out)
    assert len(logged) == len(set(logged)) == grid
    assert not (out / HOLDER_FILE).exists()


@pytest.mark.parametrize("extra", [(), ("--fresh",)], ids=["run", "run --fresh"])
def test_a_refused_run_changes_no_file_of_the_run_directory(tmp_path: Path, extra: tuple[str, ...]) -> None:
    spec, out = write_spec(tmp_path, latency_ms=0), tmp_path / "run"
    run_experiment(spec, options=RunOptions(out=out, quiet=True, report=False))
    with RunLock(out):  # this test process is the holder
        before = snapshot(out)
        refused = subprocess.run(engine_run(spec, out, *extra), capture_output=True, text=True, cwd=ROOT, timeout=60)
        after = snapshot(out)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.count("\n") == 1 and f"(PID {os.getpid()}, started " in refused.stderr
    assert after == before  # with --fresh too: the log was not renamed aside
    assert not (out / HOLDER_FILE).exists()


def test_a_stale_lock_of_a_killed_run_never_blocks(tmp_path: Path) -> None:
    spec, out, grid = write_spec(tmp_path), tmp_path / "run", 600
    proc = subprocess.Popen(engine_run(spec, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.monotonic() + 60
    while not ((out / "results.jsonl").exists() and (out / "results.jsonl").stat().st_size > 0):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert orjson.loads((out / HOLDER_FILE).read_bytes())["pid"] == proc.pid  # its note stays behind

    done = subprocess.run(engine_run(spec, out), capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    logged = keys(out)
    assert len(logged) == len(set(logged)) == grid
    assert not (out / HOLDER_FILE).exists()


def test_the_holder_is_named_in_run_lock_while_held_and_a_second_lock_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "run"
    with RunLock(root):
        holder = orjson.loads((root / HOLDER_FILE).read_bytes())
        assert holder["pid"] == os.getpid() and holder["command"] and holder["started"]
        with pytest.raises(LogError, match=rf"in use by another run \(PID {os.getpid()}, started "):
            RunLock(root).__enter__()
    assert not root.exists()  # made for the lock, never written to: removed again
    with RunLock(root):  # released: the next one gets it
        (root / "results.jsonl").write_bytes(b"")
    assert sorted(p.name for p in root.iterdir()) == ["results.jsonl"]


def test_a_run_refused_by_a_check_after_the_lock_leaves_no_directory_behind(tmp_path: Path) -> None:
    with refusing_port() as port:  # bound, never listening: nothing answers there
        spec = write_spec(tmp_path, base_url=f"http://127.0.0.1:{port}/v1")
        out = tmp_path / "new" / "run"
        with pytest.raises(EndpointError, match="unreachable"):
            run_experiment(spec, options=RunOptions(out=out, quiet=True, report=False))
    assert not out.exists()


def test_replicate_takes_the_lock_before_it_builds_anything(tmp_path: Path) -> None:
    from engine.study.replicate import replicate

    out = tmp_path / "run"
    with RunLock(out), pytest.raises(LogError, match="in use by another run"):
        replicate(ROOT / "data" / "replication.toml", out=out, quiet=True)
