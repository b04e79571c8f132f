"""The scheduler: worker pools per endpoint pull tasks lazily, one writer task owns the log.

Each endpoint gets as many workers as its concurrency; they share that endpoint's
lazy task iterator, so a slow or rate-limited endpoint never holds up another, and
no grid is ever materialised. Finished records go through a bounded memory stream
to the single writer. A stop request (Ctrl-C) stops taking new tasks, lets requests
in flight finish for a grace period, then cancels them; whatever finished is logged,
whatever did not is simply not in the log and is asked again on resume.

Usage::

    stop = StopSignal()
    counters = await run_grid(pools, scorer=scorer, writer=writer, stop=stop, grace_s=10)
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial

import anyio
from anyio import CancelScope
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from engine.endpoint.client import ChatClient, Completion
from engine.experiment.grid import Task
from engine.experiment.scoring import Scorer
from engine.results.record import SCHEMA_VERSION, Record
from engine.results.write import LogWriter

STREAM_BUFFER = 1024  # records between the workers and the writer: bounded, so memory stays flat


class StopSignal:
    """A request to stop sending, set by a signal handler or a caller. Usage: ``stop.request()``"""

    def __init__(self) -> None:
        self.requested = False
        self.wake = anyio.Event()

    def request(self) -> None:
        self.requested = True
        self.wake.set()


@dataclass(kw_only=True, slots=True)
class Pool:
    """One endpoint's share of the run: its client, its lazy tasks, how many workers."""

    client: ChatClient
    tasks: Iterator[Task]
    workers: int
    max_tokens: int
    # More tasks once ``tasks`` runs dry (a fleet worker takes part of another's shard), or None: the end.
    refill: Callable[[], Awaitable[Iterator[Task] | None]] | None = None
    asking: anyio.Lock = field(default_factory=anyio.Lock)  # one refill at a time; the others wait for it


@dataclass(slots=True)
class ModelCounts:
    """Finished tasks of one model in this run."""

    ok: int = 0
    failed: int = 0
    errors: int = 0


@dataclass(slots=True)
class Counters:
    """What this run has finished so far, read live by the progress display."""

    done: int = 0
    ok: int = 0
    failed: int = 0
    by_model: dict[str, ModelCounts] = field(default_factory=dict)

    def count(self, record: Record) -> None:
        model = self.by_model.get(record["model"])
        if model is None:
            model = self.by_model[record["model"]] = ModelCounts()
        self.done += 1
        if record["status"] == "ok":
            self.ok += 1
            model.ok += 1
            model.errors += record["outcome"] != "correct"
        else:
            self.failed += 1
            model.failed += 1


def make_record(task: Task, completion: Completion, scorer: Scorer, t_start: float, t_end: float) -> Record:
    """The log record of one finished task (schema version 2: it says which target answered).

    Usage: ``make_record(task, completion, get_scorer("number"), t0, t1)["outcome"]``
    """
    question = task.question
    if completion.reply is not None:
        score = scorer(completion.reply, question.answer)
        outcome: str | None = score.outcome
        extracted = score.extracted
        correct: bool | None = outcome == "correct"
    else:
        outcome = extracted = correct = None
    return {
        "v": SCHEMA_VERSION,
        "key": task.key,
        "model": task.model.name,
        "model_id": task.model.model,
        "target": task.target.id,
        "simulated": task.target.simulated,
        "qid": question.id,
        "question": question.text,
        "tags": question.tags,
        "temperature": task.temperature,
        "repeat": task.repeat,
        "expected": question.answer,
        "reply": completion.reply,
        "extracted": extracted,
        "outcome": outcome,
        "correct": correct,
        "status": "ok" if completion.reply is not None else "failed",
        "error": completion.error,
        "attempts": completion.attempts,
        "http": completion.http,
        "latency_ms": None if completion.latency_ms is None else round(completion.latency_ms, 3),
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "t_start": t_start,
        "t_end": t_end,
    }


async def run_grid(
    pools: list[Pool], *, scorer: Scorer, writer: LogWriter, stop: StopSignal, grace_s: float,
    counters: Counters | None = None,
) -> Counters:
    """Run every pool's tasks to the end (or until stopped) and log each result.

    Usage: see the module docstring.
    """
    counters = counters or Counters()
    send, receive = anyio.create_memory_object_stream[Record](STREAM_BUFFER)
    watch = anyio.CancelScope()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_write_all, writer, receive)
        async with send, anyio.create_task_group() as workers:
            tg.start_soon(_grace_then_cancel, stop, grace_s, workers.cancel_scope, watch)
            for pool in pools:
                for _ in range(pool.workers):
                    workers.start_soon(_work, pool, scorer, send.clone(), stop, counters, writer)
        watch.cancel()  # the workers are done: the grace watcher has nothing left to do
    return counters


async def _write_all(writer: LogWriter, receive: MemoryObjectReceiveStream[Record]) -> None:
    """The writer task. Shielded: results already received (and paid for) are written even when
    the run is cancelled or fails; the stream ends as soon as the last worker is gone, so this
    never outlives them."""
    with anyio.CancelScope(shield=True):
        await writer.consume(receive)


async def _grace_then_cancel(stop: StopSignal, grace_s: float, workers: CancelScope, watch: CancelScope) -> None:
    """After a stop request, give requests in flight ``grace_s`` seconds, then cancel them."""
    with watch:
        await stop.wake.wait()
        await anyio.sleep(grace_s)
        workers.cancel()


async def _work(
    pool: Pool, scorer: Scorer, send: MemoryObjectSendStream[Record], stop: StopSignal,
    counters: Counters, writer: LogWriter,
) -> None:
    journal = writer.started if writer.journaling else None
    tasks: Iterator[Task] | None = pool.tasks
    async with send:
        while tasks is not None:
            await _work_through(tasks, pool, scorer, send, stop, counters, journal)
            tasks = None if stop.requested else await _more(pool, tasks)


async def _more(pool: Pool, spent: Iterator[Task]) -> Iterator[Task] | None:
    """The pool's next tasks once ``spent`` ran dry: the refill another worker of the pool already got, or
    a new one asked for (once for the whole pool); None when there are no more."""
    async with pool.asking:
        if pool.tasks is not spent:
            return pool.tasks
        if pool.refill is None or (more := await pool.refill()) is None:
            pool.refill = None
            return None
        pool.tasks = more
        return more


async def _work_through(
    tasks: Iterator[Task], pool: Pool, scorer: Scorer, send: MemoryObjectSendStream[Record], stop: StopSignal,
    counters: Counters, journal: Callable[[str], None] | None,
) -> None:  # fmt: skip
    client = pool.client
    # The iterator is shared by the pool's workers: next() never awaits, so each task goes to one worker.
    for task in tasks:
        if stop.requested:
            return
        t_start = time.time()
        # Journalled by the client as each attempt goes out, not here: a task still waiting
        # for the limiter (a pause after 429s, say) has cost nothing yet.
        completion = await client.complete(
            model=task.model.model, messages=task.messages, temperature=task.temperature,
            max_tokens=pool.max_tokens, params=task.model.params, api=task.model.api,
            on_send=None if journal is None else partial(journal, task.key),
        )
        record = make_record(task, completion, scorer, t_start, time.time())
        counters.count(record)
        try:
            send.send_nowait(record)
        except anyio.WouldBlock:
            await send.send(record)
        # One pass through the event loop before the next request: the writer, woken by this record,
        # writes it first. A kill -9 then finds each worker with a request in flight or a record
        # not yet written, never both, so a resume re-sends at most the concurrency.
        await anyio.lowlevel.checkpoint()
