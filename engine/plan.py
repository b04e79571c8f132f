"""What a spec will cost before anything is sent: tasks, estimated tokens, time at the configured rates.

Time is planned per limiter, as the run paces it (``engine.quotas.quota_groups``, the one
rule for both): each model id at an endpoint has its own quota, as providers count them,
and models that name one ``[quotas.NAME]`` table share that table's quota, so their tasks
and tokens add up against it. Limiters run side by side: the grid takes as long as the
slowest. The cost is O(questions), never O(grid): a 10-million-task grid plans instantly.

Usage::

    print(make_plan(Path("data/memorisation.toml")).render())
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.grid import ModelPlan, grid_size, pass_prompt_tokens, plan_model
from engine.questions import load_questions
from engine.quotas import QuotaGroup, quota_groups
from engine.spec import load_spec


@dataclass(frozen=True, kw_only=True, slots=True)
class LimiterPlan:
    """One limiter's share of the grid (a model's, or a shared quota's) and the time its quota allows.

    Usage: ``plan_limiters(quota_groups(spec), model_plans)[0].seconds_at_rate``
    """

    label: str  # QuotaGroup.label: who shares it, and where
    shared: bool  # a [quotas.NAME] table
    models: tuple[str, ...]
    tasks: int
    prompt_tokens: int
    max_completion_tokens: int
    rpm: float | None
    tpm: float | None
    concurrency: int
    seconds_at_rate: float | None  # None when no rate is configured for it


def plan_limiters(groups: Sequence[QuotaGroup], plans: Sequence[ModelPlan]) -> tuple[LimiterPlan, ...]:
    """Add up each limiter's model plans; time each at its quota.

    A limiter's time is the larger of (its tasks) / rpm and (its prompt + completion tokens) / tpm.
    ``plans`` are per model label, in any order. Usage:
    ``plan_limiters(quota_groups(spec), [plan_model(spec, questions, m) for m in spec.models])``
    """
    by_label = {p.model: p for p in plans}
    out = []
    for group in groups:
        members = [by_label[m.name] for m in group.models]
        rpm, tpm = group.limits.rpm, group.limits.tpm
        tasks = sum(p.tasks for p in members)
        prompt = sum(p.prompt_tokens for p in members)
        completion = sum(p.max_completion_tokens for p in members)
        limits = []
        if rpm:
            limits.append(tasks / rpm * 60)
        if tpm:
            limits.append((prompt + completion) / tpm * 60)
        out.append(LimiterPlan(
            label=group.label, shared=group.shared, models=tuple(p.model for p in members), tasks=tasks,
            prompt_tokens=prompt, max_completion_tokens=completion, rpm=rpm, tpm=tpm,
            concurrency=group.limits.concurrency, seconds_at_rate=max(limits) if limits else None,
        ))
    return tuple(out)


@dataclass(frozen=True, kw_only=True, slots=True)
class Plan:
    """The grid's size, its cost per model and its time per limiter. Usage: ``make_plan(path).tasks``"""

    name: str
    questions: int
    temperatures: tuple[float, ...]
    repeats: int
    tasks: int
    models: tuple[ModelPlan, ...]
    limiters: tuple[LimiterPlan, ...]

    @property
    def seconds_at_rate(self) -> float | None:
        """The whole grid's time: the slowest limiter's; None unless every limiter has a rate."""
        timed = [e.seconds_at_rate for e in self.limiters if e.seconds_at_rate is not None]
        return max(timed) if timed and len(timed) == len(self.limiters) else None

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
        lines.append("  quotas, each paced on its own, all side by side:")
        for e in self.limiters:
            rates = ", ".join(f"{value:,g} {unit}" for value, unit in ((e.rpm, "rpm"), (e.tpm, "tpm")) if value)
            time_text = (
                "no rate configured" if e.seconds_at_rate is None
                else f"about {_duration(e.seconds_at_rate)} at {rates}"
            )
            lines.append(
                f"    {e.label}: {e.tasks:,} requests, "
                f"~{e.prompt_tokens + e.max_completion_tokens:,} tokens, concurrency {e.concurrency}, {time_text}"
            )
        if (seconds := self.seconds_at_rate) is not None:
            lines.append(f"  whole grid: about {_duration(seconds)} (the slowest quota's time)")
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
        limiters=plan_limiters(quota_groups(spec), models),
    )
