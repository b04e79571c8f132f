"""The scheduler over httpx.MockTransport: every task logged once, endpoints independent, clean stops."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import orjson

from engine.client import ChatClient, RetryPolicy
from engine.grid import build_grid, iter_tasks
from engine.limits import EndpointLimiter, LimitConfig
from engine.log import LogWriter
from engine.questions import Question
from engine.scheduler import Pool, StopSignal, run_grid
from engine.scoring import get_scorer
from engine.spec import ModelSpec, Spec
from engine.target import model_targets
from engine.transport import HttpxTransport

QUESTIONS = tuple(
    Question(id=f"q{i}", text=f"What is the number for thing {i}?", answer=str(10000 + i), tags={"object": f"t{i}"})
    for i in range(40)
)


def make_spec(models: tuple[ModelSpec, ...]) -> Spec:
    return Spec(path=Path("x.toml"), name="x", questions=Path("q.csv"), models=models, temperatures=(0.0, 1.0),
                repeats=2)


def answering(delay: float = 0.0, status_of=None):  # type: ignore[no-untyped-def]
    async def handler(request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        question = body["messages"][-1]["content"]
        number = 10000 + int(question.rsplit(" ", 1)[1].rstrip("?"))
        if delay:
            await anyio.sleep(delay)
        if status_of is not None and (status := status_of(body)) != 200:
            return httpx.Response(status)
        return httpx.Response(200, json={"choices": [{"message": {"content": f"It is {number}."}}],
                                         "usage": {"prompt_tokens": 9, "completion_tokens": 4}})

    return handler


def pool_for(spec: Spec, models: tuple[ModelSpec, ...], handler, workers: int = 4) -> Pool:  # type: ignore[no-untyped-def]
    client = ChatClient(
        base_url="http://x.test/v1", api_key=None,
        transport=HttpxTransport(httpx.AsyncClient(transport=httpx.MockTransport(handler))),
        limiter=EndpointLimiter(LimitConfig(concurrency=workers)), policy=RetryPolicy(max_attempts=2, base_s=0.01),
    )
    return Pool(client=client, tasks=iter_tasks(build_grid(spec, QUESTIONS, model_targets(spec, QUESTIONS)), QUESTIONS, models), workers=workers, max_tokens=16)


def read(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_every_task_is_logged_exactly_once_and_scored(tmp_path: Path) -> None:
    models = (ModelSpec(name="a", model="a", base_url="http://x.test/v1"),
              ModelSpec(name="b", model="b", base_url="http://x.test/v1"))
    spec = make_spec(models)
    log = tmp_path / "results.jsonl"

    async def main() -> None:
        with LogWriter(log) as writer:
            counters = await run_grid([pool_for(spec, models, answering())], scorer=get_scorer("number"),
                                      writer=writer, stop=StopSignal(), grace_s=1)
        assert counters.done == counters.ok == 2 * 40 * 2 * 2

    anyio.run(main)
    records = read(log)
    assert len(records) == len({r["key"] for r in records}) == 320
    assert all(r["outcome"] == "correct" for r in records)
    assert {r["model"] for r in records} == {"a", "b"}


def test_a_slow_endpoint_does_not_hold_up_another(tmp_path: Path) -> None:
    fast, slow = (ModelSpec(name="fast", model="f", base_url="http://f.test/v1"),
                  ModelSpec(name="slow", model="s", base_url="http://s.test/v1"))
    spec = make_spec((fast, slow))
    log = tmp_path / "results.jsonl"
    stop = StopSignal()

    async def main() -> None:
        with LogWriter(log) as writer:
            pools = [pool_for(spec, (fast,), answering()), pool_for(spec, (slow,), answering(delay=30))]
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: run_grid(pools, scorer=get_scorer("number"), writer=writer, stop=stop,
                                               grace_s=0.1))
                with anyio.fail_after(20):
                    while sum(1 for _ in log.open("rb")) < 160:
                        await anyio.sleep(0.01)
                stop.request()

    anyio.run(main)
    records = read(log)
    assert sum(r["model"] == "fast" for r in records) == 160  # all of the fast endpoint's tasks finished
    assert sum(r["model"] == "slow" for r in records) == 0  # cancelled after the grace period, not logged


def test_stop_lets_in_flight_requests_finish_within_grace(tmp_path: Path) -> None:
    model = ModelSpec(name="a", model="a", base_url="http://x.test/v1")
    spec = make_spec((model,))
    log = tmp_path / "results.jsonl"
    stop = StopSignal()

    async def main() -> int:
        with LogWriter(log) as writer:
            pool = pool_for(spec, (model,), answering(delay=0.2), workers=4)
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: run_grid([pool], scorer=get_scorer("number"), writer=writer, stop=stop,
                                               grace_s=5))
                await anyio.sleep(0.1)  # four requests in flight, none answered
                stop.request()
        return writer.records

    written = anyio.run(main)
    assert written == 4  # the four in flight finished and were logged; nothing new was started
    assert log.read_bytes().endswith(b"\n")


def test_failed_tasks_are_written_with_status_failed(tmp_path: Path) -> None:
    model = ModelSpec(name="a", model="a", base_url="http://x.test/v1")
    spec = make_spec((model,))
    log = tmp_path / "results.jsonl"

    async def main() -> None:
        with LogWriter(log) as writer:
            pool = pool_for(spec, (model,), answering(status_of=lambda body: 503 if body["temperature"] else 200))
            await run_grid([pool], scorer=get_scorer("number"), writer=writer, stop=StopSignal(), grace_s=1)

    anyio.run(main)
    records = read(log)
    failed = [r for r in records if r["status"] == "failed"]
    assert len(records) == 160 and len(failed) == 80
    assert all(r["temperature"] == 1.0 and r["http"] == [503, 503] and "503" in r["error"] for r in failed)
