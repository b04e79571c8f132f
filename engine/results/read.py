"""The one reader of a results log: the resume scan, the report and the seed export all use it.

Reads in bounded blocks, only the columns asked for, an unterminated last line left out. A bad
line anywhere else means the log was damaged by something other than us: a LogError names it.

Usage::

    frame = read_records(paths.results, ["status"])     # columns key, status
    tasks = load_log("runs/x", columns=["model", "outcome"]).collect()  # one row per task
"""

from __future__ import annotations

import gzip
import io
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

import orjson
import polars as pl

from engine.errors import LogError, ReportError
from engine.results.layout import run_root
from engine.results.paths import run_dir_of_log, run_logs
from engine.results.record import READ_SCHEMA, READABLE_VERSIONS, RECORD_FIELDS, SCHEMA_VERSION

_BLOCK_BYTES = 8 << 20  # parsed at a time: memory follows the columns kept, not the size of the file


def _polars_type(name: str) -> pl.DataType:
    """``"Int64"`` → ``pl.Int64()``, ``"List(String)"`` → ``pl.List(pl.String())``."""
    if name.startswith("List(") and name.endswith(")"):
        return pl.List(_polars_type(name[5:-1]))
    kind: pl.DataType = getattr(pl, name)()
    return kind


POLARS_SCHEMA: Mapping[str, pl.DataType] = MappingProxyType({
    name: _polars_type(kind) for name, kind in READ_SCHEMA.items()
})
"""The Polars type of each field a reader may ask for (but ``tags``), from the record's one definition.

Usage: ``POLARS_SCHEMA["latency_ms"]  # Float64``
"""
# Low-cardinality text columns, held as categoricals with ``compact``: a million records
# then cost a few bytes each instead of a string apiece.
_COMPACT = frozenset({"model", "model_id", "target", "qid", "status", "outcome", "expected", "extracted", "error"})


# --------------------------------------------------------------------------- reading


def tag_column(tag: str) -> str:
    """The column a tag becomes: its own name, or ``tags.<name>`` when a record field has that name.

    Usage: ``tag_column("object")  # 'object'``
    """
    return f"tags.{tag}" if tag in READ_SCHEMA else tag


def tag_names(file: Path) -> list[str] | None:
    """The tag names of a log (those of its first complete record); None when it has no complete record.

    Usage: ``tag_names(Path("runs/x/results.jsonl"))  # ['object', 'difficulty']``
    """
    number = 0
    with _open(file) as fh:
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
    frames = list(record_frames(Path(file), fields, tags, compact=compact, required=required))
    return pl.concat(frames, how="vertical")


def record_frames(
    file: Path, fields: Sequence[str], tags: Sequence[str] = (), *, compact: bool = False,
    required: Sequence[str] = (),
) -> Iterator[pl.DataFrame]:  # fmt: skip
    """:func:`read_records` a block at a time (at least one frame, maybe empty); the same checks.

    Usage: ``for frame in record_frames(log, ["status"]): ...``
    """
    unknown = [f for f in (*fields, *required) if f not in READ_SCHEMA]
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not a field of a schema-{SCHEMA_VERSION} record")
    checked = tuple(dict.fromkeys(("v", "key", *required)))
    schema: dict[str, pl.DataType] = {f: POLARS_SCHEMA[f] for f in dict.fromkeys((*checked, *fields))}
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

    empty = True
    for offset, block in _blocks(file):
        try:
            frame = pl.read_ndjson(io.BytesIO(block), schema=schema)
        except pl.exceptions.PolarsError as exc:
            raise _locate(file, offset, block, schema, checked) from exc
        versions = frame.get_column("v")
        if any(frame.get_column(c).null_count() for c in checked) or not versions.is_in(READABLE_VERSIONS).all():
            raise _locate(file, offset, block, schema, checked)
        empty = False
        yield shape(frame)
    if empty:
        yield shape(pl.read_ndjson(io.BytesIO(b""), schema=schema))


def _blocks(file: Path) -> Iterator[tuple[int, bytes]]:
    """(byte offset, whole lines) in bounded blocks; an unterminated last line is never yielded."""
    try:
        yield from _raw_blocks(file)
    except (OSError, EOFError) as exc:  # a damaged or truncated .gz shows only when read
        raise LogError(f"cannot read {file}: {exc}") from exc


