"""Who answers a model's requests: each model's *target* id, part of every task key.

A task's key must change when whoever answers it changes, or a resumed run would pass
off one target's answers as another's (the simulation's as a real model's, an old GGUF's
as a retrained one's). So every model of a run gets a target id:

- an HTTP endpoint: its normalised ``base_url`` (scheme and host in lower case, the
  default port and a trailing slash dropped). Never the key: the key is a credential,
  and rotating it does not change who answers;
- the built-in target: ``sim:`` and a digest of the settings that change its answers
  for that model (its accuracy rows, ``default_accuracy``, ``format_noise``, ``seed``
  and the facts). Latency, quotas and faults change how it answers, not what;
- a GGUF model: ``gguf:sha256:`` and a prefix of the file's content digest (for
  ``gguf = "smollm2"``, of the packaged file), hashed once per run.

A model asked through another API than Chat Completions (``api = "responses"`` or
``"anthropic"``) has `` api=NAME`` after that id: the request it gets is another one, so
switching a model's API asks everything again. Chat models keep the ids (and keys) they had.

Usage::

    targets = model_targets(spec, questions)
    targets["ft-5x"].id, targets["ft-5x"].simulated   # ('sim:3f2a9c01d4e5', True)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import orjson

from engine.errors import ConfigError
from engine.experiment.grid import Target
from engine.experiment.questions import Question, load_questions
from engine.experiment.spec import ModelSpec, Spec
from engine.results.cache import file_sha256
from engine.sim.config import SIM_URL, SimConfig, SimFact, published_accuracy

__all__ = ["SIM_PREFIX", "Target", "gguf_target", "model_targets", "normalise_url", "sim_target"]

SIM_PREFIX = "sim:"
_DIGEST_HEX = 12  # 48 bits: telling a handful of configurations apart, not resisting an attacker
_GGUF_HEX = 16
_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalise_url(url: str) -> str:
    """``base_url`` as a target id: lower-case scheme and host, no default port, no trailing slash.

    The path keeps its case (servers may tell paths apart by case); user info and query are
    refused by the spec, so they never reach here.
    Usage: ``normalise_url("HTTPS://API.OpenAI.com:443/v1/")  # 'https://api.openai.com/v1'``
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    port = parts.port
    netloc = host if port is None or port == _DEFAULT_PORTS.get(scheme) else f"{host}:{port}"
    return urlunsplit((scheme, netloc, parts.path.rstrip("/"), "", ""))


def sim_target(config: SimConfig, model_id: str) -> str:
    """The built-in target's id for one model id: a digest of what decides its answers.

    ``config`` is the run's sim config with its facts (see :func:`sim_config`).
    Usage: ``sim_target(config, "ft-5x")  # 'sim:3f2a9c01d4e5'``
    """
    rows = {m: dict(config.accuracy[m]) for m in (model_id, "*") if m in config.accuracy}
    material = orjson.dumps(
        {
            "accuracy": rows, "default_accuracy": config.default_accuracy, "format_noise": config.format_noise,
            "seed": config.seed,
            "facts": [(f.question, f.answer, f.object, f.difficulty) for f in config.facts],
        },
        option=orjson.OPT_SORT_KEYS,
    )  # fmt: skip
    return SIM_PREFIX + hashlib.blake2b(material, digest_size=_DIGEST_HEX // 2).hexdigest()


def gguf_target(path: Path) -> str:
    """A GGUF file's id: a prefix of the SHA-256 of its content.

    About 0.3 s for 270 MB the first time; after that a ``stat`` call while the file is unchanged
    (:func:`engine.results.cache.file_sha256`).
    Usage: ``gguf_target(Path("models/ft-5x.gguf"))  # 'gguf:sha256:9b1c...'``
    """
    try:
        digest = file_sha256(path)
    except OSError as exc:
        raise ConfigError(f"cannot read model file {path}: {exc.strerror or exc}") from exc
    return f"gguf:sha256:{digest[:_GGUF_HEX]}"


def model_targets(
    spec: Spec, questions: Sequence[Question], *, sim: SimConfig | None = None
) -> dict[str, Target]:
    """Each model's target, by label; each GGUF file is hashed once however many models share it.

    ``sim`` is the run's sim config; by default the spec's ``[sim]`` table with the questions as facts.
    Usage: ``model_targets(spec, questions)["ft-5x"].simulated``
    """
    if sim is None and any(m.base_url == SIM_URL for m in spec.models):
        sim = sim_config(spec, questions)
    hashed: dict[Path, str] = {}
    return {m.name: _target(spec, m, sim, hashed) for m in spec.models}


def sim_config(spec: Spec, questions: Sequence[Question]) -> SimConfig:
    """The built-in target's configuration for this spec: the [sim] table, with the spec's questions as facts.

    The run starts the target with it and the targets' ids digest it: one definition for both.
    Usage: ``SimProcess(sim_config(spec, questions))``
    """
    return replace(spec.sim, facts=facts_from_questions(questions))


def _target(spec: Spec, model: ModelSpec, sim: SimConfig | None, hashed: dict[Path, str]) -> Target:
    target = _answerer(spec, model, sim, hashed)
    if model.api == "chat":
        return target
    return Target(id=f"{target.id} api={model.api}", simulated=target.simulated)


def _answerer(spec: Spec, model: ModelSpec, sim: SimConfig | None, hashed: dict[Path, str]) -> Target:
    if model.gguf is not None:
        # Late: the llama.cpp serving module (with urllib, about 0.015 s) only for a local model.
        from engine.local.serve import resolve_model

        local = model.gguf if model.gguf.strip().lower() == "smollm2" else spec.path.parent / model.gguf
        path = resolve_model(local).resolve()
        if path not in hashed:
            hashed[path] = gguf_target(path)
        return Target(id=hashed[path], simulated=False)
    if model.base_url == SIM_URL:
        assert sim is not None
        return Target(id=sim_target(sim, model.model), simulated=True)
    assert model.base_url is not None
    return Target(id=normalise_url(model.base_url), simulated=False)


def facts_from_questions(questions: Iterable[Question]) -> tuple[SimFact, ...]:
    """The facts the sim answers from, one per question of a loaded question set.

    Usage: ``facts_from_questions(load_questions(Path("data/facts.csv")))``
    """
    return tuple(
        SimFact(question=q.text, answer=q.answer, object=q.tags.get("object"), difficulty=q.tags.get("difficulty"))
        for q in questions
    )


def facts_from_csv(path: Path) -> tuple[SimFact, ...]:
    """Read a question set (the wide fact CSV, or long CSV/JSONL) with the engine's one loader.

    Usage: ``facts_from_csv(Path("data/facts.csv"))``
    """
    return facts_from_questions(load_questions(Path(path)))


def default_config(facts_path: Path | None = None) -> SimConfig:
    """The sim the README starts: the project's facts and the published models' accuracy.

    Without ``facts_path`` it looks for ``data/facts.csv`` in the working directory, then in the
    source checkout this module belongs to.
    Usage: ``default_config(Path("data/facts.csv"))``
    """
    if facts_path is None:
        candidates = [
            Path.cwd() / "data" / "facts.csv",
            Path(__file__).resolve().parents[1] / "data" / "facts.csv",
        ]
        facts_path = next((p for p in candidates if p.is_file()), None)
        if facts_path is None:
            raise ConfigError("no data/facts.csv here: pass --facts PATH or a config")
    return SimConfig(facts=facts_from_csv(facts_path), accuracy=published_accuracy())
