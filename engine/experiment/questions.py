"""Question sets: the original experiment's wide CSV, or a long CSV / JSONL.

Wide (the seed's format): ``Object,Answer,Question 1,Question 2,Question 3``; each
``Question N`` column becomes one question tagged with the object and a difficulty
(1/2/3 are easy/mid/hard). Long: one question per row with ``id,question,answer``
and any other columns kept as tags.

Usage::

    questions = load_questions(Path("data/facts.csv"))
    questions[0].id, questions[0].tags   # ('Anchor/easy', {'object': 'Anchor', 'difficulty': 'easy'})
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import orjson

from engine.errors import QuestionsError

DIFFICULTIES: Mapping[str, str] = MappingProxyType({"1": "easy", "2": "mid", "3": "hard"})
_WIDE_QUESTION = re.compile(r"^Question (\d+)$")
_LONG_REQUIRED = ("id", "question", "answer")


@dataclass(frozen=True, kw_only=True, slots=True)
class Question:
    """One question with its expected answer and its tags (object, difficulty, ...)."""

    id: str
    text: str
    answer: str
    tags: Mapping[str, str] = field(default_factory=dict)


def load_questions(path: Path) -> tuple[Question, ...]:
    """Read a question set, wide or long, CSV or JSONL; every problem is a QuestionsError.

    Usage: ``load_questions(Path("data/facts.csv"))``
    """
    if not path.is_file():
        raise QuestionsError(f"questions file not found: {path}")
    # Rows are kept with their line numbers, so every message can point at the line to fix.
    rows: list[tuple[int, dict[str, str]]]
    try:
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            rows = list(_read_jsonl(path))
            columns = list(dict.fromkeys(key for _, row in rows for key in row))  # every key of any line
        else:
            with path.open(newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                columns = list(reader.fieldnames or [])
                rows = [(reader.line_num, row) for row in reader]
    except UnicodeDecodeError as exc:
        raise QuestionsError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except csv.Error as exc:
        raise QuestionsError(f"{path}: not a readable CSV: {exc}") from exc
    except OSError as exc:
        raise QuestionsError(f"cannot read questions {path}: {exc.strerror or exc}") from exc
    if not rows:
        raise QuestionsError(f"{path}: no questions in the file")
    for line, row in rows:
        # csv puts surplus fields under the key None; ignoring them would silently cut a question short.
        if any(extra.strip() for extra in row.get(None, ())):  # type: ignore[call-overload]
            raise QuestionsError(f"{path}:{line}: more fields than the header (a comma in an unquoted field?)")
    if "Object" in columns or any(_WIDE_QUESTION.match(c) for c in columns):
        questions = list(_from_wide(path, columns, rows))
    else:
        questions = list(_from_long(path, columns, rows))
    seen: set[str] = set()
    for q in questions:
        if q.id in seen:
            raise QuestionsError(f"{path}: duplicate question id {q.id!r}")
        seen.add(q.id)
    return tuple(questions)


def _read_jsonl(path: Path) -> Iterable[tuple[int, dict[str, str]]]:
    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            if number == 1:
                line = line.removeprefix(b"\xef\xbb\xbf")  # a BOM, as some Windows tools write
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise QuestionsError(f"{path}:{number}: not valid JSON ({exc})") from exc
            if not isinstance(row, dict):
                raise QuestionsError(f"{path}:{number}: expected a JSON object per line")
            yield number, {str(k): "" if v is None else str(v) for k, v in row.items()}


def _from_wide(path: Path, columns: list[str], rows: list[tuple[int, dict[str, str]]]) -> Iterable[Question]:
    for needed in ("Object", "Answer"):
        if needed not in columns:
            raise QuestionsError(f"{path}: missing column {needed!r} (wide format needs Object,Answer,Question 1,...)")
    question_columns = [(c, m.group(1)) for c in columns if (m := _WIDE_QUESTION.match(c))]
    if not question_columns:
        raise QuestionsError(f"{path}: missing column 'Question 1' (wide format needs Object,Answer,Question 1,...)")
    for line, row in rows:
        obj = (row.get("Object") or "").strip()
        answer = (row.get("Answer") or "").strip()
        if not obj:
            raise QuestionsError(f"{path}:{line}: empty Object")
        if not answer:
            raise QuestionsError(f"{path}:{line}: empty Answer for {obj!r}")
        for column, number in question_columns:
            text = (row.get(column) or "").strip()
            if not text:
                raise QuestionsError(f"{path}:{line}: empty {column!r} for {obj!r}")
            difficulty = DIFFICULTIES.get(number, f"q{number}")
            yield Question(
                id=f"{obj}/{difficulty}", text=text, answer=answer, tags={"object": obj, "difficulty": difficulty}
            )


def _from_long(path: Path, columns: list[str], rows: list[tuple[int, dict[str, str]]]) -> Iterable[Question]:
    for needed in _LONG_REQUIRED:
        if needed not in columns:
            raise QuestionsError(
                f"{path}: missing column {needed!r} (long format needs id,question,answer; wide needs Object,Answer,Question 1)"
            )
    tag_columns = [c for c in columns if c not in _LONG_REQUIRED]
    for line, row in rows:
        qid, text, answer = ((row.get(c) or "").strip() for c in _LONG_REQUIRED)
        if not qid:
            raise QuestionsError(f"{path}:{line}: empty id")
        if not text:
            raise QuestionsError(f"{path}:{line}: empty question for id {qid!r}")
        if not answer:
            raise QuestionsError(f"{path}:{line}: empty answer for id {qid!r}")
        yield Question(id=qid, text=text, answer=answer, tags={c: (row.get(c) or "").strip() for c in tag_columns})
