"""The built-in target's quotas: requests and tokens a window, sliding, per model, held, validated."""

from __future__ import annotations

import re
import time
from pathlib import Path

import anyio
import pytest

from engine.errors import ConfigError, SpecError
from engine.experiment.spec import load_spec
from engine.run.runner import RunOptions, prepare, run_prepared
from engine.sim.config import SimConfig
from engine.sim.process import SimProcess
from engine.sim.server import SlidingQuota
from tests.support.sim import chat, config, running

ROOT = Path(__file__).resolve().parents[2]


# --- quotas --------------------------------------------------------------------------------------


async def test_rpm_quota_429_with_headers() -> None:
    async with running(config(rpm=60)) as client:  # one request per second
        ok = await client.post("/v1/chat/completions", json=chat("Anchor?"))
        assert ok.status_code == 200
        assert ok.headers["x-ratelimit-limit-requests"] == "60"
        assert ok.headers["x-ratelimit-remaining-requests"] == "0"
        assert re.fullmatch(r"\d+(ms|(\.\d+)?s)", ok.headers["x-ratelimit-reset-requests"])
        limited = await client.post("/v1/chat/completions", json=chat("Anchor?"))
        assert limited.status_code == 429
        assert limited.headers["retry-after"] == "1"
        assert 0 < int(limited.headers["retry-after-ms"]) <= 1000
        assert limited.headers["x-ratelimit-remaining-requests"] == "0"
        assert limited.json()["error"]["type"] == "requests"
        stats = (await client.get("/sim/stats")).json()
        assert stats["quota_limited"] == 1 and stats["rate_limited"] == 1


async def test_tpm_quota_counts_prompt_and_max_tokens() -> None:
    async with running(config(tpm=6000)) as client:  # 100 tokens per second
        first = await client.post("/v1/chat/completions", json=chat("Anchor?", max_tokens=80))
        assert first.status_code == 200
        assert first.headers["x-ratelimit-limit-tokens"] == "6000"
        assert "x-ratelimit-limit-requests" not in first.headers
        assert int(first.headers["x-ratelimit-remaining-tokens"]) < 20
        second = await client.post("/v1/chat/completions", json=chat("Anchor?", max_tokens=80))
        assert second.status_code == 429
        assert second.json()["error"]["type"] == "tokens"
        assert int(second.headers["retry-after-ms"]) > 0


def test_quota_is_a_sliding_window_not_a_fixed_bucket() -> None:
    quota = SlidingQuota(1200, 1.0)  # 20 in any second
    for i in range(20):
        assert quota.wait_s(1, 0.9 + i * 0.005) == 0
        quota.take(1, 0.9 + i * 0.005)
    # A fixed one-second bucket would start afresh at t = 1.0 and admit 20 more at once.
    assert quota.wait_s(1, 1.01) == pytest.approx(0.9 + 1.0 - 1.01)  # until the oldest leaves the window
    assert quota.wait_s(1, 1.9) == 0  # the request at 0.9 left: (0.9, 1.9] holds 19


def test_quota_keeps_the_minute_too_and_lets_a_large_request_alone_into_a_short_window() -> None:
    tokens = SlidingQuota(100, 1.0)  # 100 tokens a minute: a second's share is 1.7 tokens
    assert tokens.wait_s(50, 0.0) == 0  # larger than the second's share, but alone in its window
    tokens.take(50, 0.0)
    assert tokens.wait_s(50, 0.5) == pytest.approx(0.5)  # not with another in the same second
    assert tokens.wait_s(50, 1.5) == 0
    tokens.take(50, 1.5)
    assert tokens.wait_s(50, 2.0) == pytest.approx(58.0)  # the minute holds 100: wait for the first to leave
    requests = SlidingQuota(1, 1.0)  # rpm 1: one in any minute
    requests.take(1, 0.0)
    assert requests.wait_s(1, 30.0) == pytest.approx(30.0)


async def test_quota_windows_and_retry_after_follow_quota_window_s() -> None:
    async with running(config(rpm=60, quota_window_s=10)) as client:  # 10 in any 10 seconds
        for _ in range(10):
            assert (await client.post("/v1/chat/completions", json=chat("Anchor?"))).status_code == 200
        limited = await client.post("/v1/chat/completions", json=chat("Anchor?"))
        assert limited.status_code == 429
        assert 9000 <= int(limited.headers["retry-after-ms"]) <= 10_000  # until the first leaves the window
        assert limited.headers["retry-after"] == "10"
        assert limited.headers["x-ratelimit-remaining-requests"] == "0"
        assert limited.headers["x-ratelimit-limit-requests"] == "60"


