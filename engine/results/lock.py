"""The run-directory lock: one `engine run`, `run --fresh` or `replicate` per run directory at a time.

Two runs of one spec into one directory would each send the whole grid and cut each other's
writes. So a run takes an exclusive ``flock`` on the run directory itself (its directory file
descriptor: nothing is created to hold it) before it reads the log, and keeps it until the log
is closed. A second run is refused with one line naming the holder and exit code 2.

The kernel drops a flock when its holder dies, ``kill -9`` included, so a stale lock never
blocks. Who holds it is written beside the log in ``run.lock`` (PID, start time, command) while
the lock is held, and removed on release: a ``run.lock`` left behind by a killed run is only a
note, overwritten by the next run; it is read only while the flock says the directory is busy,
and only trusted if its PID is alive. ``engine report`` takes no lock (a read-only archived run
can be reported).

Usage::

    with RunLock(Path("runs/memorisation")):
        ...  # read the log, run, write, close the log
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shlex
import sys
import time
from pathlib import Path

import orjson

from engine.errors import LogError

HOLDER_FILE = "run.lock"
_HOLDER_WAIT_S = 0.5  # the holder writes run.lock right after it takes the flock: give that write a moment


class RunLock:
    """An exclusive lock on a run directory, created if missing; a sync context manager.

    Raises :class:`~engine.errors.LogError` naming the holder when another process has it.
    A directory this lock created is removed again on release if nothing was written into it.
    Usage: ``with RunLock(paths.root): ...``
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._fd = -1
        self._created = False

    def __enter__(self) -> RunLock:
        self._created = not self.root.exists()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._fd = _lock_dir(self.root)
        except OSError as exc:
            raise LogError(f"cannot lock the run directory {self.root}: {exc.strerror or exc}") from exc
        if self._fd < 0:
            # Even if this run made the directory, the holder now uses it: not ours to remove.
            raise LogError(f"{self.root} is in use by {_describe_holder(self.root)}; wait for it, or choose another --out")
        _write_holder(self.root)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._fd < 0:
            return
        # The note goes first, while the flock still guards it: a run that takes the lock next writes its own.
        with contextlib.suppress(OSError):
            (self.root / HOLDER_FILE).unlink(missing_ok=True)
        if self._created:
            with contextlib.suppress(OSError):
                self.root.rmdir()  # only when empty: a run refused before writing leaves no trace
        os.close(self._fd)  # releases the flock
        self._fd = -1


def _lock_dir(root: Path) -> int:
    """The directory's descriptor with the flock taken, or -1 when another process holds it."""
    for _ in range(5):
        fd = os.open(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return -1
            raise
        # A run refused before writing removes the directory it created: if that happened between our
        # open() and flock(), we hold a lock on a directory nobody will use. Look again.
        held, now = os.fstat(fd), _stat_or_none(root)
        if now is not None and (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
            return fd
        os.close(fd)
        root.mkdir(parents=True, exist_ok=True)
    raise OSError(errno.EAGAIN, "the directory kept being replaced")


def _stat_or_none(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def _write_holder(root: Path) -> None:
    """Say who holds the lock, for a refused run to name. Best effort: a read-only directory still locks."""
    holder = {
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime()),
        "command": shlex.join(getattr(sys, "orig_argv", sys.argv))[:300],
    }
    tmp = root / f".{HOLDER_FILE}.{os.getpid()}.tmp"
    with contextlib.suppress(OSError):
        tmp.write_bytes(orjson.dumps(holder))
        os.replace(tmp, root / HOLDER_FILE)  # whole or absent, never half a note
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)


def _describe_holder(root: Path) -> str:
    """"another run (PID 123, started ..., `engine run x.toml`)", or as much of that as is known."""
    deadline = time.monotonic() + _HOLDER_WAIT_S
    while True:
        holder = _read_holder(root)
        if holder is not None:
            return f"another run (PID {holder['pid']}, started {holder['started']}, `{holder['command']}`)"
        if time.monotonic() > deadline:
            return "another run (it has not said which: no live PID in run.lock)"
        time.sleep(0.02)


def _read_holder(root: Path) -> dict[str, object] | None:
    try:
        holder = orjson.loads((root / HOLDER_FILE).read_bytes())
        pid = int(holder["pid"])
        known = isinstance(holder["started"], str) and isinstance(holder["command"], str)
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    return holder if known and _alive(pid) else None  # a note left by a killed run names nobody


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True
