"""Sending what is left of a grid: targets up, pools and the batch route open, every record written.

:func:`send_rest` is the second half of :func:`engine.run.runner.run_prepared`, loaded only when
something is left to send (a rerun with nothing to send never imports the clients, the batch
route or a fleet's link).

Usage::

    summary = await send_rest(prepared, options, make_transport=default_transport, console=None,
                              interrupts=interrupts, done=done, skipped=Skipped(), started=time.monotonic())
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet

import anyio
from rich.console import Console

from engine.endpoint.client import ChatClient
from engine.endpoint.limits import EndpointLimiter
from engine.endpoint.transport import Transport
from engine.errors import EngineError
from engine.experiment.grid import Skipped, Span, grid_rows, iter_tasks
from engine.results.shards import Shard
from engine.results.write import LogWriter
from engine.run.batch import BatchRoute, open_batch_route, set_aside
from engine.run.budget import BudgetLink, link_of
from engine.run.endpoints import (
    api_headers,
    count_target_requests,
    local_targets,
    preflight,
    retry_policy,
)
from engine.run.fleet import FleetLink, Share, share_limits
from engine.run.interrupts import Interrupts
from engine.run.logs import mark_if_complete, prepare_log, shard_pair
from engine.run.options import Prepared, RunOptions, RunSummary
from engine.run.progress import Progress
from engine.run.quotas import by_endpoint, pool_size, quota_groups
from engine.run.scheduler import Counters, Pool, StopSignal, run_grid
from engine.sim.process import SimProcess

__all__ = ["send_rest"]


async def send_rest(
    prepared: Prepared, options: RunOptions, *, make_transport: Callable[[int], Transport], console: Console | None,
    interrupts: Interrupts, done: AbstractSet[str], skipped: Skipped, started: float,
    spawned: SimProcess | None = None,
) -> RunSummary:  # fmt: skip
    """Start the targets, open the pools (preflighted) and the batch route, run them, close everything.

    ``done`` are the keys not to send; ``skipped`` counts those the grid passes over; ``started`` is
    the run's start (``time.monotonic()``) for its elapsed time; ``spawned``, a built-in target already
    starting, if the caller has one.
    Usage: ``await send_rest(prepared, options, make_transport=f, console=None, interrupts=i, ...)``
    """
    spec, paths = prepared.spec, prepared.paths
    stop, counters = StopSignal(), Counters()
    with local_targets(
        spec, prepared.questions, sim_url=options.sim_url, spawned=spawned
    ) as (urls, sim):
        transports: list[Transport] = []
        try:
            link = link_of(options)
            pools = await _open_pools(
                prepared, urls, make_transport, transports, done=done, skipped=skipped, shard=options.shard,
                link=link,
            )
            route = await open_batch_route(
                spec_models=spec.models, settings=spec.batch, max_tokens=spec.max_tokens, attempts=spec.max_attempts,
                grid=prepared.grid, questions=prepared.questions, scorer=prepared.scorer, run_dir=paths.root,
                run_name=spec.name, urls=urls, make_transport=make_transport, transports=transports, done=done,
                counters=counters, console=None if options.quiet else console or Console(stderr=True),
                preflight=lambda t, u, h, n, a: preflight(t, u, h, n, api=a), policy=retry_policy(spec),
            )  # fmt: skip
            # Everything checked: only now is the run directory written to.
            in_flight = prepare_log(prepared, options)
            if options.fresh:
                set_aside(paths.root)
            progress = Progress(
                total=prepared.grid.size, skipped=skipped, counters=counters,
                clients=[p.client for p in pools], console=console or Console(stderr=True), quiet=options.quiet,
            )
            await _run_pools(prepared, options, pools, progress, counters, stop, interrupts, route, link, skipped)
            target_requests = count_target_requests(sim)
        finally:
            for transport in transports:
                await transport.aclose()
    if not stop.requested:
        mark_if_complete(prepared, options, missing=prepared.grid.size - skipped.count - counters.done,
                          failed=counters.failed)  # fmt: skip
    clients = [p.client for p in pools]
    return RunSummary(
        run_dir=paths.root, total=prepared.grid.size, already_done=skipped.count, finished=counters.done,
        ok=counters.ok, failed=counters.failed, elapsed_s=time.monotonic() - started,
        requests=sum(c.stats.requests for c in clients), retries=sum(c.stats.retries for c in clients),
        rate_limited=sum(c.stats.rate_limited for c in clients), interrupted=stop.requested,
        stop_signal=interrupts.first,
        target_requests=target_requests, in_flight_at_last_stop=in_flight,
        by_model={m.name: _counts(counters, m.name) for m in spec.models if m.name in counters.by_model},
        simulated=frozenset(m.name for m in prepared.grid.models if m.simulated),
    )


def _load_report_modules() -> None:
    """Import the report's modules, Polars and numpy (about 0.4 s), for the report that follows the run.

    Run in a worker thread while requests are in flight: the event loop mostly waits on the
    network then, so the import fills its idle time instead of adding to the run's end.
    """
    import engine.report.write  # noqa: F401


async def _open_pools(
    prepared: Prepared, urls: Mapping[str, str], make_transport: Callable[[int], Transport],
    transports: list[Transport], *, done: AbstractSet[str], skipped: Skipped, shard: Shard | None = None,
    link: FleetLink | BudgetLink | None = None,
) -> list[Pool]:  # fmt: skip
    """Step 1: one connection pool per endpoint (checked by a preflight), one client and limiter per quota.

    Each transport is appended to ``transports`` as soon as it exists, so the caller closes it
    whatever happens next. A worker of a local fleet (``link`` a :class:`FleetLink`) walks its shard
    as a :class:`Share`, so it can give part of it to a worker that ran dry, and take part of another's.
    """
    spec = prepared.spec
    policy = retry_policy(spec)
    pools = []
    for endpoint_limiters in by_endpoint(quota_groups(spec)).values():
        # One connection pool per endpoint, room for every limiter's window; one limiter per quota.
        # Batch-mode models are the batch route's (engine.run.batch), not the pools'.
        if not any(m.mode == "online" for g in endpoint_limiters for m in g.models):
            continue
        base_url = urls[endpoint_limiters[0].models[0].name]
        transport = make_transport(pool_size(endpoint_limiters))
        transports.append(transport)
        key_env = endpoint_limiters[0].endpoint[1]
        key = os.environ.get(key_env) if key_env else None
        models = [m for g in endpoint_limiters for m in g.models]
        for api in dict.fromkeys(m.api for m in models):  # each API once, with its own headers
            names = ", ".join(repr(m.name) for m in models if m.api == api)
            await preflight(transport, base_url, api_headers(api, key), names, api=api)
        for group in endpoint_limiters:
            if not (online := [m for m in group.models if m.mode == "online"]):
                continue
            client = ChatClient(
                # A shard of a fleet paces at its share of the quota: the fleet holds the quota, not each worker.
                base_url=base_url, api_key=key, transport=transport,
                limiter=EndpointLimiter(share_limits(group.limits, shard.count if shard else 1)),
                policy=policy, label=group.label,
            )
            walk = functools.partial(iter_tasks, prepared.grid, prepared.questions, online, done=done, skipped=skipped)
            refill = None
            if isinstance(link, FleetLink) and (pair := shard_pair(shard)) is not None:
                share = Share(walk=walk, shard=pair, span=Span(stop=grid_rows(prepared.grid, len(online))),
                              least=2 * group.limits.concurrency)  # fmt: skip
                tasks, refill = share.tasks(), link.balance(share)
            else:
                tasks = walk(shard=shard_pair(shard))
            pools.append(Pool(client=client, tasks=tasks, workers=group.limits.concurrency, max_tokens=spec.max_tokens,
                              refill=refill))  # fmt: skip
    return pools


async def _run_pools(
    prepared: Prepared, options: RunOptions, pools: list[Pool], progress: Progress, counters: Counters,
    stop: StopSignal, interrupts: Interrupts, route: BatchRoute | None = None, link: FleetLink | BudgetLink | None = None,
    skipped: Skipped | None = None,
) -> None:  # fmt: skip
    """Step 3: run the grid with the live progress and the signal watcher (and the fleet's link), writing every
    record (the batch route's too, through the same writer, side by side with the online pools)."""
    paths = prepared.paths
    journal = paths.started if options.write_ahead else None
    with LogWriter(paths.results, fsync=options.fsync or prepared.spec.fsync, journal=journal) as writer:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_watch_signals, interrupts, stop, tg.cancel_scope)
                tg.start_soon(progress.run)
                if options.report:
                    tg.start_soon(functools.partial(anyio.to_thread.run_sync, _load_report_modules))
                if link is not None:
                    tg.start_soon(link.run, [p.client for p in pools], counters, skipped or Skipped())
                if isinstance(link, FleetLink):
                    tg.start_soon(_stop_when_orphaned, link, stop)
                if link is not None:
                    # A local fleet's workers start together (engine.run.fleet); a Ray actor once it holds a lease.
                    await _first_of(link.go, stop.wake)
                async with anyio.create_task_group() as work:
                    if route is not None:
                        work.start_soon(route.run, writer, stop)
                    await run_grid(pools, scorer=prepared.scorer, writer=writer, stop=stop,
                                   grace_s=options.grace_s, counters=counters)
                tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # A worker met an error that stops the run (bad key, unknown model, spent quota):
            # the user gets that one error, not the task groups' wrapping of it.
            raise _first_engine_error(group) or group from None


def _first_engine_error(group: BaseExceptionGroup) -> EngineError | None:
    for exc in group.exceptions:
        if isinstance(exc, EngineError):
            return exc
        if isinstance(exc, BaseExceptionGroup) and (found := _first_engine_error(exc)) is not None:
            return found
    return None


def _counts(counters: Counters, label: str) -> tuple[int, int, int]:
    m = counters.by_model[label]
    return (m.ok, m.errors, m.failed)


async def _first_of(*events: anyio.Event) -> None:
    """Wait until any of ``events`` is set (a Ctrl-C while the fleet is starting need not wait for it)."""
    async with anyio.create_task_group() as tg:

        async def wait(event: anyio.Event) -> None:
            await event.wait()
            tg.cancel_scope.cancel()

        for event in events:
            tg.start_soon(wait, event)


async def _stop_when_orphaned(link: FleetLink, stop: StopSignal) -> None:
    """A fleet's worker whose parent is gone (killed, its hub's line closed) stops sending, as on a first
    Ctrl-C: the user's command is over, nobody would see or merge what the worker went on to do, and
    the target its parent started is gone with it. What is in flight finishes; the log stays whole."""
    await link.orphaned.wait()
    stop.request()


async def _watch_signals(interrupts: Interrupts, stop: StopSignal, scope: anyio.CancelScope) -> None:
    """First signal (Ctrl-C, SIGTERM, SIGHUP): stop sending and finish what is in flight. Second: stop now.

    Either way the writer drains what finished, so the log stays consistent.
    """

    def on_signal(count: int) -> None:
        if count == 1:
            stop.request()
        else:
            scope.cancel()

    with interrupts.delivering(asyncio.get_running_loop(), on_signal):
        await anyio.sleep_forever()
