"""The fleet's balancing over a real hub and links (one Unix socket, in-process): a worker that ran
dry takes the back half of the busiest worker's stretch, and every task is walked once."""

from __future__ import annotations

import functools
import itertools
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import anyio

from engine.experiment.grid import Grid, Skipped, Span, Task, build_grid, grid_rows, iter_tasks, shard_of
from engine.experiment.questions import Question
from engine.experiment.spec import ModelSpec, Spec
from engine.run.fleet import FleetHub, FleetLink, Share
from engine.run.scheduler import Counters, StopSignal
from engine.run.send import _first_of
from engine.run.targets import model_targets

QUESTIONS = tuple(Question(id=f"q{i}", text=f"What is the number for thing {i}?", answer=str(10000 + i)) for i in range(50))
MODELS = (ModelSpec(name="a", model="a", base_url="http://x.test/v1"),)
SPEC = Spec(path=Path("x.toml"), name="x", questions=Path("q.csv"), models=MODELS, temperatures=(0.0, 1.0), repeats=10)


def share(grid: Grid, k: int) -> Share:
    """Shard ``k`` of 2 of ``grid`` as a fleet worker's pool walks it, split at no fewer than 8 a half."""
    walk = functools.partial(iter_tasks, grid, QUESTIONS, MODELS)
    return Share(walk=walk, shard=(k, 2), span=Span(stop=grid_rows(grid, 1)), least=8)


Refill = Callable[[], Awaitable[Iterator[Task] | None]]


def dry_and_other(socket: Path, grid: Grid) -> tuple[FleetLink, Refill, FleetLink, Share]:
    """Two workers' links on one hub: shard 0's, already walked to its end (with its pool's refill), and
    shard 1's (with its share, not yet walked)."""
    dry, other = FleetLink(str(socket)), FleetLink(str(socket))
    dry_share, other_share = share(grid, 0), share(grid, 1)
    dry_refill = dry.balance(dry_share)
    other.balance(other_share)
    list(dry_share.tasks())
    return dry, dry_refill, other, other_share


def on_a_hub_socket(test: Callable[[Path], Awaitable[None]]) -> None:
    """Run ``test`` with a hub socket's path in a fresh temporary directory (short: a Unix socket's path
    has a limit)."""
    with tempfile.TemporaryDirectory(prefix="engine-fleet-") as tmp:
        anyio.run(test, Path(tmp) / "hub.sock")


def test_a_worker_that_ran_dry_takes_the_back_half_of_the_busiest_stretch() -> None:
    grid = build_grid(SPEC, QUESTIONS, model_targets(SPEC, QUESTIONS))  # 1,000 tasks

    async def main(socket: Path) -> None:
        hub = FleetHub(workers=2)
        busy, dry = FleetLink(str(socket)), FleetLink(str(socket))
        busy_share, dry_share = share(grid, 0), share(grid, 1)
        busy_refill, dry_refill = busy.balance(busy_share), dry.balance(dry_share)
        busy_tasks = busy_share.tasks()
        busy_keys = [t.key for t in itertools.islice(busy_tasks, 40)]
        dry_keys = [t.key for t in dry_share.tasks()]  # all of shard 1
        async with anyio.create_task_group() as tg:
            await tg.start(hub.serve, socket)
            tg.start_soon(busy.run, [], Counters(), Skipped())
            tg.start_soon(dry.run, [], Counters(), Skipped())
            while len(hub.states) < 2 or max(s.remaining[0] if s.remaining else 0 for s in hub.states.values()) < 100:
                await anyio.sleep(0.01)  # the hub has heard how much each has left
            more = await dry_refill()
            assert more is not None and hub.splits == 1
            taken = [t.key for t in more]
            busy_keys += [t.key for t in busy_tasks]
            # The busy worker kept the front half of what it had left, the dry one walked the back half.
            assert abs(len(taken) - (len(busy_keys) - 40)) <= 30
            assert await busy_refill() is None  # nothing left anywhere worth a split
            assert await dry_refill() is None and hub.splits == 1
            tg.cancel_scope.cancel()
        everything = grid.keys()
        assert sorted(busy_keys + taken) == sorted(k for k in everything if shard_of(k, 2) == 0)
        assert sorted(dry_keys) == sorted(k for k in everything if shard_of(k, 2) == 1)

    on_a_hub_socket(main)


