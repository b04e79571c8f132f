"""The batch route: a model's tasks through its provider's Batch API, every step in the ledger first.

Models with ``mode = "batch"`` are not asked one request at a time: their tasks are cut into chunks
(one model per chunk, under the provider's request and size limits, and the enqueued-token room the
``[batch]`` table allows), each chunk becomes a batch (OpenAI: upload, then create; Anthropic:
create), the batches are polled with backoff, their results downloaded, matched to tasks by
``custom_id`` (the task key) and written as ordinary records through the run's one log writer, with
``route: "batch"`` and the batch id. Items that errored (server side), expired or were cancelled go
into a new chunk, their reasons kept for the record (``requeued``), up to ``max_rounds`` batches;
with ``resubmit = "online"`` they are asked through the model's online API instead (one client per
model, paced by its own rpm/tpm/concurrency) and logged with ``route: "online"`` and the same reasons.
What goes into a chunk, and where a resumed run stands, is :mod:`engine.run.batch_chunks`.

Crash safety: every step is appended to the ledger (:mod:`engine.results.ledger`) and fsync'd
around the request it records: "uploading" before an upload and "uploaded" with the file id after;
the same for creating a batch; "writing" with the log's size before records are written and
"written" after the log is fsync'd. A resume replays the ledger and carries on from the last step
of each chunk; an upload or a create interrupted mid-request is found again at OpenAI by the file
name and the batch metadata (the chunk id) rather than made twice. Records a killed write already
put in the log (after the "writing" offset) are not written again.

Test hook: ``ENGINE_BATCH_KILL_AT=<step>`` makes the process SIGKILL itself the first time it passes
that step (chunked, uploaded, created, polled, downloading, writing, online), for the kill tests.

Usage (what the runner does)::

    route = await open_batch_route(spec_models=spec.models, settings=spec.batch, ...)
    await route.run(writer, stop)
"""

from __future__ import annotations

import collections
import functools
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import anyio
from rich.console import Console

from engine.endpoint.apis import API, NoText
from engine.endpoint.batch import BatchHttp, BatchStatus, ItemResult, batch_headers
from engine.endpoint.batch_anthropic import AnthropicBatch
from engine.endpoint.batch_openai import OpenAIBatch
from engine.endpoint.client import ChatClient, Completion
from engine.endpoint.limits import EndpointLimiter, LimitConfig
from engine.endpoint.retry import RetryPolicy
from engine.endpoint.transport import Transport
from engine.experiment.grid import Grid, Task
from engine.experiment.questions import Question
from engine.experiment.scoring import Scorer
from engine.experiment.settings import BatchSpec
from engine.experiment.spec import ModelSpec
from engine.results.ledger import Ledger, write_durable
from engine.results.record import Record
from engine.results.write import LogWriter
from engine.run.batch_chunks import Chunk, Chunker, keys_after, replay
from engine.run.scheduler import Counters, StopSignal, make_record

__all__ = ["BATCH_DIR", "KILL_ENV", "BatchRoute", "online_clients", "open_batch_route", "set_aside"]

BATCH_DIR = "batches"
KILL_ENV = "ENGINE_BATCH_KILL_AT"


class Wire(Protocol):
    """What the route needs of a Batch API (:class:`OpenAIBatch`, :class:`AnthropicBatch`)."""

    needs_upload: bool

    @staticmethod
    def line(custom_id: str, body: bytes, url: str) -> bytes: ...
    @staticmethod
    def payload(lines: list[bytes]) -> bytes: ...
    async def retrieve(self, batch_id: str) -> BatchStatus: ...
    async def download(self, ref: str) -> bytes: ...
    @staticmethod
    def results(data: bytes) -> Iterator[ItemResult]: ...


@dataclass(slots=True)
class Tally:
    """What the route has done this run, for progress and tests."""

    submitted: int = 0
    ended: int = 0
    logged: int = 0
    requeued: int = 0
    online: int = 0  # asked through the online API (resubmit = "online")


