"""The results log: an append-only JSONL file per run, written by one task, read back on resume.

A run directory holds ``results.jsonl`` (one record per finished task), ``spec.toml``
(a copy of the spec) and ``run.json`` (which experiment the log belongs to). A kill
can leave at most a torn last line; it is detected and cut before appending. A bad
line anywhere else means the log was damaged by something other than us: we stop
and say where, and never write to it.

Usage::

    paths = RunPaths(Path("runs/memorisation"))
    prepare_run_dir(paths, spec, spec_text, fresh=False)
    scan = scan_log(paths.results)          # what is done already
    repair_torn_tail(paths.results)
    writer = LogWriter(paths.results, fsync="never")
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import orjson
import polars as pl
from anyio.streams.memory import MemoryObjectReceiveStream

from engine.errors import LogError
from engine.spec import Spec

SCHEMA_VERSION = 1
WRITE_BATCH = 512  # records per write(2): one syscall for a burst, never a whole run in memory


@dataclass(frozen=True, slots=True)
class RunPaths:
    """Where a run's files live. Usage: ``RunPaths(Path("runs/x")).results``"""

    root: Path

    @property
    def results(self) -> Path:
        return self.root / "results.jsonl"

    @property
    def spec_copy(self) -> Path:
        return self.root / "spec.toml"

    @property
    def meta(self) -> Path:
        return self.root / "run.json"


