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

The hub also keeps the workers busy to the end: a fleet's workers seldom run at one speed (on a
busy machine the scheduler favours some), and with fixed shards the fastest would idle while the
slowest finishes. So a worker whose pool runs dry asks the hub (``{"idle": pool}``); the hub asks
the worker with most left (``{"split": pool, "req": n}``), which keeps the front half of its
stretch and gives the back half (``{"given": n, "shard": [k, n], "start": .., "stop": .., ...}``,
see :class:`~engine.experiment.grid.Span`); the hub passes it on (``{"take": pool, ...}``, or
``{"take": pool}``: nothing left worth splitting). Every task is still walked by exactly one worker,
and a stretch taken is logged in the taker's own log (resume reads every log of the run).

The workers start sending together (``{"go": true}`` from the hub once every running worker has
connected, which each does after reading the run's logs): a worker that read the logs after another
had started would find that one's fresh records there, and pay for reading them (Polars' import
alone is 0.3 s), though none can be in its own stretch.

The wire is one JSON object a line over a Unix socket (both ends on one machine): ``{"progress":
{...}}``, ``{"pause": seconds, "group": i}``, ``{"idle": ...}`` and ``{"given": ...}`` from
workers; ``{"go": true}``, ``{"pause": ..., "group": i}``, ``{"split": ...}`` and ``{"take": ...}`` to them.

Usage::

    hub = FleetHub(workers=2)                      # the parent
    async with anyio.create_task_group() as tg:
        await tg.start(hub.serve, socket_path)
    link = FleetLink(socket_path)                  # a worker, inside its run
    tg.start_soon(link.run, clients, counters, skipped)
    await link.go.wait()                           # then send
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import orjson
from anyio.abc import SocketStream, TaskGroup, TaskStatus
from anyio.streams.buffered import BufferedByteReceiveStream

from engine.endpoint.client import ChatClient
from engine.endpoint.limits import LimitConfig
from engine.errors import ConfigError
from engine.experiment.grid import Skipped, Span, Task
from engine.experiment.spec import Spec
from engine.run.scheduler import Counters

REPORT_EVERY_S = 0.25  # progress to the hub, and the look for a new pause of this worker's limiters
START_GRACE_S = 10.0  # how long the fleet waits for a worker still starting: to begin, or to take its stretch
START_POLL_S = 0.02  # how often it looks whether that one is there
WATCH_PAUSE_S = 0.02  # how soon a pause one worker met reaches the hub
_MAX_LINE = 1 << 16
_GO = b'{"go":true}\n'


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
    remaining: list[int] = field(default_factory=list)  # by pool: rows left of the stretch it walks


