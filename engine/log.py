"""The results log: an append-only JSONL file per run, written by one task, read back on resume.

A run directory holds ``results.jsonl`` (one record per finished task), ``spec.toml``
(a copy of the spec), ``grid.json`` (the current grid, see :class:`engine.grid.Grid`)
and ``run.json`` (which experiment the log belongs to, whether it is a simulation, and
each model's target; rewritten at every run). A kill
can leave at most a torn last line; it is detected and cut before appending. A bad
line anywhere else means the log was damaged by something other than us: we stop
and say where, and never write to it.

:func:`read_records` is the one reader of a log (the resume scan and the report both
use it): bounded blocks, only the columns asked for, an unterminated last line left out.

Usage::

    paths = RunPaths(Path("runs/memorisation"))
    prepare_run_dir(paths, spec, spec_text, fresh=False, grid=grid)
    scan = scan_log(paths.results)          # what is done already
    repair_torn_tail(paths.results)
    writer = LogWriter(paths.results, fsync="never")
"""

from __future__ import annotations

import io
import itertools
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypedDict

import anyio
import orjson
import polars as pl
from anyio.streams.memory import MemoryObjectReceiveStream

from engine.errors import LogError
from engine.grid import Grid
from engine.runmeta import run_meta
from engine.spec import Spec

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)  # schema 1 (before targets were recorded) is read with target and simulated null
# One journal line per request, written and read only here: {"key":"<20 hex>"}\n
_JOURNAL_LINE = b'{"key":"%s"}\n'
_JOURNAL_KEY = slice(len(b'{"key":"'), -len(b'"}\n'))
WRITE_BATCH = 512  # records per write(2): one syscall for a burst, never a whole run in memory

RECORD_SCHEMA: Mapping[str, pl.DataType] = MappingProxyType({
    "v": pl.Int64(), "key": pl.String(), "model": pl.String(), "model_id": pl.String(),
    "target": pl.String(), "simulated": pl.Boolean(), "qid": pl.String(),
    "question": pl.String(), "temperature": pl.Float64(), "repeat": pl.Int64(), "expected": pl.String(),
    "reply": pl.String(), "extracted": pl.String(), "outcome": pl.String(), "correct": pl.Boolean(),
    "status": pl.String(), "error": pl.String(), "attempts": pl.Int64(), "http": pl.List(pl.Int64()),
    "latency_ms": pl.Float64(), "prompt_tokens": pl.Int64(), "completion_tokens": pl.Int64(),
    "t_start": pl.Float64(), "t_end": pl.Float64(),
})  # fmt: skip
"""Polars type of each field of a schema-2 record, in contract order, but ``tags`` (str→str, read apart).

Usage: ``RECORD_SCHEMA["latency_ms"]  # Float64``
"""
RECORD_FIELDS: tuple[str, ...] = (*RECORD_SCHEMA, "tags")
"""Every field of a schema-2 record, in contract order."""


class Record(TypedDict):
    """One line of ``results.jsonl`` (schema 2): the Python side of :data:`RECORD_SCHEMA`.

    ``target`` says who answered (see :mod:`engine.target`; null in schema-1 and imported
    records, where it is unknown) and ``simulated`` whether it was engine's built-in simulation.
    Usage: ``record: Record = make_record(task, completion, scorer, t0, t1)``
    """

    v: int
    key: str
    model: str
    model_id: str
    target: str | None
    simulated: bool | None
    qid: str
    question: str
    temperature: float
    repeat: int
    expected: str
    reply: str | None
    extracted: str | None
    outcome: str | None
    correct: bool | None
    status: str
    error: str | None
    attempts: int
    http: list[int]
    latency_ms: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    t_start: float
    t_end: float
    tags: Mapping[str, str]

_BLOCK_BYTES = 8 << 20  # parsed at a time: memory follows the columns kept, not the size of the file
# Low-cardinality text columns, held as categoricals with ``compact``: a million records
# then cost a few bytes each instead of a string apiece.
_COMPACT = frozenset({"model", "model_id", "target", "qid", "status", "outcome", "expected", "extracted", "error"})


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

    @property
    def grid(self) -> Path:
        """The run's current grid (written at every run): the report counts only its records."""
        return self.root / "grid.json"

    @property
    def started(self) -> Path:
        """The write-ahead journal: one line per request about to be sent (only with write-ahead on)."""
        return self.root / "started.jsonl"


def check_owner(paths: RunPaths, spec: Spec) -> None:
    """Refuse a run directory whose log belongs to another experiment; reads, never writes.

    Usage: ``check_owner(RunPaths(Path("runs/x")), spec)``
    """
    if paths.root.exists() and not paths.root.is_dir():
        raise LogError(f"{paths.root} is a file, not a run directory; choose another --out")
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


