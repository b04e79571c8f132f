"""The experiment spec: a TOML file naming models, questions, temperatures, repeats, prompt and scorer.

Every default lives in the dataclasses below. Unknown keys are errors, not ignored,
because a misspelt ``temprature`` silently running the wrong grid costs real money.

Usage::

    spec = load_spec(Path("data/memorisation.toml"))
    spec.name, [m.name for m in spec.models], spec.temperatures
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from string import Formatter
from typing import Any
from urllib.parse import urlsplit

from engine.endpoint.apis import API, API_NAMES
from engine.endpoint.limits import LimitConfig
from engine.endpoint.retry import RetryPolicy
from engine.errors import ConfigError, ScorerError, SpecError
from engine.experiment.scoring import SCORERS, get_scorer
from engine.experiment.settings import (
    BatchSpec,
    Price,
    QuotaSpec,
    TableChecker,
    or_default,
)
from engine.sim.config import QUOTA_SCOPES, SIM_URL, Faults, SimConfig

FSYNC_POLICIES = ("never", "always")


_RETRY = RetryPolicy()  # frozen: read for its defaults only
_LIMITS = LimitConfig()


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelSpec:
    """One model to evaluate, the endpoint that serves it and the API it is asked through."""

    name: str
    model: str
    api: str = "chat"  # "chat" (Chat Completions), "responses" (OpenAI Responses), "anthropic" (Messages)
    base_url: str | None = None  # "sim" for the built-in target; None when gguf is set
    gguf: str | None = None  # a local GGUF file (relative to the spec) or "smollm2"
    api_key_env: str | None = None
    rpm: float | None = None
    tpm: float | None = None
    concurrency: int = _LIMITS.concurrency
    quota: str | None = None  # the name of a [quotas.NAME] table this model shares with others
    params: Mapping[str, Any] = field(default_factory=dict)  # extra request fields (top_p, seed, ...)
    mode: str = "online"  # "online": one request per task; "batch": the provider's Batch API, half price
    price: Price | None = None  # per million tokens (online); plan and report show cost when given
    # This model's system prompt, instead of the spec's (e.g. facts in context); from `system` or the text of
    # `system_file`. Part of the model's task keys, so answers under two prompts never mix.
    system: str | None = None

    @property
    def endpoint(self) -> tuple[str, str | None]:
        """Where requests go and whose key pays (URL or GGUF file, key variable): models sharing this
        pair share one connection pool; a quota is per model unless a [quotas] table pools them."""
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
    # The retry defaults are RetryPolicy's own (see engine.endpoint.limits): one place for each.
    timeout_s: float = _RETRY.timeout_s
    max_attempts: int = _RETRY.max_attempts
    backoff_base_s: float = _RETRY.base_s  # first retry waits up to this (full jitter), doubling each time
    backoff_cap_s: float = _RETRY.cap_s
    max_retry_wait_s: float = _RETRY.max_wait_s  # caps any wait, a provider's Retry-After included
    fsync: str | int = "never"  # "never", "always", or every N records
    sim: SimConfig = field(default_factory=SimConfig)  # the built-in target's behaviour; its facts come later
    quotas: Mapping[str, QuotaSpec] = field(default_factory=dict)  # shared quotas, named by ModelSpec.quota
    batch: BatchSpec = field(default_factory=BatchSpec)  # the batch route's settings ([batch])
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


class _Checker(TableChecker):
    """Validates one raw TOML document, naming the file and field in every error."""

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
        self.distinct_names(checked)
        quotas = self.quotas(raw.get("quotas", {}), checked)
        self.same_model_same_quota(checked)
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
        max_tokens = or_default(self.number(raw, "max_tokens", "", low=1, integer=True), defaults.max_tokens)
        self.api_limits(checked, temps, max_tokens)
        return Spec(
            path=self.path,
            name=name,
            questions=(self.path.parent / questions),
            models=checked,
            temperatures=temps,
            repeats=or_default(self.number(raw, "repeats", "", low=1, integer=True), defaults.repeats),
            system=self.string(raw, "system", ""),
            prompt=prompt,
            max_tokens=max_tokens,
            scorer=scorer,
            scorer_pattern=scorer_pattern,
            timeout_s=or_default(self.number(raw, "timeout_s", "", low=0, low_open=True), defaults.timeout_s),
            max_attempts=or_default(self.number(raw, "max_attempts", "", low=1, integer=True), defaults.max_attempts),
            backoff_base_s=or_default(self.number(raw, "backoff_base_s", "", low=0), defaults.backoff_base_s),
            backoff_cap_s=or_default(self.number(raw, "backoff_cap_s", "", low=0), defaults.backoff_cap_s),
            max_retry_wait_s=or_default(self.number(raw, "max_retry_wait_s", "", low=0), defaults.max_retry_wait_s),
            fsync=fsync,
            sim=self.sim(raw.get("sim", {})),
            quotas=quotas,
            batch=self.batch(raw.get("batch", {})),
            replication=replication,
        )

    def api_limits(self, models: tuple[ModelSpec, ...], temperatures: tuple[float, ...], max_tokens: int) -> None:
        """What an API refuses, found before a run rather than as a 400 on every task."""
        for index, model in enumerate(models):
            if model.api == "anthropic" and max(temperatures) > 1:
                raise self.fail(f"models[{index}] ({model.name})", f"api 'anthropic' takes temperatures from 0 to 1, "
                                f"the spec has {max(temperatures):g}")
            if model.api == "responses" and max_tokens < 16:
                raise self.fail(f"models[{index}] ({model.name})", "api 'responses' needs max_tokens >= 16 "
                                f"(its max_output_tokens), the spec has {max_tokens}")

    def check_prompt(self, prompt: str) -> None:
        # Parsed, not searched for "{question}": "{{question}}" is a literal and "{question" is broken.
        try:
            names = {name for _, name, _, _ in Formatter().parse(prompt) if name is not None}
        except ValueError as exc:
            raise self.fail("prompt", f"malformed placeholder ({exc}); write {{{{ or }}}} for a literal brace") from exc
        if "question" not in names:
            raise self.fail("prompt", "must contain the placeholder {question}")

    def distinct_names(self, models: tuple[ModelSpec, ...]) -> None:
        # Labels that differ only by case read as one model in a report, and collide as file
        # names on case-insensitive file systems (macOS, Windows).
        folded: dict[str, str] = {}
        for m in models:
            other = folded.get(m.name.casefold())
            if other == m.name:
                raise self.fail("models", f"duplicate model name {m.name!r}")
            if other is not None:
                raise self.fail("models", f"model names {other!r} and {m.name!r} differ only by case; make them distinct")
            folded[m.name.casefold()] = m.name

    def model_name(self, raw: Mapping[str, Any], key: str, where: str, *, required: bool) -> str | None:
        """A model label or id: a non-empty string with no whitespace around it."""
        value = self.string(raw, key, where, required=required)
        if value is not None and value != value.strip():
            # "m1 " would be another label than "m1", and another model id to the provider.
            raise self.fail(f"{where}{key}", f"has leading or trailing whitespace: {value!r}")
        return value

    def model(self, raw: Any, index: int) -> ModelSpec:
        where = f"models[{index}]."
        if not isinstance(raw, dict):
            raise self.fail(f"models[{index}]", "must be a table")
        self.known_keys(raw, {f.name for f in fields(ModelSpec)} | {"system_file"}, f"models[{index}]")
        name = self.model_name(raw, "name", where, required=True)
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
        api = self.string(raw, "api", where) or "chat"
        if api not in API_NAMES:
            raise self.fail(f"{where}api", f"must be one of {', '.join(API_NAMES)}, got {api!r}")
        if api != "chat" and gguf is not None:
            raise self.fail(f"{where}api", f"a gguf model is served over Chat Completions only, not {api!r}")
        params = raw.get("params", {})
        if not isinstance(params, dict):
            raise self.fail(f"{where}params", "must be a table of extra request fields")
        reserved = API[api].reserved & set(params)
        if reserved:
            raise self.fail(f"{where}params", f"cannot set {', '.join(sorted(reserved))} (the spec sets them)")
        quota = self.string(raw, "quota", where)
        own = sorted({"rpm", "tpm", "concurrency"} & set(raw))
        if quota is not None and own:
            # Two sources for one limit: which would win is a guess the user should not have to make.
            raise self.fail(
                f"models[{index}] ({name})",
                f"has its own {', '.join(own)} and also quota = {quota!r}; a model in a shared quota takes its limits "
                f"from [quotas.{quota}] (remove {', '.join(own)} here)",
            )
        defaults = ModelSpec(name=name, model=name)
        return ModelSpec(
            name=name,
            model=self.model_name(raw, "model", where, required=False) or name,
            api=api,
            base_url=base_url.rstrip("/") if base_url else None,
            gguf=gguf,
            api_key_env=self.string(raw, "api_key_env", where),
            rpm=self.number(raw, "rpm", where, low=0, low_open=True),
            tpm=self.number(raw, "tpm", where, low=0, low_open=True),
            concurrency=or_default(
                self.number(raw, "concurrency", where, low=1, high=10_000, integer=True), defaults.concurrency
            ),
            quota=quota,
            params=params,
            mode=self.mode(raw, where, api, gguf),
            price=self.price(raw.get("price"), where),
            system=self.model_system(raw, where),
        )

    def model_system(self, raw: Mapping[str, Any], where: str) -> str | None:
        """A model's own system prompt: ``system`` text, or ``system_file`` (UTF-8, relative to the spec)."""
        text = self.string(raw, "system", where)
        name = self.string(raw, "system_file", where)
        if text is not None and name is not None:
            raise self.fail(f"{where}system_file", "give system or system_file, not both")
        if name is None:
            return text
        path = self.path.parent / name
        try:
            content = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{where}system_file", f"{path} is not UTF-8 text") from None
        except OSError as exc:
            raise self.fail(f"{where}system_file", f"cannot read {path}: {exc.strerror or exc}") from None
        if not content.strip():
            raise self.fail(f"{where}system_file", f"{path} is empty")
        return content.strip()

    def quotas(self, raw: Any, models: tuple[ModelSpec, ...]) -> dict[str, QuotaSpec]:
        """The [quotas.NAME] tables, each named by at least one model, whose models share one endpoint."""
        checked = self.quota_tables(raw)
        members: dict[str, list[ModelSpec]] = {name: [] for name in checked}
        for index, model in enumerate(models):
            if model.quota is None:
                continue
            if model.quota not in checked:
                known = f"defined: {', '.join(sorted(checked))}" if checked else "the spec has no [quotas] tables"
                raise self.fail(f"models[{index}].quota", f"unknown quota {model.quota!r} ({known})")
            members[model.quota].append(model)
        for name, group in members.items():
            if not group:
                raise self.fail(f"quotas.{name}", f'no model names it (add quota = "{name}" to its models)')
            first = group[0]
            for other in group[1:]:
                if other.endpoint != first.endpoint:
                    raise self.fail(
                        f"quotas.{name}",
                        f"models {first.name!r} ({_where(first)}) and {other.name!r} ({_where(other)}) are on "
                        "different endpoints; a shared quota is one endpoint's (same base_url and api_key_env)",
                    )
        return checked

    def same_model_same_quota(self, models: tuple[ModelSpec, ...]) -> None:
        """Labels of one model id at one endpoint (say, two sampling setups) are one quota to the provider,
        so they must say the same about it: the same quota table, or the same rpm, tpm and concurrency."""
        first: dict[tuple[str, str | None, str], ModelSpec] = {}
        for model in models:
            earlier = first.setdefault((*model.endpoint, model.model), model)
            if earlier is model:
                continue
            mine, theirs = _limits_of(model), _limits_of(earlier)
            if mine != theirs:
                raise self.fail(
                    "models",
                    f"{earlier.name!r} and {model.name!r} are one model ({model.model!r}) at one endpoint, which a "
                    f"provider counts as one quota, but set {theirs} and {mine}; set the same, or share a [quotas] table",
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


def _limits_of(model: ModelSpec) -> str:
    """A model's quota settings as the user wrote them, for an error line."""
    if model.quota is not None:
        return f"quota = {model.quota!r}"
    rates = [f"{unit} = {value:g}" for unit, value in (("rpm", model.rpm), ("tpm", model.tpm)) if value]
    return ", ".join([*rates, f"concurrency = {model.concurrency}"])


def _where(model: ModelSpec) -> str:
    """An endpoint as the user wrote it, naming the key's variable, never the key."""
    where, key_env = model.endpoint
    return f"{where}, key ${key_env}" if key_env else f"{where}, no key"


def _carries_secrets(url: str) -> bool:
    parts = urlsplit(url)
    return bool(parts.username or parts.password or parts.query or parts.fragment)
