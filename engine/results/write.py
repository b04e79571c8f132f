"""The one writer of a results log: appends records, cuts a torn tail, keeps the write-ahead journal.

A kill can leave at most a torn last line; :func:`repair_torn_tail` cuts it before appending.
With write-ahead on, each request is journalled before it is sent, so the next run can say how
many were in flight when the last one stopped (:func:`in_flight_at_stop`).

Usage::

    repair_torn_tail(paths.results)
    with LogWriter(paths.results, fsync="never", journal=paths.started) as writer:
        writer.write([record])
"""

from __future__ import annotations

import os
from collections.abc import Container, Iterable, Mapping
from pathlib import Path
from typing import Any

import anyio
import orjson
from anyio.streams.memory import MemoryObjectReceiveStream

from engine.errors import LogError
from engine.results.paths import RunPaths
from engine.results.record import Record
from engine.results.scan import torn_tail_offset

# One journal line per request, written and read only here: {"key":"<20 hex>"}\n
_JOURNAL_LINE = b'{"key":"%s"}\n'
_JOURNAL_KEY = slice(len(b'{"key":"'), -len(b'"}\n'))
WRITE_BATCH = 512  # records per write(2): one syscall for a burst, never a whole run in memory


def repair_torn_tail(path: Path) -> int:
    """Cut a torn last line so appends start on a fresh line; returns the bytes cut.

    Usage: ``repair_torn_tail(Path("runs/x/results.jsonl"))``
    """
    if not path.exists():
        return 0
    offset = torn_tail_offset(path)
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

    def __init__(self, path: Path, *, fsync: str | int = "never", journal: Path | None = None) -> None:
        self.path = path
        self.fsync = fsync
        self.records = 0
        self._since_sync = 0
        self._journal = -1
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            if journal is not None:
                # The journal starts empty each run: what it held was counted by in_flight_at_stop().
                self._journal = os.open(journal, os.O_WRONLY | os.O_TRUNC | os.O_CREAT, 0o644)
        except OSError as exc:
            raise LogError(f"cannot open {path} for writing: {exc.strerror or exc}") from exc

    @property
    def journaling(self) -> bool:
        return self._journal >= 0

    def started(self, key: str) -> None:
        """Journal that the request of ``key`` is about to be sent, before it is (write-ahead).

        Written at once, not batched: a record written after the request left would miss the
        crash it is meant to reveal. Costs one small write(2) per request.
        """
        os.write(self._journal, _JOURNAL_LINE % key.encode())

    def write(self, records: Iterable[Record] | Iterable[Mapping[str, Any]]) -> None:
        """Append records, each one line, in one write call (any mapping: tests write old schemas too)."""
        data = b"".join([orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in records])
        if not data:
            return
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as exc:  # disk full, say: stop the run, the log so far stays readable
            raise LogError(f"cannot write to {self.path}: {exc.strerror or exc}") from exc
        count = data.count(b"\n")
        self.records += count
        self._since_sync += count
        if self.fsync == "always" or (isinstance(self.fsync, int) and self._since_sync >= self.fsync):
            os.fsync(self._fd)
            self._since_sync = 0

    def sync(self) -> None:
        """Make what was written durable now (the batch route does, before its ledger says "written")."""
        if self._fd >= 0:
            os.fsync(self._fd)

    async def consume(self, receive: MemoryObjectReceiveStream[Record]) -> None:
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
        if self._journal >= 0:
            os.close(self._journal)
            self._journal = -1

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def in_flight_at_stop(paths: RunPaths, finished: Container[str]) -> int | None:
    """Requests the last run sent but never finished: in flight when it stopped (paid for, lost).

    Reads the write-ahead journal (one line per attempt sent); None when the last run kept none.
    Every attempt of an unfinished task counts: a retry sent before the stop was paid for too.
    Usage: ``in_flight_at_stop(paths, scan.ok | scan.failed)``
    """
    if not paths.started.exists():
        return None
    count = 0
    with paths.started.open("rb") as f:
        for line in f:
            # A torn last line is a request that was never sent.
            count += line.endswith(b"\n") and line[_JOURNAL_KEY].decode() not in finished
    return count
