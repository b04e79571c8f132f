"""What a spec will cost before anything is sent: tasks, estimated tokens, time at the configured rates.

The cost is O(questions), never O(grid): a 10-million-task grid plans instantly.

Usage::

    print(make_plan(Path("data/memorisation.toml")).render())
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.grid import ModelPlan, grid_size, plan_model
from engine.questions import load_questions
from engine.spec import load_spec


@dataclass(frozen=True, kw_only=True, slots=True)
class Plan:
    """The grid's size and cost per model. Usage: ``make_plan(path).tasks``"""

    name: str
    questions: int
    temperatures: tuple[float, ...]
    repeats: int
    tasks: int
    models: tuple[ModelPlan, ...]

    def render(self) -> str:
        lines = [
            f"experiment {self.name!r}: {len(self.models)} models × {self.questions:,} questions × "
            f"{len(self.temperatures)} temperatures × {self.repeats} repeats = {self.tasks:,} tasks",
        ]
        for m in self.models:
            time_text = "no rate configured" if m.seconds_at_rate is None else f"{_duration(m.seconds_at_rate)} at its rate"
            lines.append(
                f"  {m.model}: {m.tasks:,} tasks, ~{m.prompt_tokens:,} prompt tokens, "
                f"≤ {m.max_completion_tokens:,} completion tokens, {time_text}"
            )
        timed = [m.seconds_at_rate for m in self.models if m.seconds_at_rate is not None]
        if timed and len(timed) == len(self.models):
            lines.append(f"  whole grid: about {_duration(max(timed))} (models run side by side)")
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
    return Plan(
        name=spec.name,
        questions=len(questions),
        temperatures=spec.temperatures,
        repeats=spec.repeats,
        tasks=grid_size(spec, len(questions)),
        models=tuple(plan_model(spec, questions, m) for m in spec.models),
    )
