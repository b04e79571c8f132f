"""The grid: models × questions × temperatures × repeats, expanded lazily into tasks.

A task's key is a stable hash of everything that makes it a distinct request and of
who answers it: model label and id, the model's *target* (see :mod:`engine.run.targets`),
max_tokens and sampling parameters, question id and the messages as sent, temperature
and repeat index. So the same spec gives the same keys on every machine, a resumed run
can tell what is done, and a changed target (the simulation swapped for a real server,
a retrained GGUF) means new keys: every task is asked of the new target.

The run's grid is also data (:class:`Grid`, written as ``grid.json`` into the run
directory), and its keys are made by the same code, so the report can tell which
records of a log belong to the current grid. Nothing here materialises the tasks: a
10-million-task grid is a generator.

Usage::

    grid = build_grid(spec, questions, model_targets(spec, questions))
    for task in iter_tasks(grid, questions, spec.models, done=set()):
        print(task.key, task.model.name, task.target.id, task.question.id, task.temperature, task.repeat)
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Container, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

import orjson

from engine.errors import LogError, SpecError
from engine.experiment.questions import Question
from engine.experiment.spec import ModelSpec, Spec

KEY_BYTES = 10  # 80 bits: collisions stay below one in a million even at 10^9 tasks
# Keys of schema-2 records. A new material format gets a new person string, so keys of two
# formats can never coincide by accident.
_KEY_PERSON = b"engine.task.v2"
GRID_FORMAT = 1  # of grid.json


class Task(NamedTuple):
    """One request of the grid: which model, which question, how sampled, who answers, and its key."""

    key: str
    model: ModelSpec
    question: Question
    temperature: float
    repeat: int
    messages: list[dict[str, str]]
    target: Target


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


@dataclass(frozen=True, kw_only=True, slots=True)
class GridModel:
    """One model as the grid keys it: label, model id, target, max_tokens and extra request fields.

    Usage: ``GridModel(name="m1", model="m1", target="sim:3f2a9c01d4e5", simulated=True, max_tokens=32)``
    """

    name: str
    model: str
    target: str
    simulated: bool
    max_tokens: int
    params: Mapping[str, Any]
    system: str | None = None  # the model's own system prompt, replacing the spec's in every message list


@dataclass(frozen=True, kw_only=True, slots=True)
class GridPrompt:
    """One question as sent: its id and its messages. Usage: ``GridPrompt(qid="Anchor/easy", messages=[...])``"""

    qid: str
    messages: list[dict[str, str]]


@dataclass(frozen=True, kw_only=True, slots=True)
class Grid:
    """A run's whole grid as data: enough to make every task key again (``grid.json`` in the run directory).

    Usage: ``Grid.from_json(path.read_bytes()).keys()``
    """

    models: tuple[GridModel, ...]
    prompts: tuple[GridPrompt, ...]
    temperatures: tuple[float, ...]
    repeats: int

    @property
    def size(self) -> int:
        """How many tasks the grid has."""
        return len(self.models) * len(self.prompts) * len(self.temperatures) * self.repeats

    def keys(self) -> list[str]:
        """Every task key of the grid, made by the same code as the run's. Usage: ``set(grid.keys())``"""
        return [key for key, *_ in _keyed(self, range(len(self.models)))]

    def to_json(self) -> bytes:
        """``grid.json``'s content. Usage: ``path.write_bytes(grid.to_json())``"""
        doc = {
            "grid": GRID_FORMAT,
            "models": [
                {"name": m.name, "model": m.model, "target": m.target, "simulated": m.simulated,
                 "max_tokens": m.max_tokens, "params": dict(m.params), **({"system": m.system} if m.system else {})}
                for m in self.models
            ],
            "temperatures": list(self.temperatures),
            "repeats": self.repeats,
            "questions": [{"id": p.qid, "messages": p.messages} for p in self.prompts],
        }  # fmt: skip
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, data: bytes, *, where: str = "grid.json") -> Grid:
        """Read ``grid.json``; anything malformed is one LogError naming ``where``.

        Usage: ``Grid.from_json(Path("runs/x/grid.json").read_bytes())``
        """
        try:
            doc = orjson.loads(data)
            if doc.get("grid") != GRID_FORMAT:
                raise LogError(f"{where}: grid format {doc.get('grid')!r} is not supported (expected {GRID_FORMAT})")
            models = tuple(
                GridModel(name=str(m["name"]), model=str(m["model"]), target=str(m["target"]),
                          simulated=bool(m["simulated"]), max_tokens=int(m["max_tokens"]), params=dict(m["params"]),
                          system=str(m["system"]) if m.get("system") else None)
                for m in doc["models"]
            )  # fmt: skip
            prompts = tuple(GridPrompt(qid=str(q["id"]), messages=list(q["messages"])) for q in doc["questions"])
            return cls(models=models, prompts=prompts, temperatures=tuple(float(t) for t in doc["temperatures"]),
                       repeats=int(doc["repeats"]))  # fmt: skip
        except LogError:
            raise
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
            raise LogError(f"{where}: not a grid written by engine ({type(exc).__name__}: {exc})") from exc


