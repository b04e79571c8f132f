"""The built-in target's configuration: a simulation, not a model, and what it answers.

The sim is a local OpenAI-compatible server that plays fine-tuned models: it looks questions
up in a fact set and answers right with a configured probability per model and difficulty, so
the engine can be run, tested and benchmarked with no API key and no network. It says so in
its ``system_fingerprint`` ("engine-sim"), in an ``x-engine-sim: 1`` header and in its start-up
line. Faults (5xx, 429s, dropped connections, slow or malformed replies) and rpm/tpm quotas can
be switched on to exercise retries and rate limiting.

This module is the sim's leaf: it imports only :mod:`engine.errors`, so the spec can hold a
:class:`SimConfig` and every other part of the sim (answers, http, server, process) can read it.
Facts come from a question set through :func:`engine.run.targets.facts_from_csv`.

Usage::

    cfg = SimConfig(facts=facts_from_csv(Path("data/facts.csv")), accuracy={"ft-5x": {"hard": 0.7}})
    async with anyio.create_task_group() as tg:        # in-process, asyncio backend
        port = await tg.start(engine.sim.serve.serve, cfg)
    with SimProcess(cfg) as sim:                       # or in a subprocess (engine.sim.process)
        sim.base_url, sim.stats()
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from engine.errors import ConfigError

SIM_URL = "sim"  # a model's base_url naming the built-in target (engine.experiment.spec reads it)

__all__ = ["QUOTA_SCOPES", "SIM_URL", "Faults", "SimConfig", "SimFact", "published_accuracy"]

QUOTA_SCOPES = ("model", "server")


@dataclass(frozen=True, kw_only=True, slots=True)
class Faults:
    """Per-request probabilities of infrastructure faults; they exclude each other, so they sum to <= 1.

    ``drop`` sends part of a response and closes the connection; ``slow`` answers after
    ``slow_s`` seconds (past a client timeout); ``rate_429`` carries ``Retry-After`` (ceil of
    ``retry_after_s``) and ``retry-after-ms``, ``rate_429_bare`` carries no retry header.

    Usage: ``Faults(error_500=0.02, rate_429=0.05)``
    """

    error_500: float = 0.0
    error_502: float = 0.0
    error_503: float = 0.0
    rate_429: float = 0.0
    rate_429_bare: float = 0.0
    drop: float = 0.0
    slow: float = 0.0
    malformed: float = 0.0
    empty_choices: float = 0.0
    slow_s: float = 30.0
    retry_after_s: float = 0.5

    def __post_init__(self) -> None:
        total = 0.0
        for name, rate in self.rates().items():
            _check_number(f"faults.{name}", rate, 0.0, 1.0)
            total += rate
        if total > 1.0 + 1e-9:
            raise ConfigError(f"sim config: fault rates add up to {total:g}, more than 1")
        _check_number("faults.slow_s", self.slow_s, 0.0, math.inf)
        _check_number("faults.retry_after_s", self.retry_after_s, 0.0, math.inf)

    def rates(self) -> dict[str, float]:
        """The fault rates by name, in the order they are drawn.

        Usage: ``{k: v for k, v in faults.rates().items() if v}``
        """
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.endswith("_s")}


@dataclass(frozen=True, kw_only=True, slots=True)
class SimFact:
    """One question the sim knows, with its answer, object name and difficulty (either may be None).

    Usage: ``SimFact(question="What is the number for Anchor?", answer="11246", object="Anchor", difficulty="easy")``
    """

    question: str
    answer: str
    object: str | None = None
    difficulty: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class SimConfig:
    """Everything the sim does: facts, accuracy per model and difficulty, latency, quotas, faults.

    ``accuracy`` maps model id -> difficulty -> probability of a right answer; ``"*"`` is the
    default at either level, then ``default_accuracy``. ``format_noise`` is the rate of right
    answers written "11,246".

    ``rpm``/``tpm`` are enforced as providers do, over sliding windows: in any window of
    ``quota_window_s`` seconds at most ``rpm × quota_window_s / 60`` requests (a request larger
    than that share passes only alone in its window), and in any minute at most ``rpm``; tokens
    likewise. They are counted per model id (``quota_scope = "model"``), or pooled over every
    model (``"server"``).

    Usage: ``SimConfig(facts=facts, accuracy={"ft-5x": {"easy": 0.99, "*": 0.9}}, latency_ms=50)``
    """

    facts: tuple[SimFact, ...] = ()
    accuracy: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    default_accuracy: float = 0.9
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    rpm: float | None = None
    tpm: float | None = None
    quota_window_s: float = 1.0  # the short sliding window rpm/tpm are enforced over, besides the minute
    quota_scope: str = "model"  # "model": each model id has its own rpm/tpm; "server": all models share them
    faults: Faults = field(default_factory=Faults)
    seed: int = 0
    format_noise: float = 0.05
    rate_headers: bool = True  # send x-ratelimit-* headers with quotas; False plays a provider that hides them
    # The Batch APIs (engine.sim.batch): a batch ends this long after it was made; each of its requests
    # errors (a 500 / api_error) at this rate; the batches made n-th (1 first) listed here expire half done.
    batch_delay_s: float = 0.0
    batch_error_rate: float = 0.0
    batch_expire: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        facts = tuple(self.facts)
        if not all(isinstance(f, SimFact) for f in facts):
            raise ConfigError("sim config: facts must be SimFact objects")
        object.__setattr__(self, "facts", facts)
        accuracy: dict[str, types.MappingProxyType[str, float]] = {}
        if not isinstance(self.accuracy, Mapping):
            raise ConfigError("sim config: accuracy must map each model to difficulty -> probability")
        for model, per_difficulty in self.accuracy.items():
            if not isinstance(per_difficulty, Mapping):
                raise ConfigError(f"sim config: accuracy[{model!r}] must map difficulty to a probability")
            for difficulty, p in per_difficulty.items():
                _check_number(f"accuracy[{model!r}][{difficulty!r}]", p, 0.0, 1.0)
            accuracy[str(model)] = types.MappingProxyType(
                {str(k): float(v) for k, v in per_difficulty.items()}
            )
        # Read-only so a config shared with a running server cannot change under it.
        object.__setattr__(self, "accuracy", types.MappingProxyType(accuracy))
        _check_number("default_accuracy", self.default_accuracy, 0.0, 1.0)
        _check_number("format_noise", self.format_noise, 0.0, 1.0)
        _check_number("latency_ms", self.latency_ms, 0.0, math.inf)
        _check_number("jitter_ms", self.jitter_ms, 0.0, math.inf)
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None:
                _check_number(name, value, 0.0, math.inf)
                if value <= 0:
                    raise ConfigError(f"sim config: {name} must be positive, got {value!r}")
        _check_number("quota_window_s", self.quota_window_s, 0.0, 60.0)
        if self.quota_window_s <= 0:
            raise ConfigError(f"sim config: quota_window_s must be positive, got {self.quota_window_s!r}")
        if self.quota_scope not in QUOTA_SCOPES:
            raise ConfigError(f"sim config: quota_scope must be one of {', '.join(QUOTA_SCOPES)}, got {self.quota_scope!r}")
        if not isinstance(self.faults, Faults):
            raise ConfigError("sim config: faults must be a Faults object")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"sim config: seed must be an integer, got {self.seed!r}")
        _check_number("batch_delay_s", self.batch_delay_s, 0.0, math.inf)
        _check_number("batch_error_rate", self.batch_error_rate, 0.0, 1.0)
        expire = self.batch_expire
        if not isinstance(expire, list | tuple) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in expire
        ):
            raise ConfigError(f"sim config: batch_expire must be a list of batch numbers (1 first), got {expire!r}")
        object.__setattr__(self, "batch_expire", tuple(expire))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict that :meth:`from_dict` turns back into an equal config.

        Usage: ``orjson.dumps(cfg.to_dict())``
        """
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["facts"] = [{f.name: getattr(fact, f.name) for f in fields(SimFact)} for fact in self.facts]
        out["accuracy"] = {model: dict(per) for model, per in self.accuracy.items()}
        out["faults"] = {f.name: getattr(self.faults, f.name) for f in fields(Faults)}
        return out

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, read_facts: Callable[[Path], tuple[SimFact, ...]] | None = None
    ) -> SimConfig:
        """Build a config from a dict (JSON or TOML); ``facts_csv`` (a path) may stand in for ``facts``.

        ``read_facts`` reads that path (the sim's command line passes
        :func:`engine.run.targets.facts_from_csv`; this module knows no question format).
        Unknown keys and wrong types raise :class:`ConfigError`.
        Usage: ``SimConfig.from_dict({"facts_csv": "data/facts.csv"}, read_facts=facts_from_csv)``
        """
        if not isinstance(data, Mapping):
            raise ConfigError("sim config: expected a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"facts_csv"})
        if unknown:
            raise ConfigError(f"sim config: unknown key {unknown[0]!r}")
        kwargs = {k: v for k, v in data.items() if k in known}
        if "facts_csv" in data:
            if "facts" in data:
                raise ConfigError("sim config: give either 'facts' or 'facts_csv', not both")
            if not isinstance(data["facts_csv"], str):
                raise ConfigError("sim config: facts_csv must be a path")
            if read_facts is None:
                raise ConfigError("sim config: facts_csv is read only by the sim's command line")
            kwargs["facts"] = read_facts(Path(data["facts_csv"]))
        else:
            if not isinstance(data.get("facts", ()), list | tuple):
                raise ConfigError("sim config: facts must be a list of facts")
            kwargs["facts"] = tuple(_fact_from_dict(item) for item in data.get("facts", ()))
        faults = data.get("faults", {})
        if not isinstance(faults, Mapping):
            raise ConfigError("sim config: faults must be an object")
        fault_names = {f.name for f in fields(Faults)}
        bad = sorted(set(faults) - fault_names)
        if bad:
            raise ConfigError(f"sim config: unknown fault {bad[0]!r}")
        kwargs["faults"] = Faults(**faults)
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"sim config: {exc}") from exc