def _raw_blocks(file: Path) -> Iterator[tuple[int, bytes]]:
    offset = 0
    rest = b""
    with _open(file) as fh:
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
    with _open(file) as fh:
        while upto > 0:
            chunk = fh.read(min(1 << 20, upto))
            if not chunk:
                break
            count += chunk.count(b"\n")
            upto -= len(chunk)
    return count


RESULTS_FILE = "results.jsonl"
COMPRESSED_SUFFIX = ".gz"  # a log kept as evidence (results.jsonl.gz): read, never resumed or appended to


def _open(file: Path) -> io.BufferedIOBase:
    """The log's bytes, decompressed when the file is gzip (``.gz``): the report reads either alike."""
    try:
        return gzip.open(file, "rb") if file.name.endswith(COMPRESSED_SUFFIX) else file.open("rb")
    except OSError as exc:
        raise LogError(f"cannot read {file}: {exc.strerror or exc}") from exc


# --------------------------------------------------------------------------- reading


def log_file(path: str | Path) -> Path:
    """The run's log a path names: a run directory's ``results.jsonl`` (or, sharded, its first shard log)."""
    p = Path(path)
    if p.suffix == ".toml" and p.is_file():
        raise ReportError(f"{p} is a spec file; pass its run directory ({_run_dir_of(p)})")
    file = p / RESULTS_FILE if p.is_dir() else p
    if p.is_dir() and not file.is_file() and (logs := run_logs(p)):
        return logs[0]
    if p.is_dir() and not file.is_file() and (p / (RESULTS_FILE + COMPRESSED_SUFFIX)).is_file():
        file = p / (RESULTS_FILE + COMPRESSED_SUFFIX)  # committed evidence, compressed
    if not file.is_file():
        raise ReportError(f"no results log at {file}")
    return file


def log_files(file: Path) -> list[Path]:
    """Every log of the run a log belongs to (its shards too); just ``file`` when it is not in a run directory.

    Usage: ``log_files(log_file("runs/x"))``
    """
    logs = run_logs(run_dir_of_log(file))
    return logs if file in logs else [file]


def _run_dir_of(spec_path: Path) -> str:
    """Where ``engine run`` puts a spec's run by default, to name it in a hint."""
    try:
        name = tomllib.loads(spec_path.read_text(encoding="utf-8")).get("name")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        name = None
    where = str(run_root(name if isinstance(name, str) and name else "<name>", None))
    return f"{where}, or the --out given to engine run"


def log_tags(file: Path) -> list[str]:
    tags = tag_names(file)
    if tags is None:
        raise ReportError(f"results log {file} is empty")
    return tags


def load_raw(file: Path, columns: Sequence[str] | None, *, compact: bool) -> pl.DataFrame:
    tags = log_tags(file)
    tag_cols = {tag_column(t): t for t in tags}
    wanted = list(columns) if columns is not None else list(RECORD_FIELDS)
    unknown = [c for c in wanted if c not in READ_SCHEMA and c not in tag_cols and c != "tags"]
    if unknown:
        raise ReportError(f"unknown log field {unknown[0]!r}")
    fields = [c for c in wanted if c in READ_SCHEMA]
    picked = tags if "tags" in wanted else [tag_cols[c] for c in wanted if c in tag_cols]
    # Every shard's log, the log changed last read last: its record of a key wins (see dedupe).
    frames = [read_records(f, fields, picked, compact=compact) for f in log_files(file)]
    df = frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical")
    if df.is_empty():
        raise ReportError(f"results log {file} has no records")
    return df


def dedupe(df: pl.DataFrame) -> pl.LazyFrame:
    return df.lazy().filter(pl.col("key").is_last_distinct())


def load_log(
    path: str | Path, *, columns: Sequence[str] | None = None, compact: bool = False
) -> pl.LazyFrame:
    """The log as a LazyFrame, one row per task (last record per key wins), in log order.

    ``path`` is a run directory or a ``results.jsonl`` file. ``columns`` picks record
    fields and tag names (tags become columns of their own, ``"tags"`` means all of
    them); ``key`` is always kept. Only those columns are parsed and held, so asking
    for few keeps memory low. ``compact`` holds text columns as categoricals. Usage:
    ``load_log("runs/x", columns=["model", "difficulty", "outcome"]).collect()``
    """
    return dedupe(load_raw(log_file(path), columns, compact=compact))
