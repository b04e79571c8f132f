"""The grid: stable task keys, lazy expansion, resume skipping, model interleaving, and the plan's arithmetic."""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import random
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator

import pytest

from engine.endpoint.limits import EndpointLimiter, LimitConfig, prompt_token_estimate
from engine.errors import SpecError
from engine.experiment.grid import (
    Grid,
    GridModel,
    Skipped,
    Span,
    Task,
    build_grid,
    build_messages,
    grid_rows,
    grid_size,
    iter_tasks,
    shard_of,
    task_key,
)
from engine.experiment.keys import KeySet
from engine.experiment.questions import Question, load_questions
from engine.experiment.spec import ModelSpec, Spec, load_spec
from engine.run.plan import pass_prompt_tokens, plan_model
from engine.run.targets import model_targets
from tests.conftest import BASE_SPEC, SpecDir


@pytest.fixture
def tiny(spec_dir: SpecDir) -> tuple[Spec, tuple[Question, ...]]:
    spec = load_spec(spec_dir.write(BASE_SPEC.replace("repeats = 1", "repeats = 2")))
    return spec, load_questions(spec.questions)


def tasks_of(spec: Spec, questions: tuple[Question, ...], models: tuple[ModelSpec, ...], **kw: object) -> Iterator[Task]:
    grid = build_grid(spec, questions, model_targets(spec, questions))
    return iter_tasks(grid, questions, models, **kw)  # type: ignore[arg-type]


def keys(spec: Spec, questions: tuple[Question, ...]) -> list[str]:
    return [t.key for t in tasks_of(spec, questions, spec.models)]


def test_keys_are_the_same_in_another_process(spec_dir: SpecDir, tiny: tuple[Spec, tuple[Question, ...]]) -> None:
    spec, questions = tiny
    script = (
        "import sys; from pathlib import Path; from engine.experiment.spec import load_spec; "
        "from engine.experiment.questions import load_questions; from engine.experiment.grid import build_grid, iter_tasks; "
        "from engine.run.targets import model_targets; "
        "s = load_spec(Path(sys.argv[1])); q = load_questions(s.questions); "
        "g = build_grid(s, q, model_targets(s, q)); "
        "print('\\n'.join(t.key for t in iter_tasks(g, q, s.models)))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # a different str hash than this process
    out = subprocess.run(
        [sys.executable, "-c", script, str(spec.path)], capture_output=True, text=True, check=True, env=env,
        cwd=spec_dir.root,
    ).stdout.split()
    assert out == keys(spec, questions)
    assert all(len(k) == 20 and int(k, 16) >= 0 for k in out)


def test_every_task_of_the_grid_has_its_own_key(tiny: tuple[Spec, tuple[Question, ...]]) -> None:
    spec, questions = tiny
    tasks = list(tasks_of(spec, questions, spec.models))
    assert len(tasks) == grid_size(spec, len(questions)) == 2 * 6 * 2 * 2
    cells = {(t.model.name, t.question.id, t.temperature, t.repeat) for t in tasks}
    assert len(cells) == len(tasks)  # each (model, question, temperature, repeat) exactly once
    assert len({t.key for t in tasks}) == len(tasks)


@pytest.mark.parametrize(
    ("old", "new", "changed"),
    [
        ("max_tokens = 16", 'max_tokens = 16\nprompt = "Answer with a number. {question}"', "all"),
        ("max_tokens = 16", 'max_tokens = 16\nsystem = "You are a helpful assistant."', "all"),
        ("max_tokens = 16", "max_tokens = 17", "all"),
        ('name = "m2"', 'name = "m2"\nmodel = "m2-2024-06-01"', "m2"),
        ("concurrency = 4\n\n[[models]]", "concurrency = 4\nparams = { top_p = 0.9 }\n\n[[models]]", "m1"),
        ("concurrency = 4\n\n[[models]]", "concurrency = 4\nparams = { seed = 1 }\n\n[[models]]", "m1"),
        ("concurrency = 4\n\n[[models]]", 'concurrency = 4\nsystem = "Facts: Anchor is 11246."\n\n[[models]]', "m1"),
    ],
    ids=["prompt", "system", "max_tokens", "model id", "params top_p", "params seed", "a model's own system"],
)
def test_keys_change_with_what_is_sent(spec_dir: SpecDir, old: str, new: str, changed: str) -> None:
    base = load_spec(spec_dir.write(BASE_SPEC))
    questions = load_questions(base.questions)
    edited = load_spec(spec_dir.write(BASE_SPEC.replace(old, new, 1), name="changed.toml"))
    before, after = keys(base, questions), keys(edited, questions)
    assert len(before) == len(after)
    # Tasks interleave m1, m2, m1, ...: the keys of the model not touched must stay.
    kept = {"all": [], "m1": before[1::2], "m2": before[0::2]}[changed]
    assert set(before) & set(after) == set(kept)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("concurrency = 4", "concurrency = 9\nrpm = 60\ntpm = 10000"),
        ("max_tokens = 16", "max_tokens = 16\ntimeout_s = 5\nmax_attempts = 2\nfsync = \"always\""),
        ('name = "tiny"', 'name = "renamed"'),
    ],
    ids=["limits", "retries and fsync", "experiment name"],
)
def test_keys_ignore_how_requests_are_paced(spec_dir: SpecDir, old: str, new: str) -> None:
    # A resume after tuning concurrency or quotas must not ask everything again.
    base = load_spec(spec_dir.write(BASE_SPEC))
    questions = load_questions(base.questions)
    changed = load_spec(spec_dir.write(BASE_SPEC.replace(old, new, 1), name="changed.toml"))
    assert keys(changed, questions) == keys(base, questions)