@dataclass(slots=True)
class Share:
    """One pool's part of the grid in a fleet worker: the stretch it walks, and how to walk another one.

    Usage: ``share = Share(walk=functools.partial(iter_tasks, grid, questions, models, done=done),
    shard=(0, 2), span=Span(stop=grid_rows(grid, 1)), least=128); pool.tasks = share.tasks()``
    """

    walk: Callable[..., Iterator[Task]]  # iter_tasks with everything but shard= and span=
    shard: tuple[int, int]
    span: Span
    least: int  # tasks each half of a split keeps at least: two rounds of the pool's concurrency

    def tasks(self) -> Iterator[Task]:
        """The lazy tasks of the current stretch."""
        return self.walk(shard=self.shard, span=self.span)

    def give(self) -> dict[str, Any]:
        """The back half of the stretch, as the wire carries it; ``{}`` when too little is left to split."""
        # A stretch's rows hold every shard's tasks: about one in ``count`` is this shard's.
        given = self.span.split(self.least * self.shard[1])
        if given is None:
            return {}
        return {"shard": list(self.shard), "start": given[0], "stop": given[1]}

    def take(self, given: Mapping[str, Any]) -> Iterator[Task]:
        """Walk a stretch another worker gave; it is this share's from now on (and can be split again)."""
        k, n = given["shard"]
        self.shard = (int(k), int(n))
        self.span = Span(start=int(given["start"]), stop=int(given["stop"]))
        return self.tasks()


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
    """A worker's line to its hub: reports progress, announces its pauses, applies the others', and
    gives and takes stretches of the grid so no worker idles while another has work.

    Usage: see the module docstring; runs until cancelled, sending a last report on the way out.
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self.shares: list[Share] = []
        self._stream: SocketStream | None = None
        self._gone = False  # the hub closed the line: no more pauses, nothing more to take
        self.orphaned = anyio.Event()  # ... while this worker still ran: its parent, the user's command, is gone
        self._sending = anyio.Lock()  # a report, a pause and a stretch given may go out at once
        self._connected = anyio.Event()
        self.go = anyio.Event()  # every worker is there (or the hub is gone): send
        self._answers: dict[int, tuple[anyio.Event, list[dict[str, Any]]]] = {}

    def balance(self, share: Share) -> Callable[[], Awaitable[Iterator[Task] | None]]:
        """Put a pool's share in the fleet's balancing; returns the pool's refill (:attr:`Pool.refill`).

        Usage: ``pool.refill = link.balance(share)``
        """
        self.shares.append(share)
        return functools.partial(self.ask, len(self.shares) - 1)

    async def ask(self, pool: int) -> Iterator[Task] | None:
        """Tasks for a pool that ran dry: the back half of another worker's stretch, or None (nobody has
        enough left, or the hub is gone). Usage: ``more = await link.ask(0)``"""
        await self._connected.wait()
        if self._gone:
            return None
        event, got = self._answers[pool] = (anyio.Event(), [])
        try:
            await self._send({"idle": pool})
            if not self._gone:  # else the ask never left: no answer will come
                await event.wait()
        finally:
            del self._answers[pool]
        return self.shares[pool].take(got[0]) if got and "start" in got[0] else None

    async def run(self, clients: Sequence[ChatClient], counters: Counters, skipped: Skipped) -> None:
        stream = await anyio.connect_unix(self.address)
        self._stream = stream
        self._connected.set()
        relayed = [0.0] * len(clients)  # pauses applied from the hub: not to be announced back
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._receive, stream, clients, relayed)
                await self._report(clients, counters, skipped, relayed)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                # The last counts: the hub sums them into the fleet's summary.
                await self._send({"progress": self._progress(clients, counters, skipped)})
                await stream.aclose()

    def _progress(self, clients: Sequence[ChatClient], counters: Counters, skipped: Skipped) -> dict[str, Any]:
        return {**snapshot(clients, counters, skipped), "remaining": [s.span.remaining() for s in self.shares]}

    async def _send(self, message: Mapping[str, Any]) -> None:
        if self._stream is None or self._gone:
            return
        async with self._sending:
            try:
                await self._stream.send(orjson.dumps(message) + b"\n")
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._hub_gone()

    def _hub_gone(self) -> None:
        # The parent closes the hub only once every worker has exited: gone before, the parent was killed.
        self._gone = True
        self.orphaned.set()
        self.go.set()  # nothing to wait for: the run stops (orphaned) or goes on alone

    async def _report(
        self, clients: Sequence[ChatClient], counters: Counters, skipped: Skipped, relayed: list[float],
    ) -> None:  # fmt: skip
        seen = [0.0] * len(clients)
        last_report = -math.inf
        while True:
            now = anyio.current_time()
            for i, client in enumerate(clients):
                until = client.limiter.paused_until
                if until > seen[i] and until > relayed[i] + 1e-6 and until > now:
                    seen[i] = until
                    await self._send({"pause": until - now, "group": i})
            if now - last_report >= REPORT_EVERY_S:
                last_report = now
                await self._send({"progress": self._progress(clients, counters, skipped)})
            await anyio.sleep(WATCH_PAUSE_S)

    async def _receive(self, stream: SocketStream, clients: Sequence[ChatClient], relayed: list[float]) -> None:
        lines = BufferedByteReceiveStream(stream)
        try:
            while True:
                try:
                    line = await lines.receive_until(b"\n", _MAX_LINE)
                except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
                    self._hub_gone()
                    return
                message = orjson.loads(line)
                if "go" in message:
                    self.go.set()
                elif "split" in message:
                    pool = int(message["split"])
                    given = self.shares[pool].give() if 0 <= pool < len(self.shares) else {}
                    await self._send({"given": message["req"], **given})
                elif "take" in message:
                    if (answer := self._answers.get(int(message["take"]))) is not None:
                        answer[1].append(message)
                        answer[0].set()
                elif "pause" in message and 0 <= (group := int(message["group"])) < len(clients):
                    now = anyio.current_time()
                    limiter = clients[group].limiter
                    limiter.pause(now, float(message["pause"]))
                    relayed[group] = limiter.paused_until
        finally:
            for event, _ in self._answers.values():  # no answer will come: each asker gets nothing
                event.set()


class FleetHub:
    """The coordinator of a fleet on one machine: merges the workers' progress, relays pauses, and
    passes stretches of the grid from the busiest worker to one that ran dry.

    Usage: see the module docstring; ``hub.total()`` is the fleet's counts so far.
    """

    def __init__(self, *, workers: int) -> None:
        self.workers = workers
        self.states: dict[int, WorkerState] = {}
        self.pauses = 0  # pauses relayed, for the summary and the tests
        self.splits = 0  # stretches passed from one worker to another
        self.running = workers  # worker processes not yet exited (their supervisor keeps this up to date)
        self._streams: dict[int, SocketStream] = {}
        self._locks: dict[int, anyio.Lock] = {}  # one message at a time down each worker's line
        self._asks: dict[int, tuple[int, anyio.Event, list[dict[str, Any]]]] = {}  # req -> (worker, answered, answer)
        self._next = 0
        self._next_ask = 0
        self._started = False  # the workers were told to go

    async def serve(self, path: Path, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_unix_listener(path)
        async with anyio.create_task_group() as errands:
            errands.start_soon(self._start_when_all_there)
            task_status.started()
            await listener.serve(functools.partial(self._handle, errands=errands))

    async def _start_when_all_there(self) -> None:
        """Tell the workers to go once every one still running has connected (a worker with nothing to send
        exits without connecting), or after START_GRACE_S: a slow one joins the others when it can."""
        deadline = anyio.current_time() + START_GRACE_S
        while not self._started and self._one_yet_to_connect() and anyio.current_time() < deadline:
            await anyio.sleep(START_POLL_S)
        if not self._started:
            await self._start()

    async def _start(self) -> None:
        self._started = True
        for who in list(self._streams):
            await self._send(who, _GO)

    async def _handle(self, stream: SocketStream, *, errands: TaskGroup) -> None:
        me = self._next
        self._next += 1
        self._streams[me] = stream
        self._locks[me] = anyio.Lock()
        self.states[me] = WorkerState()
        lines = BufferedByteReceiveStream(stream)
        try:
            if self._started:
                await self._send(me, _GO)
            elif not self._one_yet_to_connect():  # the last one: everybody goes
                await self._start()
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
                    for who in list(self._streams):
                        if who != me:
                            await self._send(who, line + b"\n")
                elif "idle" in message:
                    # Apart from this loop: the answer comes in on another worker's line, maybe one
                    # that is itself waiting for a stretch.
                    errands.start_soon(self._find_work, me, int(message["idle"]))
                elif "given" in message and (ask := self._asks.get(int(message["given"]))) is not None:
                    ask[2].append(message)
                    ask[1].set()
        finally:
            self._streams.pop(me, None)
            for who, answered, _ in self._asks.values():
                if who == me:  # asked, never to answer: answered with nothing
                    answered.set()

    async def _find_work(self, taker: int, pool: int) -> None:
        """Find ``taker`` a stretch of ``pool``; ``{"take": pool}`` alone when nobody has enough left.

        A worker still starting (not connected, or connected but not yet reporting its stretch) may
        hold half the grid: a worker that ran dry before it started waits for it, up to START_GRACE_S,
        rather than leave it to walk its whole shard alone."""
        deadline = anyio.current_time() + START_GRACE_S
        while not await self._ask_givers(taker, pool):
            if not self._starting(taker) or anyio.current_time() >= deadline:
                await self._send(taker, orjson.dumps({"take": pool}) + b"\n")
                return
            await anyio.sleep(START_POLL_S)

    def _starting(self, taker: int) -> bool:
        """Whether a worker other than ``taker`` runs but has not said yet what it has left.

        One that connected and left is not starting, though its process may take a moment to exit
        (waiting on it held a dry worker, and so the fleet's end, by a quarter second)."""
        unreported = any(not self.states[w].remaining for w in self._streams if w != taker)
        return unreported or self._one_yet_to_connect()

    def _one_yet_to_connect(self) -> bool:
        """Whether a worker process still runs that has not connected yet (one that exits without
        connecting had nothing to send; one that connected and left may take a moment to exit)."""
        return self._next < self.workers and len(self._streams) < self.running

    async def _ask_givers(self, taker: int, pool: int) -> bool:
        """Ask the workers with most left of ``pool``, in turn, for the back half of their stretch; the
        first one given goes to ``taker``. False when nobody had enough left."""
        def left(worker: int) -> int:
            remaining = self.states[worker].remaining
            return remaining[pool] if pool < len(remaining) else 0

        for giver in sorted((w for w in self._streams if w != taker and left(w) > 0), key=left, reverse=True):
            self._next_ask += 1
            req = self._next_ask
            answered, answer = anyio.Event(), list[dict[str, Any]]()
            self._asks[req] = (giver, answered, answer)
            try:
                if await self._send(giver, orjson.dumps({"split": pool, "req": req}) + b"\n"):
                    await answered.wait()
            finally:
                del self._asks[req]
            if answer and "start" in answer[0]:
                self.splits += 1
                stretch = {k: answer[0][k] for k in ("shard", "start", "stop")}
                await self._send(taker, orjson.dumps({"take": pool, **stretch}) + b"\n")
                return True
        return False

    async def _send(self, who: int, line: bytes) -> bool:
        """One line to a worker; False when it is gone."""
        stream = self._streams.get(who)
        if stream is None:
            return False
        try:
            async with self._locks[who]:
                await stream.send(line)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._streams.pop(who, None)
            return False
        return True

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
