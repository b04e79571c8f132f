"""What a spec will cost before anything is sent: tasks, estimated tokens, time at the configured rates.

Time is planned per endpoint, as the run paces it: models with the same
``ModelSpec.endpoint`` (URL or GGUF file, and API key variable) share one limiter
whose rpm and tpm are the tightest their models set, so their tasks and tokens add
up against one quota. Endpoints run side by side: the grid takes as long as the
slowest. The cost is O(questions), never O(grid): a 10-million-task grid plans instantly.

Usage::

    print(make_plan(Path("data/memorisation.toml")).render())
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.grid import ModelPlan, grid_size, pass_prompt_tokens, plan_model
from engine.limits import LimitConfig
from engine.questions import load_questions
from engine.spec import SIM_URL, ModelSpec, load_spec


@dataclass(frozen=True, kw_only=True, slots=True)
class EndpointPlan:
    """One endpoint's share of the grid and the time its shared limits allow.

    Usage: ``plan_endpoints(spec.models, model_plans)[0].seconds_at_rate``
    """

    endpoint: tuple[str, str | None]  # ModelSpec.endpoint
    models: tuple[str, ...]
    tasks: int
    prompt_tokens: int
    max_completion_tokens: int
    rpm: float | None  # the tightest rpm its models set, as the run's limiter uses
    tpm: float | None
    seconds_at_rate: float | None  # None when no rate is configured for it

    @property
    def label(self) -> str:
        """How the endpoint is named to the user (the key's variable name, never the key)."""
        where, key_env = self.endpoint
        if where == SIM_URL:
            where = "sim (built-in target)"
        elif where.startswith("gguf:"):
            where = f"local {where[len('gguf:'):]}"
        return f"{where} (key ${key_env})" if key_env else where


def plan_endpoints(models: Sequence[ModelSpec], plans: Sequence[ModelPlan]) -> tuple[EndpointPlan, ...]:
    """Group model plans by endpoint; time each group at its shared quota.

    A group's time is the larger of (its tasks) / rpm and (its prompt + completion tokens) / tpm,
    with rpm and tpm the smallest its models set: LimitConfig.for_models, as the run's limiter.
    Usage: ``plan_endpoints(spec.models, [plan_model(spec, questions, m) for m in spec.models])``
    """
    groups: dict[tuple[str, str | None], list[tuple[ModelSpec, ModelPlan]]] = {}
    for model, plan in zip(models, plans, strict=True):
        groups.setdefault(model.endpoint, []).append((model, plan))
    out = []
    for endpoint, members in groups.items():
        shared = LimitConfig.for_models([m for m, _ in members])
        rpm, tpm = shared.rpm, shared.tpm
        tasks = sum(p.tasks for _, p in members)
        prompt = sum(p.prompt_tokens for _, p in members)
        completion = sum(p.max_completion_tokens for _, p in members)
        limits = []
        if rpm:
            limits.append(tasks / rpm * 60)
        if tpm:
            limits.append((prompt + completion) / tpm * 60)
        out.append(EndpointPlan(
            endpoint=endpoint, models=tuple(p.model for _, p in members), tasks=tasks, prompt_tokens=prompt,
            max_completion_tokens=completion, rpm=rpm, tpm=tpm, seconds_at_rate=max(limits) if limits else None,
        ))
    return tuple(out)


@dataclass(frozen=True, kw_only=True, slots=True)
class Plan:
    """The grid's size, its cost per model and its time per endpoint. Usage: ``make_plan(path).tasks``"""

    name: str
    questions: int
    temperatures: tuple[float, ...]
    repeats: int
    tasks: int
    models: tuple[ModelPlan, ...]
    endpoints: tuple[EndpointPlan, ...]

    @property
    def seconds_at_rate(self) -> float | None:
        """The whole grid's time: the slowest endpoint's; None unless every endpoint has a rate."""
        timed = [e.seconds_at_rate for e in self.endpoints if e.seconds_at_rate is not None]
        return max(timed) if timed and len(timed) == len(self.endpoints) else None

    def render(self) -> str:
        lines = [
            f"experiment {self.name!r}: {len(self.models)} models × {self.questions:,} questions × "
            f"{len(self.temperatures)} temperatures × {self.repeats} repeats = {self.tasks:,} tasks",
        ]
        for m in self.models:
            lines.append(
                f"  {m.model}: {m.tasks:,} tasks, ~{m.prompt_tokens:,} prompt tokens, "
                f"≤ {m.max_completion_tokens:,} completion tokens"
            )
        for e in self.endpoints:
            rates = ", ".join(f"{value:,g} {unit}" for value, unit in ((e.rpm, "rpm"), (e.tpm, "tpm")) if value)
            time_text = (
                "no rate configured" if e.seconds_at_rate is None
                else f"about {_duration(e.seconds_at_rate)} at {rates}"
            )
            lines.append(
                f"  endpoint {e.label} [{', '.join(e.models)}]: {e.tasks:,} requests, "
                f"~{e.prompt_tokens + e.max_completion_tokens:,} tokens, {time_text}"
            )
        if (seconds := self.seconds_at_rate) is not None:
            lines.append(
                f"  whole grid: about {_duration(seconds)} "
                "(endpoints run side by side; models on one endpoint share its limits)"
            )
        return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def make_plan(spec_path: Path) -> Plan:
    """Plan a spec: sends nothing, writes nothing. Usage: ``make_plan(Path("data/memorisation.toml"))``"""
    spec = load_spec(spec_path)
    questions = load_questions(spec.questions)
    pass_tokens = pass_prompt_tokens(spec, questions)  # the same messages go to every model
    models = tuple(plan_model(spec, questions, m, pass_tokens=pass_tokens) for m in spec.models)
    return Plan(
        name=spec.name,
        questions=len(questions),
        temperatures=spec.temperatures,
        repeats=spec.repeats,
        tasks=grid_size(spec, len(questions)),
        models=models,
        endpoints=plan_endpoints(spec.models, models),
    )