def test_a_worker_that_ran_dry_before_another_started_waits_for_its_stretch() -> None:
    """A worker can finish its shard before another has even started (a slow start on a busy machine):
    it waits for the late one to say what it has, then takes the back half, instead of ending and
    leaving it to walk its whole shard alone. A worker that never comes is waited for a bounded time."""
    grid = build_grid(SPEC, QUESTIONS, model_targets(SPEC, QUESTIONS))  # 1,000 tasks

    async def main(socket: Path) -> None:
        hub = FleetHub(workers=2)
        dry, dry_refill, late, _ = dry_and_other(socket, grid)  # all of shard 0 walked before the other is there
        async with anyio.create_task_group() as tg:
            await tg.start(hub.serve, socket)
            tg.start_soon(dry.run, [], Counters(), Skipped())

            async def start_late() -> None:
                await anyio.sleep(0.5)
                await late.run([], Counters(), Skipped())

            tg.start_soon(start_late)
            with anyio.fail_after(5):
                more = await dry_refill()
            assert more is not None and hub.splits == 1
            assert 200 <= len(list(more)) <= 300  # the back half of the late worker's ~500
            tg.cancel_scope.cancel()

    async def alone(socket: Path) -> None:
        hub = FleetHub(workers=2)
        hub.running = 2  # the other worker's process runs but never connects
        dry, dry_refill, _, _ = dry_and_other(socket, grid)  # the other's link is never run
        async with anyio.create_task_group() as tg:
            await tg.start(hub.serve, socket)
            tg.start_soon(dry.run, [], Counters(), Skipped())
            await anyio.sleep(0.3)
            hub.running = 1  # ... and exits: nothing to wait for
            with anyio.fail_after(2):
                assert await dry_refill() is None
            tg.cancel_scope.cancel()

    on_a_hub_socket(main)
    on_a_hub_socket(alone)


def test_a_worker_that_ran_dry_does_not_wait_for_one_that_finished_and_is_exiting() -> None:
    """The other worker walked its shard, said goodbye and closed its line; its process still runs for a
    moment (closing its log, exiting). The dry worker ends at once: nothing is starting there."""
    grid = build_grid(SPEC, QUESTIONS, model_targets(SPEC, QUESTIONS))

    async def main(socket: Path) -> None:
        hub = FleetHub(workers=2)
        dry, dry_refill, done, done_share = dry_and_other(socket, grid)
        list(done_share.tasks())
        async with anyio.create_task_group() as tg:
            await tg.start(hub.serve, socket)
            tg.start_soon(dry.run, [], Counters(), Skipped())
            async with anyio.create_task_group() as leaving:
                leaving.start_soon(done.run, [], Counters(), Skipped())
                while len(hub.states) < 2 or not all(s.remaining for s in hub.states.values()):
                    await anyio.sleep(0.01)
                leaving.cancel_scope.cancel()  # the finished worker leaves: its last report, then its line closes
            while hub.connected > 1:
                await anyio.sleep(0.01)
            assert hub.running == 2  # its process has not exited yet
            with anyio.fail_after(5):  # the hub used to wait for the exit, or START_GRACE_S (10 s)
                assert await dry_refill() is None
            tg.cancel_scope.cancel()

    on_a_hub_socket(main)


def test_the_workers_start_sending_together() -> None:
    """A worker is told to go once every running worker has connected (each does after reading the run's
    logs, so none reads another's fresh records), or once the others have exited without connecting."""

    async def main(socket: Path) -> None:
        hub = FleetHub(workers=3)
        first, second = FleetLink(str(socket)), FleetLink(str(socket))
        async with anyio.create_task_group() as tg:
            await tg.start(hub.serve, socket)
            tg.start_soon(first.run, [], Counters(), Skipped())
            while hub.connected < 1:
                await anyio.sleep(0.01)
            await anyio.sleep(0.2)
            assert not first.go.is_set()  # two more are starting
            tg.start_soon(second.run, [], Counters(), Skipped())
            while hub.connected < 2:
                await anyio.sleep(0.01)
            await anyio.sleep(0.2)
            assert not first.go.is_set() and not second.go.is_set()
            hub.running = 2  # the third had nothing to send: it exited without connecting
            with anyio.fail_after(5):
                await first.go.wait()
                await second.go.wait()
            late = FleetLink(str(socket))  # one that connects after the start goes at once
            tg.start_soon(late.run, [], Counters(), Skipped())
            with anyio.fail_after(5):
                await late.go.wait()
            tg.cancel_scope.cancel()

    on_a_hub_socket(main)


def test_a_ctrl_c_while_the_fleet_is_starting_does_not_wait_for_it() -> None:
    """A worker waiting for the others to connect stops waiting at a stop request (its Ctrl-C)."""

    async def main(socket: Path) -> None:
        hub = FleetHub(workers=2)
        link, stop = FleetLink(str(socket)), StopSignal()
        async with anyio.create_task_group() as tg:
            await tg.start(hub.serve, socket)
            tg.start_soon(link.run, [], Counters(), Skipped())
            while hub.connected < 1:
                await anyio.sleep(0.01)
            tg.start_soon(_request_after, stop, 0.1)
            with anyio.fail_after(5):  # the hub would say go only after START_GRACE_S (10 s)
                await _first_of(link.go, stop.wake)
            assert stop.requested and not link.go.is_set()
            tg.cancel_scope.cancel()

    on_a_hub_socket(main)


async def _request_after(stop: StopSignal, seconds: float) -> None:
    await anyio.sleep(seconds)
    stop.request()