def check_owner(paths: RunPaths, spec: Spec) -> None:
    """Refuse a run directory whose log belongs to another experiment; reads, never writes.

    Usage: ``check_owner(RunPaths(Path("runs/x")), spec)``
    """
    if paths.meta.exists():
        try:
            meta = orjson.loads(paths.meta.read_bytes())
            owner = meta["name"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise LogError(f"{paths.meta}: not a run.json written by engine") from exc
        if owner != spec.name:
            raise LogError(
                f"{paths.root} holds the log of experiment {owner!r}, not {spec.name!r}; choose another --out"
            )
    elif paths.results.exists():
        raise LogError(f"{paths.results} has no run.json beside it; it was not written by engine for {spec.name!r}")


def prepare_run_dir(paths: RunPaths, spec: Spec, spec_text: str, *, fresh: bool) -> None:
    """Create or adopt a run directory, refusing one that belongs to another experiment.

    With ``fresh``, an existing log is renamed aside (never deleted) and a new one begins.
    Usage: ``prepare_run_dir(RunPaths(Path("runs/x")), spec, text, fresh=False)``
    """
    check_owner(paths, spec)
    paths.root.mkdir(parents=True, exist_ok=True)
    if fresh and paths.results.exists():
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        aside = paths.root / f"results.{stamp}.jsonl.old"
        for n in itertools.count(1):  # rename() would silently replace a log set aside in the same second
            if not aside.exists():
                break
            aside = paths.root / f"results.{stamp}-{n}.jsonl.old"
        paths.results.rename(aside)
    if not paths.meta.exists():
        meta = {"name": spec.name, "schema": SCHEMA_VERSION, "created": time.time()}
        _write_atomic(paths.meta, orjson.dumps(meta, option=orjson.OPT_INDENT_2))
    _write_atomic(paths.spec_copy, spec_text.encode())


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@dataclass(frozen=True, kw_only=True, slots=True)
class LogScan:
    """What a log already holds: keys answered, keys that failed, records read, torn tail seen."""

    ok: frozenset[str]
    failed: frozenset[str]
    records: int
    torn_tail: bool

    def done(self, *, retry_failed: bool) -> frozenset[str]:
        """Keys not to send again. Usage: ``scan.done(retry_failed=True)``"""
        return self.ok if retry_failed else self.ok | self.failed


_KEY_SCHEMA = {"key": pl.String, "status": pl.String}


def scan_log(path: Path) -> LogScan:
    """Read the keys a log holds, fast (Polars over two columns), without changing the file.

    A torn last line (a kill mid-write) is left out and flagged; a bad line anywhere
    else is a LogError naming the line. Usage: ``scan_log(Path("runs/x/results.jsonl")).ok``
    """
    if not path.exists() or path.stat().st_size == 0:
        return LogScan(ok=frozenset(), failed=frozenset(), records=0, torn_tail=False)
    torn = _torn_tail_offset(path) is not None
    frame: pl.DataFrame | None = None
    if not torn:
        try:
            frame = pl.read_ndjson(path, schema=_KEY_SCHEMA)
        except pl.exceptions.PolarsError:
            frame = None  # find the bad line below, slowly but precisely
    if frame is None or frame["key"].null_count() or frame["status"].null_count():
        frame = _scan_slowly(path)
    ok = frame.filter(pl.col("status") == "ok")["key"]
    failed = frame.filter(pl.col("status") != "ok")["key"]
    ok_keys = frozenset(ok.to_list())
    return LogScan(
        ok=ok_keys, failed=frozenset(failed.to_list()) - ok_keys, records=frame.height, torn_tail=torn
    )


def _scan_slowly(path: Path) -> pl.DataFrame:
    keys: list[str] = []
    statuses: list[str] = []
    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.endswith(b"\n"):
                # The torn tail of a kill, even when its JSON happens to be whole: repair_torn_tail
                # cuts it, so counting it as done would lose the task.
                break
            if not line.strip():
                continue  # as the fast path reads a blank line
            try:
                record = orjson.loads(line)
                key, status = record["key"], record["status"]
                if not isinstance(key, str) or not isinstance(status, str):
                    raise TypeError("key and status must be strings")
            except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                raise LogError(f"{path}:{number}: unreadable record ({type(exc).__name__}); the log was damaged") from exc
            keys.append(key)
            statuses.append(status)
    return pl.DataFrame({"key": keys, "status": statuses}, schema=_KEY_SCHEMA)


def _torn_tail_offset(path: Path) -> int | None:
    """Offset just past the last newline when the file does not end with one, else None."""
    with path.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return None
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return None
        step = 1 << 16
        end = size
        while end > 0:
            start = max(0, end - step)
            f.seek(start)
            chunk = f.read(end - start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                return start + newline + 1
            end = start
        return 0


def repair_torn_tail(path: Path) -> int:
    """Cut a torn last line so appends start on a fresh line; returns the bytes cut.

    Usage: ``repair_torn_tail(Path("runs/x/results.jsonl"))``
    """
    if not path.exists():
        return 0
    offset = _torn_tail_offset(path)
    if offset is None:
        return 0
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.truncate(offset)
        f.flush()
        os.fsync(f.fileno())
    return size - offset


class LogWriter:
    """The only code that writes a results log: appends records, flushed to the OS per batch.

    ``fsync`` is "never" (the OS writes back; survives a kill, not a power cut),
    "always" (fsync each batch) or N (fsync every N records).
    Usage: ``with LogWriter(path, fsync="never") as w: w.write([record])``
    """

    def __init__(self, path: Path, *, fsync: str | int = "never") -> None:
        self.path = path
        self.fsync = fsync
        self.records = 0
        self._since_sync = 0
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records, each one line, in one write call."""
        data = b"".join([orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in records])
        if not data:
            return
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        count = data.count(b"\n")
        self.records += count
        self._since_sync += count
        if self.fsync == "always" or (isinstance(self.fsync, int) and self._since_sync >= self.fsync):
            os.fsync(self._fd)
            self._since_sync = 0

    async def consume(self, receive: MemoryObjectReceiveStream[dict[str, Any]]) -> None:
        """Write everything sent on ``receive`` until it closes: the run's single writer task."""
        async with receive:
            async for record in receive:
                batch = [record]
                while len(batch) < WRITE_BATCH:
                    try:
                        batch.append(receive.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                self.write(batch)

    def close(self) -> None:
        if self._fd >= 0:
            if self.fsync != "never":
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
