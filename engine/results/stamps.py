"""Stamps: what a run directory's files looked like when something was last concluded from them.

A stamp holds a file's fingerprint (size, modification time in ns, inode) and the grid's digest.
Any append, torn-tail repair, ``--fresh`` (a new inode) or changed grid (spec, questions, targets)
breaks the match, so a stamp never vouches for a log it did not see. Checking one costs a few
``stat`` calls and imports nothing heavy.

Here the *complete* stamp: a run that leaves every task of its grid in the log writes
``complete.json``, and the next run with the same grid and an untouched log knows at once that
nothing is left to send, without scanning the log (nor importing Polars to do it). The report's
stamp (:mod:`engine.report.stamp`) uses the same fingerprints.

Usage::

    if is_complete(paths, grid, retry_failed=True):
        ...  # nothing to send
    mark_complete(paths, grid, all_ok=True)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Any

import orjson

from engine.experiment.grid import Grid
from engine.results.paths import RunPaths, run_logs

__all__ = ["file_fingerprint", "grid_digest", "is_complete", "logs_fingerprint", "mark_complete", "read_json", "write_json_atomic"]

_COMPLETE_FORMAT = 1


def file_fingerprint(path: Path) -> list[int] | None:
    """``[size, mtime_ns, inode]`` of a file, None when it does not exist. Usage: ``file_fingerprint(log)``"""
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def logs_fingerprint(root: Path) -> dict[str, list[int] | None]:
    """The fingerprint of every log of a run directory (``results.jsonl`` and each shard log), by name.

    Usage: ``logs_fingerprint(Path("runs/x"))["results.jsonl"]``
    """
    return {str(log.relative_to(root)): file_fingerprint(log) for log in run_logs(root)}


def grid_digest(grid_json: bytes) -> str:
    """A short digest of a grid's ``grid.json`` content. Usage: ``grid_digest(grid.to_json())``"""
    return hashlib.blake2b(grid_json, digest_size=16).hexdigest()


def read_json(path: Path) -> Any:
    """A stamp's content, or None when it is missing or unreadable (then nothing is vouched for)."""
    try:
        return orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None


def write_json_atomic(path: Path, doc: object) -> None:
    """Write a stamp whole or not at all; a read-only run directory only means no stamp.

    Usage: ``write_json_atomic(run / "complete.json", {...})``
    """
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        partial.write_bytes(orjson.dumps(doc))
        os.replace(partial, path)
    except OSError:
        with contextlib.suppress(OSError):  # absent, or its directory is not one either
            partial.unlink()


def _complete_key(paths: RunPaths, grid: Grid) -> dict[str, Any]:
    return {"format": _COMPLETE_FORMAT, "log": logs_fingerprint(paths.root), "grid": grid_digest(grid.to_json())}


def is_complete(paths: RunPaths, grid: Grid, *, retry_failed: bool) -> bool:
    """True when the stamp says the log, exactly as it is now, holds a record of every task of ``grid``.

    With ``retry_failed`` only a grid answered without failures counts as complete (the failed
    tasks are to be asked again). A write-ahead journal beside the log means the last run's lost
    requests are to be counted, which needs the scan: then the stamp is not used.
    Usage: ``is_complete(RunPaths(Path("runs/x")), grid, retry_failed=True)``
    """
    if paths.started.exists():
        return False
    stamp = read_json(paths.complete)
    if not isinstance(stamp, dict) or not stamp.get("log"):
        return False
    if {k: stamp.get(k) for k in ("format", "log", "grid")} != _complete_key(paths, grid):
        return False
    return stamp.get("all_ok") is True or not retry_failed


def mark_complete(paths: RunPaths, grid: Grid, *, all_ok: bool) -> None:
    """Record that the log, as it is now, holds every task of ``grid`` (``all_ok``: none of them failed).

    Call it only after the log is closed. Usage: ``mark_complete(paths, grid, all_ok=True)``
    """
    write_json_atomic(paths.complete, {**_complete_key(paths, grid), "all_ok": all_ok})