class BatchRoute:
    """Runs every batch-mode model of a run. Usage: see the module docstring."""

    def __init__(
        self, *, models: Sequence[ModelSpec], grid: Grid, questions: Sequence[Question], scorer: Scorer,
        settings: BatchSpec, max_tokens: int, folder: Path, urls: Mapping[str, str], keys: Mapping[str, str | None],
        transport: Transport, attempts: int, done: AbstractSet[str], counters: Counters, run_name: str,
        console: Console | None = None, kill_at: str | None = None, online: Mapping[str, ChatClient] | None = None,
    ) -> None:  # fmt: skip
        self.models = {m.name: m for m in models}
        self.grid, self.questions, self.scorer = grid, questions, scorer
        self.settings, self.max_tokens = settings, max_tokens
        self.folder, self.done, self.counters, self.run_name = folder, done, counters, run_name
        self.console, self.kill_at = console, kill_at
        self.wires: dict[str, Any] = {}
        for model in models:
            http = BatchHttp(transport=transport, base_url=urls[model.name],
                             headers=batch_headers(model.api, keys.get(model.name)), attempts=attempts,
                             timeout_s=settings.timeout_s)
            self.wires[model.name] = OpenAIBatch(http) if model.api == "chat" else AnthropicBatch(http)
        self.chunks: dict[str, Chunk] = {}
        self.history: dict[str, list[str]] = collections.defaultdict(list)  # key -> reasons of earlier rounds
        # resubmit = "online": a client per model, and the tasks waiting for it
        self.online, self.asking = online, collections.deque[Task]() if online is not None else None
        self.chunker = Chunker(models=models, settings=settings, max_tokens=max_tokens, wires=self.wires,
                               history=self.history, online=self.asking)  # fmt: skip
        self.tally = Tally()
        self._last_line = ""
        self._last_print = 0.0

    # -- the loop ----------------------------------------------------------------------------

    async def run(self, writer: LogWriter, stop: StopSignal) -> Tally:
        """Submit, poll, download and write until every batch-mode task is logged (or a stop is asked)."""
        with Ledger(self.folder) as ledger:
            self.chunks, history = replay(self.folder, self.settings.poll_s)
            self.history.update(history)
            self.chunker.gather(self.chunks, self.grid, self.questions, self.done)
            while not stop.requested:
                self._submit_room(ledger)
                if self.asking:
                    await self._ask_online(writer, stop)
                open_chunks = [c for c in self.chunks.values() if c.step != "written"]
                if not open_chunks and not self.asking:
                    break
                for chunk in sorted(open_chunks, key=lambda c: c.id):
                    if stop.requested:
                        break
                    await self._advance(chunk, ledger, writer)
                self._progress()
                waits = [c.next_poll for c in self.chunks.values() if c.step == "created"]
                if waits and not any(c.step not in ("created", "written") for c in self.chunks.values()):
                    with anyio.move_on_after(max(0.0, min(waits) - time.monotonic())):
                        await stop.wake.wait()
        return self.tally

    async def _advance(self, chunk: Chunk, ledger: Ledger, writer: LogWriter) -> None:
        """Take the next step of one chunk, each recorded before (and after) it is taken."""
        wire = self.wires[chunk.model]
        if chunk.step in ("chunked", "uploading") and wire.needs_upload:
            await self._upload(chunk, wire, ledger)
        if chunk.step in ("uploaded", "creating") or (chunk.step == "chunked" and not wire.needs_upload):
            await self._create(chunk, wire, ledger)
        if chunk.step == "created" and time.monotonic() >= chunk.next_poll:
            await self._poll(chunk, wire, ledger)
        if chunk.step == "ended":
            await self._download(chunk, wire, ledger)
        if chunk.step in ("downloaded", "writing"):
            self._write(chunk, wire, ledger, writer)

    # -- steps -------------------------------------------------------------------------------

    async def _upload(self, chunk: Chunk, wire: OpenAIBatch, ledger: Ledger) -> None:
        name = self._filename(chunk)
        file_id = await wire.find_file(name) if chunk.step == "uploading" else None
        if file_id is None:
            ledger.append({"step": "uploading", "chunk": chunk.id})
            chunk.step = "uploading"
            file_id = await wire.upload(self._chunk_file(chunk).read_bytes(), name)
        ledger.append({"step": "uploaded", "chunk": chunk.id, "file_id": file_id})
        chunk.step, chunk.file_id = "uploaded", file_id
        self._reached("uploaded")

    async def _create(self, chunk: Chunk, wire: Any, ledger: Ledger) -> None:
        model = self.models[chunk.model]
        batch_id = None
        if isinstance(wire, OpenAIBatch):
            assert chunk.file_id is not None
            meta = {"engine_chunk": chunk.id, "engine_run": self.run_name}
            if chunk.step == "creating":  # killed mid-request: the batch may exist already
                batch_id = await wire.find_batch(chunk.file_id, meta)
            if batch_id is None:
                ledger.append({"step": "creating", "chunk": chunk.id})
                batch_id = await wire.create(chunk.file_id, API[model.api].path, meta)
        else:
            ledger.append({"step": "creating", "chunk": chunk.id})
            lines = self._chunk_file(chunk).read_bytes().splitlines()
            batch_id = await wire.create(wire.payload(lines))
        chunk.created_at = time.time()
        ledger.append({"step": "created", "chunk": chunk.id, "batch_id": batch_id, "at": chunk.created_at})
        chunk.step, chunk.batch_id = "created", batch_id
        chunk.next_poll, chunk.wait = time.monotonic() + self.settings.poll_s, self.settings.poll_s
        self.tally.submitted += 1
        self._reached("created")

    async def _poll(self, chunk: Chunk, wire: Wire, ledger: Ledger) -> None:
        assert chunk.batch_id is not None
        status = await wire.retrieve(chunk.batch_id)
        chunk.status = status
        self._reached("polled")
        if not status.ended:
            chunk.wait = min(self.settings.poll_max_s, chunk.wait * 2)  # backoff: most batches take a while
            chunk.next_poll = time.monotonic() + chunk.wait
            return
        ledger.append({"step": "ended", "chunk": chunk.id, "state": status.state, "downloads": list(status.downloads),
                       "failure": status.failure, "counts": dict(status.counts)})
        chunk.step = "ended"
        self.tally.ended += 1

    async def _download(self, chunk: Chunk, wire: Wire, ledger: Ledger) -> None:
        assert chunk.status is not None
        outputs = []
        for n, ref in enumerate(chunk.status.downloads):
            data = await wire.download(ref)
            path = self.folder / f"{chunk.id}.out{n}.jsonl"
            if self.kill_at == "downloading":  # a kill with the file half written: the ledger does not name it
                path.with_name(path.name + ".tmp").write_bytes(data[: len(data) // 2])
                self._reached("downloading")
            write_durable(path, data)
            outputs.append(path.name)
        ledger.append({"step": "downloaded", "chunk": chunk.id, "files": outputs})
        chunk.step, chunk.outputs = "downloaded", outputs

    def _write(self, chunk: Chunk, wire: Wire, ledger: Ledger, writer: LogWriter) -> None:
        """Records of the chunk's results through the run's writer; what needs another batch, requeued."""
        written: set[str] = set()
        if chunk.step == "writing" and chunk.offset is not None:
            written = keys_after(writer.path, chunk.offset)  # a killed write put these in already
        else:
            chunk.offset = writer.path.stat().st_size if writer.path.exists() else 0
            ledger.append({"step": "writing", "chunk": chunk.id, "offset": chunk.offset})
            chunk.step = "writing"
        records, requeued = self._records(chunk, wire)
        todo = [r for r in records if r["key"] not in written]
        half = len(todo) // 2
        for n, part in enumerate((todo[:half], todo[half:])):
            writer.write(part)
            for record in part:
                self.counters.count(record)
            self.tally.logged += len(part)
            if n == 0:
                self._reached("writing")  # half the records in the log, the ledger not yet saying so
        writer.sync()
        ledger.append({"step": "written", "chunk": chunk.id, "requeued": requeued})
        chunk.step = "written"
        for key, reason in requeued.items():
            self.history[key].append(reason)
            if self.asking is not None:
                self.asking.append(chunk.tasks[key])
            else:
                self.chunker.requeue(chunk.tasks[key])
        self.tally.requeued += len(requeued)

    def _records(self, chunk: Chunk, wire: Wire) -> tuple[list[Record], dict[str, str]]:
        """(records to write, {key: why it goes into another batch}), from the chunk's downloaded results."""
        assert chunk.status is not None or chunk.outputs == []
        items: dict[str, ItemResult] = {}
        for name in chunk.outputs:
            for found in wire.results((self.folder / name).read_bytes()):
                items[found.custom_id] = found
        failure = chunk.status.failure if chunk.status is not None else None
        adapter = API[chunk.api]
        records: list[Record] = []
        requeued: dict[str, str] = {}
        t_end = time.time()
        for key in chunk.keys:
            item: ItemResult | None = items.get(key)
            earlier = self.history.get(key, [])
            if item is not None and item.body is not None:
                completion = _completion(adapter.parse(item.body), len(earlier) + 1, item.status)
                retry = completion.reply is None and completion.error is not None and \
                    completion.error.startswith("malformed")
            else:
                why = failure or (item.error if item is not None else "no result returned for it")
                completion = Completion(reply=None, error=f"{why} (batch {chunk.batch_id})",
                                        attempts=len(earlier) + 1, http=[item.status] if item and item.status else [])
                retry = item is None or item.retry or failure is not None
            if retry and len(earlier) + 1 < self.settings.max_rounds:
                requeued[key] = completion.error or "no reason given"
                continue
            record = make_record(chunk.tasks[key], completion, self.scorer, chunk.created_at, t_end)
            record["route"] = "batch"
            record["batch_id"] = chunk.batch_id
            if earlier:
                record["requeued"] = list(earlier)
            records.append(record)
        return records, requeued

    # -- resubmit = "online" -----------------------------------------------------------------

    async def _ask_online(self, writer: LogWriter, stop: StopSignal) -> None:
        """The tasks waiting for the online API, each model's at its own concurrency."""
        assert self.asking is not None and self.online is not None
        self._reached("online")
        by_model: dict[str, list[Task]] = collections.defaultdict(list)
        while self.asking:
            task = self.asking.popleft()
            by_model[task.model.name].append(task)
        async with anyio.create_task_group() as tg:
            for name, tasks in by_model.items():
                shared = iter(tasks)  # next() never awaits: each task goes to one worker
                for _ in range(min(len(tasks), self.models[name].concurrency)):
                    tg.start_soon(self._online_worker, self.online[name], shared, writer, stop)

    async def _online_worker(self, client: ChatClient, tasks: Iterator[Task], writer: LogWriter,
                             stop: StopSignal) -> None:  # fmt: skip
        """Ask each task once through the online API (the client retries); log it with why batches did not answer."""
        for task in tasks:
            if stop.requested:
                return  # left unasked: a resume finds its reasons in the ledger and asks it online then
            t_start = time.time()
            completion = await client.complete(
                model=task.model.model, messages=task.messages, temperature=task.temperature,
                max_tokens=self.max_tokens, params=task.model.params, api=task.model.api,
                on_send=functools.partial(writer.started, task.key) if writer.journaling else None,
            )  # fmt: skip
            earlier = self.history.get(task.key, [])
            completion.attempts += len(earlier)  # the batches it went through count as attempts, as on the batch route
            record = make_record(task, completion, self.scorer, t_start, time.time())
            record["route"], record["requeued"] = "online", list(earlier)
            writer.write([record])
            self.counters.count(record)
            self.tally.logged += 1
            self.tally.online += 1

    # -- chunks ------------------------------------------------------------------------------

    def _submit_room(self, ledger: Ledger) -> None:
        """Cut new chunks while tasks are left and the enqueued-token room allows."""
        for name, model in self.models.items():
            while (chunk := self.chunker.next_chunk(model, self.chunks)) is not None:
                write_durable(self._chunk_file(chunk.chunk), b"".join(line + b"\n" for line in chunk.lines))
                ledger.append({"step": "chunked", "chunk": chunk.chunk.id, "model": name, "api": model.api,
                               "n": len(chunk.chunk.keys), "tokens": chunk.chunk.tokens})
                self.chunks[chunk.chunk.id] = chunk.chunk
                self._reached("chunked")

    # -- small things ------------------------------------------------------------------------

    def _chunk_file(self, chunk: Chunk) -> Path:
        return self.folder / f"{chunk.id}.jsonl"

    def _filename(self, chunk: Chunk) -> str:
        return f"engine-{self.run_name}-{chunk.id}.jsonl"

    def _reached(self, step: str) -> None:
        """The kill tests' hook: die here, as a kill -9 would, when asked to."""
        if self.kill_at == step:
            os.kill(os.getpid(), signal.SIGKILL)

    def _progress(self) -> None:
        if self.console is None:
            return
        steps = collections.Counter(c.step for c in self.chunks.values())
        running = steps["created"]
        line = (f"batches: {len(self.chunks):,} chunks · {running:,} in progress · {steps['written']:,} done · "
                f"{self.tally.logged:,} tasks logged · {self.tally.requeued:,} requeued"
                + (f" · {self.tally.online:,} asked online" if self.online is not None else ""))
        now = time.monotonic()
        if line != self._last_line and now - self._last_print >= 2.0:
            self.console.print(line, highlight=False)
            self._last_line, self._last_print = line, now


def _completion(parsed: Any, attempts: int, status: int | None) -> Completion:
    http = [status] if status else []
    if isinstance(parsed, NoText):
        return Completion(reply=None, error=parsed.reason, attempts=attempts, http=http)
    if isinstance(parsed, str):
        return Completion(reply=None, error=parsed, attempts=attempts, http=http)
    reply, tokens = parsed
    prompt, completion = tokens if tokens is not None else (None, None)
    return Completion(reply=reply, error=None, attempts=attempts, http=http, prompt_tokens=prompt,
                      completion_tokens=completion)


def kill_step() -> str | None:
    """The step the kill tests asked this process to die at (``ENGINE_BATCH_KILL_AT``), or None."""
    return os.environ.get(KILL_ENV) or None

Preflight = Callable[[Transport, str, dict[str, str], str, str], Awaitable[None]]


async def open_batch_route(
    *, spec_models: Sequence[ModelSpec], settings: BatchSpec, max_tokens: int, attempts: int, grid: Grid,
    questions: Sequence[Question], scorer: Scorer, run_dir: Path, run_name: str, urls: Mapping[str, str],
    make_transport: Callable[[int], Transport], transports: list[Transport], done: AbstractSet[str],
    counters: Counters, console: Console | None, preflight: Preflight, policy: RetryPolicy | None = None,
) -> BatchRoute | None:  # fmt: skip
    """The route for the spec's batch-mode models, their endpoints checked (None when it has none).

    ``preflight(transport, base_url, headers, names, api)`` is the runner's reachability check; the
    transport made here is appended to ``transports`` for the caller to close. ``policy`` is the
    spec's retry policy, for items resubmitted online (default: ``attempts`` tries, default backoff).
    Usage: ``route = await open_batch_route(spec_models=spec.models, settings=spec.batch, ...)``
    """
    models = [m for m in spec_models if m.mode == "batch"]
    if not models:
        return None
    transport = make_transport(4)  # a handful of control requests at a time, never thousands
    transports.append(transport)
    keys = {m.name: os.environ.get(m.api_key_env) if m.api_key_env else None for m in models}
    for model in models:
        await preflight(transport, urls[model.name], batch_headers(model.api, keys[model.name]), repr(model.name),
                        model.api)
    online = None
    if settings.resubmit == "online":
        online_transport = make_transport(sum(m.concurrency for m in models))
        transports.append(online_transport)
        online = online_clients(models, urls, keys, online_transport, policy or RetryPolicy(max_attempts=attempts))
    return BatchRoute(
        models=models, grid=grid, questions=questions, scorer=scorer, settings=settings, max_tokens=max_tokens,
        folder=run_dir / BATCH_DIR, urls=urls, keys=keys, transport=transport, attempts=attempts, done=done,
        counters=counters, run_name=run_name, console=console, kill_at=kill_step(), online=online,
    )


def online_clients(
    models: Sequence[ModelSpec], urls: Mapping[str, str], keys: Mapping[str, str | None], transport: Transport,
    policy: RetryPolicy,
) -> dict[str, ChatClient]:  # fmt: skip
    """One online client per batch-mode model, for ``resubmit = "online"``: its own limiter, from the model's own
    rpm, tpm and concurrency (a model in a [quotas] table learns its quota from the replies instead).

    Usage: ``online_clients(models, urls, keys, transport, RetryPolicy())["gpt-4o-mini"]``
    """
    return {
        m.name: ChatClient(
            base_url=urls[m.name], api_key=keys.get(m.name), transport=transport, policy=policy, label=m.name,
            limiter=EndpointLimiter(LimitConfig(rpm=m.rpm, tpm=m.tpm, concurrency=m.concurrency)),
        )
        for m in models
    }


def set_aside(run_dir: Path) -> None:
    """``--fresh``: the old batches and their ledger are renamed aside (never deleted), like the old log.

    Usage: ``set_aside(Path("runs/x"))``
    """
    folder = run_dir / BATCH_DIR
    if folder.exists():
        folder.rename(run_dir / f"{BATCH_DIR}.{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}.old")
