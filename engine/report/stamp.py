"""Whether a run's saved report still describes its log: a stamp of the log written beside the report.

``engine run`` with nothing new to send must not rebuild the report (reading the log, the bootstrap,
the page): the stamp records the log's and the grid's size, modification time and inode when the
report was built, and which files it wrote. Any append, repair, ``--fresh`` or new grid changes one
of them. Imports nothing heavy, so checking costs a few ``stat`` calls.

Usage::

    if not report_is_current(run_dir, ["report.md", "report.html"]):
        write_report(run_dir)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from engine.results.stamps import grid_digest, logs_fingerprint, read_json, write_json_atomic

__all__ = ["STAMP_FILE", "Fingerprint", "log_fingerprint", "report_is_current", "write_stamp"]

STAMP_FILE = "report.stamp.json"
_FORMAT = 1  # bump when the saved report's content changes, so old reports are rebuilt once


Fingerprint = dict[str, list[int] | str | None]


def log_fingerprint(run_dir: Path) -> Fingerprint:
    """Every log's (size, mtime ns, inode) by name (shard logs too) and the grid's digest (None if missing).

    Usage: ``log_fingerprint(Path("runs/memorisation"))["results.jsonl"]``
    """
    try:
        grid: str | None = grid_digest((run_dir / "grid.json").read_bytes())
    except OSError:
        grid = None
    return {**logs_fingerprint(run_dir), "grid.json": grid}


def report_is_current(run_dir: Path, needed: Sequence[str]) -> bool:
    """True when the stamp matches the log and grid as they are now and every ``needed`` file was written.

    Usage: ``report_is_current(Path("runs/memorisation"), ["report.md", "report.html"])``
    """
    stamp = read_json(run_dir / STAMP_FILE)
    if not isinstance(stamp, dict) or stamp.get("format") != _FORMAT or stamp.get("log") != log_fingerprint(run_dir):
        return False
    written = stamp.get("files")
    return isinstance(written, list) and all(n in written and (run_dir / n).is_file() for n in needed)


def write_stamp(run_dir: Path, fingerprint: Fingerprint, files: Sequence[str]) -> None:
    """Record that ``files`` describe the log as ``fingerprint`` saw it (taken before the log was read).

    A stamp that cannot be written only means the next run builds the report again.
    Usage: ``write_stamp(run, log_fingerprint(run), ["report.md", "report.html"])``
    """
    write_json_atomic(run_dir / STAMP_FILE, {"format": _FORMAT, "log": fingerprint, "files": list(files)})
