"""What a replication will do before it does it: which models it trains, which it reuses, and how long.

The figures are rough rates measured on the project's 2-core machine (no GPU), one torch thread
per model: SmolLM2-135M fine-tunes at about 0.45 s per example and epoch (572 s for 5x, 2,920 s for
50x at 3 epochs), the tiny from-scratch model at about 2 ms; llama.cpp answers about 5 requests/s
per model served. Another machine, or a faster trainer, scales them; they are for planning only.

Usage::

    lines = plan_lines(["5x-s0", "smollm2"], {"5x-s0": 5}, base="smollm2", epochs=3, n_facts=50, reused=set())
    print(render_plan(lines, grid_per_model=900))
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from engine.run.plan import rough_duration

__all__ = ["EVAL_REQUESTS_PER_S", "SECONDS_PER_EXAMPLE_EPOCH", "PlanLine", "plan_lines", "render_plan"]

SECONDS_PER_EXAMPLE_EPOCH: Mapping[str, float] = {"smollm2": 0.45, "tiny": 0.002}
"""Training seconds per example and epoch, per base, one thread (measured; see the module docstring)."""

EVAL_REQUESTS_PER_S = 5.0
"""Evaluation requests per second per locally served model (llama.cpp, one thread, 4 in flight)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PlanLine:
    """One model's line in the plan. Usage: ``f"{line.label}: {line.action} ~{line.seconds:.0f} s"``"""

    label: str
    action: str  # "train", "reuse" or "evaluate only"
    seconds: float


def plan_lines(
    evaluated: Sequence[str], trained: Mapping[str, int], *, base: str, epochs: int, n_facts: int,
    reused: Collection[str],
) -> list[PlanLine]:
    """A line per model of the spec (``trained``: label -> wordings per fact), with estimated training time.

    Usage: ``plan_lines(["5x-s0", "smollm2"], {"5x-s0": 5}, base="smollm2", epochs=3, n_facts=50, reused=set())``
    """
    rate = SECONDS_PER_EXAMPLE_EPOCH.get(base, SECONDS_PER_EXAMPLE_EPOCH["smollm2"])
    lines = []
    for label in evaluated:
        examples = trained.get(label)
        if examples is None:
            lines.append(PlanLine(label=label, action="evaluate only", seconds=0.0))
        elif label in reused:
            lines.append(PlanLine(label=label, action="reuse", seconds=0.0))
        else:
            lines.append(PlanLine(label=label, action="train", seconds=rate * examples * n_facts * epochs))
    return lines


def render_plan(lines: list[PlanLine], *, grid_per_model: int) -> str:
    """The plan as printed before anything is trained: per model, then the totals.

    Models trained anew are asked every task (a new GGUF is a new target); the others may find
    their answers in the log already, so the evaluation figure is an upper bound.
    Usage: ``print(render_plan(lines, grid_per_model=900))``
    """
    todo_tasks = grid_per_model * len(lines)
    out = ["plan:"]
    for line in lines:
        cost = f"~{rough_duration(line.seconds)}" if line.action == "train" else ""
        out.append(f"  {line.label:<16} {line.action:<14} {cost}")
    train_s = sum(line.seconds for line in lines)
    eval_s = todo_tasks / EVAL_REQUESTS_PER_S
    n_train = sum(1 for line in lines if line.action == "train")
    out.append(
        f"  {n_train} model(s) to train (~{rough_duration(train_s)} one after another), "
        f"at most {todo_tasks} task(s) to ask (~{rough_duration(eval_s)}, less what the log holds); "
        f"estimates from this project's 2-core machine"
    )
    return "\n".join(out)

