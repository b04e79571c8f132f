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

import contextlib
import dataclasses
import functools
import os
import time
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from pathlib import Path

import anyio
from rich.console import Console

from engine.endpoint.transport import Transport
from engine.errors import ConfigError, QuestionsError
from engine.experiment.grid import Skipped, build_grid, iter_tasks
from engine.experiment.questions import load_questions
from engine.experiment.scoring import get_scorer
from engine.experiment.spec import load_spec
from engine.report.stamp import report_is_current
from engine.results.layout import run_root
from engine.results.lock import RunLock
from engine.results.paths import RunPaths, check_owner
from engine.results.scan import EMPTY_SCAN, scan_logs
from engine.results.shards import Shard
from engine.results.stamps import is_complete
from engine.run.endpoints import (
    api_headers,
    default_transport,
    local_targets,
    preflight,
    retry_policy,
)
from engine.run.fleet import refuse_what_a_fleet_cannot_run
from engine.run.interrupts import Interrupts
from engine.run.logs import mark_if_complete, prepare_log, shard_pair
from engine.run.options import FAILED_EXIT, Prepared, RunOptions, RunSummary
from engine.run.targets import model_targets
from engine.sim.process import SimProcess

# Also importable from here (other modules and tests do): they live in engine.run.options and .endpoints.
__all__ = [
    "FAILED_EXIT", "Prepared", "RunOptions", "RunSummary", "api_headers", "local_targets", "preflight", "prepare",
    "retry_policy", "run_experiment", "run_prepared", "write_run_report",
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
    paths = RunPaths(run_root(spec.name, options.out), options.shard)
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
    console: Console | None = None, interrupts: Interrupts | None = None, spawned: SimProcess | None = None,
) -> RunSummary:
    """Run a checked spec: start targets, preflight, then run the grid and write the log.

    ``transport_factory(concurrency) -> Transport`` replaces the default transport
    (e.g. an ``HttpxTransport`` over ``httpx.MockTransport`` in tests). ``interrupts`` is the
    caller's signal catcher, entered already; without one, signals are caught for this call only.
    Usage: ``summary = anyio.run(run_prepared, prepare(path, options), options)``
    """
    if interrupts is None:
        with Interrupts() as own:
            return await run_prepared(
                prepared, options, transport_factory=transport_factory, console=console, interrupts=own,
                spawned=spawned,
            )
    paths = prepared.paths
    make_transport = transport_factory or default_transport
    done = prepared.scan.done(retry_failed=options.retry_failed)
    started = time.monotonic()
    skipped = Skipped()
    if prepared.complete or _nothing_to_send(prepared, done, options.shard, skipped):
        # Every task is in the log: no built-in target, no local model server, no connection.
        in_flight = prepare_log(prepared, options)
        if not prepared.complete:  # else its stamp stands: the log is as it was
            mark_if_complete(prepared, options, missing=0, failed=0)
        return RunSummary(
            # A shard counts its own slice (the fleet adds them up); an unsharded run, the whole grid.
            run_dir=paths.root, total=prepared.grid.size, finished=0, ok=0,
            already_done=prepared.grid.size if options.shard is None else skipped.count,
            failed=0, elapsed_s=time.monotonic() - started, requests=0, retries=0, rate_limited=0,
            interrupted=False, in_flight_at_last_stop=in_flight,
        )  # fmt: skip
    # Late: the sending machinery (connection pools, clients, the batch route, a fleet's link: about
    # 0.1 s of imports) loads only when something is left to send.
    from engine.run.send import send_rest

    return await send_rest(
        prepared, options, make_transport=make_transport, console=console, interrupts=interrupts, done=done,
        skipped=skipped, started=started, spawned=spawned,
    )


def _nothing_to_send(prepared: Prepared, done: AbstractSet[str], shard: Shard | None, skipped: Skipped) -> bool:
    """True when every task of the grid is in ``done`` (lazily: stops at the first one left); counts into ``skipped``.

    Fewer finished keys than grid tasks settles it without walking the grid: a resume of a large,
    half-done grid would otherwise hash the whole done part twice (here, then in the pools).
    """
    if len(done) < prepared.grid.size:
        return False
    probe = Skipped()  # counted apart: the pools count ``skipped`` again when there is something to send
    tasks = iter_tasks(prepared.grid, prepared.questions, prepared.spec.models, done=done, shard=shard_pair(shard),
                       skipped=probe)  # fmt: skip
    if next(tasks, None) is not None:
        return False
    skipped.count = probe.count
    return True


def run_experiment(
    spec_path: Path, *, out: Path | None = None, fresh: bool = False, quiet: bool = False,
    options: RunOptions | None = None, spawned: SimProcess | None = None,
) -> RunSummary:
    """Run (or resume) the experiment a spec describes, and write its report.

    ``spawned`` is a built-in target already starting (:func:`engine.run.early.early_target`),
    used if the run needs one. Usage: ``summary = run_experiment(Path("data/memorisation.toml"))``
    """
    options = options or RunOptions(out=out, fresh=fresh, quiet=quiet)
    with Interrupts() as interrupts, contextlib.ExitStack() as hold:
        prepared = prepare(spec_path, options, hold=hold)
        summary = anyio.run(
            functools.partial(run_prepared, prepared, options, interrupts=interrupts, spawned=spawned),
            backend="asyncio",
        )
        if options.report and summary.finished + summary.already_done > 0:
            write_run_report(prepared.paths.root)
    if interrupts.first is not None and not summary.interrupted:
        # Stopped after the grid was done (closing the log, the report): still an interrupted run.
        summary = dataclasses.replace(summary, interrupted=True, stop_signal=interrupts.first)
    return summary


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
