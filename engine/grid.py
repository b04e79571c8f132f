"""The grid: models × questions × temperatures × repeats, expanded lazily into tasks.

A task's key is a stable hash of everything that makes it a distinct request
(model label and id, question id, the messages as sent, temperature, repeat index,
sampling parameters), so the same spec gives the same keys on every machine and a
resumed run can tell what is done. Nothing here materialises the grid: a
10-million-task grid is a generator.

Usage::

    for task in iter_tasks(spec, questions, spec.models, done=set()):
        print(task.key, task.model.name, task.question.id, task.temperature, task.repeat)
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Container, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import orjson

from engine.errors import SpecError
from engine.limits import prompt_token_estimate
from engine.questions import Question
from engine.spec import ModelSpec, Spec

KEY_BYTES = 10  # 80 bits: collisions stay below one in a million even at 10^9 tasks


class Task(NamedTuple):
    """One request of the grid: which model, which question, how sampled, and its key."""

    key: str
    model: ModelSpec
    question: Question
    temperature: float
    repeat: int
    messages: list[dict[str, str]]


def build_messages(spec: Spec, question: Question) -> list[dict[str, str]]:
    """The chat messages sent for ``question``: the optional system prompt, then the user prompt.

    Usage: ``build_messages(spec, questions[0])[-1]["content"]``
    """
    try:
        content = spec.prompt.format_map({**question.tags, "question": question.text, "id": question.id})
    except KeyError as exc:
        raise SpecError(f"{spec.path}: prompt: placeholder {exc} is not a question field or tag") from exc
    except (AttributeError, IndexError, TypeError, ValueError) as exc:
        # "{object.foo}", "{question[9]}", "{question:d}": the names exist but the lookup or format fails.
        raise SpecError(
            f"{spec.path}: prompt: cannot fill the placeholders for question {question.id!r} ({exc})"
        ) from exc
    messages = [{"role": "system", "content": spec.system}] if spec.system else []
    messages.append({"role": "user", "content": content})
    return messages


def task_key(
    model: ModelSpec, question: Question, messages: list[dict[str, str]], temperature: float, repeat: int,
    max_tokens: int,
) -> str:
    """The deterministic key of one task (20 hex characters).

    Usage: ``task_key(model, question, messages, 0.0, 0, 32)``
    """
    material = orjson.dumps(
        [model.name, model.model, question.id, messages, temperature, repeat, max_tokens, model.params],
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.blake2b(material, digest_size=KEY_BYTES).hexdigest()


@dataclass(slots=True)
class Skipped:
    """How many tasks a lazy grid passed over as already done, so far. Usage: ``skipped.count``"""

    count: int = 0


def iter_tasks(
    spec: Spec, questions: Sequence[Question], models: Sequence[ModelSpec], *, done: Container[str] = (),
    skipped: Skipped | None = None,
) -> Iterator[Task]:
    """Yield the tasks of ``models`` not in ``done``, models interleaved so each stays busy.

    The prompt is built for every question here, at the call, not on the first ``next()``:
    a placeholder no question can fill is then a SpecError before anything is sent or
    written, not a crash inside a worker. Memory is O(questions), never O(grid).
    ``skipped`` counts the done tasks passed over: exactly the grid's share of the log,
    unlike the log's own size, which may hold keys of a grid since changed.
    Usage: ``tasks = iter_tasks(spec, questions, spec.models, done=finished_keys)``
    """
    prompts = [(question, build_messages(spec, question)) for question in questions]
    return _expand(spec, prompts, models, done, skipped if skipped is not None else Skipped())


def _expand(
    spec: Spec, prompts: Sequence[tuple[Question, list[dict[str, str]]]], models: Sequence[ModelSpec],
    done: Container[str], skipped: Skipped,
) -> Iterator[Task]:
    for repeat in range(spec.repeats):
        for temperature in spec.temperatures:
            for question, messages in prompts:
                for model in models:
                    key = task_key(model, question, messages, temperature, repeat, spec.max_tokens)
                    if key not in done:
                        yield Task(key, model, question, temperature, repeat, messages)
                    else:
                        skipped.count += 1


def grid_size(spec: Spec, n_questions: int) -> int:
    """How many tasks the whole grid has. Usage: ``grid_size(spec, len(questions))``"""
    return len(spec.models) * n_questions * len(spec.temperatures) * spec.repeats


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
    [quotas] table, share a limiter (see ``engine.plan.plan_limiters``).
    Usage: ``plan_model(spec, questions, model).tasks``
    """

    model: str
    endpoint: tuple[str, str | None]  # ModelSpec.endpoint: models with the same one share a connection pool
    tasks: int
    prompt_tokens: int
    max_completion_tokens: int


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
    return ModelPlan(
        model=model.name,
        endpoint=model.endpoint,
        tasks=tasks,
        prompt_tokens=math.ceil(pass_tokens * per_pass),
        max_completion_tokens=tasks * spec.max_tokens,
    )