def prepare_run_dir(paths: RunPaths, spec: Spec, spec_text: str, *, fresh: bool, grid: Grid) -> None:
    """Create or adopt a run directory, refusing one that belongs to another experiment.

    With ``fresh``, an existing log is renamed aside (never deleted) and a new one begins.
    ``grid`` becomes the run's grid (``grid.json``): a changed spec in an existing directory
    is not refused, its grid replaces the old one, and the report then counts only its records.
    Usage: ``prepare_run_dir(RunPaths(Path("runs/x")), spec, text, fresh=False, grid=grid)``
    """
    check_owner(paths, spec)
    try:
        _prepare(paths, spec, spec_text, fresh=fresh, grid=grid)
    except OSError as exc:
        raise LogError(f"cannot prepare the run directory {paths.root}: {exc.strerror or exc}") from exc


def _prepare(paths: RunPaths, spec: Spec, spec_text: str, *, fresh: bool, grid: Grid) -> None:
    paths.root.mkdir(parents=True, exist_ok=True)
    if fresh:
        paths.started.unlink(missing_ok=True)  # the old journal speaks of the old log
    if fresh and paths.results.exists():
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        aside = paths.root / f"results.{stamp}.jsonl.old"
        for n in itertools.count(1):  # rename() would silently replace a log set aside in the same second
            if not aside.exists():
                break
            aside = paths.root / f"results.{stamp}-{n}.jsonl.old"
        paths.results.rename(aside)
    old = orjson.loads(paths.meta.read_bytes()) if paths.meta.exists() else {}  # check_owner read it already
    _write_atomic(paths.meta, orjson.dumps(run_meta(spec.name, grid, old, schema=SCHEMA_VERSION), option=orjson.OPT_INDENT_2))
    _write_atomic(paths.spec_copy, spec_text.encode())
    _write_atomic(paths.grid, grid.to_json())


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


def scan_log(path: Path) -> LogScan:
    """Read the keys a log holds (key, version and status only; bounded memory), without changing the file.

    A torn last line (a kill mid-write, even one whose JSON is whole: repair_torn_tail cuts
    it, so counting it as done would lose the task) is left out and flagged; a bad line
    anywhere else, or a record without key or status, is a LogError naming the line.
    Usage: ``scan_log(Path("runs/x/results.jsonl")).ok``
    """
    if not path.exists() or path.stat().st_size == 0:
        return LogScan(ok=frozenset(), failed=frozenset(), records=0, torn_tail=False)
    torn = _torn_tail_offset(path) is not None
    frame = read_records(path, ["status"], required=("status",))
    ok = frame.filter(pl.col("status") == "ok")["key"]
    failed = frame.filter(pl.col("status") != "ok")["key"]
    ok_keys = frozenset(ok.to_list())
    return LogScan(
        ok=ok_keys, failed=frozenset(failed.to_list()) - ok_keys, records=frame.height, torn_tail=torn
    )


# --------------------------------------------------------------------------- reading


def tag_column(tag: str) -> str:
    """The column a tag becomes: its own name, or ``tags.<name>`` when a record field has that name.

    Usage: ``tag_column("object")  # 'object'``
    """
    return f"tags.{tag}" if tag in RECORD_SCHEMA else tag


def tag_names(file: Path) -> list[str] | None:
    """The tag names of a log (those of its first complete record); None when it has no complete record.

    Usage: ``tag_names(Path("runs/x/results.jsonl"))  # ['object', 'difficulty']``
    """
    number = 0
    with file.open("rb") as fh:
        for line in fh:
            number += 1
            if not line.endswith(b"\n"):
                return None  # only a torn tail: read_records leaves it out too
            if line.strip():
                break
        else:
            return None
    if (error := _line_error(file, number, line, ())) is not None:
        raise error
    tags = orjson.loads(line).get("tags")
    return [str(k) for k in tags] if isinstance(tags, dict) else []


