"""One quota for a fleet of shard workers: the quota split, the pause relay, the merged progress.

Each worker of a fleet (``--workers N`` processes, or N Ray actors) paces itself with its own
:class:`~engine.endpoint.limits.EndpointLimiter` (the one pacer per process) at a known quota's
N-th share (:func:`share_limits`), so the fleet never sends more than the quota. What one worker
learns that concerns the whole endpoint, a pause asked for by Retry-After or an exhausted
``x-ratelimit-remaining``, reaches every other worker through the coordinator: the worker's
:class:`FleetLink` notices its limiter pausing and says so; the :class:`FleetHub` (the parent
process) relays it to the others, whose limiters pause too. The link also reports the worker's
counters a few times a second, and the hub adds them up for the one progress display and the
fleet's summary.

The wire is one JSON object a line over a Unix socket (both ends on one machine): ``{"progress":
{...}}`` and ``{"pause": seconds, "group": i}`` from workers, ``{"pause": ..., "group": i}`` to them.

Usage::

    hub = FleetHub(workers=2)                      # the parent
    async with anyio.create_task_group() as tg:
        await tg.start(hub.serve, socket_path)
    link = FleetLink(socket_path)                  # a worker, inside its run
    tg.start_soon(link.run, clients, counters, skipped)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import orjson
from anyio.abc import SocketStream, TaskStatus
from anyio.streams.buffered import BufferedByteReceiveStream

from engine.endpoint.client import ChatClient
from engine.endpoint.limits import LimitConfig
from engine.errors import ConfigError
from engine.experiment.grid import Skipped
from engine.experiment.spec import Spec
from engine.run.scheduler import Counters

REPORT_EVERY_S = 0.25  # progress to the hub, and the look for a new pause of this worker's limiters
WATCH_PAUSE_S = 0.02  # how soon a pause one worker met reaches the hub
_MAX_LINE = 1 << 16


def share_limits(limits: LimitConfig, workers: int) -> LimitConfig:
    """One worker's share of a quota: ``rpm`` and ``tpm`` divided by the fleet's size.

    Concurrency stays per worker (each has its own connections); an unknown quota stays unknown
    (each worker adapts, and pauses are shared). Usage: ``share_limits(group.limits, 4)``
    """
    if workers <= 1:
        return limits
    return dataclasses.replace(
        limits,
        rpm=None if limits.rpm is None else limits.rpm / workers,
        tpm=None if limits.tpm is None else limits.tpm / workers,
    )


@dataclass(slots=True)
class WorkerState:
    """What one worker last reported: its counters and its clients' request counts."""

    done: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    in_flight: int = 0
    by_model: dict[str, list[int]] = field(default_factory=dict)  # label -> [ok, errors, failed]


def snapshot(clients: Sequence[ChatClient], counters: Counters, skipped: Skipped) -> dict[str, Any]:
    """A worker's counters as the hub reads them. Usage: ``snapshot(clients, counters, skipped)``"""
    return {
        "done": counters.done, "ok": counters.ok, "failed": counters.failed, "skipped": skipped.count,
        "requests": sum(c.stats.requests for c in clients), "retries": sum(c.stats.retries for c in clients),
        "rate_limited": sum(c.stats.rate_limited for c in clients),
        "in_flight": sum(c.limiter.in_flight for c in clients),
        "by_model": {k: [m.ok, m.errors, m.failed] for k, m in counters.by_model.items()},
    }  # fmt: skip