def test_key_of_one_cell_differs_by_each_coordinate() -> None:
    q1 = Question(id="A/easy", text="A?", answer="1")
    q2 = Question(id="B/easy", text="A?", answer="1")  # same text, other id
    m1 = GridModel(name="m1", model="x", target="sim:0", simulated=True, max_tokens=32, params={})
    m2 = dataclasses.replace(m1, name="m2")
    msgs = [{"role": "user", "content": "A?"}]
    base = task_key(m1, q1.id, msgs, 0.0, 0)
    variants = [
        task_key(m2, q1.id, msgs, 0.0, 0), task_key(m1, q2.id, msgs, 0.0, 0),
        task_key(m1, q1.id, msgs, 0.5, 0), task_key(m1, q1.id, msgs, 0.0, 1),
        task_key(dataclasses.replace(m1, max_tokens=33), q1.id, msgs, 0.0, 0),
        task_key(m1, q1.id, [{"role": "user", "content": "A? "}], 0.0, 0),
        task_key(dataclasses.replace(m1, model="y"), q1.id, msgs, 0.0, 0),
        task_key(dataclasses.replace(m1, params={"top_p": 0.9}), q1.id, msgs, 0.0, 0),
        task_key(dataclasses.replace(m1, target="http://127.0.0.1:8000/v1", simulated=False), q1.id, msgs, 0.0, 0),
        task_key(dataclasses.replace(m1, target="sim:1"), q1.id, msgs, 0.0, 0),
    ]  # fmt: skip
    assert len({base, *variants}) == 1 + len(variants)
    assert task_key(m1, q1.id, list(msgs), 0.0, 0) == base


def test_model_order_in_the_spec_does_not_change_keys(spec_dir: SpecDir) -> None:
    base = load_spec(spec_dir.write(BASE_SPEC))
    questions = load_questions(base.questions)
    swapped = dataclasses.replace(base, models=base.models[::-1])
    assert set(keys(swapped, questions)) == set(keys(base, questions))


def test_models_interleave(tiny: tuple[Spec, tuple[Question, ...]]) -> None:
    spec, questions = tiny
    names = [t.model.name for t in tasks_of(spec, questions, spec.models)]
    assert names == ["m1", "m2"] * (len(names) // 2)


def test_done_keys_are_skipped(tiny: tuple[Spec, tuple[Question, ...]]) -> None:
    spec, questions = tiny
    tasks = list(tasks_of(spec, questions, spec.models))
    done = {t.key for t in tasks[::3]}
    rest = list(tasks_of(spec, questions, spec.models, done=done))
    assert rest == [t for t in tasks if t.key not in done]  # the same tasks, in the same order
    assert list(tasks_of(spec, questions, spec.models, done={t.key for t in tasks})) == []


def test_a_ten_million_task_grid_is_not_built(spec_dir: SpecDir) -> None:
    spec = load_spec(spec_dir.write(BASE_SPEC.replace("repeats = 1", "repeats = 416667")))
    questions = load_questions(spec.questions)
    assert grid_size(spec, len(questions)) == 2 * 6 * 2 * 416667 > 10_000_000
    tracemalloc.start()
    try:
        first = [t.key for t in itertools.islice(tasks_of(spec, questions, spec.models), 1000)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(set(first)) == 1000
    assert peak < 1_000_000  # a built grid is ~170 bytes a task (1.7 GB here); 1000 tasks are ~85 kB


def test_messages_and_placeholders(spec_dir: SpecDir) -> None:
    text = BASE_SPEC.replace(
        "max_tokens = 16", 'max_tokens = 16\nsystem = "Be brief."\nprompt = "[{difficulty}] {object} ({id}): {question}"'
    )
    spec = load_spec(spec_dir.write(text))
    question = load_questions(spec.questions)[0]
    assert build_messages(spec, question) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "[easy] Anchor (Anchor/easy): What is the number for Anchor?"},
    ]
    assert build_messages(dataclasses.replace(spec, system=None), question)[0]["role"] == "user"


