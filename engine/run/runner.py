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
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from rich.console import Console

from engine.endpoint.apis import API
from engine.endpoint.client import ChatClient, path_hint
from engine.endpoint.limits import EndpointLimiter
from engine.endpoint.retry import RetryPolicy
from engine.endpoint.transport import Transport
from engine.errors import ConfigError, EndpointError, EngineError, QuestionsError, TransportError
from engine.experiment.grid import Grid, Skipped, build_grid, iter_tasks
from engine.experiment.questions import Question, load_questions
from engine.experiment.scoring import Scorer, get_scorer
from engine.experiment.spec import SIM_URL, Spec, load_spec
from engine.report.stamp import report_is_current
from engine.results.lock import RunLock
from engine.results.paths import RunPaths, check_owner, prepare_run_dir
from engine.results.scan import EMPTY_SCAN, LogScan, scan_logs
from engine.results.shards import Shard
from engine.results.stamps import is_complete, mark_complete
from engine.results.write import LogWriter, in_flight_at_stop, repair_torn_tail
from engine.run.batch import BatchRoute, open_batch_route, set_aside
from engine.run.fleet import FleetLink, refuse_what_a_fleet_cannot_run, share_limits
from engine.run.interrupts import Interrupts, exit_code_of, signal_name
from engine.run.progress import Progress
from engine.run.quotas import by_endpoint, pool_size, quota_groups
from engine.run.scheduler import Counters, Pool, StopSignal, run_grid
from engine.run.targets import model_targets, sim_config
from engine.sim.process import SimProcess

FAILED_EXIT = 1  # some tasks of this run failed (the others are in the log)


@dataclass(frozen=True, kw_only=True, slots=True)
class RunOptions:
    """How to run a spec; every default of a run lives here."""

    out: Path | None = None  # the run directory; runs/<name> by default
    fresh: bool = False  # start a new log (the old one is renamed aside)
    retry_failed: bool = True  # ask again the tasks a previous run logged as failed
    quiet: bool = False
    fsync: str | int | None = None  # overrides the spec's fsync policy
    grace_s: float = 10.0  # after Ctrl-C, how long requests in flight may finish
    report: bool = True  # write the report at the end
    write_ahead: bool = False  # journal each request before sending it, to count what a crash left in flight
    locked_by_caller: bool = False  # the caller holds the run directory's lock already (engine replicate)
    shard: Shard | None = None  # run only this shard of the grid, into its own log (engine.run.workers)
    sim_url: str | None = None  # a built-in target already serving this spec (started by the fleet's parent)
    fleet: str | None = None  # the fleet's coordinator (engine.run.fleet): pauses shared, progress reported


@dataclass(frozen=True, kw_only=True, slots=True)
class Prepared:
    """A spec with everything it needs, checked and ready to run."""

    spec: Spec
    spec_text: str
    questions: tuple[Question, ...]
    scorer: Scorer
    paths: RunPaths
    scan: LogScan
    grid: Grid  # the models with their targets: becomes the run directory's grid.json
    complete: bool = False  # the log holds every task of the grid (its complete stamp says so; not scanned)


