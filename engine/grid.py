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
from collections.abc import Container, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import orjson

from engine.errors import SpecError
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
    except (KeyError, IndexError, ValueError) as exc:
        raise SpecError(f"{spec.path}: prompt: placeholder {exc} is not a question field or tag") from exc
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


def iter_tasks(
    spec: Spec, questions: Sequence[Question], models: Sequence[ModelSpec], *, done: Container[str] = ()
) -> Iterator[Task]:
    """Yield the tasks of ``models`` not in ``done``, models interleaved so each stays busy.

    The prompt is built for every question here, at the call, not on the first ``next()``:
    a placeholder no question can fill is then a SpecError before anything is sent or
    written, not a crash inside a worker. Memory is O(questions), never O(grid).
    Usage: ``tasks = iter_tasks(spec, questions, spec.models, done=finished_keys)``
    """
    prompts = [(question, build_messages(spec, question)) for question in questions]
    return _expand(spec, prompts, models, done)


def _expand(
    spec: Spec, prompts: Sequence[tuple[Question, list[dict[str, str]]]], models: Sequence[ModelSpec],
    done: Container[str],
) -> Iterator[Task]:
    for repeat in range(spec.repeats):
        for temperature in spec.temperatures:
            for question, messages in prompts:
                for model in models:
                    key = task_key(model, question, messages, temperature, repeat, spec.max_tokens)
                    if key not in done:
                        yield Task(key, model, question, temperature, repeat, messages)


def grid_size(spec: Spec, n_questions: int) -> int:
    """How many tasks the whole grid has. Usage: ``grid_size(spec, len(questions))``"""
    return len(spec.models) * n_questions * len(spec.temperatures) * spec.repeats


def estimate_tokens(text_chars: int) -> int:
    """A rough token count for text of this many characters (about four characters a token).

    Usage: ``estimate_tokens(len(prompt))``
    """
    return text_chars // 4 + 1


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelPlan:
    """What one model's share of the grid costs, before anything is sent."""

    model: str
    tasks: int
    prompt_tokens: int
    max_completion_tokens: int
    seconds_at_rate: float | None  # None when the endpoint has no configured rate


def plan_model(spec: Spec, questions: Sequence[Question], model: ModelSpec) -> ModelPlan:
    """Tasks, estimated tokens and the time the model's configured rates allow.

    Cost is O(questions): the rest of the grid only multiplies.
    Usage: ``plan_model(spec, questions, spec.models[0]).seconds_at_rate``
    """
    per_pass = len(spec.temperatures) * spec.repeats
    chars = sum(sum(len(m["content"]) for m in build_messages(spec, q)) for q in questions)
    tasks = len(questions) * per_pass
    prompt_tokens = (estimate_tokens(chars) + 4 * len(questions)) * per_pass
    completion_tokens = tasks * spec.max_tokens
    limits = []
    if model.rpm:
        limits.append(tasks / model.rpm * 60)
    if model.tpm:
        limits.append((prompt_tokens + completion_tokens) / model.tpm * 60)
    return ModelPlan(
        model=model.name,
        tasks=tasks,
        prompt_tokens=prompt_tokens,
        max_completion_tokens=completion_tokens,
        seconds_at_rate=max(limits) if limits else None,
    )