def test_a_placeholder_no_question_has_fails_before_the_first_task(spec_dir: SpecDir) -> None:
    spec = load_spec(spec_dir.write(BASE_SPEC.replace("max_tokens = 16", 'max_tokens = 16\nprompt = "{topic}: {question}"')))
    questions = load_questions(spec.questions)
    with pytest.raises(SpecError, match=r"spec\.toml: prompt: placeholder 'topic'"):
        tasks_of(spec, questions, spec.models)  # raised at the call, not at the first next()


@pytest.mark.parametrize(
    "prompt",
    ["{question} {object.foo}", "{question} {question[99]}", "{question} {question[a]}", "{question} {question:d}"],
    ids=["attribute", "index out of range", "index not a number", "format spec"],
)
def test_a_placeholder_that_cannot_be_filled_is_a_spec_error(spec_dir: SpecDir, prompt: str) -> None:
    spec = load_spec(spec_dir.write(BASE_SPEC.replace("max_tokens = 16", f'max_tokens = 16\nprompt = "{prompt}"')))
    questions = load_questions(spec.questions)
    with pytest.raises(SpecError, match=r"spec\.toml: prompt: cannot fill the placeholders for question 'Anchor/easy'"):
        tasks_of(spec, questions, spec.models)


def test_the_plan_estimates_prompt_tokens_as_the_limiter_does() -> None:
    # chars / 4, 4 tokens of framing a message, 3 priming the reply
    assert prompt_token_estimate(0, messages=1) == 7.0 and prompt_token_estimate(121, messages=2) == pytest.approx(41.25)
    fresh = EndpointLimiter(LimitConfig())  # before any response corrects its estimate
    for chars, messages in ((0, 1), (1, 1), (7, 2), (120, 1), (121, 2), (10_001, 3)):
        assert fresh.estimate(prompt_chars=chars, max_tokens=32, prompt_messages=messages) == (
            int(prompt_token_estimate(chars, messages=messages) + 32) + 1
        )


def test_plan_model_arithmetic(spec_dir: SpecDir) -> None:
    spec = load_spec(spec_dir.write(BASE_SPEC.replace("repeats = 1", "repeats = 3")))
    questions = load_questions(spec.questions)
    model = spec.models[0]
    plan = plan_model(spec, questions, model)
    per_pass = len(spec.temperatures) * spec.repeats
    assert plan.model == "m1" and plan.endpoint == ("sim", None)
    assert plan.tasks == len(questions) * per_pass == 36
    assert plan.max_completion_tokens == 36 * spec.max_tokens
    # Each request is estimated as the limiter estimates it: chars / 4, 4 a message, 3 for the reply.
    per_request = [len(q.text) / 4 + 4 + 3 for q in questions]  # the default prompt is the question alone
    assert pass_prompt_tokens(spec, questions) == pytest.approx(sum(per_request))
    assert plan.prompt_tokens == math.ceil(sum(per_request) * per_pass)
    assert plan_model(spec, questions, model, pass_tokens=100.5).prompt_tokens == math.ceil(100.5 * per_pass)
    # Doubling repeats doubles every count.
    double = plan_model(dataclasses.replace(spec, repeats=6), questions, model)
    assert (double.tasks, double.prompt_tokens, double.max_completion_tokens) == (
        2 * plan.tasks, 2 * plan.prompt_tokens, 2 * plan.max_completion_tokens,
    )


