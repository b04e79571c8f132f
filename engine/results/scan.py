"""The resume scan: which tasks a run's logs already hold, so a run sends only the rest.

Reads the key, version and status columns through :func:`engine.results.read.record_frames`
(bounded memory), packing the keys into compact sets as it goes; a torn last line is left out
and flagged, since the writer cuts it.

Usage::

    scan = scan_log(paths.results)
    todo = [t for t in tasks if t.key not in scan.done(retry_failed=True)]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path

__all__ = ["EMPTY_SCAN", "LogScan", "scan_log", "scan_logs", "torn_tail_offset"]


@dataclass(frozen=True, kw_only=True, slots=True)
class LogScan:
    """What a run's logs already hold: keys answered, keys that failed, records read, torn tail seen.

    The keys of a scanned log are an ``engine.experiment.keys.KeySet``: 10 bytes a key, so the
    resume of a 100-million-task grid holds about a gigabyte, not 45.
    """

    ok: AbstractSet[str]  # a KeySet, typed as the set it behaves as
    failed: AbstractSet[str]
    records: int
    torn_tail: bool

    def done(self, *, retry_failed: bool) -> AbstractSet[str]:
        """Keys not to send again. Usage: ``scan.done(retry_failed=True)``"""
        return self.ok if retry_failed else self.ok | self.failed


EMPTY_SCAN = LogScan(ok=frozenset(), failed=frozenset(), records=0, torn_tail=False)
"""The scan of a run with nothing logged (or of one not read: ``--fresh``, or settled by its complete stamp)."""


def scan_log(path: Path) -> LogScan:
    """Read the keys a log holds (key, version and status only; bounded memory), without changing the file.

    A torn last line (a kill mid-write, even one whose JSON is whole: repair_torn_tail cuts
    it, so counting it as done would lose the task) is left out and flagged; a bad line
    anywhere else, or a record without key or status, is a LogError naming the line.
    Usage: ``scan_log(Path("runs/x/results.jsonl")).ok``
    """
    return scan_logs([path])


def scan_logs(paths: Sequence[Path]) -> LogScan:
    """:func:`scan_log` over every log of a run (all its shards): a key ok in any of them is done.

    Memory is the keys (10 bytes each) plus one block of the log: each block's keys are packed
    as soon as it is parsed. ``torn_tail`` says whether any log has one.
    Usage: ``scan_logs(run_logs(Path("runs/x"))).ok``
    """
    present = [p for p in paths if p.exists() and p.stat().st_size > 0]
    if not present:
        return EMPTY_SCAN
    # Late: Polars and numpy take about 0.3 s to import, which a fresh run (no log) and a rerun
    # settled by the complete stamp never pay.
    from engine.experiment.keys import KeySetBuilder
    from engine.results.read import record_frames

    ok, failed = KeySetBuilder(), KeySetBuilder()
    records, torn = 0, False
    for path in present:
        torn = torn or torn_tail_offset(path) is not None
        for frame in record_frames(path, ["status"], required=("status",)):
            records += frame.height
            is_ok = frame.get_column("status") == "ok"
            ok.add(frame.get_column("key").filter(is_ok).to_list())
            failed.add(frame.get_column("key").filter(~is_ok).to_list())
    ok_keys = ok.build()
    return LogScan(ok=ok_keys, failed=failed.build() - ok_keys, records=records, torn_tail=torn)


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
