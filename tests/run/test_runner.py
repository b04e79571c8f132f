"""End to end against the built-in target: run, resume, kill -9, Ctrl-C, faults."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.run.runner import RunOptions, run_experiment
from engine.run.targets import facts_from_csv
from engine.sim.config import SimConfig
from engine.sim.process import SimProcess
from tests.support import specs

ROOT = Path(__file__).resolve().parents[2]
FACTS = specs.FACTS


def write_spec(tmp_path: Path, *, base_url: str = "sim", models: int = 2, temps: str = "[0.0, 1.0]",
               repeats: int = 2, extra: str = "", concurrency: int = 8, sim: str = "") -> Path:
    return specs.write_spec(tmp_path, name="t", base_url=base_url, models=models, temps=temps, repeats=repeats,
                            extra=extra, concurrency=concurrency, sim=sim)


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (run_dir / "results.jsonl").read_bytes().splitlines()]


def test_run_completes_the_grid_and_a_rerun_sends_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = write_spec(tmp_path)
    out = tmp_path / "run"
    first = run_experiment(spec, options=RunOptions(out=out, quiet=True, report=False))
    records = read_log(out)
    assert first.total == 2 * 150 * 2 * 2 == len(records) == first.finished
    assert len({r["key"] for r in records}) == len(records)
    assert all(r["status"] == "ok" and r["outcome"] in ("correct", "wrong", "no_answer") for r in records)
    assert first.target_requests == first.total
    before = hashlib.sha256((out / "results.jsonl").read_bytes()).hexdigest()

    def no_target(*_args: object) -> None:
        raise AssertionError("the built-in target was started with nothing left to send")

    monkeypatch.setattr(SimProcess, "start", no_target)
    second = run_experiment(spec, options=RunOptions(out=out, quiet=True, report=False))
    assert second.finished == 0 and second.already_done == first.total
    assert second.requests == 0 and second.target_requests is None  # no target started, nothing asked again
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
    # A request re-sent after a kill was in flight at that kill: at most `concurrency` per model each time.
    assert 0 <= duplicates <= kills * 2 * concurrency


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


class _Provider:
    """A loopback endpoint whose chat completions always answer one fixed error."""

    def __init__(self, status: int, body: bytes, models_status: int = 200) -> None:
        import http.server
        import threading

        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _reply(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._reply(models_status, b'{"data": []}')

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                outer.seen_auth.append(self.headers.get("Authorization"))
                self._reply(status, body)

            def log_message(self, *args: object) -> None:
                pass

        self.seen_auth: list[str | None] = []
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (401, b'{"error": {"message": "Incorrect API key provided: sk-test-ECHOED-KEY"}}', "refused the API key"),
        (404, b'{"error": {"code": "model_not_found", "message": "no such model"}}', "served there"),
        (429, b'{"error": {"code": "insufficient_quota", "message": "You exceeded your quota"}}', "quota is spent"),
    ],
)
def test_an_error_that_stops_the_run_midway_is_one_line_and_exit_2(
    tmp_path: Path, status: int, body: bytes, message: str
) -> None:
    provider = _Provider(status, body)
    try:
        spec = write_spec(tmp_path, base_url=provider.url, models=1, temps="[0.0]", repeats=1)
        spec.write_text(spec.read_text().replace('concurrency = 8', 'concurrency = 8\napi_key_env = "ENGINE_TEST_KEY"'))
        run = subprocess.run(
            [sys.executable, "-m", "engine", "run", str(spec), "--out", str(tmp_path / "run"), "--quiet"],
            capture_output=True, cwd=ROOT, timeout=60, env={**os.environ, "ENGINE_TEST_KEY": "sk-test-ECHOED-KEY"},
        )
    finally:
        provider.close()
    err = run.stderr.decode()
    assert run.returncode == 2, err
    assert err.count("\n") == 1 and err.startswith("engine: error:") and message in err, err
    assert "Traceback" not in err and "sk-test-ECHOED-KEY" not in err
    log = tmp_path / "run" / "results.jsonl"
    assert not log.exists() or b"sk-test-ECHOED-KEY" not in log.read_bytes()


def test_secrets_in_base_url_and_keys_with_control_characters_are_refused(tmp_path: Path) -> None:
    from engine.errors import ConfigError, SpecError
    from engine.run.runner import prepare

    spec = write_spec(tmp_path, base_url="https://user:sk-in-url@api.example/v1", models=1)
    with pytest.raises(SpecError, match="base_url: must not hold credentials") as info:
        prepare(spec, RunOptions(out=tmp_path / "run"))
    assert "sk-in-url" not in str(info.value)

    spec = write_spec(tmp_path, models=1)
    spec.write_text(spec.read_text().replace("concurrency = 8", 'concurrency = 8\napi_key_env = "ENGINE_TEST_NL_KEY"'))
    os.environ["ENGINE_TEST_NL_KEY"] = "sk-test-newline\n"
    try:
        with pytest.raises(ConfigError, match="ENGINE_TEST_NL_KEY holds spaces or control") as key_info:
            prepare(spec, RunOptions(out=tmp_path / "run"))
    finally:
        del os.environ["ENGINE_TEST_NL_KEY"]
    assert "sk-test-newline" not in str(key_info.value)


def test_out_pointing_at_a_file_is_refused_before_anything_runs(tmp_path: Path) -> None:
    from engine.errors import LogError
    from engine.run.runner import prepare

    target = tmp_path / "not-a-dir"
    target.write_text("mine")
    with pytest.raises(LogError, match="is a file, not a run directory"):
        prepare(write_spec(tmp_path, models=1), RunOptions(out=target))
    assert target.read_text() == "mine"


def test_fresh_forgets_the_old_write_ahead_journal(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, models=1, temps="[0.0]", repeats=1)
    out = tmp_path / "run"
    run_experiment(spec, options=RunOptions(out=out, quiet=True, report=False, write_ahead=True))
    (out / "started.jsonl").write_bytes(b'{"key":"00000000000000000000"}\n')  # as if a request was lost
    again = run_experiment(spec, options=RunOptions(out=out, quiet=True, report=False, fresh=True, write_ahead=True))
    assert again.in_flight_at_last_stop is None  # the journal spoke of the log set aside, not this one
    resumed = run_experiment(spec, options=RunOptions(out=out, quiet=True, report=False, write_ahead=True))
    assert resumed.in_flight_at_last_stop == 0


def test_already_done_counts_only_this_grid_when_the_spec_changed(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_experiment(write_spec(tmp_path, models=1, temps="[0.0, 1.0]", repeats=1),
                   options=RunOptions(out=out, quiet=True, report=False))  # 300 records
    smaller = write_spec(tmp_path, models=1, temps="[0.0]", repeats=1)
    summary = run_experiment(smaller, options=RunOptions(out=out, quiet=True, report=False))
    assert summary.total == 150 and summary.already_done == 150 and summary.finished == 0