@dataclass(frozen=True, kw_only=True, slots=True)
class RunSummary:
    """What a run did. Usage: ``print(summary.render())``"""

    run_dir: Path
    total: int
    already_done: int
    finished: int
    ok: int
    failed: int
    elapsed_s: float
    requests: int
    retries: int
    rate_limited: int
    interrupted: bool
    target_requests: int | None = None  # what the built-in target says it answered, when used
    in_flight_at_last_stop: int | None = None  # from the previous run's write-ahead journal, if it kept one
    by_model: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # label -> (ok, errors, failed)
    stop_signal: int | None = None  # the signal that interrupted the run
    simulated: frozenset[str] = frozenset()  # labels answered by the built-in simulation, marked as such

    @property
    def exit_code(self) -> int:
        """0: every task of this run ok; 1: some failed; 128 + signal (130 SIGINT, 143 SIGTERM, 129 SIGHUP)."""
        if self.interrupted:
            return exit_code_of(self.stop_signal or signal.SIGINT)
        return FAILED_EXIT if self.failed else 0

    def render(self) -> str:
        """A short plain-text summary for the terminal."""
        rate = self.finished / self.elapsed_s if self.elapsed_s > 0 else 0.0
        lines = [
            f"{self._ending()}: {self.finished:,} tasks this run "
            f"({self.already_done:,} already in the log, {self.total:,} in the grid) in {self.elapsed_s:,.1f}s, "
            f"{rate:,.1f} tasks/s",
            f"requests {self.requests:,} · retries {self.retries:,} · 429s {self.rate_limited:,} · "
            f"failed tasks {self.failed:,}",
        ]
        if self.in_flight_at_last_stop:
            lines.append(
                f"the previous run stopped with {self.in_flight_at_last_stop:,} requests in flight "
                "(sent, never logged: asked again now, so paid for twice if the provider finished them)"
            )
        if self.target_requests is not None:
            lines.append(f"built-in target (a simulation) answered {self.target_requests:,} chat requests")
        for label, (ok, errors, failed) in self.by_model.items():
            rate_text = f"{errors / ok:.2%}" if ok else "n/a"
            mark = " [simulation]" if label in self.simulated else ""
            lines.append(f"  {label}{mark}: error rate {rate_text} ({errors}/{ok} answered, {failed} failed) this run")
        lines.append(f"log: {self.run_dir / 'results.jsonl'}")
        return "\n".join(lines)

    def _ending(self) -> str:
        if not self.interrupted:
            return "finished"
        return f"interrupted ({signal_name(self.stop_signal)})" if self.stop_signal else "interrupted"


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


@contextlib.contextmanager
def local_targets(
    spec: Spec, questions: Sequence[Question], *, while_starting: Callable[[], object] | None = None,
    sim_url: str | None = None,
) -> Iterator[tuple[dict[str, str], SimProcess | None]]:
    """Start the built-in target and local GGUF servers the spec needs; stop them on exit.

    ``while_starting`` runs once the built-in target's process is spawned and before it is waited
    for, so this process's own preparing overlaps the target's start-up on another core. With
    ``sim_url`` the built-in target is the one already serving there (a fleet's, so its quota is
    the fleet's), not a new one.
    Yields ``({model label: base_url}, sim process or None)``.
    Usage: ``with local_targets(spec, questions) as (urls, sim): ...``
    """
    urls: dict[str, str] = {}
    sim: SimProcess | None = None
    with contextlib.ExitStack() as stack:
        if sim_url is None and any(m.base_url == SIM_URL for m in spec.models):
            sim = SimProcess(sim_config(spec, questions))
            stack.push(sim)  # stopped on the way out, whatever happens from here on
            sim.start()
        servers: dict[str, str] = {}
        for model in spec.models:
            if model.gguf is not None and model.gguf not in servers:
                from engine.local.serve import llama_server

                source = model.gguf if model.gguf == "smollm2" else spec.path.parent / model.gguf
                servers[model.gguf] = stack.enter_context(llama_server(source, n_parallel=min(model.concurrency, 8)))
        if while_starting is not None:
            while_starting()
        for model in spec.models:
            if model.gguf is not None:
                urls[model.name] = servers[model.gguf]
            elif model.base_url == SIM_URL:
                assert sim is not None or sim_url is not None
                urls[model.name] = sim.wait_ready() if sim is not None else str(sim_url)
            else:
                assert model.base_url is not None
                urls[model.name] = model.base_url
        yield urls, sim


async def preflight(
    transport: Transport, base_url: str, headers: dict[str, str], names: str, *, api: str = "chat"
) -> None:
    """Check the endpoint answers HTTP at all, before anything is written. Costs no tokens.

    ``GET {base_url}/models`` with the API's own headers (Anthropic's key goes in ``x-api-key``,
    with ``anthropic-version``); only reachability, a refused key and a non-JSON 404 are judged,
    because the model lists of the providers differ in shape and an OpenAI-compatible server
    may have none.
    Usage: ``await preflight(transport, "http://127.0.0.1:8000/v1", {}, "'m1'")``
    """
    kind = "Anthropic Messages" if api == "anthropic" else "OpenAI-compatible"
    for attempt in range(3):
        try:
            response = await transport.request("GET", f"{base_url}/models", body=None, headers=headers, timeout=10)
        except TransportError as exc:
            if attempt == 2:
                raise EndpointError(f"model {names}: endpoint {base_url} is unreachable ({exc})") from exc
            await anyio.sleep(0.5 * (attempt + 1))
            continue
        if response.status in (401, 403):
            raise EndpointError(f"model {names}: {base_url} refused the API key (HTTP {response.status})")
        if response.status == 404 and not response.body.lstrip().startswith(b"{"):
            hint = path_hint(base_url)
            raise EndpointError(
                f"model {names}: {base_url} does not look {kind} (GET /models answered 404, not JSON)"
                + (f"; {hint}" if hint else "")
            )
        return


