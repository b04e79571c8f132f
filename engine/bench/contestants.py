"""Inside a contestant's process (internal to :mod:`engine.bench.throughput`): the request set, the client loops, the measuring.

:func:`engine.bench.throughput.run_bench` starts ``python -m engine.bench.contestants '<job as JSON>'`` once per
contestant and round; this module runs the contestant against the target, measures its own CPU
time and peak memory, and prints the measurement as one JSON line. It imports nothing from
:mod:`engine.bench.throughput`, so a contestant's process loads only what that contestant needs.

Usage::

    python -m engine.bench.contestants '{"contestant": "aiohttp", "base_url": "http://127.0.0.1:8000/v1",
                                     "requests": 1000, "concurrency": 64, "questions": 100, "workdir": "/tmp/b"}'
"""

from __future__ import annotations

import asyncio
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

MODEL = "bench"
SYSTEM = "You are a helpful assistant."
MAX_TOKENS = 32


def bench_questions(n: int) -> list[tuple[str, str, str]]:
    """Deterministic (id, question, answer) triples, distinct five-digit answers. Usage: ``bench_questions(100)``"""
    return [(f"q{i}", f"What is the number for Object {i}?", str(10007 + (i * 7919) % 89_989)) for i in range(n)]


def request_body(question: str) -> bytes:
    """The chat-completions request every contestant sends for ``question``. Usage: ``request_body("Q?")``"""
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    return orjson.dumps({"model": MODEL, "messages": messages, "temperature": 0.0, "max_tokens": MAX_TOKENS})


def _worker(job: dict[str, Any]) -> dict[str, Any]:
    """Run one contestant in this process and measure it; the parent reads the result from stdout."""
    name, n, concurrency = job["contestant"], job["requests"], job["concurrency"]
    questions = bench_questions(job["questions"])
    log: Path | None = None
    if name.startswith("engine"):  # "engine" asks over chat; "engine-responses", "engine-anthropic" over those APIs
        run, log = _prepare_engine(job, questions, api=name.partition("-")[2] or "chat")
    else:
        loop = {"aiohttp": _aiohttp_loop, "httpx": _httpx_loop, "openai": _openai_loop}[name]
        bodies = [request_body(q) for _, q, _ in questions]

        def run() -> tuple[int, list[float]]:
            return asyncio.run(loop(job["base_url"], bodies, n, concurrency))

    cpu0, wall0 = time.process_time(), time.perf_counter()
    ok, latencies = run()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    if log is not None:  # the engine's latencies are in its log, read after the measured window
        with log.open("rb") as f:
            latencies = [r["latency_ms"] / 1000 for r in map(orjson.loads, f) if r["latency_ms"] is not None]
    latencies.sort()
    return {"contestant": name, "requests": n, "ok": ok, "wall_s": wall, "cpu_s": cpu, "peak_rss_mb": peak,
            "p50_ms": _pct(latencies, 50), "p99_ms": _pct(latencies, 99)}


def _pct(ordered: list[float], p: float) -> float | None:
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] * 1000 if ordered else None


def _prepare_engine(
    job: dict[str, Any], questions: list[tuple[str, str, str]], *, api: str = "chat"
) -> tuple[Callable[[], tuple[int, list[float]]], Path]:
    """Write and check the spec (outside the measured window); return the run and its log's path."""
    import anyio

    from engine.run.runner import RunOptions, prepare, run_prepared

    workdir = Path(job["workdir"])
    workdir.mkdir(parents=True, exist_ok=True)
    lines = ["id,question,answer", *(f"{qid},{q},{a}" for qid, q, a in questions)]
    (workdir / "questions.csv").write_text("\n".join(lines) + "\n")
    (workdir / "spec.toml").write_text(
        f'name = "bench"\nquestions = "questions.csv"\ntemperatures = [0.0]\n'
        f'repeats = {job["requests"] // len(questions)}\nsystem = "{SYSTEM}"\nmax_tokens = {MAX_TOKENS}\n'
        f'scorer = "number"\n\n[[models]]\nname = "{MODEL}"\nbase_url = "{job["base_url"]}"\n'
        f'concurrency = {job["concurrency"]}\napi = "{api}"\n'
    )
    options = RunOptions(out=workdir / "run", quiet=True, report=False)
    prepared = prepare(workdir / "spec.toml", options)

    def run() -> tuple[int, list[float]]:
        summary = anyio.run(run_prepared, prepared, options, backend="asyncio")
        return summary.ok, []

    return run, prepared.paths.results


async def _workers(n: int, concurrency: int, one: Callable[[int], Awaitable[bool]]) -> tuple[int, list[float]]:
    """``concurrency`` workers share requests 0..n-1; returns (answered, latencies in seconds)."""
    latencies: list[float] = []
    ok = 0
    tasks = iter(range(n))

    async def worker() -> None:
        nonlocal ok
        for i in tasks:
            started = time.perf_counter()
            answered = await one(i)  # not ``ok += await ...``: that reads ``ok`` before the await
            latencies.append(time.perf_counter() - started)
            ok += answered

    # The reference loops use the standard library's task group, as a user would.
    async with asyncio.TaskGroup() as tg:
        for _ in range(concurrency):
            tg.create_task(worker())
    return ok, latencies


def _answered(status: int, payload: bytes) -> bool:
    return status == 200 and bool(orjson.loads(payload)["choices"][0]["message"]["content"])


async def _aiohttp_loop(url: str, bodies: list[bytes], n: int, concurrency: int) -> tuple[int, list[float]]:
    import aiohttp

    url, headers = f"{url}/chat/completions", {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def one(i: int) -> bool:
            async with session.post(url, data=bodies[i % len(bodies)], headers=headers) as resp:
                return _answered(resp.status, await resp.read())

        return await _workers(n, concurrency, one)


async def _httpx_loop(url: str, bodies: list[bytes], n: int, concurrency: int) -> tuple[int, list[float]]:
    import httpx

    url, headers = f"{url}/chat/completions", {"Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def one(i: int) -> bool:
            resp = await client.post(url, content=bodies[i % len(bodies)], headers=headers)
            return _answered(resp.status_code, resp.content)

        return await _workers(n, concurrency, one)


async def _openai_loop(url: str, bodies: list[bytes], n: int, concurrency: int) -> tuple[int, list[float]]:
    import openai

    latencies: list[float] = []
    ok = 0
    messages = [orjson.loads(b)["messages"] for b in bodies]
    gate = asyncio.Semaphore(concurrency)
    # The SDK's defaults, as a user meets them; the key is a placeholder the sim ignores.
    client = openai.AsyncOpenAI(base_url=url, api_key="not-a-key")

    async def one(i: int) -> None:
        nonlocal ok
        async with gate:
            started = time.perf_counter()
            completion = await client.chat.completions.create(
                model=MODEL, messages=messages[i % len(messages)], temperature=0.0, max_tokens=MAX_TOKENS
            )
            latencies.append(time.perf_counter() - started)
            ok += bool(completion.choices[0].message.content)

    async with client, asyncio.TaskGroup() as tg:
        for i in range(n):
            tg.create_task(one(i))
    return ok, latencies


if __name__ == "__main__":
    # A contestant's process: ``python -m engine.bench.contestants '<job as JSON>'``; prints its measurement as JSON.
    sys.stdout.write(orjson.dumps(_worker(orjson.loads(sys.argv[1]))).decode() + "\n")
