"""Running an experiment end to end: check everything, start local targets, run the grid, report.

Everything a user can get wrong is checked before anything is written: the spec,
the questions, the scorer against every answer, API key variables, the run
directory's owner, the log's readability, and that each endpoint answers at all.
Only then is the log touched (a torn tail from a kill is cut, new records are
appended). The run directory is locked (:mod:`engine.results.lock`) from before its log is read
until the log is closed. Ctrl-C, SIGTERM or SIGHUP (:mod:`engine.run.interrupts`) stops sending,
lets requests in flight finish for a grace period, and leaves a consistent log; a second
signal stops at once. The summary says the run was interrupted, and its exit code is
0 (every task ok), 1 (some failed), or 128 + the signal (130, 143, 129).

Usage::

    summary = run_experiment(Path("data/memorisation.toml"))
    print(summary.render())
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import time
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from pathlib import Path

import anyio
from rich.console import Console

from engine.endpoint.client import ChatClient
from engine.endpoint.limits import EndpointLimiter
from engine.endpoint.transport import Transport
from engine.errors import ConfigError, EngineError, QuestionsError
from engine.experiment.grid import Skipped, build_grid, iter_tasks
from engine.experiment.questions import load_questions
from engine.experiment.scoring import get_scorer
from engine.experiment.spec import Spec, load_spec
from engine.report.stamp import report_is_current
from engine.results.lock import RunLock
from engine.results.paths import RunPaths, check_owner, prepare_run_dir
from engine.results.scan import EMPTY_SCAN, scan_logs
from engine.results.shards import Shard
from engine.results.stamps import is_complete, mark_complete
from engine.results.write import LogWriter, in_flight_at_stop, repair_torn_tail
from engine.run.batch import BatchRoute, open_batch_route, set_aside
from engine.run.budget import BudgetLink, link_of
from engine.run.endpoints import (
    aiohttp_transport,
    api_headers,
    load_http_client,
    local_targets,
    preflight,
    retry_policy,
)
from engine.run.fleet import FleetLink, refuse_what_a_fleet_cannot_run, share_limits
from engine.run.interrupts import Interrupts
from engine.run.options import FAILED_EXIT, Prepared, RunOptions, RunSummary
from engine.run.progress import Progress
from engine.run.quotas import by_endpoint, pool_size, quota_groups
from engine.run.scheduler import Counters, Pool, StopSignal, run_grid
from engine.run.targets import model_targets
from engine.sim.process import SimProcess

# Also importable from here (other modules and tests do): they live in engine.run.options and .endpoints.
__all__ = [
    "FAILED_EXIT", "Prepared", "RunOptions", "RunSummary", "api_headers", "local_targets", "preflight", "prepare",
    "retry_policy", "run_dir_of", "run_experiment", "run_prepared", "write_run_report",
]  # fmt: skip


def prepare(spec_path: Path, options: RunOptions, *, hold: contextlib.ExitStack | None = None) -> Prepared:
    """Check a spec and its run directory without writing anything; raises EngineError on any problem.

    With ``hold``, the run directory's lock is taken into it before the log is read (unless
    ``options.locked_by_caller``); it is released when ``hold`` closes, and leaves nothing behind
    (its ``run.lock`` note is removed, a directory made for it is removed if still empty).
    Usage: ``prepared = prepare(Path("data/memorisation.toml"), RunOptions())``
    """
    spec = load_spec(spec_path)
    spec_text = spec_path.read_text(encoding="utf-8")
    questions = load_questions(spec.questions)
    scorer = get_scorer(spec.scorer, pattern=spec.scorer_pattern)
    for question in questions:
        if (why := scorer.check_expected(question.answer)) is not None:
            raise QuestionsError(f"{spec.questions}: question {question.id!r}: {why} (scorer {spec.scorer!r})")
    for model in spec.models:
        key = os.environ.get(model.api_key_env) if model.api_key_env else None
        if model.api_key_env and key is None:
            raise ConfigError(f"model {model.name!r}: environment variable {model.api_key_env} is not set (api_key_env)")
        if model.api_key_env and not key:
            # `export KEY=` or a failed `$(...)`: telling it apart from "not set" saves a hunt.
            raise ConfigError(
                f"model {model.name!r}: environment variable {model.api_key_env} is set but empty (api_key_env)"
            )
        if key is not None and (not key.isprintable() or " " in key):
            # Such a key would be refused as a header, and the refusal would quote it.
            raise ConfigError(
                f"model {model.name!r}: environment variable {model.api_key_env} holds spaces or control "
                "characters (a stray newline?)"
            )
    # Who answers each model is part of every key: a changed target is asked everything again.
    grid = build_grid(spec, questions, model_targets(spec, questions))
    if options.shard is not None:
        refuse_what_a_fleet_cannot_run(spec, f"--shard {options.shard.index}/{options.shard.count}")
    paths = RunPaths(run_dir_of(spec, options.out), options.shard)
    check_owner(paths, spec.name)  # a log of another experiment is refused before it is read
    if hold is not None and not options.locked_by_caller:
        hold.enter_context(RunLock(paths.root, shard=options.shard))
    # The complete stamp vouches for an unsharded run's logs; a shard has no stamp of its own.
    complete = options.shard is None and not options.fresh and is_complete(
        paths, grid, retry_failed=options.retry_failed
    )
    # Every log of the run directory, not only this shard's: a run re-sharded finds every finished key.
    scan = EMPTY_SCAN if options.fresh or complete else scan_logs(paths.logs)
    return Prepared(
        spec=spec, spec_text=spec_text, questions=questions, scorer=scorer, paths=paths, scan=scan, grid=grid,
        complete=complete,
    )


async def run_prepared(
    prepared: Prepared, options: RunOptions, *, transport_factory: Callable[[int], Transport] | None = None,
    console: Console | None = None, interrupts: Interrupts | None = None,
) -> RunSummary:
    """Run a checked spec: start targets, preflight, then run the grid and write the log.

    ``transport_factory(concurrency) -> Transport`` replaces the aiohttp transport
    (e.g. an ``HttpxTransport`` over ``httpx.MockTransport`` in tests). ``interrupts`` is the
    caller's signal catcher, entered already; without one, signals are caught for this call only.
    Usage: ``summary = anyio.run(run_prepared, prepare(path, options), options)``
    """
    if interrupts is None:
        with Interrupts() as own:
            return await run_prepared(
                prepared, options, transport_factory=transport_factory, console=console, interrupts=own
            )
    spec, paths = prepared.spec, prepared.paths
    make_transport = transport_factory or aiohttp_transport
    done = prepared.scan.done(retry_failed=options.retry_failed)
    started = time.monotonic()
    stop, counters, skipped = StopSignal(), Counters(), Skipped()
    if prepared.complete or _nothing_to_send(prepared, done, options.shard, skipped):
        # Every task is in the log: no built-in target, no local model server, no connection.
        in_flight = _prepare_log(prepared, options)
        if not prepared.complete:  # else its stamp stands: the log is as it was
            _mark_if_complete(prepared, options, missing=0, failed=0)
        return RunSummary(
            # A shard counts its own slice (the fleet adds them up); an unsharded run, the whole grid.
            run_dir=paths.root, total=prepared.grid.size, finished=0, ok=0,
            already_done=prepared.grid.size if options.shard is None else skipped.count,
            failed=0, elapsed_s=time.monotonic() - started, requests=0, retries=0, rate_limited=0,
            interrupted=False, in_flight_at_last_stop=in_flight,
        )  # fmt: skip
    with local_targets(
        spec, prepared.questions, while_starting=load_http_client, sim_url=options.sim_url
    ) as (urls, sim):
        transports: list[Transport] = []
        try:
            pools = await _open_pools(
                prepared, urls, make_transport, transports, done=done, skipped=skipped, shard=options.shard
            )
            route = await open_batch_route(
                spec_models=spec.models, settings=spec.batch, max_tokens=spec.max_tokens, attempts=spec.max_attempts,
                grid=prepared.grid, questions=prepared.questions, scorer=prepared.scorer, run_dir=paths.root,
                run_name=spec.name, urls=urls, make_transport=make_transport, transports=transports, done=done,
                counters=counters, console=None if options.quiet else console or Console(stderr=True),
                preflight=lambda t, u, h, n, a: preflight(t, u, h, n, api=a), policy=retry_policy(spec),
            )  # fmt: skip
            # Everything checked: only now is the run directory written to.
            in_flight = _prepare_log(prepared, options)
            if options.fresh:
                set_aside(paths.root)
            progress = Progress(
                total=prepared.grid.size, skipped=skipped, counters=counters,
                clients=[p.client for p in pools], console=console or Console(stderr=True), quiet=options.quiet,
            )
            link = link_of(options)
            await _run_pools(prepared, options, pools, progress, counters, stop, interrupts, route, link, skipped)
            target_requests = _target_requests(sim)
        finally:
            for transport in transports:
                await transport.aclose()
    if not stop.requested:
        _mark_if_complete(prepared, options, missing=prepared.grid.size - skipped.count - counters.done,
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


def _nothing_to_send(prepared: Prepared, done: AbstractSet[str], shard: Shard | None, skipped: Skipped) -> bool:
    """True when every task of the grid is in ``done`` (lazily: stops at the first one left); counts into ``skipped``.

    Fewer finished keys than grid tasks settles it without walking the grid: a resume of a large,
    half-done grid would otherwise hash the whole done part twice (here, then in the pools).
    """
    if len(done) < prepared.grid.size:
        return False
    probe = Skipped()  # counted apart: the pools count ``skipped`` again when there is something to send
    tasks = iter_tasks(prepared.grid, prepared.questions, prepared.spec.models, done=done, shard=_pair(shard),
                       skipped=probe)  # fmt: skip
    if next(tasks, None) is not None:
        return False
    skipped.count = probe.count
    return True


def _load_report_modules() -> None:
    """Import the report's modules, Polars and numpy (about 0.4 s), for the report that follows the run.

    Run in a worker thread while requests are in flight: the event loop mostly waits on the
    network then, so the import fills its idle time instead of adding to the run's end.
    """
    import engine.report.write  # noqa: F401


def _mark_if_complete(prepared: Prepared, options: RunOptions, *, missing: int, failed: int) -> None:
    """Stamp the closed log as holding every task of the grid, so the next run need not scan it.

    ``missing`` tasks of the grid have no record; ``failed`` of this run's failed. Tasks skipped as
    failed before (without ``retry_failed``) are not counted here, so such a log is never vouched
    for as all-ok.
    """
    if missing == 0 and options.shard is None:  # a shard's log is one of several: no stamp
        all_ok = failed == 0 and (options.retry_failed or not prepared.scan.failed)
        mark_complete(prepared.paths, prepared.grid, all_ok=all_ok)


def _pair(shard: Shard | None) -> tuple[int, int] | None:
    return None if shard is None else (shard.index, shard.count)


async def _open_pools(
    prepared: Prepared, urls: Mapping[str, str], make_transport: Callable[[int], Transport],
    transports: list[Transport], *, done: AbstractSet[str], skipped: Skipped, shard: Shard | None = None,
) -> list[Pool]:  # fmt: skip
    """Step 1: one connection pool per endpoint (checked by a preflight), one client and limiter per quota.

    Each transport is appended to ``transports`` as soon as it exists, so the caller closes it
    whatever happens next.
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
            tasks = iter_tasks(prepared.grid, prepared.questions, online, done=done, skipped=skipped,
                               shard=_pair(shard))  # fmt: skip
            pools.append(Pool(client=client, tasks=tasks, workers=group.limits.concurrency, max_tokens=spec.max_tokens))
    return pools


