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

A shard run (``--shard K/N``, a worker of ``--workers`` or Ray) locks its own log instead: a
shared flock on the run directory (so an unsharded run, which takes it exclusively, is refused,
and refuses them) and an exclusive one on ``results/.shard-KK-of-NN.lock``, so the N shards of a
run write side by side but two runs of one shard are refused. Shards of another count N' would
send the same tasks twice: a shard refuses to start while a lock of another count is held (checked
under a brief ``results/.gate`` flock, so two starting at once cannot both pass). The shard lock
files stay (a few bytes each): removing them could let two holders lock two different files.

Usage::

    with RunLock(Path("runs/memorisation")):
        ...  # read the log, run, write, close the log
    with RunLock(Path("runs/memorisation"), shard=Shard(3, 16)):
        ...  # this shard's log only
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shlex
import sys
import time
from pathlib import Path

import orjson

from engine.errors import LogError
from engine.results.shards import SHARD_DIR, Shard

HOLDER_FILE = "run.lock"
_HOLDER_WAIT_S = 0.5  # the holder writes run.lock right after it takes the flock: give that write a moment


class RunLock:
    """An exclusive lock on a run directory, created if missing; a sync context manager.

    Raises :class:`~engine.errors.LogError` naming the holder when another process has it.
    A directory this lock created is removed again on release if nothing was written into it.
    Usage: ``with RunLock(paths.root): ...``
    """

    def __init__(self, root: Path, *, shard: Shard | None = None) -> None:
        self.root = root
        self.shard = shard
        self._fd = -1
        self._shard_fd = -1
        self._created = False

    def __enter__(self) -> RunLock:
        self._created = not self.root.exists()
        shared = self.shard is not None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._fd = _lock_dir(self.root, shared=shared)
        except OSError as exc:
            raise LogError(f"cannot lock the run directory {self.root}: {exc.strerror or exc}") from exc
        if self._fd < 0:
            # Even if this run made the directory, the holder now uses it: not ours to remove.
            who = "an unsharded run" if shared else _describe_holder(self.root)
            raise LogError(f"{self.root} is in use by {who}; wait for it, or choose another --out")
        if self.shard is None:
            _write_holder(self.root)
            return self
        try:
            self._shard_fd = _lock_shard(self.root, self.shard)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._fd < 0:
            return
        if self._shard_fd >= 0:
            # Its lock file and the gate stay: the other shards of the run may be waiting on them.
            os.close(self._shard_fd)
            self._shard_fd = -1
        # The note goes first, while the flock still guards it: a run that takes the lock next writes its own.
        with contextlib.suppress(OSError):
            (self.root / HOLDER_FILE).unlink(missing_ok=True)
        if self._created:
            with contextlib.suppress(OSError):
                self.root.rmdir()  # only when empty: a run refused before writing leaves no trace
        os.close(self._fd)  # releases the flock
        self._fd = -1


_GATE = ".gate"
_SHARD_LOCK = re.compile(r"\.shard-\d+-of-(\d+)\.lock")


def _lock_shard(root: Path, shard: Shard) -> int:
    """The shard's lock file, flocked; LogError when that shard, or a shard of another count, is running."""
    where = root / SHARD_DIR
    try:
        where.mkdir(exist_ok=True)
        gate = os.open(where / _GATE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise LogError(f"cannot lock the run directory {root}: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(gate, fcntl.LOCK_EX)  # held for a moment only: while this shard checks and locks
        for other in where.iterdir():
            match = _SHARD_LOCK.fullmatch(other.name)
            if match and int(match.group(1)) != shard.count and _held(other):
                raise LogError(
                    f"{root} is in use by a run of {int(match.group(1))} shards; {shard.count} shards of it "
                    "would send the same tasks twice: wait for it"
                )
        path = where / f".{shard.name}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LogError(
                    f"{root}: shard {shard.index}/{shard.count} is in use by {_describe_holder(where, path.name)}; "
                    "wait for it"
                ) from None
            raise
        _write_holder(where, path.name, truncate=fd)
        return fd
    except OSError as exc:
        raise LogError(f"cannot lock the run directory {root}: {exc.strerror or exc}") from exc
    finally:
        os.close(gate)


def _held(path: Path) -> bool:
    """Whether another process holds ``path``'s flock (tried, and released at once if free)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _lock_dir(root: Path, *, shared: bool = False) -> int:
    """The directory's descriptor with the flock taken, or -1 when another process holds it."""
    for _ in range(5):
        fd = os.open(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
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


def _write_holder(root: Path, name: str = HOLDER_FILE, *, truncate: int = -1) -> None:
    """Say who holds the lock, for a refused run to name. Best effort: a read-only directory still locks.

    With ``truncate`` (the descriptor of the locked file itself), the note is written into it.
    """
    holder = {
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime()),
        "command": shlex.join(getattr(sys, "orig_argv", sys.argv))[:300],
    }
    if truncate >= 0:
        with contextlib.suppress(OSError):
            os.ftruncate(truncate, 0)
            os.pwrite(truncate, orjson.dumps(holder), 0)
        return
    tmp = root / f".{HOLDER_FILE}.{os.getpid()}.tmp"
    with contextlib.suppress(OSError):
        tmp.write_bytes(orjson.dumps(holder))
        os.replace(tmp, root / HOLDER_FILE)  # whole or absent, never half a note
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)


def _describe_holder(root: Path, name: str = HOLDER_FILE) -> str:
    """"another run (PID 123, started ..., `engine run x.toml`)", or as much of that as is known."""
    deadline = time.monotonic() + _HOLDER_WAIT_S
    while True:
        holder = _read_holder(root, name)
        if holder is not None:
            return f"another run (PID {holder['pid']}, started {holder['started']}, `{holder['command']}`)"
        if time.monotonic() > deadline:
            return "another run (it has not said which: no live PID in run.lock)"
        time.sleep(0.02)


def _read_holder(root: Path, name: str = HOLDER_FILE) -> dict[str, object] | None:
    try:
        holder = orjson.loads((root / name).read_bytes())
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
