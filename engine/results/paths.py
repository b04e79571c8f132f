"""The run directory: where each file lives, whose it is, and preparing it for a run.

A run directory holds ``results.jsonl`` (one record per finished task), ``spec.toml`` (a copy of
the spec), ``grid.json`` (the current grid, see :class:`engine.experiment.grid.Grid`) and
``run.json`` (which experiment the log belongs to, whether it is a simulation, and each model's
target; rewritten at every run). A directory that belongs to another experiment is refused.
Callers pass the experiment's name: this package knows nothing of the spec.

Usage::

    paths = RunPaths(Path("runs/memorisation"))
    prepare_run_dir(paths, spec.name, spec_text, fresh=False, grid=grid)
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from engine.errors import LogError
from engine.experiment.grid import Grid
from engine.results.layout import COMPLETE_STAMP
from engine.results.record import SCHEMA_VERSION
from engine.results.runmeta import run_meta
from engine.results.shards import SHARD_DIR, SHARD_NAME, Shard


@dataclass(frozen=True, slots=True)
class RunPaths:
    """Where a run's files live; with a ``shard``, its log and journal are the shard's own.

    Usage: ``RunPaths(Path("runs/x")).results``; ``RunPaths(root, Shard(3, 16)).results``
    """

    root: Path
    shard: Shard | None = None

    @property
    def results(self) -> Path:
        """The log this run appends to: ``results.jsonl``, or ``results/shard-KK-of-NN.jsonl``."""
        if self.shard is not None:
            return self.root / SHARD_DIR / self.shard.log_name
        return self.root / "results.jsonl"

    @property
    def logs(self) -> list[Path]:
        """Every log of the run directory (what resume and the report read); see :func:`run_logs`."""
        return run_logs(self.root)

    @property
    def spec_copy(self) -> Path:
        return self.root / "spec.toml"

    @property
    def meta(self) -> Path:
        return self.root / "run.json"

    @property
    def grid(self) -> Path:
        """The run's current grid (written at every run): the report counts only its records."""
        return self.root / "grid.json"

    @property
    def complete(self) -> Path:
        """The stamp saying the log holds every task of the grid (see :mod:`engine.results.stamps`)."""
        return self.root / COMPLETE_STAMP

    @property
    def started(self) -> Path:
        """The write-ahead journal: one line per request about to be sent (only with write-ahead on)."""
        if self.shard is not None:
            return self.root / SHARD_DIR / f"{self.shard.name}.started"
        return self.root / "started.jsonl"


def run_dir_of_log(file: Path) -> Path:
    """The run directory a log is in: a shard log's is two levels up. Usage: ``run_dir_of_log(report.source)``"""
    return file.parent.parent if file.parent.name == SHARD_DIR and SHARD_NAME.fullmatch(file.name) else file.parent


def run_logs(root: Path) -> list[Path]:
    """Every log of a run directory: ``results.jsonl`` and each shard log, oldest change first.

    A key in two logs (a run re-sharded, or sharded after an unsharded one) is decided by the
    last record read, so the log written last is read last. Usage: ``run_logs(Path("runs/x"))``
    """
    logs = [root / "results.jsonl"] if (root / "results.jsonl").is_file() else []
    shard_dir = root / SHARD_DIR
    if shard_dir.is_dir():
        logs += [p for p in shard_dir.iterdir() if SHARD_NAME.fullmatch(p.name) and p.is_file()]

    def changed(path: Path) -> tuple[int, str]:
        try:
            return path.stat().st_mtime_ns, path.name
        except OSError:
            return 0, path.name

    return sorted(logs, key=changed)