def read_records(
    file: str | Path, fields: Sequence[str], tags: Sequence[str] = (), *, compact: bool = False,
    required: Sequence[str] = (),
) -> pl.DataFrame:  # fmt: skip
    """The records of a log, columns ``key``, *fields* and one per tag (see :func:`tag_column`), in log order.

    Reads in bounded blocks, parsing only the columns asked for. Blank lines are skipped
    and an unterminated last line (a record still being written, or torn by a kill) is
    left out. A line that is not JSON, not an object, without ``key`` or a *required*
    field, of a schema version engine cannot read (1 and 2), or with a field of the wrong type is a
    LogError naming its line. ``compact`` holds low-cardinality text as categoricals.
    Duplicates are kept (the last record of a key wins; dedupe with ``is_last_distinct``).
    Usage: ``read_records(Path("runs/x/results.jsonl"), ["status"], ["object"])``
    """
    file = Path(file)
    unknown = [f for f in (*fields, *required) if f not in RECORD_SCHEMA]
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not a field of a schema-{SCHEMA_VERSION} record")
    checked = tuple(dict.fromkeys(("v", "key", *required)))
    schema: dict[str, pl.DataType] = {f: RECORD_SCHEMA[f] for f in dict.fromkeys((*checked, *fields))}
    tags = list(dict.fromkeys(tags))
    if tags:
        schema["tags"] = pl.Struct({t: pl.String() for t in tags})
    columns = list(dict.fromkeys(["key", *fields, *(tag_column(t) for t in tags)]))

    def shape(frame: pl.DataFrame) -> pl.DataFrame:
        if tags:
            frame = frame.with_columns(pl.col("tags").struct.rename_fields([tag_column(t) for t in tags]))
            frame = frame.unnest("tags")
        frame = frame.select(columns)
        if compact:
            frame = frame.with_columns(pl.col(c).cast(pl.Categorical) for c in columns if c in _COMPACT)
        return frame

    frames: list[pl.DataFrame] = []
    for offset, block in _blocks(file):
        try:
            frame = pl.read_ndjson(io.BytesIO(block), schema=schema)
        except pl.exceptions.PolarsError as exc:
            raise _locate(file, offset, block, schema, checked) from exc
        versions = frame.get_column("v")
        if any(frame.get_column(c).null_count() for c in checked) or not versions.is_in(READABLE_VERSIONS).all():
            raise _locate(file, offset, block, schema, checked)
        frames.append(shape(frame))
    if not frames:
        return shape(pl.read_ndjson(io.BytesIO(b""), schema=schema))
    return pl.concat(frames, how="vertical")


def _blocks(file: Path) -> Iterator[tuple[int, bytes]]:
    """(byte offset, whole lines) in bounded blocks; an unterminated last line is never yielded."""
    offset = 0
    rest = b""
    with file.open("rb") as fh:
        while chunk := fh.read(_BLOCK_BYTES):
            data = rest + chunk
            cut = data.rfind(b"\n") + 1
            rest = data[cut:]
            if cut:
                yield offset, data[:cut]
                offset += cut


def _line_error(file: Path, number: int, raw: bytes, required: Sequence[str]) -> LogError | None:
    """What is wrong with one line, as the error to raise; None when nothing orjson can see is."""
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        reason = "is not valid JSON"
    else:
        missing = [f for f in required if record.get(f) is None] if isinstance(record, dict) else []
        if not isinstance(record, dict):
            reason = "is not a JSON object"
        elif missing:
            reason = f"has no {missing[0]!r}"
        elif "v" in required and type(record["v"]) is not int:
            reason = "has a 'v' that is not an integer"
        elif "v" in required and record["v"] not in READABLE_VERSIONS:
            readable = " or ".join(map(str, READABLE_VERSIONS))
            return LogError(f"{file}:{number}: schema version {record['v']!r} is not supported (expected {readable})")
        else:
            return None
    return LogError(f"{file}:{number}: unreadable record (line {number} {reason}); the log was damaged")


def _locate(
    file: Path, offset: int, block: bytes, schema: dict[str, pl.DataType], required: Sequence[str]
) -> LogError:
    """The error naming the first bad line of a block that failed; only ever on the error path."""
    first = 1 + _count_newlines(file, offset)
    lines = block.split(b"\n")
    for i, raw in enumerate(lines):
        if raw.strip() and (error := _line_error(file, first + i, raw, required)) is not None:
            return error
    for i, raw in enumerate(lines):  # sound JSON throughout: find the line whose types do not fit
        if raw.strip():
            try:
                pl.read_ndjson(io.BytesIO(raw), schema=schema)
            except pl.exceptions.PolarsError as exc:
                why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                n = first + i
                return LogError(f"{file}:{n}: unreadable record (line {n} does not fit schema {SCHEMA_VERSION}: {why}); the log was damaged")
    return LogError(f"{file}: lines {first}-{first + len(lines) - 2} do not fit schema {SCHEMA_VERSION}; the log was damaged")


def _count_newlines(file: Path, upto: int) -> int:
    count = 0
    with file.open("rb") as fh:
        while upto > 0:
            chunk = fh.read(min(1 << 20, upto))
            if not chunk:
                break
            count += chunk.count(b"\n")
            upto -= len(chunk)
    return count


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

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records, each one line, in one write call."""
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
        if self._journal >= 0:
            os.close(self._journal)
            self._journal = -1

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def in_flight_at_stop(paths: RunPaths, finished: frozenset[str]) -> int | None:
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
