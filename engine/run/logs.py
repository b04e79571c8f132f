"""The run's log around the sending: the run directory made ready, and the complete stamp after.

Shared by the run with nothing to send (:mod:`engine.run.runner`) and the one that sends
(:mod:`engine.run.send`), so neither path does these steps its own way.

Usage::

    in_flight = prepare_log(prepared, options)
    ...
    mark_if_complete(prepared, options, missing=0, failed=0)
"""

from __future__ import annotations

from engine.results.paths import prepare_run_dir
from engine.results.shards import Shard
from engine.results.stamps import mark_complete
from engine.results.write import in_flight_at_stop, repair_torn_tail
from engine.run.options import Prepared, RunOptions

__all__ = ["mark_if_complete", "prepare_log", "shard_pair"]


def prepare_log(prepared: Prepared, options: RunOptions) -> int | None:
    """Write the run directory, cut a torn tail; returns the requests in flight when the last run stopped.

    Usage: ``in_flight = prepare_log(prepared, options)``
    """
    paths = prepared.paths
    prepare_run_dir(paths, prepared.spec.name, prepared.spec_text, fresh=options.fresh, grid=prepared.grid)
    repair_torn_tail(paths.results)
    return None if options.fresh else in_flight_at_stop(paths, prepared.scan.ok | prepared.scan.failed)


def mark_if_complete(prepared: Prepared, options: RunOptions, *, missing: int, failed: int) -> None:
    """Stamp the closed log as holding every task of the grid, so the next run need not scan it.

    Usage: ``mark_if_complete(prepared, options, missing=0, failed=0)``

    ``missing`` tasks of the grid have no record; ``failed`` of this run's failed. Tasks skipped as
    failed before (without ``retry_failed``) are not counted here, so such a log is never vouched
    for as all-ok.
    """
    if missing == 0 and options.shard is None:  # a shard's log is one of several: no stamp
        all_ok = failed == 0 and (options.retry_failed or not prepared.scan.failed)
        mark_complete(prepared.paths, prepared.grid, all_ok=all_ok)


def shard_pair(shard: Shard | None) -> tuple[int, int] | None:
    """A shard as the lazy grid takes it, ``(index, count)``. Usage: ``shard_pair(options.shard)``"""
    return None if shard is None else (shard.index, shard.count)
