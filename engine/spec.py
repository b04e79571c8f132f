"""The experiment spec: a TOML file naming models, questions, temperatures, repeats, prompt and scorer.

Every default lives in the dataclasses below. Unknown keys are errors, not ignored,
because a misspelt ``temprature`` silently running the wrong grid costs real money.

Usage::

    spec = load_spec(Path("data/memorisation.toml"))
    spec.name, [m.name for m in spec.models], spec.temperatures
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from string import Formatter
from typing import Any
from urllib.parse import urlsplit

from engine.errors import ConfigError, ScorerError, SpecError
from engine.limits import LimitConfig, RetryPolicy
from engine.scoring import SCORERS, get_scorer
from engine.sim import QUOTA_SCOPES, Faults, SimConfig

SIM_URL = "sim"
FSYNC_POLICIES = ("never", "always")


_RETRY = RetryPolicy()  # frozen: read for its defaults only
_LIMITS = LimitConfig()


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelSpec:
    """One model to evaluate, and the OpenAI-compatible endpoint that serves it."""

    name: str
    model: str
    base_url: str | None = None  # "sim" for the built-in target; None when gguf is set
    gguf: str | None = None  # a local GGUF file (relative to the spec) or "smollm2"
    api_key_env: str | None = None
    rpm: float | None = None
    tpm: float | None = None
    concurrency: int = _LIMITS.concurrency
    params: Mapping[str, Any] = field(default_factory=dict)  # extra request fields (top_p, seed, ...)

    @property
    def endpoint(self) -> tuple[str, str | None]:
        """Models sharing this pair share one endpoint's limits and connection pool."""
        return (self.base_url or f"gguf:{self.gguf}", self.api_key_env)


@dataclass(frozen=True, kw_only=True, slots=True)
class Spec:
    """A whole experiment: the grid is models × questions × temperatures × repeats."""

    path: Path
    name: str
    questions: Path
    models: tuple[ModelSpec, ...]
    temperatures: tuple[float, ...] = (0.0,)
    repeats: int = 1
    system: str | None = None
    prompt: str = "{question}"
    max_tokens: int = 32
    scorer: str = "number"
    scorer_pattern: str | None = None
    # The retry defaults are RetryPolicy's own (see engine.limits): one place for each.
    timeout_s: float = _RETRY.timeout_s
    max_attempts: int = _RETRY.max_attempts
    backoff_base_s: float = _RETRY.base_s  # first retry waits up to this (full jitter), doubling each time
    backoff_cap_s: float = _RETRY.cap_s
    max_retry_wait_s: float = _RETRY.max_wait_s  # caps any wait, a provider's Retry-After included
    fsync: str | int = "never"  # "never", "always", or every N records
    sim: SimConfig = field(default_factory=SimConfig)  # the built-in target's behaviour; its facts come later
    replication: Mapping[str, Any] | None = None


def load_spec(path: Path) -> Spec:
    """Read and check an experiment spec; any problem is one SpecError line naming file and field.

    Usage: ``spec = load_spec(Path("data/memorisation.toml"))``
    """
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"spec file not found: {path}") from None
    except IsADirectoryError:
        raise SpecError(f"spec path is a directory, not a TOML file: {path}") from None
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: malformed TOML: {exc}") from exc
    except OSError as exc:
        raise SpecError(f"cannot read spec {path}: {exc.strerror or exc}") from exc
    return _Checker(path).spec(raw)


