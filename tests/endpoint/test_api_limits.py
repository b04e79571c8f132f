"""Each API's limiter feedback on a virtual clock: the real client and limiter against the built-in
target's own request handling (quotas over 1 s sliding windows, each provider's rate-limit headers
and errors), in process, with no sockets. A known quota: goodput >= 95 %, < 1 % 429; an unknown one
named only by the provider's headers: >= 90 %, < 2 %; Anthropic's 529 retried like a 503."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio
import orjson
import pytest

from engine.endpoint.client import ChatClient
from engine.endpoint.limits import EndpointLimiter, LimitConfig
from engine.endpoint.retry import RetryPolicy
from engine.endpoint.transport import Response
from engine.sim.config import Faults, SimConfig, SimFact
from engine.sim.server import SimServer
from tests.support.vtime import run_virtual

APIS = ("chat", "responses", "anthropic")
FACTS = tuple(SimFact(question=f"What is the number for O{i}?", answer=str(10_000 + i), object=f"O{i}")
              for i in range(50))


class SimTransport:
    """The sim's request handling as a transport: each request is handled when it is sent (as the
    sim's quota sees it), and answered after the sim's latency, on the event loop's clock."""

    def __init__(self, sim: SimServer, latency_s: float = 0.02) -> None:
        self.sim = sim
        self.latency_s = latency_s
        self.statuses: list[int] = []
        self.headers_seen: list[Mapping[str, str]] = []

    async def request(self, method: str, url: str, *, body: bytes | None, headers: Mapping[str, str],
                      timeout: float) -> Response:
        self.headers_seen.append(headers)
        reply = self.sim.handle(method.encode(), urlsplit(url).path.encode(), body or b"", True)
        await anyio.sleep(max(reply.delay, self.latency_s))
        head, _, payload = reply.data.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        self.statuses.append(status)
        parsed = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
        return Response(status, parsed, payload)

    async def aclose(self) -> None:
        pass


@dataclass
class Outcome:
    ok: int
    failed: int
    statuses: list[int]
    elapsed_s: float
    stats: dict[str, object]
    headers_seen: list[Mapping[str, str]]
    rate: float | None  # the limiter's pace at the end, requests/s

    def share(self, status: int) -> float:
        return self.statuses.count(status) / len(self.statuses)


def drive(api: str, config: SimConfig, *, tasks: int, limits: LimitConfig, workers: int = 64,
          api_key: str | None = None) -> Outcome:
    async def main() -> Outcome:
        sim = SimServer(config, asyncio.get_running_loop())
        transport = SimTransport(sim)
        client = ChatClient(base_url="http://sim.test/v1", api_key=api_key, transport=transport,
                            limiter=EndpointLimiter(limits), policy=RetryPolicy(max_attempts=20),
                            rng=random.Random(2))
        left, done = [tasks], [0, 0]
        start = anyio.current_time()

        async def worker() -> None:
            while left[0] > 0:
                left[0] -= 1
                i = left[0] % len(FACTS)
                messages = [{"role": "system", "content": "Answer with the number."},
                            {"role": "user", "content": FACTS[i].question}]
                result = await client.complete(model="m", messages=messages, temperature=0.0, max_tokens=32, api=api)
                done[0 if result.ok else 1] += 1

        async with anyio.create_task_group() as tg:
            for _ in range(workers):
                tg.start_soon(worker)
        return Outcome(ok=done[0], failed=done[1], statuses=transport.statuses,
                       elapsed_s=anyio.current_time() - start, stats=sim.stats(), headers_seen=transport.headers_seen,
                       rate=client.limiter.rate)

    return run_virtual(main)


def quota_config(**kwargs: object) -> SimConfig:
    return SimConfig(facts=FACTS, default_accuracy=1.0, rpm=1200, quota_window_s=1.0, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("api", APIS)
def test_a_known_quota_is_used_and_kept_in_every_api(api: str) -> None:
    run = drive(api, quota_config(), tasks=600, limits=LimitConfig(rpm=1200, concurrency=64))
    goodput = run.ok / run.elapsed_s / 20
    assert (run.ok, run.failed) == (600, 0)
    assert 0.95 <= goodput <= 1.0
    assert run.share(429) < 0.01
    assert run.stats["by_api"] == {api: len(run.statuses)}


@pytest.mark.parametrize("api", APIS)
def test_an_unknown_quota_named_by_the_providers_headers_is_found_in_every_api(api: str) -> None:
    run = drive(api, quota_config(), tasks=1200, limits=LimitConfig(concurrency=64))
    goodput = run.ok / run.elapsed_s / 20
    assert (run.ok, run.failed) == (1200, 0)
    assert 0.90 <= goodput <= 1.0
    assert run.share(429) < 0.02
    assert run.rate == pytest.approx(20 * 0.98)  # paced 2 % under the limit the headers named, in its own words


def test_anthropic_headers_are_what_the_limiter_reads() -> None:
    # The sim's Messages replies carry anthropic-ratelimit-* (RFC 3339 resets) and no x-ratelimit-*;
    # the limiter still took its pace from them (the unknown-quota test above depends on it).
    async def one() -> tuple[int, dict[str, str]]:
        sim = SimServer(quota_config(), asyncio.get_running_loop())
        body = orjson.dumps({"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}]})
        reply = sim.handle(b"POST", b"/v1/messages", body, True)
        head = reply.data.partition(b"\r\n\r\n")[0].decode().split("\r\n")
        return reply.status, {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}

    status, headers = run_virtual(one)
    assert status == 200
    assert headers["anthropic-ratelimit-requests-limit"] == "1200"
    assert headers["anthropic-ratelimit-requests-remaining"] == "19"  # the 1 s window's share, less this one
    assert headers["anthropic-ratelimit-requests-reset"].endswith("Z")
    assert not any(k.startswith("x-ratelimit") for k in headers)


@pytest.mark.parametrize(("api", "status"), [("chat", 503), ("responses", 503), ("anthropic", 529)])
def test_overloaded_is_retried_the_same_way_in_every_api(api: str, status: int) -> None:
    config = SimConfig(facts=FACTS, default_accuracy=1.0, faults=Faults(error_503=0.3), seed=5)
    run = drive(api, config, tasks=200, limits=LimitConfig(concurrency=16), workers=16)
    assert (run.ok, run.failed) == (200, 0)  # every overloaded reply was retried, none failed a task
    assert 0.15 <= run.share(status) <= 0.45
    assert set(run.statuses) == {200, status}


def test_the_anthropic_key_goes_in_x_api_key_with_the_version() -> None:
    config = SimConfig(facts=FACTS, default_accuracy=1.0)
    run = drive("anthropic", config, tasks=2, limits=LimitConfig(concurrency=2), workers=2, api_key="sk-ant-test")
    for headers in run.headers_seen:
        assert headers["x-api-key"] == "sk-ant-test" and headers["anthropic-version"] == "2023-06-01"
        assert "Authorization" not in headers
    chat = drive("chat", config, tasks=1, limits=LimitConfig(concurrency=1), workers=1, api_key="sk-test")
    assert chat.headers_seen[0]["Authorization"] == "Bearer sk-test" and "x-api-key" not in chat.headers_seen[0]
