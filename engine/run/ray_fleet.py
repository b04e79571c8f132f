"""``engine run --ray ADDRESS|auto``: one Ray actor per shard, one grid, one quota, one result.

Each actor (``num_cpus=1``, restartable) runs the same anyio client and transport as a local run, in
its own process, on its shard: it expands the lazy grid itself, keeps its slice, paces at the
share of the quota the fleet's budget actor leases it (:mod:`engine.run.budget`: leases in quarter
second slices, pauses for all, an unknown quota probed once) and appends to its shard's log
under its shard's lock. The log is the checkpoint: an actor that is killed, or whose node is
lost, is restarted by Ray (``max_restarts``), and its call is retried (``max_task_retries``), so
it scans the run's logs again and sends only what is missing; at most what it had in flight is
sent twice. Logs go to a directory every node sees (a local path for a one-machine cluster, NFS
for several); object storage is not written directly (see docs/scale.md).

``auto`` with no cluster running starts a local Ray instance (what the tests use). Ray is imported
only here, and only when ``--ray`` is given: importing it costs about a second.

Usage::

    summary = run_ray(Path("spec.toml"), RunOptions(), address="auto", actors=2)
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from engine.errors import ConfigError
from engine.experiment.spec import Spec
from engine.results.shards import Shard
from engine.run.budget import Budget, fleet_quotas
from engine.run.endpoints import count_target_requests, local_targets
from engine.run.fleet import refuse_what_a_fleet_cannot_run
from engine.run.options import RunOptions, RunSummary
from engine.run.runner import prepare, run_experiment, write_run_report

MAX_RESTARTS = 3  # an actor killed or lost this many times gives its shard up (the log keeps what it did)


def shard_run(spec_path: str, options: RunOptions) -> dict[str, Any]:
    """What one actor does: run its shard in-process and return its counts. Usage: inside the actor."""
    summary = run_experiment(Path(spec_path), options=options)
    return {
        "done": summary.finished, "ok": summary.ok, "failed": summary.failed, "skipped": summary.already_done,
        "requests": summary.requests, "retries": summary.retries, "rate_limited": summary.rate_limited,
        "interrupted": summary.interrupted, "by_model": {k: list(v) for k, v in summary.by_model.items()},
    }  # fmt: skip


def _ray() -> Any:
    """Ray, imported late for start-up cost (about a second), and only when --ray is used."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("--ray needs the ray extra: pip install 'engine[ray]'") from exc
    return ray


def start_budget(spec: Spec, *, actors: int) -> Any:
    """The fleet's budget actor (:class:`~engine.run.budget.Budget`): leases the quota, relays pauses.

    No CPU of its own (it answers a few calls a second), restarted whenever it dies: a restarted
    budget grants no actor more than its even share until the leases out there have expired.
    Usage: ``start_actors(spec_path, options, actors=2, sim_url=url, budget=start_budget(spec, actors=2))``
    """
    ray = _ray()
    remote_budget = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(Budget)
    return remote_budget.remote(fleet_quotas(spec), fleet=actors)


def start_actors(
    spec_path: Path, options: RunOptions, *, actors: int, sim_url: str | None, budget: Any = None
) -> tuple[list[Any], list[Any]]:
    """One restartable actor per shard: (actor handles, object refs of their runs). Usage: ``ray.get(refs)``"""
    ray = _ray()

    @ray.remote(num_cpus=1, max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS)
    class ShardActor:
        def run(self, spec: str, opts: RunOptions) -> dict[str, Any]:
            return shard_run(spec, opts)

    handles = [ShardActor.remote() for _ in range(actors)]  # type: ignore[attr-defined]  # made by @ray.remote
    refs = []
    for k, handle in enumerate(handles):
        opts = dataclasses.replace(options, shard=Shard(k, actors), sim_url=sim_url, quiet=True, report=False,
                                   budget=budget)  # fmt: skip
        refs.append(handle.run.remote(str(spec_path.resolve()), opts))
    return handles, refs


def run_ray(spec_path: Path, options: RunOptions, *, address: str, actors: int) -> RunSummary:
    """Run a spec on a Ray cluster (``auto`` starts a local one) as ``actors`` shard actors.

    Usage: see the module docstring.
    """
    if actors < 1:
        raise ConfigError(f"--actors must be at least 1, got {actors}")
    if options.fresh:
        raise ConfigError("--fresh and --ray do not go together: start fresh with another --out")
    prepared = prepare(spec_path, dataclasses.replace(options, fresh=True))  # every check, nothing read
    refuse_what_a_fleet_cannot_run(prepared.spec, "--ray")
    options = dataclasses.replace(options, out=prepared.paths.root.resolve())
    ray = _ray()
    started = time.monotonic()
    if not ray.is_initialized():
        ray.init(address=None if address == "auto" else address, include_dashboard=False, log_to_driver=False)
    with local_targets(prepared.spec, prepared.questions) as (_urls, sim):
        budget = start_budget(prepared.spec, actors=actors)
        _handles, refs = start_actors(spec_path, options, actors=actors, sim_url=sim.base_url if sim else None,
                                      budget=budget)  # fmt: skip
        results = ray.get(refs)
        target_requests = count_target_requests(sim)
    by_model: dict[str, list[int]] = {}
    for r in results:
        for label, counts in r["by_model"].items():
            mine = by_model.setdefault(label, [0, 0, 0])
            for i, n in enumerate(counts):
                mine[i] += n
    summary = RunSummary(
        run_dir=prepared.paths.root, total=prepared.grid.size, already_done=sum(r["skipped"] for r in results),
        finished=sum(r["done"] for r in results), ok=sum(r["ok"] for r in results),
        failed=sum(r["failed"] for r in results), elapsed_s=time.monotonic() - started,
        requests=sum(r["requests"] for r in results), retries=sum(r["retries"] for r in results),
        rate_limited=sum(r["rate_limited"] for r in results), interrupted=any(r["interrupted"] for r in results),
        target_requests=target_requests, by_model={k: (v[0], v[1], v[2]) for k, v in by_model.items()},
        simulated=frozenset(m.name for m in prepared.grid.models if m.simulated),
    )  # fmt: skip
    if options.report and summary.finished + summary.already_done > 0:
        write_run_report(prepared.paths.root)
    return summary