class _Checker:
    """Validates one raw TOML document, naming the file and field in every error."""

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

    def spec(self, raw: dict[str, Any]) -> Spec:
        allowed = {f.name for f in fields(Spec)} - {"path"}
        self.known_keys(raw, allowed, "")
        name = self.string(raw, "name", "", required=True)
        assert name is not None
        if "/" in name or name.startswith("."):
            raise self.fail("name", f"must be a plain directory name, got {name!r}")
        questions = self.string(raw, "questions", "", required=True)
        assert questions is not None
        models = raw.get("models")
        if not isinstance(models, list) or not models:
            raise self.fail("models", "needs at least one [[models]] table")
        checked = tuple(self.model(m, i) for i, m in enumerate(models))
        seen: set[str] = set()
        for m in checked:
            if m.name in seen:
                raise self.fail("models", f"duplicate model name {m.name!r}")
            seen.add(m.name)
        temperatures = raw.get("temperatures", [0.0])
        if not isinstance(temperatures, list) or not temperatures:
            raise self.fail("temperatures", f"must be a non-empty list of numbers, got {temperatures!r}")
        temps = tuple(
            float(self.number({f"[{i}]": t}, f"[{i}]", "temperatures", low=0.0, high=2.0))
            for i, t in enumerate(temperatures)
        )
        if len(set(temps)) != len(temps):
            raise self.fail("temperatures", f"has duplicates: {list(temps)}")
        scorer = self.string(raw, "scorer", "") or "number"
        if scorer not in SCORERS:
            raise self.fail("scorer", f"unknown scorer {scorer!r}; choose one of {', '.join(SCORERS)}")
        scorer_pattern = self.string(raw, "scorer_pattern", "")
        try:
            get_scorer(scorer, pattern=scorer_pattern)
        except ScorerError as exc:
            raise self.fail("scorer_pattern", str(exc)) from exc
        prompt = self.string(raw, "prompt", "") or "{question}"
        self.check_prompt(prompt)
        fsync = raw.get("fsync", "never")
        if not (fsync in FSYNC_POLICIES or (isinstance(fsync, int) and not isinstance(fsync, bool) and fsync > 0)):
            raise self.fail("fsync", f"must be 'never', 'always' or a positive record count, got {fsync!r}")
        replication = raw.get("replication")
        if replication is not None and not isinstance(replication, dict):
            raise self.fail("replication", "must be a table")
        defaults = Spec(path=self.path, name=name, questions=Path(questions), models=checked)
        return Spec(
            path=self.path,
            name=name,
            questions=(self.path.parent / questions),
            models=checked,
            temperatures=temps,
            repeats=_or(self.number(raw, "repeats", "", low=1, integer=True), defaults.repeats),
            system=self.string(raw, "system", ""),
            prompt=prompt,
            max_tokens=_or(self.number(raw, "max_tokens", "", low=1, integer=True), defaults.max_tokens),
            scorer=scorer,
            scorer_pattern=scorer_pattern,
            timeout_s=_or(self.number(raw, "timeout_s", "", low=0, low_open=True), defaults.timeout_s),
            max_attempts=_or(self.number(raw, "max_attempts", "", low=1, integer=True), defaults.max_attempts),
            backoff_base_s=_or(self.number(raw, "backoff_base_s", "", low=0), defaults.backoff_base_s),
            backoff_cap_s=_or(self.number(raw, "backoff_cap_s", "", low=0), defaults.backoff_cap_s),
            max_retry_wait_s=_or(self.number(raw, "max_retry_wait_s", "", low=0), defaults.max_retry_wait_s),
            fsync=fsync,
            sim=self.sim(raw.get("sim", {})),
            replication=replication,
        )

    def check_prompt(self, prompt: str) -> None:
        # Parsed, not searched for "{question}": "{{question}}" is a literal and "{question" is broken.
        try:
            names = {name for _, name, _, _ in Formatter().parse(prompt) if name is not None}
        except ValueError as exc:
            raise self.fail("prompt", f"malformed placeholder ({exc}); write {{{{ or }}}} for a literal brace") from exc
        if "question" not in names:
            raise self.fail("prompt", "must contain the placeholder {question}")

    def model(self, raw: Any, index: int) -> ModelSpec:
        where = f"models[{index}]."
        if not isinstance(raw, dict):
            raise self.fail(f"models[{index}]", "must be a table")
        self.known_keys(raw, {f.name for f in fields(ModelSpec)}, f"models[{index}]")
        name = self.string(raw, "name", where, required=True)
        assert name is not None
        base_url = self.string(raw, "base_url", where)
        gguf = self.string(raw, "gguf", where)
        if (base_url is None) == (gguf is None):
            raise self.fail(f"models[{index}] ({name})", "needs exactly one of base_url or gguf")
        if base_url is not None and base_url != SIM_URL and not base_url.startswith(("http://", "https://")):
            raise self.fail(f"{where}base_url", f"must be 'sim' or an http(s) URL, got {base_url!r}")
        if base_url is not None and _carries_secrets(base_url):
            # The URL is shown in progress and errors: a key in it would be shown too.
            raise self.fail(f"{where}base_url", "must not hold credentials or a query; put the key in api_key_env")
        params = raw.get("params", {})
        if not isinstance(params, dict):
            raise self.fail(f"{where}params", "must be a table of extra request fields")
        reserved = {"model", "messages", "temperature", "max_tokens", "stream"} & set(params)
        if reserved:
            raise self.fail(f"{where}params", f"cannot set {', '.join(sorted(reserved))} (the spec sets them)")
        defaults = ModelSpec(name=name, model=name)
        return ModelSpec(
            name=name,
            model=self.string(raw, "model", where) or name,
            base_url=base_url.rstrip("/") if base_url else None,
            gguf=gguf,
            api_key_env=self.string(raw, "api_key_env", where),
            rpm=self.number(raw, "rpm", where, low=0, low_open=True),
            tpm=self.number(raw, "tpm", where, low=0, low_open=True),
            concurrency=_or(
                self.number(raw, "concurrency", where, low=1, high=10_000, integer=True), defaults.concurrency
            ),
            params=params,
        )

    def sim(self, raw: Any) -> SimConfig:
        """The [sim] table as the target's own config (its defaults live there), checked field by field."""
        if not isinstance(raw, dict):
            raise self.fail("sim", "must be a table")
        self.known_keys(raw, {f.name for f in fields(SimConfig)} - {"facts"}, "sim")
        accuracy = raw.get("accuracy", {})
        if not isinstance(accuracy, dict) or not all(isinstance(v, dict) for v in accuracy.values()):
            raise self.fail("sim.accuracy", "must be a table of model id -> {difficulty = probability}")
        for model, table in accuracy.items():
            for difficulty in table:
                self.number(table, difficulty, f"sim.accuracy.{model}.", low=0, high=1)
        faults = raw.get("faults", {})
        if not isinstance(faults, dict):
            raise self.fail("sim.faults", "must be a table of fault name -> rate")
        if faults:
            self.faults(faults)
        for key in ("default_accuracy", "format_noise"):
            self.number(raw, key, "sim.", low=0, high=1)
        for key in ("latency_ms", "jitter_ms"):
            self.number(raw, key, "sim.", low=0)
        for key in ("rpm", "tpm"):
            self.number(raw, key, "sim.", low=0, low_open=True)
        self.number(raw, "seed", "sim.", low=0, integer=True)
        self.number(raw, "quota_window_s", "sim.", low=0, high=60, low_open=True)
        if raw.get("quota_scope", "model") not in QUOTA_SCOPES:
            raise self.fail("sim.quota_scope", f"must be one of {', '.join(QUOTA_SCOPES)}, got {raw['quota_scope']!r}")
        self.boolean(raw, "rate_headers", "sim.", True)
        try:
            return SimConfig.from_dict(raw)
        except ConfigError as exc:
            raise self.fail("sim", str(exc).removeprefix("sim config: ")) from exc

    def faults(self, faults: Mapping[str, Any]) -> None:
        # Checked here, against the built-in target's own fields, so a misspelt fault is a spec error
        # naming the file rather than a crash when the target starts.
        known = {f.name for f in fields(Faults)}
        self.known_keys(faults, known, "sim.faults")
        total = 0.0
        for fault in faults:
            if fault.endswith("_s"):  # durations (slow_s, retry_after_s), not rates
                self.number(faults, fault, "sim.faults.", low=0)
            else:
                total += self.number(faults, fault, "sim.faults.", low=0, high=1)
        if total > 1.0 + 1e-9:
            raise self.fail("sim.faults", f"fault rates add up to {total:g}, more than 1 (they exclude each other)")


def _carries_secrets(url: str) -> bool:
    parts = urlsplit(url)
    return bool(parts.username or parts.password or parts.query or parts.fragment)


def _or(value: Any, default: Any) -> Any:
    """``value`` unless it was absent; unlike ``or``, keeps a real 0."""
    return default if value is None else value