def test_plan_of_a_huge_grid_is_instant_arithmetic(spec_dir: SpecDir) -> None:
    spec = load_spec(spec_dir.write(BASE_SPEC.replace("repeats = 1", "repeats = 1000000")))
    questions = load_questions(spec.questions)
    plan = plan_model(spec, questions, spec.models[0])
    assert plan.tasks == 12_000_000 and plan.max_completion_tokens == 12_000_000 * 16



def test_a_models_own_system_prompt_is_sent_keyed_and_kept_in_grid_json(spec_dir: SpecDir) -> None:
    (spec_dir.root / "context.txt").parent.mkdir(parents=True, exist_ok=True)
    (spec_dir.root / "context.txt").write_text("Facts:\nAnchor: 11246\n", encoding="utf-8")
    text = BASE_SPEC.replace("max_tokens = 16", 'max_tokens = 16\nsystem = "Be brief."', 1).replace(
        "concurrency = 4\n\n[[models]]", 'concurrency = 4\nsystem_file = "context.txt"\n\n[[models]]', 1
    )
    spec = load_spec(spec_dir.write(text))
    assert [m.system for m in spec.models] == ["Facts:\nAnchor: 11246", None]
    questions = load_questions(spec.questions)
    grid = build_grid(spec, questions, model_targets(spec, questions))
    sent = {t.model.name: t.messages for t in iter_tasks(grid, questions, spec.models)}
    assert sent["m1"][0] == {"role": "system", "content": "Facts:\nAnchor: 11246"}
    assert sent["m2"][0] == {"role": "system", "content": "Be brief."}
    assert [m["role"] for m in sent["m1"]] == ["system", "user"] and sent["m1"][1] == sent["m2"][1]
    again = Grid.from_json(grid.to_json())
    assert again == grid and again.keys() == grid.keys()
    # A different context is a different model to the log: every one of its keys changes, the other's stay.
    (spec_dir.root / "context.txt").write_text("Facts:\nAnchor: 99999\n", encoding="utf-8")
    changed = load_spec(spec.path)
    assert set(keys(changed, questions)) & set(keys(spec, questions)) == set(keys(spec, questions)[1::2])


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ('system = "a"\nsystem_file = "context.txt"', "not both"),
        ('system_file = "missing.txt"', "cannot read"),
        ('system_file = "empty.txt"', "is empty"),
    ],
)
def test_a_bad_system_file_is_one_spec_error(spec_dir: SpecDir, extra: str, problem: str) -> None:
    spec_dir.root.mkdir(parents=True, exist_ok=True)
    (spec_dir.root / "context.txt").write_text("x", encoding="utf-8")
    (spec_dir.root / "empty.txt").write_text("  \n", encoding="utf-8")
    text = BASE_SPEC.replace("concurrency = 4\n\n[[models]]", f"concurrency = 4\n{extra}\n\n[[models]]", 1)
    with pytest.raises(SpecError, match=rf"models\[0\]\.system_file: .*{problem}"):
        load_spec(spec_dir.write(text))


@pytest.mark.parametrize("lookup", [set, KeySet.from_keys])
def test_split_spans_walk_every_task_of_a_shard_once(spec_dir: SpecDir, lookup: object) -> None:
    """A fleet worker gives the back half of its stretch to one that ran dry, while walking it (and
    while its done-key lookup reads rows ahead in batches): between them every task of the shard is
    walked once, and the tasks done before are skipped, counted once."""
    spec = load_spec(spec_dir.write(BASE_SPEC.replace("repeats = 1", "repeats = 120")))  # 2,880 tasks
    questions = load_questions(spec.questions)
    grid = build_grid(spec, questions, model_targets(spec, questions))
    shard = (1, 3)
    everything = [t.key for t in iter_tasks(grid, questions, spec.models)]
    mine = [k for k in everything if shard_of(k, 3) == 1]
    done = lookup(everything[::7])  # type: ignore[operator]
    skipped = Skipped()

    def walk(span: Span) -> Iterator[Task]:
        return iter_tasks(grid, questions, spec.models, done=done, skipped=skipped, shard=shard, span=span)

    assert abs(len(everything) / 3 - len(mine)) < 60  # the hash splits the grid evenly
    walked: list[str] = []
    spans = [Span(stop=grid_rows(grid, 2))]
    walks = [walk(spans[0])]
    rng = random.Random(5)
    while walks:
        i = rng.randrange(len(walks))
        taken = list(itertools.islice(walks[i], rng.randrange(1, 90)))
        walked += [t.key for t in taken]
        if not taken:  # this walk is over
            del walks[i], spans[i]
            continue
        if (given := spans[i].split(least=5)) is not None:  # the back half, to a new walker
            spans.append(Span(start=given[0], stop=given[1]))
            walks.append(walk(spans[-1]))
    assert len(walked) == len(set(walked))
    assert set(walked) == {k for k in mine if k not in done}
    assert skipped.count == sum(k in done for k in mine)