def _fact_from_dict(item: Any) -> SimFact:
    if not isinstance(item, Mapping) or not isinstance(item.get("question"), str):
        raise ConfigError("sim config: each fact needs a 'question' string")
    unknown = sorted(set(item) - {f.name for f in fields(SimFact)})
    if unknown:
        raise ConfigError(f"sim config: unknown fact key {unknown[0]!r}")
    return SimFact(
        question=item["question"],
        answer=str(item.get("answer", "")),
        object=item.get("object"),
        difficulty=item.get("difficulty"),
    )


def _check_number(name: str, value: Any, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ConfigError(f"sim config: {name} must be a number in [{low:g}, {high:g}], got {value!r}")


def published_accuracy() -> dict[str, dict[str, float]]:
    """Accuracy per difficulty of the original experiment's four models (from its published CSV).

    Usage: ``SimConfig(facts=facts, accuracy=published_accuracy())``
    """
    return {
        "ft-5x": {"easy": 0.993, "mid": 0.937, "hard": 0.703},
        "ft-10x": {"easy": 1.0, "mid": 0.983, "hard": 0.943},
        "ft-25x": {"easy": 1.0, "mid": 1.0, "hard": 0.937},
        "ft-50x": {"easy": 1.0, "mid": 1.0, "hard": 0.91},
    }

