"""--ray with a local Ray instance (one per module, small grids): every key once, a killed actor resumes."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.run.ray_fleet import start_actors, start_budget
from engine.run.runner import RunOptions, local_targets, prepare
from tests.support.specs import write_spec

ray: Any = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(include_dashboard=False, log_to_driver=False, num_cpus=2)  # about 4 s: once for the module
    yield
    ray.shutdown()


def _keys(run: Path) -> list[str]:
    return [orjson.loads(line)["key"] for log in (run / "results").glob("shard-*.jsonl")
            for line in log.read_bytes().splitlines()]  # fmt: skip


def test_killed_actor_restarts_and_resumes_its_shard(local_ray: None, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, name="ray", repeats=4, latency_ms=20, concurrency=16)  # 2,400 tasks, ~8 s a shard
    options = RunOptions(out=tmp_path / "run", quiet=True, report=False)
    prepared = prepare(spec, options)
    with local_targets(prepared.spec, prepared.questions) as (_urls, sim):
        assert sim is not None
        budget = start_budget(prepared.spec, actors=2)  # the spec names no quota: one actor probes, then all send
        _handles, refs = start_actors(spec, options, actors=2, sim_url=sim.base_url, budget=budget)
        shard_log = tmp_path / "run" / "results" / "shard-00-of-02.jsonl"
        deadline = time.monotonic() + 60
        while (not shard_log.exists() or shard_log.stat().st_size < 20_000) and time.monotonic() < deadline:
            time.sleep(0.05)
        # The actor's process is the one holding its shard's lock (a call queued behind run() would wait for it).
        victim = orjson.loads((tmp_path / "run" / "results" / ".shard-00-of-02.lock").read_bytes())["pid"]
        os.kill(victim, signal.SIGKILL)  # partway: Ray restarts the actor and retries its call
        results = ray.get(refs)
        answered = int(sim.stats()["chat_requests"])
    keys = _keys(tmp_path / "run")
    assert len(keys) == len(set(keys)) == 2400
    assert results[0]["skipped"] > 0  # the restarted actor found its shard's earlier records
    assert 2400 <= answered <= 2400 + 2 * 16  # re-sent at most what the killed actor had in flight (2 models x 16)


def test_two_actors_hold_one_known_quota_that_the_target_enforces(local_ray: None, tmp_path: Path) -> None:
    """--ray auto with a known quota: the budget actor leases it, so the actors together stay under it."""
    rpm = 3000  # 50 a second, counted by the target over every sliding second
    spec = write_spec(tmp_path, name="ray-quota", repeats=2, temps="[0.0]", models=1, concurrency=16, rpm=rpm,
                      sim=f"[sim]\nlatency_ms = 10\nrpm = {rpm}\nquota_window_s = 1.0\n")  # fmt: skip
    options = RunOptions(out=tmp_path / "run", quiet=True, report=False)
    prepared = prepare(spec, options)
    with local_targets(prepared.spec, prepared.questions) as (_urls, sim):
        assert sim is not None
        budget = start_budget(prepared.spec, actors=2)
        _handles, refs = start_actors(spec, options, actors=2, sim_url=sim.base_url, budget=budget)
        results = ray.get(refs)
        stats = sim.stats()
    keys = _keys(tmp_path / "run")
    assert len(keys) == len(set(keys)) == 300
    assert sum(r["rate_limited"] for r in results) == stats["quota_limited"]
    # The benchmark holds this to < 1 % (docs/results.md: 0.23-0.50 %); on a loaded CI machine two actors,
    # the budget, Ray's own daemons and the target share two cores, and an actor starved for a moment sends
    # its slice late: up to 2.3 % seen. Each actor given the whole quota instead is refused 7.7-9 %.
    assert stats["quota_limited"] <= 0.03 * stats["chat_requests"], stats