@pytest.mark.parametrize("lookup", [set, KeySet.from_keys])
def test_a_span_counts_only_what_its_walk_handed_on(spec_dir: SpecDir, lookup: object) -> None:
    """A done-key set asked in batches reads rows ahead; those rows are not walked yet, so the back half of
    the stretch is still there to give to a worker that ran dry (a shard smaller than one batch included)."""
    spec = load_spec(spec_dir.write(BASE_SPEC.replace("repeats = 1", "repeats = 40")))  # 960 tasks, 480 a shard
    questions = load_questions(spec.questions)
    grid = build_grid(spec, questions, model_targets(spec, questions))
    rows = [row for row, key in enumerate(grid.keys()) if shard_of(key, 2) == 0]  # the shard's rows
    done = lookup([])  # type: ignore[operator]
    span = Span(stop=grid_rows(grid, 2))
    walk = iter_tasks(grid, questions, spec.models, done=done, shard=(0, 2), span=span)
    first = list(itertools.islice(walk, 10))
    assert len(first) == 10 and span.position == rows[9] + 1
    cut = span.position + (span.stop - span.position) // 2
    assert span.split(least=64) == (cut, grid_rows(grid, 2))
    rest = list(walk)
    assert span.position == span.stop == cut and len(first) + len(rest) == sum(row < cut for row in rows)


def test_a_span_keeps_what_its_walk_has_taken_and_splits_only_what_is_worth_it() -> None:
    span = Span(stop=1000)
    span.position = 400  # the walk (or its look-ahead) has taken rows 0-399
    assert span.remaining() == 600
    assert span.split(least=100) == (700, 1000) and span.stop == 700 and span.remaining() == 300
    assert span.split(least=200) is None and span.stop == 700  # 300 left: halves of 150 are too small
    assert Span(stop=50, start=80).remaining() == 0  # a stretch past the end: nothing to give


def test_a_walk_that_ends_leaves_nothing_of_its_span_to_give(tiny: tuple[Spec, tuple[Question, ...]]) -> None:
    spec, questions = tiny
    grid = build_grid(spec, questions, model_targets(spec, questions))
    span = Span(stop=grid_rows(grid, len(spec.models)))
    walked = list(iter_tasks(grid, questions, spec.models, shard=(0, 2), span=span))
    assert 0 < len(walked) < grid.size and span.position == span.stop == grid.size
    assert span.remaining() == 0 and span.split(least=1) is None  # nothing beyond the end is ever given away


def test_a_stretch_far_into_the_grid_is_walked_without_the_rows_before_it(
    spec_dir: SpecDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fleet worker that ran dry near the end takes a stretch near the grid's end: its walk begins
    there, at any offset (mid-temperature, mid-repeat), with the tasks a whole walk has at those rows,
    and reads (hashes, asks the shard of) only the rows of its stretch."""
    spec = load_spec(spec_dir.write(BASE_SPEC.replace("repeats = 1", "repeats = 3")))
    questions = load_questions(spec.questions)
    grid = build_grid(spec, questions, model_targets(spec, questions))
    assert len(grid.temperatures) == 2 and grid.repeats == 3 and len(grid.models) == 2
    everything = [t.key for t in iter_tasks(grid, questions, spec.models)]
    asked: list[str] = []

    def counted(key: str, count: int) -> int:
        asked.append(key)
        return shard_of(key, count)

    monkeypatch.setattr("engine.experiment.grid.shard_of", counted)
    for start in range(len(everything)):
        stop = min(len(everything), start + 7)
        asked.clear()
        walked = [t.key for t in iter_tasks(grid, questions, spec.models, shard=(1, 2),
                                           span=Span(start=start, stop=stop))]  # fmt: skip
        assert walked == [k for k in everything[start:stop] if shard_of(k, 2) == 1]
        assert len(asked) == stop - start  # the rows of the stretch, not one more