async def test_quotas_count_per_model_id_unless_pooled() -> None:
    async with running(config(rpm=60)) as client:  # per model id, as providers count
        assert (await client.post("/v1/chat/completions", json=chat("Anchor?", model="a"))).status_code == 200
        assert (await client.post("/v1/chat/completions", json=chat("Anchor?", model="b"))).status_code == 200
        assert (await client.post("/v1/chat/completions", json=chat("Anchor?", model="a"))).status_code == 429
    async with running(config(rpm=60, quota_scope="server")) as client:  # one quota for every model
        assert (await client.post("/v1/chat/completions", json=chat("Anchor?", model="a"))).status_code == 200
        assert (await client.post("/v1/chat/completions", json=chat("Anchor?", model="b"))).status_code == 429


async def test_hold_answers_429_with_retry_after_until_it_ends() -> None:
    async with running(config()) as client:
        assert (await client.post("/sim/hold?s=bad")).status_code == 400
        assert (await client.post("/sim/hold?s=30")).status_code == 200
        held = await client.post("/v1/chat/completions", json=chat("Anchor?"))
        assert held.status_code == 429
        assert held.headers["retry-after"] == "30" and 29_000 < int(held.headers["retry-after-ms"]) <= 30_000
        assert (await client.post("/sim/hold?s=0")).status_code == 200
        assert (await client.post("/v1/chat/completions", json=chat("Anchor?"))).status_code == 200
        stats = (await client.get("/sim/stats")).json()
        assert stats["held"] == 1 and stats["quota_limited"] == 0


def test_quota_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="quota_window_s"):
        config(quota_window_s=0)
    with pytest.raises(ConfigError, match="quota_window_s"):
        config(quota_window_s=61)
    with pytest.raises(ConfigError, match="quota_scope"):
        config(quota_scope="endpoint")
    assert SimConfig.from_dict({"quota_window_s": 10, "quota_scope": "server"}).quota_scope == "server"


@pytest.mark.parametrize(
    ("table", "problem"),
    [("quota_window_s = 0", "sim.quota_window_s: must be > 0"), ('quota_scope = "endpoint"', "sim.quota_scope")],
)
def test_spec_sim_table_checks_quota_settings(tmp_path: Path, table: str, problem: str) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text(
        f'name = "x"\nquestions = "{ROOT / "data" / "facts.csv"}"\n[[models]]\nname = "m"\nbase_url = "sim"\n'
        f"[sim]\n{table}\n"
    )
    with pytest.raises(SpecError, match=re.escape(problem)):
        load_spec(spec)
    spec.write_text(spec.read_text().replace(table, 'quota_window_s = 10\nquota_scope = "server"'))
    assert load_spec(spec).sim.quota_window_s == 10


def test_known_quota_end_to_end_against_a_sim_process_enforcing_one_second_windows(tmp_path: Path) -> None:
    # The engine (in this process) against the sim (its own process) enforcing rpm = 600 over any
    # sliding second: paced a hair under, every request is answered, none 429.
    questions = tmp_path / "q.csv"
    questions.write_text("Object,Answer,Question 1\n" + "".join(f"O{i},{10000 + i},Number for O{i}?\n" for i in range(40)))
    with SimProcess(config(rpm=600, quota_window_s=1.0, latency_ms=5)) as sim:
        spec = tmp_path / "spec.toml"
        spec.write_text(
            f'name = "quota"\nquestions = "{questions}"\ntemperatures = [0.0]\n'
            f'[[models]]\nname = "m"\nbase_url = "{sim.base_url}"\nconcurrency = 16\nrpm = 600\n'
        )
        options = RunOptions(out=tmp_path / "run", quiet=True, report=False)
        prepared = prepare(spec, options)
        started = time.monotonic()
        summary = anyio.run(run_prepared, prepared, options, backend="asyncio")
        elapsed = time.monotonic() - started
        stats = sim.stats()
    assert summary.ok == 40 and summary.failed == 0
    assert stats["rate_limited"] == 0 and stats["chat_requests"] == 40
    # 40 requests at 9.8/s: the first at once, then 39 gaps of ~0.102 s. Not faster than the quota
    # (the sim would have said 429), and not much slower either (loose: a shared machine).
    assert 39 / 10 <= elapsed <= 39 / 9.8 * 1.6 + 1.0


async def test_no_ratelimit_headers_without_quotas() -> None:
    async with running(config()) as client:
        response = await client.post("/v1/chat/completions", json=chat("Anchor?"))
        assert not [h for h in response.headers if h.startswith("x-ratelimit")]