class FleetLink:
    """A worker's line to its hub: reports progress, announces its pauses, applies the others'.

    Usage: see the module docstring; runs until cancelled, sending a last report on the way out.
    """

    def __init__(self, address: str) -> None:
        self.address = address

    async def run(self, clients: Sequence[ChatClient], counters: Counters, skipped: Skipped) -> None:
        stream = await anyio.connect_unix(self.address)
        relayed = [0.0] * len(clients)  # pauses applied from the hub: not to be announced back
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._receive, stream, clients, relayed)
                await self._report(stream, clients, counters, skipped, relayed)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                # The last counts: the hub sums them into the fleet's summary.
                await stream.send(orjson.dumps({"progress": snapshot(clients, counters, skipped)}) + b"\n")
                await stream.aclose()

    async def _report(
        self, stream: SocketStream, clients: Sequence[ChatClient], counters: Counters, skipped: Skipped,
        relayed: list[float],
    ) -> None:  # fmt: skip
        seen = [0.0] * len(clients)
        last_report = -math.inf
        while True:
            now = anyio.current_time()
            for i, client in enumerate(clients):
                until = client.limiter.paused_until
                if until > seen[i] and until > relayed[i] + 1e-6 and until > now:
                    seen[i] = until
                    await stream.send(orjson.dumps({"pause": until - now, "group": i}) + b"\n")
            if now - last_report >= REPORT_EVERY_S:
                last_report = now
                await stream.send(orjson.dumps({"progress": snapshot(clients, counters, skipped)}) + b"\n")
            await anyio.sleep(WATCH_PAUSE_S)

    async def _receive(self, stream: SocketStream, clients: Sequence[ChatClient], relayed: list[float]) -> None:
        lines = BufferedByteReceiveStream(stream)
        while True:
            try:
                line = await lines.receive_until(b"\n", _MAX_LINE)
            except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
                return  # the hub is gone: this worker goes on alone, at its share of the quota
            message = orjson.loads(line)
            group = int(message["group"])
            if "pause" in message and 0 <= group < len(clients):
                now = anyio.current_time()
                limiter = clients[group].limiter
                limiter.pause(now, float(message["pause"]))
                relayed[group] = limiter.paused_until


class FleetHub:
    """The coordinator of a fleet on one machine: merges the workers' progress and relays pauses.

    Usage: see the module docstring; ``hub.total()`` is the fleet's counts so far.
    """

    def __init__(self, *, workers: int) -> None:
        self.workers = workers
        self.states: dict[int, WorkerState] = {}
        self.pauses = 0  # pauses relayed, for the summary and the tests
        self._streams: dict[int, SocketStream] = {}
        self._next = 0

    async def serve(self, path: Path, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_unix_listener(path)
        task_status.started()
        await listener.serve(self._handle)

    async def _handle(self, stream: SocketStream) -> None:
        me = self._next
        self._next += 1
        self._streams[me] = stream
        self.states[me] = WorkerState()
        lines = BufferedByteReceiveStream(stream)
        try:
            while True:
                try:
                    line = await lines.receive_until(b"\n", _MAX_LINE)
                except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
                    return
                message = orjson.loads(line)
                if "progress" in message:
                    self.states[me] = WorkerState(**message["progress"])
                elif "pause" in message:
                    self.pauses += 1
                    await self._broadcast(me, line + b"\n")
        finally:
            self._streams.pop(me, None)

    async def _broadcast(self, sender: int, line: bytes) -> None:
        for who, stream in list(self._streams.items()):
            if who != sender:
                try:
                    await stream.send(line)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    self._streams.pop(who, None)

    @property
    def connected(self) -> int:
        """Workers still connected (a worker's last report arrives before its connection closes)."""
        return len(self._streams)

    def total(self) -> WorkerState:
        """The fleet's counts: every worker's last report added up."""
        out = WorkerState()
        for state in self.states.values():
            for name in ("done", "ok", "failed", "skipped", "requests", "retries", "rate_limited", "in_flight"):
                setattr(out, name, getattr(out, name) + getattr(state, name))
            for label, counts in state.by_model.items():
                mine = out.by_model.setdefault(label, [0, 0, 0])
                for i, n in enumerate(counts):
                    mine[i] += n
        return out


def refuse_what_a_fleet_cannot_run(spec: Spec, how: str) -> None:
    """Refuse a spec with batch-mode models in a fleet (shards, workers, Ray): one line, before anything runs.

    A batch route holds one ledger per run directory and submits every task of its models; split
    across processes it would submit them once per shard.
    Usage: ``refuse_what_a_fleet_cannot_run(spec, "--workers 2")``
    """
    batch = [m.name for m in spec.models if m.mode == "batch"]
    if batch:
        raise ConfigError(
            f"model {batch[0]!r}: batch mode runs in one process; drop {how} or set mode = \"online\""
        )
