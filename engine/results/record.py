"""The log record: one line of ``results.jsonl``, typed once, with its schema version.

:class:`Record` is the Python side, :data:`RECORD_SCHEMA` the column types of the same fields;
the scheduler builds records, :mod:`engine.results.write` writes them, :mod:`engine.results.read`
reads them (for the resume scan, the report and the seed export), :mod:`engine.study.seedio`
makes them from the original experiment's CSVs.

Usage: ``record: Record = make_record(task, completion, scorer, t0, t1); RECORD_SCHEMA["latency_ms"]``
"""

# No `from __future__ import annotations` here: TypedDict must see NotRequired at runtime (optional keys).
from collections.abc import Mapping
from types import MappingProxyType
from typing import NotRequired, TypedDict

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)  # schema 1 (before targets were recorded) is read with target and simulated null

RECORD_SCHEMA: Mapping[str, str] = MappingProxyType({
    "v": "Int64", "key": "String", "model": "String", "model_id": "String",
    "target": "String", "simulated": "Boolean", "qid": "String",
    "question": "String", "temperature": "Float64", "repeat": "Int64", "expected": "String",
    "reply": "String", "extracted": "String", "outcome": "String", "correct": "Boolean",
    "status": "String", "error": "String", "attempts": "Int64", "http": "List(Int64)",
    "latency_ms": "Float64", "prompt_tokens": "Int64", "completion_tokens": "Int64",
    "t_start": "Float64", "t_end": "Float64",
})  # fmt: skip
"""Type of each field of a schema-2 record (a Polars type's name), in contract order, but ``tags`` (str→str, read apart).

Named, not imported: writing a run must not pay Polars' import (about 0.2 s); the reader maps
the names to Polars types (``engine.results.read.POLARS_SCHEMA``).
Usage: ``RECORD_SCHEMA["latency_ms"]  # 'Float64'``
"""
RECORD_FIELDS: tuple[str, ...] = (*RECORD_SCHEMA, "tags")
"""Every field every schema-2 record has, in contract order."""
OPTIONAL_SCHEMA: Mapping[str, str] = MappingProxyType({
    "route": "String", "batch_id": "String", "requeued": "List(String)",
})  # fmt: skip
"""Fields only some records have (the batch route's), read as null where absent (online records, older logs)."""
READ_SCHEMA: Mapping[str, str] = MappingProxyType({**RECORD_SCHEMA, **OPTIONAL_SCHEMA})
"""Every field a reader may ask for. Usage: ``READ_SCHEMA["route"]  # 'String'``"""


class Record(TypedDict):
    """One line of ``results.jsonl`` (schema 2): the Python side of :data:`RECORD_SCHEMA`.

    ``target`` says who answered (see :mod:`engine.run.targets`; null in schema-1 and imported
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
    # Written by the batch route only (engine.run.batch): "batch", the provider's batch id, and why the
    # task went into earlier batches that did not answer it (errored, expired, ...), oldest first.
    route: NotRequired[str]
    batch_id: NotRequired[str | None]
    requeued: NotRequired[list[str]]
