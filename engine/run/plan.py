"""What a spec will cost before anything is sent: tasks, estimated tokens, time at the configured rates.

Time is planned per limiter, as the run paces it (``engine.run.quotas.quota_groups``, the one
rule for both): each model id at an endpoint has its own quota, as providers count them,
and models that name one ``[quotas.NAME]`` table share that table's quota, so their tasks
and tokens add up against it. Limiters run side by side: the grid takes as long as the
slowest. The cost is O(questions), never O(grid): a 10-million-task grid plans instantly.

Usage::

    print(make_plan(Path("data/memorisation.toml")).render())
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.endpoint.limits import prompt_token_estimate
from engine.experiment.grid import build_messages, grid_size
from engine.experiment.questions import Question, load_questions
from engine.experiment.settings import BATCH_DISCOUNT
from engine.experiment.spec import ModelSpec, Spec, load_spec
from engine.run.quotas import QuotaGroup, quota_groups


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
                f"≤ {m.max_completion_tokens:,} completion tokens" + (" (batch route)" if m.mode == "batch" else "")
            )
            if m.cost_online is not None and m.cost_batch is not None:
                lines.append(f"    cost at most {_dollars(m.cost_online)} online, {_dollars(m.cost_batch)} batch"
                             f" (completions at max_tokens; this spec sends it {m.mode})")
        lines.append("  quotas, each paced on its own, all side by side:")
        for e in self.limiters:
            rates = ", ".join(f"{value:,g} {unit}" for value, unit in ((e.rpm, "rpm"), (e.tpm, "tpm")) if value)
            time_text = (
                "no rate configured" if e.seconds_at_rate is None
                else f"about {rough_duration(e.seconds_at_rate)} at {rates}"
            )
            lines.append(
                f"    {e.label}: {e.tasks:,} requests, "
                f"~{e.prompt_tokens + e.max_completion_tokens:,} tokens, concurrency {e.concurrency}, {time_text}"
            )
        if (seconds := self.seconds_at_rate) is not None:
            lines.append(f"  whole grid: about {rough_duration(seconds)} (the slowest quota's time)")
        priced = [m for m in self.models if m.cost_online is not None and m.cost_batch is not None]
        if priced:
            online = sum(m.cost_online or 0.0 for m in priced)
            batch = sum(m.cost_batch or 0.0 for m in priced)
            chosen = sum((m.cost_batch if m.mode == "batch" else m.cost_online) or 0.0 for m in priced)
            unpriced = len(self.models) - len(priced)
            lines.append(f"  cost at most: {_dollars(online)} all online, {_dollars(batch)} all batch, {_dollars(chosen)} as the "
                         f"spec routes it" + (f" ({unpriced} models without a price)" if unpriced else ""))
        return "\n".join(lines)


def _dollars(amount: float) -> str:
    """Cents for real sums, four decimals for the small ones a test grid costs."""
    return f"${amount:,.2f}" if amount >= 1 else f"${amount:.4f}"


def rough_duration(seconds: float) -> str:
    """A time to the unit a plan needs: ``45s``, ``12 min``, ``3.5 h``. Usage: ``rough_duration(725)  # '12 min'``"""
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

def pass_prompt_tokens(spec: Spec, questions: Sequence[Question]) -> float:
    """Estimated prompt tokens of one pass over ``questions`` (one temperature, one repeat, one model).

    Every model is sent the same messages, so a plan computes this once. Cost is O(questions).
    Usage: ``pass_prompt_tokens(spec, questions)``
    """
    return sum(_prompt_tokens(build_messages(spec, q)) for q in questions)


def _prompt_tokens(messages: list[dict[str, str]]) -> float:
    return prompt_token_estimate(sum(len(m["content"]) for m in messages), messages=len(messages))


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelPlan:
    """What one model's share of the grid costs, before anything is sent.

    Time is not a property of one model label: labels of one model id, or of one
    [quotas] table, share a limiter (see ``engine.run.plan.plan_limiters``).
    Usage: ``plan_model(spec, questions, model).tasks``
    """

    model: str
    endpoint: tuple[str, str | None]  # ModelSpec.endpoint: models with the same one share a connection pool
    tasks: int
    prompt_tokens: int
    max_completion_tokens: int
    mode: str = "online"
    cost_online: float | None = None  # dollars at the model's price, completions at max_tokens (an upper bound)
    cost_batch: float | None = None  # the same through the Batch API: half


def plan_model(
    spec: Spec, questions: Sequence[Question], model: ModelSpec, *, pass_tokens: float | None = None
) -> ModelPlan:
    """Tasks and estimated tokens of one model's share of the grid.

    ``pass_tokens`` is ``pass_prompt_tokens(spec, questions)`` when the caller already has it.
    Cost is O(questions): the rest of the grid only multiplies.
    Usage: ``plan_model(spec, questions, spec.models[0]).prompt_tokens``
    """
    per_pass = len(spec.temperatures) * spec.repeats
    if pass_tokens is None:
        pass_tokens = pass_prompt_tokens(spec, questions)
    tasks = len(questions) * per_pass
    prompt, completion = math.ceil(pass_tokens * per_pass), tasks * spec.max_tokens
    online = model.price.cost(prompt, completion) if model.price is not None else None
    return ModelPlan(
        model=model.name,
        endpoint=model.endpoint,
        tasks=tasks,
        prompt_tokens=prompt,
        max_completion_tokens=completion,
        mode=model.mode,
        cost_online=online,
        cost_batch=None if online is None else online * BATCH_DISCOUNT,
    )
