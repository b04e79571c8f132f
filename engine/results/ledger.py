"""The batch ledger: every step of the batch route, recorded and made durable before the step is taken.

One JSON object per line in ``<run dir>/batches/ledger.jsonl``, appended with ``write(2)`` and
``fsync`` each time, so a kill (even a power cut) at any moment leaves the ledger saying at least
what was done: a resume reads it back and polls, downloads or writes what exists, never uploading
or creating a batch twice. A torn last line (a kill mid-append) is cut on open and never read.
The chunk files and downloaded results beside it are written whole (temporary file, fsync,
rename) before the ledger names them.

Usage::

    with Ledger(run_dir / "batches") as ledger:
        ledger.append({"step": "created", "chunk": "c0001", "batch_id": "batch_abc"})
    events = read_ledger(run_dir / "batches")
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from engine.errors import LogError

__all__ = ["LEDGER_FILE", "Ledger", "read_ledger", "write_durable"]

LEDGER_FILE = "ledger.jsonl"


class Ledger:
    """The append-only ledger of one run directory's batches. Usage: see the module docstring."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / LEDGER_FILE
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _cut_torn_tail(self.path)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise LogError(f"cannot open the batch ledger {self.path}: {exc.strerror or exc}") from exc

    def append(self, event: Mapping[str, Any]) -> None:
        """Append one event and make it durable (fsync) before returning."""
        data = orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
        except OSError as exc:
            raise LogError(f"cannot write to the batch ledger {self.path}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_ledger(folder: Path) -> list[dict[str, Any]]:
    """Every complete event of a ledger, in order; [] when there is none. A damaged line is a LogError.

    Usage: ``[e["step"] for e in read_ledger(Path("runs/x/batches"))]``
    """
    path = folder / LEDGER_FILE
    if not path.exists():
        return []
    events = []
    data = path.read_bytes()
    lines = data.split(b"\n")
    for number, raw in enumerate(lines[:-1], 1):  # the last piece is b"" or a torn line
        if not raw.strip():
            continue
        try:
            event = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise LogError(f"{path}:{number}: unreadable ledger line; the ledger was damaged") from exc
        if not isinstance(event, dict) or "step" not in event:
            raise LogError(f"{path}:{number}: not a ledger event; the ledger was damaged")
        events.append(event)
    return events


def write_durable(path: Path, data: bytes) -> None:
    """Write a whole file so that it exists complete or not at all, and survives a power cut.

    Usage: ``write_durable(folder / "c0001.jsonl", lines)``
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as exc:
        raise LogError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _cut_torn_tail(path: Path) -> None:
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as fh:
            fh.truncate(data.rfind(b"\n") + 1)
            fh.flush()
            os.fsync(fh.fileno())
