"""The scheduler over httpx.MockTransport: every task logged once, endpoints independent, clean stops."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson

from engine.endpoint.client import ChatClient
from engine.endpoint.httpx_transport import HttpxTransport
from engine.endpoint.limits import EndpointLimiter, LimitConfig
from engine.endpoint.retry import RetryPolicy
from engine.experiment.grid import Task, build_grid, iter_tasks
from engine.experiment.questions import Question
from engine.experiment.scoring import get_scorer
from engine.experiment.spec import ModelSpec, Spec
from engine.results.write import LogWriter
from engine.run.scheduler import Pool, StopSignal, run_grid
from engine.run.targets import model_targets
from tests.support.vtime import run_virtual

QUESTIONS = tuple(
    Question(id=f"q{i}", text=f"What is the number for thing {i}?", answer=str(10000 + i), tags={"object": f"t{i}"})
    for i in range(40)
)


def make_spec(models: tuple[ModelSpec, ...]) -> Spec:
    return Spec(path=Path("x.toml"), name="x", questions=Path("q.csv"), models=models, temperatures=(0.0, 1.0),
                repeats=2)


def answering(
    delay: float = 0.0, status_of: Callable[[Any], int] | None = None
) -> Callable[[httpx.Request], Awaitable[httpx.Response]]:
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
    return Pool(client=client, tasks=tasks_of(spec, models), workers=workers, max_tokens=16)


def tasks_of(spec: Spec, models: tuple[ModelSpec, ...]) -> Iterator[Task]:
    grid = build_grid(spec, QUESTIONS, model_targets(spec, QUESTIONS))
    return iter_tasks(grid, QUESTIONS, models)


def read(path: Path) -> list[dict[str, Any]]:
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


def test_write_ahead_journal_holds_each_request_sent_and_none_still_waiting(tmp_path: Path) -> None:
    # The first request is answered 429 "retry after 30 s": the endpoint pauses, and the workers
    # that take new tasks meanwhile wait without sending. Stopped within the pause, the journal
    # must hold exactly the requests the server saw, not the tasks taken.
    from engine.results.paths import RunPaths
    from engine.results.write import in_flight_at_stop

    model = ModelSpec(name="a", model="a", base_url="http://x.test/v1")
    spec = make_spec((model,))
    paths = RunPaths(tmp_path)
    stop = StopSignal()
    seen: list[str] = []
    ok = answering()

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(orjson.loads(request.content)["messages"][-1]["content"])
        if len(seen) == 1:
            return httpx.Response(429, headers={"retry-after": "30"})
        return await ok(request)

    async def main() -> None:
        with LogWriter(paths.results, journal=paths.started) as writer:
            pool = pool_for(spec, (model,), handler, workers=4)
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: run_grid([pool], scorer=get_scorer("number"), writer=writer, stop=stop,
                                               grace_s=1))
                await anyio.sleep(10)  # well inside the 30 s pause
                stop.request()

    run_virtual(main)
    journal = paths.started.read_bytes().splitlines()
    logged = read(paths.results)
    assert 1 <= len(seen) <= 4 and len(logged) == len(seen) - 1  # the 429's task is still waiting to retry
    assert len(journal) == len(seen)  # one line per request sent; none for the tasks held by the pause
    assert in_flight_at_stop(paths, frozenset(r["key"] for r in logged)) == 1  # the 429 was sent and paid


def test_each_retry_is_journalled_and_counted_in_flight(tmp_path: Path) -> None:
    # A task stopped between attempts sent two requests: both count as in flight at the stop.
    from engine.results.paths import RunPaths
    from engine.results.write import in_flight_at_stop

    model = ModelSpec(name="a", model="a", base_url="http://x.test/v1")
    spec = make_spec((model,))
    paths = RunPaths(tmp_path)
    stop = StopSignal()
    sent = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal sent
        sent += 1
        return httpx.Response(503, headers={"retry-after": "20"})

    async def main() -> None:
        with LogWriter(paths.results, journal=paths.started) as writer:
            client = ChatClient(
                base_url="http://x.test/v1", api_key=None,
                transport=HttpxTransport(httpx.AsyncClient(transport=httpx.MockTransport(handler))),
                limiter=EndpointLimiter(LimitConfig(concurrency=1, rpm=600)),
                policy=RetryPolicy(max_attempts=5, max_wait_s=20),
            )
            pool = Pool(client=client, tasks=tasks_of(spec, (model,)), workers=1, max_tokens=16)
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: run_grid([pool], scorer=get_scorer("number"), writer=writer, stop=stop,
                                               grace_s=0.5))
                await anyio.sleep(30)  # the first attempt at 0 s, the second at 20 s, the third due at 40 s
                stop.request()

    run_virtual(main)
    assert sent == 2 and len(paths.started.read_bytes().splitlines()) == 2
    assert not paths.results.read_bytes()
    assert in_flight_at_stop(paths, frozenset()) == 2


def test_a_pool_that_runs_dry_asks_for_more_once_for_all_its_workers(tmp_path: Path) -> None:
    """A fleet worker's pool refills from another worker's stretch: one ask at a time for the whole
    pool (its other workers wait for that answer rather than ask again), every task logged once."""
    models = (ModelSpec(name="a", model="a", base_url="http://x.test/v1"),)
    spec = make_spec(models)
    tasks = list(tasks_of(spec, models))  # 160
    refills = [iter(tasks[10:100]), iter(tasks[100:])]
    asks: list[int] = []

    async def refill() -> Iterator[Task] | None:
        asks.append(len(asks))
        await anyio.sleep(0.05)  # the answer takes a while: 7 of the 8 workers are waiting meanwhile
        return refills.pop(0) if refills else None

    pool = pool_for(spec, models, answering(delay=0.002), workers=8)
    pool.tasks, pool.refill = iter(tasks[:10]), refill

    async def main() -> None:
        with LogWriter(tmp_path / "results.jsonl") as writer:
            counters = await run_grid([pool], scorer=get_scorer("number"), writer=writer, stop=StopSignal(), grace_s=1)
        assert counters.done == 160

    anyio.run(main)
    keys = [r["key"] for r in read(tmp_path / "results.jsonl")]
    assert len(keys) == len(set(keys)) == 160 and set(keys) == {t.key for t in tasks}
    assert asks == [0, 1, 2]  # two refills, then one answer of "no more" ends every worker
