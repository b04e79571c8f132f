"""The spec's settings tables and the checks every table shares: ``price``, ``[batch]``, ``[quotas.NAME]``.

:mod:`engine.experiment.spec` reads the whole document; the tables that only configure routes,
costs and shared quotas (and the field checks every table uses) live here, so the spec module
stays about models, questions and the grid. Every default is the dataclass's own.

Usage::

    spec = load_spec(Path("spec.toml"))
    spec.batch.resubmit, spec.models[0].price.cost(1_000_000, 0), spec.quotas["azure"].rpm
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from engine.endpoint.limits import LimitConfig
from engine.errors import SpecError

MODES = ("online", "batch")
BATCH_APIS = ("chat", "anthropic")  # the APIs a provider's Batch API takes (OpenAI Batch; Message Batches)
RESUBMIT = ("batch", "online")  # where errored or expired items go again: a new batch, or the online API

_LIMITS = LimitConfig()  # frozen: read for its defaults only


@dataclass(frozen=True, kw_only=True, slots=True)
class Price:
    """A model's price in dollars per million tokens, as the provider lists it for its online API.

    The batch route costs half of it (both providers' Batch APIs; see docs/batch.md).
    Usage: ``Price(input=0.15, output=0.60).cost(1_000_000, 0)  # 0.15``
    """

    input: float
    output: float

    def cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        """Dollars for these tokens at the online price."""
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1_000_000


BATCH_DISCOUNT = 0.5  # a Batch API token costs half an online one, at OpenAI and at Anthropic


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchSpec:
    """The ``[batch]`` table: how models with ``mode = "batch"`` are chunked, polled and resubmitted.

    ``max_requests``/``max_mb`` default to each provider's own limit (OpenAI 50,000 requests and
    200 MB per file; Anthropic 100,000 and 256 MB per batch); a smaller value only makes more chunks.
    ``enqueued_tokens`` is the provider's enqueued-token limit for one model (prompt tokens of the
    batches in progress): a chunk is submitted only when it fits beside those still running.
    Usage: ``load_spec(path).batch.poll_s``
    """

    max_requests: int | None = None
    max_mb: float | None = None
    enqueued_tokens: int | None = None
    poll_s: float = 30.0  # first wait between polls of one batch; doubles up to poll_max_s
    poll_max_s: float = 600.0
    resubmit: str = "batch"  # errored/expired items go to a new batch, or ("online") through the online API
    max_rounds: int = 3  # batches one task may go through before it is logged as failed
    timeout_s: float = 600.0  # per upload, download or control request


@dataclass(frozen=True, kw_only=True, slots=True)
class QuotaSpec:
    """A ``[quotas.NAME]`` table: one quota several models of one endpoint share, as a provider pools them.

    Usage: ``spec.quotas["azure"].rpm``
    """

    rpm: float | None = None  # None: the shared limiter learns the quota from 429s and headers
    tpm: float | None = None
    concurrency: int = _LIMITS.concurrency


class TableChecker:
    """Checks of one raw TOML document's fields, naming the file and field in every error.

    Usage: ``TableChecker(path).number(table, "rpm", "models[0].", low=0)``
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, where: str, problem: str) -> SpecError:
        where = where.rstrip(". ")
        return SpecError(f"{self.path}: {where}: {problem}" if where else f"{self.path}: {problem}")

    def known_keys(self, table: Mapping[str, Any], allowed: set[str], where: str) -> None:
        for key in table:
            if key not in allowed:
                hint = ", ".join(sorted(allowed))
                raise self.fail(where or key, f"unknown key {key!r} (known: {hint})")

    def string(self, table: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> str | None:
        value = table.get(key)
        if value is None:
            if required:
                raise self.fail(f"{where}{key}", "required, but missing")
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(f"{where}{key}", f"must be a non-empty string, got {value!r}")
        return value

    def boolean(self, table: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
        value = table.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(f"{where}{key}", f"must be true or false, got {value!r}")
        return value

    def number(self, table: Mapping[str, Any], key: str, where: str, *, low: float, high: float = math.inf,
               integer: bool = False, low_open: bool = False) -> Any:
        value = table.get(key)
        if value is None:
            return None
        kind = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise self.fail(f"{where}{key}", f"must be {'an integer' if integer else 'a number'}, got {value!r}")
        if not (low < value if low_open else low <= value) or value > high or value != value:
            bound = f"{'>' if low_open else '>='} {low}" + ("" if high == math.inf else f" and <= {high}")
            raise self.fail(f"{where}{key}", f"must be {bound}, got {value!r}")
        return value

    def batch(self, raw: Any) -> BatchSpec:
        """The [batch] table, each default BatchSpec's own."""
        if not isinstance(raw, dict):
            raise self.fail("batch", "must be a table")
        self.known_keys(raw, {f.name for f in fields(BatchSpec)}, "batch")
        defaults = BatchSpec()
        resubmit = self.string(raw, "resubmit", "batch.") or defaults.resubmit
        if resubmit not in RESUBMIT:
            raise self.fail("batch.resubmit", f"must be one of {', '.join(RESUBMIT)}, got {resubmit!r}")
        return BatchSpec(
            max_requests=self.number(raw, "max_requests", "batch.", low=1, high=100_000, integer=True),
            max_mb=self.number(raw, "max_mb", "batch.", low=0, high=256, low_open=True),
            enqueued_tokens=self.number(raw, "enqueued_tokens", "batch.", low=1, integer=True),
            poll_s=or_default(self.number(raw, "poll_s", "batch.", low=0, low_open=True), defaults.poll_s),
            poll_max_s=or_default(self.number(raw, "poll_max_s", "batch.", low=0, low_open=True), defaults.poll_max_s),
            resubmit=resubmit,
            max_rounds=or_default(self.number(raw, "max_rounds", "batch.", low=1, high=100, integer=True),
                           defaults.max_rounds),
            timeout_s=or_default(self.number(raw, "timeout_s", "batch.", low=0, low_open=True), defaults.timeout_s),
        )

    def price(self, raw: Any, where: str) -> Price | None:
        """``price = { input = 0.15, output = 0.60 }``: dollars per million tokens, both required."""
        if raw is None:
            return None
        if not isinstance(raw, dict):
            raise self.fail(f"{where}price", "must be a table { input = DOLLARS, output = DOLLARS } per million tokens")
        self.known_keys(raw, {"input", "output"}, f"{where}price")
        for key in ("input", "output"):
            if key not in raw:
                raise self.fail(f"{where}price.{key}", "required, but missing (dollars per million tokens)")
        return Price(input=float(self.number(raw, "input", f"{where}price.", low=0)),
                     output=float(self.number(raw, "output", f"{where}price.", low=0)))

    def mode(self, raw: Mapping[str, Any], where: str, api: str, gguf: str | None) -> str:
        mode = self.string(raw, "mode", where) or "online"
        if mode not in MODES:
            raise self.fail(f"{where}mode", f"must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "batch" and gguf is not None:
            raise self.fail(f"{where}mode", "a gguf model has no Batch API; use mode = \"online\"")
        if mode == "batch" and api not in BATCH_APIS:
            raise self.fail(f"{where}mode", f"batch takes api {' or '.join(BATCH_APIS)}, not {api!r}")
        return mode


    def quota_tables(self, raw: Any) -> dict[str, QuotaSpec]:
        """The [quotas.NAME] tables' own fields (which models name them is the spec's check)."""
        if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
            raise self.fail("quotas", "must hold [quotas.NAME] tables of rpm, tpm and concurrency")
        checked: dict[str, QuotaSpec] = {}
        for name, table in raw.items():
            where = f"quotas.{name}."
            self.known_keys(table, {f.name for f in fields(QuotaSpec)}, f"quotas.{name}")
            checked[name] = QuotaSpec(
                rpm=self.number(table, "rpm", where, low=0, low_open=True),
                tpm=self.number(table, "tpm", where, low=0, low_open=True),
                concurrency=or_default(
                    self.number(table, "concurrency", where, low=1, high=10_000, integer=True), _LIMITS.concurrency
                ),
            )
        return checked


def or_default(value: Any, default: Any) -> Any:
    """``value`` unless it was absent; unlike ``or``, keeps a real 0."""
    return default if value is None else value
