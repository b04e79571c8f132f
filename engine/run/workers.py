"""``engine run --workers N``: N shard processes on one machine, one grid, one quota, one result.

The parent checks the spec (nothing written), sets the old logs aside for ``--fresh``, starts the
built-in target once (so its quota is the fleet's, and every worker asks the same target), then
starts N workers, each ``python -m engine run SPEC --shard K/N`` with the target's URL and the
address of the parent's :class:`~engine.run.fleet.FleetHub`. Each worker expands the lazy grid
itself, keeps its shard (no task data is shipped), paces at its share of the quota, and appends
to its own log under its own lock; the parent merges their progress into one display and their
counts into one summary, then writes the report over every shard's log. A worker done with its
shard takes the back half of what the busiest worker has left (:mod:`engine.run.fleet`), so the
fleet ends together even when the machine runs its workers at different speeds.

Signals: a terminal's Ctrl-C reaches the whole process group, so every worker stops gracefully
by itself; a signal sent to the parent alone (``kill``, ``timeout``) is passed on to the workers.
Either way each worker drains and closes its log, and the fleet exits 128 + the signal. A parent
killed outright (``kill -9``) passes nothing on: its workers see the hub's line close and stop the
same way, rather than go on unseen against a target that died with it.

Usage::

    summary = run_workers(Path("spec.toml"), RunOptions(), workers=2)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
from rich.console import Console

from engine.errors import ConfigError, EngineError
from engine.results.lock import RunLock
from engine.results.paths import set_aside_logs
from engine.run.endpoints import count_target_requests, local_targets
from engine.run.fleet import FleetHub, refuse_what_a_fleet_cannot_run
from engine.run.interrupts import Interrupts
from engine.run.options import FAILED_EXIT, RunOptions, RunSummary
from engine.run.runner import prepare, write_run_report
from engine.sim.process import SimProcess

POLL_S = 0.01  # how often the parent looks at its workers (the fleet ends this long after its last worker)
PLAIN_EVERY_S = 10.0  # the merged progress line when not on a terminal
BAD_INPUT = 2


def worker_command(spec_path: Path, options: RunOptions, *, index: int, count: int, sim_url: str | None,
                   fleet: str) -> list[str]:  # fmt: skip
    """The command line of one worker process. Usage: ``worker_command(spec, options, index=0, count=2, ...)``"""
    assert options.out is not None
    argv = [sys.executable, "-m", "engine", "run", str(spec_path), "--out", str(options.out),
            "--shard", f"{index}/{count}", "--fleet", fleet, "--quiet", "--no-report"]  # fmt: skip
    if sim_url is not None:
        argv += ["--sim-url", sim_url]
    if not options.retry_failed:
        argv.append("--no-retry-failed")
    if options.fsync is not None:
        argv += ["--fsync", str(options.fsync)]
    if options.write_ahead:
        argv.append("--write-ahead")
    return argv


def run_workers(spec_path: Path, options: RunOptions, *, workers: int, spawned: SimProcess | None = None) -> RunSummary:
    """Run a spec as ``workers`` shard processes on this machine; returns the fleet's summary.

    ``spawned`` is the fleet's built-in target already starting (:func:`engine.run.early.early_target`).
    Usage: see the module docstring.
    """
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if options.shard is not None:
        raise ConfigError("--workers and --shard do not go together (--workers runs every shard itself)")
    # Every check of a run, nothing written, no log read: each worker reads the logs itself.
    prepared = prepare(spec_path, dataclasses.replace(options, fresh=True))
    refuse_what_a_fleet_cannot_run(prepared.spec, f"--workers {workers}")
    options = dataclasses.replace(options, out=prepared.paths.root)
    if options.fresh:
        with RunLock(prepared.paths.root):  # nobody is running in it while its logs go aside
            set_aside_logs(prepared.paths.root)
    started = time.monotonic()
    hub = FleetHub(workers=workers)
    with Interrupts() as interrupts, local_targets(prepared.spec, prepared.questions, spawned=spawned) as (_urls, sim), \
            tempfile.TemporaryDirectory(prefix="engine-fleet-") as tmp:  # fmt: skip
        sim_url = sim.base_url if sim is not None else None
        commands = [
            worker_command(spec_path, options, index=k, count=workers, sim_url=sim_url, fleet=f"{tmp}/hub.sock")
            for k in range(workers)
        ]
        codes = anyio.run(functools.partial(_supervise, hub, commands, Path(tmp) / "hub.sock", interrupts,
                                            options.quiet), backend="asyncio")  # fmt: skip
        target_requests = count_target_requests(sim)
    if BAD_INPUT in codes and not any(code > 128 for code in codes):
        raise EngineError("a worker refused to run (its reason is above)")
    total = hub.total()
    interrupted = interrupts.first is not None or any(code > 128 for code in codes)
    # A worker with nothing to send returns before it connects, so its shard is not in the hub's counts;
    # when every worker went through its shard, what this run did not finish was in the log already.
    through = not interrupted and all(code in (0, FAILED_EXIT) for code in codes)
    summary = RunSummary(
        run_dir=prepared.paths.root, total=prepared.grid.size, finished=total.done,
        already_done=prepared.grid.size - total.done if through else total.skipped,
        ok=total.ok, failed=total.failed, elapsed_s=time.monotonic() - started, requests=total.requests,
        retries=total.retries, rate_limited=total.rate_limited, interrupted=interrupted,
        stop_signal=interrupts.first or _signal_of(codes), target_requests=target_requests,
        by_model={k: (v[0], v[1], v[2]) for k, v in total.by_model.items()},
        simulated=frozenset(m.name for m in prepared.grid.models if m.simulated),
    )  # fmt: skip
    if options.report and not interrupted and summary.finished + summary.already_done > 0:
        write_run_report(prepared.paths.root)
    return summary


async def _supervise(hub: FleetHub, commands: list[list[str]], socket: Path, interrupts: Interrupts,
                     quiet: bool) -> list[int]:  # fmt: skip
    """Start the hub and the workers, show the merged progress, pass signals on; the workers' exit codes."""
    async with anyio.create_task_group() as tg:
        await tg.start(hub.serve, socket)
        # The workers stay in our process group: a terminal's Ctrl-C reaches each of them directly.
        procs = [subprocess.Popen(argv) for argv in commands]
        console = Console(stderr=True)

        def pass_on(count: int) -> None:
            # At once: a worker that got the terminal's Ctrl-C too takes both for one event (SAME_EVENT_S).
            for p in procs:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(interrupts.first or signal.SIGINT)

        try:
            with interrupts.delivering(asyncio.get_running_loop(), pass_on):
                await _wait(procs, hub, console, quiet)
            with anyio.move_on_after(REPORT_GRACE_S):  # the workers' last reports are on their way to the hub
                while hub.connected:
                    await anyio.sleep(0.01)
        finally:
            for p in procs:
                if p.poll() is None:  # only when the parent itself is being torn down
                    p.kill()
                    p.wait()
            tg.cancel_scope.cancel()
    return [int(p.returncode) for p in procs]


async def _wait(procs: list[subprocess.Popen[bytes]], hub: FleetHub, console: Console, quiet: bool) -> None:
    last_line = time.monotonic()
    while running := sum(p.poll() is None for p in procs):
        hub.running = running
        if not quiet and time.monotonic() - last_line >= (0.5 if console.is_terminal else PLAIN_EVERY_S):
            last_line = time.monotonic()
            _show(console, hub, len(procs))
        await anyio.sleep(POLL_S)
    hub.running = 0


REPORT_GRACE_S = 5.0


def _show(console: Console, hub: FleetHub, workers: int) -> None:
    t = hub.total()
    console.print(
        f"{workers} workers · {t.skipped + t.done:,} done ({t.skipped:,} earlier) · {t.in_flight} in flight · "
        f"{t.requests:,} requests · {t.rate_limited:,} 429s · {t.failed:,} failed · {hub.pauses} pauses shared",
        highlight=False,
    )


def _signal_of(codes: list[int]) -> int | None:
    return next((code - 128 for code in codes if code > 128), None)
