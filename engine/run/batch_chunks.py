"""The batch route's chunks: cut under the providers' limits, and rebuilt from the ledger on resume.

:mod:`engine.run.batch` takes each chunk through its steps (submit, poll, download, write); this
module decides what goes into a chunk and where a resumed run stands. A model's chunk takes its
requeued tasks first, then fresh ones from the grid, up to the provider's request and size limits
and the enqueued-token room the ``[batch]`` table allows (prompt tokens of the model's batches
still running).

Usage (what the route does)::

    chunks, history = replay(folder, settings.poll_s)
    chunker = Chunker(models=models, settings=settings, max_tokens=32, wires=wires, history=history)
    chunker.gather(chunks, grid, questions, done)
    cut = chunker.next_chunk(model, chunks)   # None: nothing left, or no room yet
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from engine.endpoint.apis import API
from engine.endpoint.batch import BatchStatus
from engine.endpoint.batch_anthropic import MAX_BYTES as ANTHROPIC_BYTES
from engine.endpoint.batch_anthropic import MAX_REQUESTS as ANTHROPIC_REQUESTS
from engine.endpoint.batch_openai import MAX_BYTES as OPENAI_BYTES
from engine.endpoint.batch_openai import MAX_REQUESTS as OPENAI_REQUESTS
from engine.endpoint.limits import prompt_token_estimate
from engine.experiment.grid import Grid, Task, iter_tasks
from engine.experiment.questions import Question
from engine.experiment.settings import BatchSpec
from engine.experiment.spec import ModelSpec
from engine.results.ledger import read_ledger

__all__ = ["Chunk", "Chunker", "Cut", "keys_after", "replay"]

_LIMITS = {"chat": (OPENAI_REQUESTS, OPENAI_BYTES), "anthropic": (ANTHROPIC_REQUESTS, ANTHROPIC_BYTES)}
_RUNNING = ("chunked", "uploading", "uploaded", "creating", "created")  # steps whose tokens are enqueued


@dataclass(slots=True)
class Chunk:
    """One chunk of one model's tasks and how far it got (replayed from the ledger on resume).

    Usage: ``Chunk(id="c00001", model="m1", api="chat", keys=["..."], tokens=1200).step  # "chunked"``
    """

    id: str
    model: str
    api: str
    keys: list[str]
    tokens: int
    step: str = "chunked"  # the last step the ledger holds for it
    file_id: str | None = None
    batch_id: str | None = None
    created_at: float = 0.0
    status: BatchStatus | None = None
    outputs: list[str] = field(default_factory=list)
    offset: int | None = None  # the log's size when writing began
    tasks: dict[str, Task] = field(default_factory=dict)
    next_poll: float = 0.0
    wait: float = 0.0


@dataclass(slots=True)
class Cut:
    """A new chunk and its request lines (one JSONL line per task, in the provider's format)."""

    chunk: Chunk
    lines: list[bytes]


class Chunker:
    """Cuts each model's tasks into chunks: requeued tasks first, then fresh ones. Usage: see the module docstring.

    With ``online`` given (``resubmit = "online"``), a fresh task that an earlier run had requeued
    (its key in ``history``) is put there instead of into a chunk: it goes to the online API.
    """

    def __init__(
        self, *, models: Sequence[ModelSpec], settings: BatchSpec, max_tokens: int, wires: Mapping[str, Any],
        history: Mapping[str, list[str]], online: collections.deque[Task] | None = None,
    ) -> None:  # fmt: skip
        self.models = {m.name: m for m in models}
        self.settings, self.max_tokens, self.wires = settings, max_tokens, wires
        self.history, self.online = history, online
        self.queues: dict[str, collections.deque[Task]] = {m: collections.deque() for m in self.models}
        self.fresh: dict[str, Iterator[Task]] = {}

    def gather(self, chunks: Mapping[str, Chunk], grid: Grid, questions: Sequence[Question],
               done: AbstractSet[str]) -> None:  # fmt: skip
        """The tasks of unfinished chunks (one pass over the grid), and a lazy source of the rest per model."""
        open_keys = {k: c for c in chunks.values() if c.step != "written" for k in c.keys}
        models = list(self.models.values())
        if open_keys:
            for task in iter_tasks(grid, questions, models, done=done):
                if (chunk := open_keys.get(task.key)) is not None:
                    chunk.tasks[task.key] = task
            for chunk in chunks.values():
                if chunk.step != "written" and len(chunk.tasks) != len(chunk.keys):
                    # The spec changed under a batch in flight: its other keys are no longer in the grid.
                    chunk.keys = [k for k in chunk.keys if k in chunk.tasks]
        skip = done | frozenset(open_keys)
        for model in models:
            self.fresh[model.name] = iter_tasks(grid, questions, [model], done=skip)

    def requeue(self, task: Task) -> None:
        """A task for another batch of its model."""
        self.queues[task.model.name].append(task)

    def next_chunk(self, model: ModelSpec, chunks: Mapping[str, Chunk]) -> Cut | None:
        """The model's next chunk, or None when no task is left or none fits beside the batches running."""
        max_requests, max_bytes = _LIMITS[model.api]
        if self.settings.max_requests:
            max_requests = min(max_requests, self.settings.max_requests)
        if self.settings.max_mb:
            max_bytes = min(max_bytes, int(self.settings.max_mb * 1024 * 1024))
        room = None
        running = 0
        if self.settings.enqueued_tokens:
            running = sum(c.tokens for c in chunks.values() if c.model == model.name and c.step in _RUNNING)
            room = self.settings.enqueued_tokens - running
        wire = self.wires[model.name]
        url = API[model.api].path
        lines: list[bytes] = []
        tasks: dict[str, Task] = {}
        size = tokens = 0
        while len(lines) < max_requests:
            task = self.take(model.name)
            if task is None:
                break
            body = API[model.api].body(model.model, task.messages, task.temperature, self.max_tokens, model.params)
            line = wire.line(task.key, body, url)
            cost = token_estimate(task)
            if lines and (size + len(line) + 1 > max_bytes or (room is not None and tokens + cost > room)):
                self.queues[model.name].appendleft(task)  # the next chunk's first
                break
            if room is not None and cost > room and running:  # not even one fits beside what runs: wait
                self.queues[model.name].appendleft(task)
                return None
            lines.append(line)
            tasks[task.key] = task
            size += len(line) + 1
            tokens += cost
        if not lines:
            return None
        chunk_id = f"c{len(chunks) + 1:05d}"
        chunk = Chunk(id=chunk_id, model=model.name, api=model.api, keys=list(tasks), tokens=tokens, tasks=tasks)
        return Cut(chunk=chunk, lines=lines)

    def take(self, model: str) -> Task | None:
        """The model's next task for a chunk: a requeued one, else a fresh one from the grid."""
        queue = self.queues[model]
        if queue:
            return queue.popleft()
        for task in self.fresh[model]:
            if self.online is not None and task.key in self.history:
                self.online.append(task)  # requeued by an earlier run: the online API's now
                continue
            return task
        return None


def replay(folder: Path, poll_s: float) -> tuple[dict[str, Chunk], dict[str, list[str]]]:
    """Every chunk's state and each requeued key's reasons (oldest first), rebuilt from the ledger.

    Usage: ``chunks, history = replay(Path("runs/x/batches"), 30.0)``
    """
    chunks: dict[str, Chunk] = {}
    history: dict[str, list[str]] = collections.defaultdict(list)
    for event in read_ledger(folder):
        step, chunk_id = event["step"], event.get("chunk", "")
        if step == "chunked":
            keys = [orjson.loads(line)["custom_id"] for line in
                    (folder / f"{chunk_id}.jsonl").read_bytes().splitlines() if line.strip()]  # fmt: skip
            chunks[chunk_id] = Chunk(id=chunk_id, model=event["model"], api=event["api"], keys=keys,
                                     tokens=int(event["tokens"]))  # fmt: skip
            continue
        chunk = chunks[chunk_id]
        chunk.step = step
        if step == "uploaded":
            chunk.file_id = event["file_id"]
        elif step == "created":
            chunk.batch_id, chunk.created_at = event["batch_id"], float(event["at"])
        elif step == "ended":
            chunk.status = BatchStatus(id=chunk.batch_id or "", state=event["state"], ended=True,
                                       downloads=tuple(event["downloads"]), failure=event.get("failure"))  # fmt: skip
        elif step == "downloaded":
            chunk.outputs = list(event["files"])
        elif step == "writing":
            chunk.offset = int(event["offset"])
        elif step == "written":
            for key, reason in event.get("requeued", {}).items():
                history[key].append(reason)
    for chunk in chunks.values():
        if chunk.step == "created":  # poll at once: the batch may have ended while no run watched it
            chunk.next_poll, chunk.wait = 0.0, poll_s
    return chunks, history


def keys_after(log: Path, offset: int) -> set[str]:
    """Keys of the records in the log past ``offset`` (what a killed write already put there).

    Usage: ``keys_after(Path("runs/x/results.jsonl"), 81920)``
    """
    if not log.exists() or log.stat().st_size <= offset:
        return set()
    with log.open("rb") as fh:
        fh.seek(offset)
        tail = fh.read()
    keys = set()
    for raw in tail.split(b"\n")[:-1]:  # an unterminated last line was cut before the run began
        try:
            keys.add(str(orjson.loads(raw)["key"]))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            continue
    return keys


def token_estimate(task: Task) -> int:
    """A task's prompt tokens as the plan and the limiter estimate them (what the enqueued-token limit counts)."""
    return int(prompt_token_estimate(sum(len(m["content"]) for m in task.messages), messages=len(task.messages)))