def _prepare_log(prepared: Prepared, options: RunOptions) -> int | None:
    """Step 2: write the run directory, cut a torn tail; returns the requests in flight when the last run stopped."""
    paths = prepared.paths
    prepare_run_dir(paths, prepared.spec.name, prepared.spec_text, fresh=options.fresh, grid=prepared.grid)
    repair_torn_tail(paths.results)
    return None if options.fresh else in_flight_at_stop(paths, prepared.scan.ok | prepared.scan.failed)


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


def _target_requests(sim: SimProcess | None) -> int | None:
    """The built-in target's own count of chat requests; None when it cannot say (or none ran)."""
    if sim is None:
        return None
    try:
        return int(sim.stats()["chat_requests"])
    except EngineError:
        return None  # the summary then has no count to print, rather than a traceback after the log is safe


def run_experiment(
    spec_path: Path, *, out: Path | None = None, fresh: bool = False, quiet: bool = False,
    options: RunOptions | None = None,
) -> RunSummary:
    """Run (or resume) the experiment a spec describes, and write its report.

    Usage: ``summary = run_experiment(Path("data/memorisation.toml"))``
    """
    options = options or RunOptions(out=out, fresh=fresh, quiet=quiet)
    with Interrupts() as interrupts, contextlib.ExitStack() as hold:
        prepared = prepare(spec_path, options, hold=hold)
        summary = anyio.run(
            functools.partial(run_prepared, prepared, options, interrupts=interrupts), backend="asyncio"
        )
        if options.report and summary.finished + summary.already_done > 0:
            write_run_report(prepared.paths.root)
    if interrupts.first is not None and not summary.interrupted:
        # Stopped after the grid was done (closing the log, the report): still an interrupted run.
        summary = dataclasses.replace(summary, interrupted=True, stop_signal=interrupts.first)
    return summary


def run_dir_of(spec: Spec, out: Path | None) -> Path:
    """The run directory: ``out``, or runs/<name> by default. Usage: ``run_dir_of(load_spec(path), None)``"""
    return out or Path("runs") / spec.name


def write_run_report(run_dir: Path) -> list[Path]:
    """Write report.md and report.html into the run directory, unless the log is as the last report saw it.

    Returns the files written (none when the saved report is current). Usage: ``write_run_report(Path("runs/x"))``
    """
    if report_is_current(run_dir, ["report.md", "report.html"]):
        return []
    # Late: building a report pulls in the bootstrap and the page's renderers; a rerun with nothing
    # new (the check above, a few stat calls) does not pay for importing them.
    from engine.report.write import write_report

    return write_report(run_dir, charts=False)