def build_grid(spec: Spec, questions: Sequence[Question], targets: Mapping[str, Target]) -> Grid:
    """The grid of a spec: its models with their targets, its questions with their messages as sent.

    Every prompt is built here, so a placeholder no question can fill is a SpecError before
    anything is sent or written. Cost is O(models + questions).
    Usage: ``build_grid(spec, questions, model_targets(spec, questions))``
    """
    models = tuple(
        GridModel(name=m.name, model=m.model, target=targets[m.name].id, simulated=targets[m.name].simulated,
                  max_tokens=spec.max_tokens, params=m.params, system=m.system)
        for m in spec.models
    )  # fmt: skip
    prompts = tuple(GridPrompt(qid=q.id, messages=build_messages(spec, q)) for q in questions)
    return Grid(models=models, prompts=prompts, temperatures=spec.temperatures, repeats=spec.repeats)


def _model_material(model: GridModel) -> bytes:
    fields: list[Any] = [model.name, model.model, model.target, model.max_tokens, dict(model.params)]
    if model.system is not None:
        # Only when set, so every key made before models had their own prompt stays the same.
        fields.append({"system": model.system})
    return orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)


def messages_for(model: GridModel, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The messages as sent to ``model``: its own system prompt, if it has one, instead of the spec's.

    Usage: ``messages_for(grid.models[0], grid.prompts[0].messages)``
    """
    if model.system is None:
        return messages
    return [{"role": "system", "content": model.system}, *(m for m in messages if m["role"] != "system")]


def _prompt_material(qid: str, messages: list[dict[str, str]]) -> bytes:
    return orjson.dumps([qid, messages], option=orjson.OPT_SORT_KEYS)


def task_key(model: GridModel, qid: str, messages: list[dict[str, str]], temperature: float, repeat: int) -> str:
    """The deterministic key of one task (20 hex characters), as :meth:`Grid.keys` and the run make it.

    The material is three JSON arrays in a row (model, prompt, sampling); each is
    self-delimiting, so the staged hashing below cannot make two tasks alike.
    Usage: ``task_key(grid.models[0], "Anchor/easy", messages, 0.0, 0)``
    """
    state = hashlib.blake2b(digest_size=KEY_BYTES, person=_KEY_PERSON)
    state.update(_model_material(model))
    state.update(_prompt_material(qid, messages))
    state.update(orjson.dumps([temperature, repeat]))
    return state.hexdigest()


Row = tuple[str, int, int, float, int, int]  # (key, model index, prompt index, temperature, repeat, row number)


def _keyed(grid: Grid, models: Sequence[int], start: int = 0) -> Iterator[Row]:
    """(key, model index, prompt index, temperature, repeat, row number) for ``models``, models
    interleaved, from row ``start`` on.

    The hash state of each (model, prompt) pair is made once and copied per task: the
    same bytes as :func:`task_key`, at about half its cost. Memory is O(models × questions).
    A row's place in the loops is arithmetic, so a walk that begins far into the grid (a stretch
    given to a fleet worker near the end) costs nothing for the rows before it.
    """
    states = []
    for i in models:
        base = hashlib.blake2b(digest_size=KEY_BYTES, person=_KEY_PERSON)
        base.update(_model_material(grid.models[i]))
        states.append((i, base))
    pairs = []
    for p, prompt in enumerate(grid.prompts):
        material = _prompt_material(prompt.qid, prompt.messages)
        for i, base in states:
            state = base.copy()
            state.update(material)
            pairs.append((i, p, state))
    per_temperature = len(pairs)
    per_repeat = per_temperature * len(grid.temperatures)
    if not per_repeat:
        return
    row = start
    for repeat in range(start // per_repeat, grid.repeats):
        # After the first pass of each loop ``row`` sits on a boundary: these offsets are then 0.
        for temperature in grid.temperatures[row % per_repeat // per_temperature :]:
            tail = orjson.dumps([temperature, repeat])
            for i, p, state in pairs[row % per_temperature :]:
                final = state.copy()
                final.update(tail)
                yield final.hexdigest(), i, p, temperature, repeat, row
                row += 1


def shard_of(key: str, count: int) -> int:
    """The shard (0..count-1) of a task key: its first 48 bits mod ``count``; any string works.

    The key is a uniform hash, so shards are even; keys of another shape are hashed by their bytes
    the same way on every machine (never Python's salted ``hash``).
    Usage: ``shard_of(task.key, 16)``
    """
    try:
        value = int(key[:12], 16)
    except ValueError:
        value = int.from_bytes(key.encode()[:12].ljust(12, b"\0"), "big")
    return value % count


@runtime_checkable
class BatchLookup(Protocol):
    """A set of done keys that answers a batch of keys at once (e.g. ``engine.experiment.keys.KeySet``)."""

    def contains_many(self, keys: Sequence[str]) -> list[bool]:
        """Whether each key is in the set. Usage: ``done.contains_many(["0123456789abcdef0123"])``"""
        ...


@dataclass(slots=True)
class Span:
    """A stretch of a walk over the grid: rows ``start`` up to ``stop`` of the walked models' rows.

    Rows count the grid's tasks of the walked models in grid order, those of every shard and the
    finished ones included, so every worker of a fleet numbers them alike, and a walk can begin at
    any row for nothing (a shard keeps its own rows as it goes). ``position`` is the next row the walk
    will take. A fleet worker that has run dry takes the back half of another's span (:meth:`split`);
    what the walk already took stays with its owner, so no task is given twice.
    Usage: ``span = Span(stop=grid_rows(grid, 1)); tasks = iter_tasks(grid, qs, models, shard=(0, 2), span=span)``
    """

    stop: int
    start: int = 0
    position: int = 0

    def __post_init__(self) -> None:
        self.position = max(self.position, self.start)

    def remaining(self) -> int:
        """How many rows are left to walk."""
        return max(0, self.stop - self.position)

    def split(self, least: int) -> tuple[int, int] | None:
        """Keep the front half, give away the back: ``(start, stop)`` of the half given, or None when
        either half would hold fewer than ``least`` rows. Usage: ``given = span.split(128)``"""
        left = self.remaining()
        if left < 2 * least:
            return None
        cut = self.position + left // 2
        given = (cut, self.stop)
        self.stop = cut
        return given


def grid_rows(grid: Grid, models: int) -> int:
    """How many rows a walk over ``models`` of the grid's models has (every shard's): a whole :class:`Span`.

    Usage: ``Span(stop=grid_rows(grid, 1))``
    """
    return len(grid.prompts) * len(grid.temperatures) * grid.repeats * models


@dataclass(slots=True)
class Skipped:
    """How many tasks a lazy grid passed over as already done, so far. Usage: ``skipped.count``"""

    count: int = 0


def iter_tasks(
    grid: Grid, questions: Sequence[Question], models: Sequence[ModelSpec], *, done: Container[str] = (),
    skipped: Skipped | None = None, shard: tuple[int, int] | None = None, span: Span | None = None,
) -> Iterator[Task]:
    """Yield the tasks of ``models`` not in ``done``, models interleaved so each stays busy.

    ``shard=(k, n)`` keeps only the tasks of shard ``k`` of ``n`` (:func:`shard_of`):
    every worker of a fleet walks the same grid and keeps its own slice; ``skipped`` then counts
    only that slice's done tasks. ``span`` walks only a stretch of the grid's rows (:class:`Span`),
    beginning there at no cost for the rows before it, and records how far the walk has gone. A
    ``done`` that is a :class:`BatchLookup` (a compact ``KeySet``) is asked a batch of keys at a time.

    ``grid`` is ``build_grid(spec, questions, targets)`` (its prompts were built, and checked,
    there); ``questions`` are the same questions in the same order. ``skipped`` counts the
    done tasks passed over: exactly the grid's share of the log, unlike the log's own size,
    which may hold keys of a grid since changed. Memory is O(questions), never O(grid).
    Usage: ``tasks = iter_tasks(grid, questions, spec.models, done=finished_keys)``
    """
    if len(questions) != len(grid.prompts):
        raise ValueError(f"the grid has {len(grid.prompts)} questions, {len(questions)} were given")
    index = {m.name: i for i, m in enumerate(grid.models)}
    return _tasks(grid, questions, models, [index[m.name] for m in models], done,
                  skipped if skipped is not None else Skipped(), shard, span)  # fmt: skip


_BATCH = 1024  # keys asked of a KeySet at once: one binary search per batch instead of per key


def _tasks(
    grid: Grid, questions: Sequence[Question], models: Sequence[ModelSpec], picked: Sequence[int],
    done: Container[str], skipped: Skipped, shard: tuple[int, int] | None, span: Span | None = None,
) -> Iterator[Task]:
    spec_of = {i: m for i, m in zip(picked, models, strict=True)}
    target_of = {i: Target(id=grid.models[i].target, simulated=grid.models[i].simulated) for i in picked}
    own = {i for i in picked if grid.models[i].system is not None}
    sent = {(i, p): messages_for(grid.models[i], prompt.messages) for i in own for p, prompt in enumerate(grid.prompts)}
    rows: Iterator[Row] = _keyed(grid, picked, span.start if span is not None else 0)
    if span is not None:  # not a row past the stretch's end read: the shard may have none left there
        rows = itertools.takewhile(lambda row: row[5] < span.stop, rows)
    if shard is not None:
        k, n = shard
        rows = (row for row in rows if shard_of(row[0], n) == k)
    looked_up = _looked_up(rows, done)
    if span is not None:
        looked_up = _within(looked_up, span)
    for (key, i, p, temperature, repeat, _), found in looked_up:
        if found:
            skipped.count += 1
        else:
            messages = sent[i, p] if i in own else grid.prompts[p].messages
            yield Task(key, spec_of[i], questions[p], temperature, repeat, messages, target_of[i])


def _looked_up(rows: Iterator[Row], done: Container[str]) -> Iterator[tuple[Row, bool]]:
    """Each row with whether its key is done; a :class:`BatchLookup` is asked a batch of keys at a time."""
    if not isinstance(done, BatchLookup):
        for row in rows:
            yield row, row[0] in done
        return
    while batch := list(itertools.islice(rows, _BATCH)):
        yield from zip(batch, done.contains_many([row[0] for row in batch]), strict=True)


def _within(pairs: Iterator[tuple[Row, bool]], span: Span) -> Iterator[tuple[Row, bool]]:
    """The rows before the span's ``stop`` (``pairs`` begin at its start), read before every row, so a
    split takes effect at once. A row counts as walked when it is handed on, not when a batch lookup
    read it ahead: what the walk has not handed on yet can still be given away.
    """
    for pair in pairs:
        row = pair[0][5]
        if row >= span.stop:
            break
        span.position = row + 1  # rows rise, and start at the span's start or later
        yield pair
    span.position = span.stop  # the walk is over: nothing of the stretch is left to give


def grid_size(spec: Spec, n_questions: int) -> int:
    """How many tasks the whole grid has. Usage: ``grid_size(spec, len(questions))``"""
    return len(spec.models) * n_questions * len(spec.temperatures) * spec.repeats

@dataclass(frozen=True, kw_only=True, slots=True)
class Target:
    """Who answers one model: a stable id and whether it is engine's built-in simulation.

    Usage: ``Target(id="https://api.openai.com/v1", simulated=False)``
    """

    id: str
    simulated: bool