def describe_logs(root: Path) -> str:
    """The logs of a run directory, as a summary or report names them: one file, or the set of shard logs.

    Usage: ``describe_logs(Path("runs/x"))  # 'runs/x/results/ (4 shard logs)'``
    """
    logs = run_logs(root) if root.is_dir() else []
    shards = sum(1 for p in logs if p.parent.name == SHARD_DIR)
    if not shards:
        return str(root / "results.jsonl")
    also = f", and {root / 'results.jsonl'}" if len(logs) > shards else ""
    return f"{root / SHARD_DIR}/ ({shards} shard log{'s' if shards != 1 else ''}{also})"


def check_owner(paths: RunPaths, name: str) -> None:
    """Refuse a run directory whose log belongs to another experiment; reads, never writes.

    Usage: ``check_owner(RunPaths(Path("runs/x")), spec.name)``
    """
    if paths.root.exists() and not paths.root.is_dir():
        raise LogError(f"{paths.root} is a file, not a run directory; choose another --out")
    if paths.meta.exists():
        try:
            meta = orjson.loads(paths.meta.read_bytes())
            owner = meta["name"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise LogError(f"{paths.meta}: not a run.json written by engine") from exc
        if owner != name:
            raise LogError(
                f"{paths.root} holds the log of experiment {owner!r}, not {name!r}; choose another --out"
            )
    elif logs := run_logs(paths.root) if paths.root.is_dir() else []:
        raise LogError(f"{logs[0]} has no run.json beside it; it was not written by engine for {name!r}")


def prepare_run_dir(paths: RunPaths, name: str, spec_text: str, *, fresh: bool, grid: Grid) -> None:
    """Create or adopt a run directory, refusing one that belongs to another experiment.

    With ``fresh``, an existing log is renamed aside (never deleted) and a new one begins.
    ``grid`` becomes the run's grid (``grid.json``): a changed spec in an existing directory
    is not refused, its grid replaces the old one, and the report then counts only its records.
    Usage: ``prepare_run_dir(RunPaths(Path("runs/x")), spec.name, text, fresh=False, grid=grid)``
    """
    check_owner(paths, name)
    try:
        _prepare(paths, name, spec_text, fresh=fresh, grid=grid)
    except OSError as exc:
        raise LogError(f"cannot prepare the run directory {paths.root}: {exc.strerror or exc}") from exc


def _prepare(paths: RunPaths, name: str, spec_text: str, *, fresh: bool, grid: Grid) -> None:
    paths.root.mkdir(parents=True, exist_ok=True)
    if fresh:
        paths.started.unlink(missing_ok=True)  # the old journal speaks of the old log
    if fresh and paths.shard is None:  # a fleet's parent sets the logs aside before its shards start
        set_aside_logs(paths.root)
    if paths.shard is not None:
        (paths.root / SHARD_DIR).mkdir(exist_ok=True)
    old = orjson.loads(paths.meta.read_bytes()) if paths.meta.exists() else {}  # check_owner read it already
    _write_atomic(paths.meta, orjson.dumps(run_meta(name, grid, old, schema=SCHEMA_VERSION), option=orjson.OPT_INDENT_2))
    _write_atomic(paths.spec_copy, spec_text.encode())
    _write_atomic(paths.grid, grid.to_json())


def set_aside_logs(root: Path) -> None:
    """Rename every log of a run directory aside (never delete): ``results.jsonl`` and the shard logs.

    Usage: ``set_aside_logs(Path("runs/x"))  # before a --fresh run, or a fleet's fresh start``
    """
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    for current, stem, suffix in ((root / "results.jsonl", "results", ".jsonl.old"), (root / SHARD_DIR, SHARD_DIR, ".old")):
        if not current.exists():
            continue
        aside = root / f"{stem}.{stamp}{suffix}"
        for n in itertools.count(1):  # rename() would silently replace a log set aside in the same second
            if not aside.exists():
                break
            aside = root / f"{stem}.{stamp}-{n}{suffix}"
        current.rename(aside)


def _write_atomic(path: Path, data: bytes) -> None:
    # The PID in the name: the shards of one run write these files at once, each whole.
    tmp = path.with_suffix(f"{path.suffix}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