def api_headers(api: str, key: str | None) -> dict[str, str]:
    """The headers one API's requests carry besides the body's type: its version, the key where it wants it.

    Usage: ``api_headers("anthropic", key)  # {'anthropic-version': '2023-06-01', 'x-api-key': ...}``
    """
    adapter = API[api]
    return {**adapter.headers, **(adapter.auth(key) if key else {})}


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
    make_transport = transport_factory or _aiohttp_transport
    done = prepared.scan.done(retry_failed=options.retry_failed)
    started = time.monotonic()
    stop, counters, skipped = StopSignal(), Counters(), Skipped()
    if prepared.complete or _nothing_to_send(prepared, done, options.shard):
        # Every task is in the log: no built-in target, no local model server, no connection.
        in_flight = _prepare_log(prepared, options)
        if not prepared.complete:  # else its stamp stands: the log is as it was
            _mark_if_complete(prepared, options, missing=0, failed=0)
        return RunSummary(
            run_dir=paths.root, total=prepared.grid.size, already_done=prepared.grid.size, finished=0, ok=0,
            failed=0, elapsed_s=time.monotonic() - started, requests=0, retries=0, rate_limited=0,
            interrupted=False, in_flight_at_last_stop=in_flight,
        )  # fmt: skip
    with local_targets(
        spec, prepared.questions, while_starting=_load_http_client, sim_url=options.sim_url
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
                preflight=lambda t, u, h, n, a: preflight(t, u, h, n, api=a),
            )  # fmt: skip
            # Everything checked: only now is the run directory written to.
            in_flight = _prepare_log(prepared, options)
            if options.fresh:
                set_aside(paths.root)
            progress = Progress(
                total=prepared.grid.size, skipped=skipped, counters=counters,
                clients=[p.client for p in pools], console=console or Console(stderr=True), quiet=options.quiet,
            )
            link = FleetLink(options.fleet) if options.fleet else None
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


def _nothing_to_send(prepared: Prepared, done: AbstractSet[str], shard: Shard | None) -> bool:
    """True when every task of the grid is in ``done`` (lazily: stops at the first one left).

    Fewer finished keys than grid tasks settles it without walking the grid: a resume of a large,
    half-done grid would otherwise hash the whole done part twice (here, then in the pools).
    """
    if len(done) < prepared.grid.size:
        return False
    tasks = iter_tasks(prepared.grid, prepared.questions, prepared.spec.models, done=done, shard=_pair(shard))
    return next(tasks, None) is None


def _load_http_client() -> None:
    """Import the HTTP client (about 0.15 s) while the built-in target starts up on another core.

    Late: a rerun with nothing to send never needs it.
    """
    import engine.endpoint.aiohttp_transport  # noqa: F401


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


def _aiohttp_transport(concurrency: int) -> Transport:
    """The default transport. Imported here, late, for start-up cost only (aiohttp takes a quarter
    second to import): a rerun with nothing left to send never loads it."""
    from engine.endpoint.aiohttp_transport import AiohttpTransport

    return AiohttpTransport(concurrency=concurrency)


def retry_policy(spec: Spec) -> RetryPolicy:
    """The spec's retry settings as the client's policy. Usage: ``retry_policy(load_spec(path)).max_attempts``"""
    return RetryPolicy(
        max_attempts=spec.max_attempts, base_s=spec.backoff_base_s, cap_s=spec.backoff_cap_s,
        max_wait_s=spec.max_retry_wait_s, timeout_s=spec.timeout_s,
    )


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
    stop: StopSignal, interrupts: Interrupts, route: BatchRoute | None = None, link: FleetLink | None = None,
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
