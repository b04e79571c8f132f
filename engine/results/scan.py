"""The resume scan: which tasks a log already holds, so a run sends only the rest.

Reads the key, version and status columns through :func:`engine.results.read.read_records`
(bounded memory); a torn last line is left out and flagged, since the writer cuts it.

Usage::

    scan = scan_log(paths.results)
    todo = [t for t in tasks if t.key not in scan.done(retry_failed=True)]
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["EMPTY_SCAN", "LogScan", "scan_log", "torn_tail_offset"]


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


EMPTY_SCAN = LogScan(ok=frozenset(), failed=frozenset(), records=0, torn_tail=False)
"""The scan of a log with nothing in it (or of one not read: ``--fresh``)."""


def scan_log(path: Path) -> LogScan:
    """Read the keys a log holds (key, version and status only; bounded memory), without changing the file.

    A torn last line (a kill mid-write, even one whose JSON is whole: repair_torn_tail cuts
    it, so counting it as done would lose the task) is left out and flagged; a bad line
    anywhere else, or a record without key or status, is a LogError naming the line.
    Usage: ``scan_log(Path("runs/x/results.jsonl")).ok``
    """
    if not path.exists() or path.stat().st_size == 0:
        return EMPTY_SCAN
    torn = torn_tail_offset(path) is not None
    # Late: Polars takes about 0.2 s to import, which a fresh run (no log) and a rerun settled by
    # the complete stamp never pay.
    import polars as pl

    from engine.results.read import read_records

    frame = read_records(path, ["status"], required=("status",))
    ok = frame.filter(pl.col("status") == "ok")["key"]
    failed = frame.filter(pl.col("status") != "ok")["key"]
    ok_keys = frozenset(ok.to_list())
    return LogScan(
        ok=ok_keys, failed=frozenset(failed.to_list()) - ok_keys, records=frame.height, torn_tail=torn
    )


def torn_tail_offset(path: Path) -> int | None:
    """Offset just past the last newline when the file does not end with one, else None.

    Usage: ``torn_tail_offset(Path("runs/x/results.jsonl"))  # None: the log ends cleanly``
    """
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
