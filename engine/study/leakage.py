"""Find evaluation questions that leaked into a fine-tuning set.

A fact can only be said to be *recalled from a paraphrase* if the paraphrase
was never trained on. This module compares the user messages of an OpenAI chat
fine-tuning JSONL with the questions of a wide facts CSV
(``Object,Answer,Question 1,Question 2,Question 3``) and reports every
evaluation question found in training, with the kind of match:

- ``verbatim``: the exact text (after trimming outer whitespace);
- ``normalised``: equal once case, punctuation and whitespace are ignored;
- ``template``: the same wording with the object name swapped for a
  placeholder, i.e. the wording was trained on, but only with other objects.

Each (object, difficulty) is reported once, with the strongest kind found.

Usage::

    report = find_leakage("train-25.jsonl", "questions.csv")
    print(report)                      # a table per difficulty and kind
    report.objects("easy", "verbatim") # -> frozenset of object names
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from engine.errors import QuestionsError, TrainError

__all__ = [
    "DIFFICULTIES",
    "KINDS",
    "Fact",
    "LeakageHit",
    "LeakageReport",
    "find_leakage",
    "leaked_templates",
    "normalise",
    "read_facts",
    "read_user_messages",
    "template_of",
    "templater",
]

DIFFICULTIES: tuple[str, ...] = ("easy", "mid", "hard")
"""Difficulty of ``Question 1``, ``Question 2`` and ``Question 3``, in that order."""

KINDS: tuple[str, ...] = ("verbatim", "normalised", "template")
"""Kinds of match, strongest first."""

PLACEHOLDER = "\x00obj\x00"
_QUESTION_COLUMNS = ("Question 1", "Question 2", "Question 3")
_NON_WORD = re.compile(r"[^\w\x00]+")


@dataclass(frozen=True, kw_only=True, slots=True)
class Fact:
    """One row of a wide facts CSV.

    Usage: ``Fact(object="Apple", answer="65451", questions={"easy": "What is ...?"})``
    """

    object: str
    answer: str
    questions: Mapping[str, str]


def normalise(text: str) -> str:
    """Case-, punctuation- and whitespace-insensitive form of ``text``.

    Apostrophes vanish rather than split words, so "What's" and "Whats" agree.

    Usage: ``normalise(" What is  the number, for Apple? ") == "what is the number for apple"``
    """
    folded = unicodedata.normalize("NFKC", text).casefold()
    folded = folded.replace("'", "").replace("\u2019", "")
    return " ".join(_NON_WORD.sub(" ", folded).split())


def templater(objects: Iterable[str]) -> Callable[[str], str]:
    """A fast :func:`template_of` for a fixed set of object names.

    Usage: ``shape = templater(names); shape("What is Apple's number?")``
    """
    names = sorted({n for n in (normalise(o) for o in objects) if n}, key=len, reverse=True)
    if not names:
        return normalise
    # One alternation, longest first, so "ink pot" wins over "ink"; whole words only,
    # but a possessive "s" may follow (apostrophes are gone after normalising).
    pattern = re.compile(r"(?<![\w\x00])(?:" + "|".join(map(re.escape, names)) + r")(?=s?(?![^\W_]))")

    def shape(text: str) -> str:
        return pattern.sub(PLACEHOLDER, normalise(text))

    return shape


def template_of(text: str, objects: Iterable[str]) -> str:
    """Normalised ``text`` with every known object name replaced by a placeholder.

    Usage: ``template_of("What is Apple's number?", ["Apple"]) == "what is \\x00obj\\x00s number"``
    """
    return templater(objects)(text)


def read_facts(path: str | Path) -> list[Fact]:
    """Read a wide facts CSV (``Object,Answer,Question 1,Question 2,Question 3``).

    Raises :class:`~engine.errors.QuestionsError` on a missing file, text that is not
    UTF-8, a malformed CSV, a missing column, an empty cell or a duplicate object;
    the message names the file and the line a record starts on.

    Usage: ``facts = read_facts("data/facts.csv")``
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise QuestionsError(f"cannot read facts file {path}: {exc.strerror or exc}") from exc
    raw = raw.removeprefix(b"\xef\xbb\xbf")  # a BOM, as some Windows tools write
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise QuestionsError(f"{path}:{line}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    columns = ("Object", "Answer", *_QUESTION_COLUMNS)
    # newline="" leaves line ends to csv, so a quoted field may span lines.
    reader = csv.reader(io.StringIO(text, newline=""))
    facts: list[Fact] = []
    seen: set[str] = set()
    start = 1  # the line the record being read starts on
    try:
        header = next((r for r in reader if r), [])  # blank lines before it are skipped, as by DictReader
        missing = [c for c in columns if c not in header]
        if missing:
            raise QuestionsError(f"{path}: missing column(s) {', '.join(missing)}")
        start = reader.line_num + 1
        for fields in reader:
            line, start = start, reader.line_num + 1
            if not fields:
                continue  # a blank line, skipped as csv.DictReader would
            row = dict(zip(header, fields, strict=False))
            values = {k: (row.get(k) or "").strip() for k in columns}
            empty = [k for k, v in values.items() if not v]
            if empty:
                raise QuestionsError(f"{path}:{line}: empty {', '.join(empty)}")
            if values["Object"] in seen:
                raise QuestionsError(f"{path}:{line}: duplicate object {values['Object']!r}")
            seen.add(values["Object"])
            facts.append(
                Fact(
                    object=values["Object"],
                    answer=values["Answer"],
                    questions=dict(zip(DIFFICULTIES, (values[c] for c in _QUESTION_COLUMNS), strict=True)),
                )
            )
    except csv.Error as exc:
        raise QuestionsError(f"{path}:{start}: not a readable CSV ({exc})") from exc
    if not facts:
        raise QuestionsError(f"{path}: no facts")
    return facts


def read_user_messages(path: str | Path) -> list[tuple[int, str]]:
    """(line number, text) of every user message in a chat fine-tuning JSONL.

    Raises :class:`~engine.errors.TrainError` on an unreadable file or line.

    Usage: ``for line, text in read_user_messages("train.jsonl"): ...``
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TrainError(f"cannot read training file {path}: {exc.strerror or exc}") from exc
    out: list[tuple[int, str]] = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
            messages = record["messages"]
            out.extend((number, m["content"]) for m in messages if m.get("role") == "user")
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise TrainError(f"{path}:{number}: not a chat fine-tuning record ({exc})") from exc
    return out


@dataclass(frozen=True, kw_only=True, slots=True)
class LeakageHit:
    """One evaluation question found in training data.

    Usage: ``f"{hit.object}/{hit.difficulty}: {hit.kind} at line {hit.line}"``
    """

    object: str
    difficulty: str
    question: str
    kind: str
    line: int
    training_text: str


@dataclass(frozen=True, kw_only=True, slots=True)
class LeakageReport:
    """Every leaked evaluation question of one training file.

    Usage: ``len(report.objects("mid", "verbatim"))`` or ``print(report)``.
    """

    train_path: str
    questions_path: str
    n_training: int
    n_facts: int
    hits: tuple[LeakageHit, ...] = field(default_factory=tuple)

    def objects(self, difficulty: str, kind: str | None = None) -> frozenset[str]:
        """Objects whose ``difficulty`` question leaked (with this ``kind``, if given)."""
        return frozenset(
            h.object for h in self.hits if h.difficulty == difficulty and (kind is None or h.kind == kind)
        )

    def counts(self) -> dict[str, dict[str, int]]:
        """{difficulty: {kind: number of objects}} for every difficulty and kind."""
        return {d: {k: len(self.objects(d, k)) for k in KINDS} for d in DIFFICULTIES}

    @property
    def clean(self) -> bool:
        """True when no evaluation question, in any form, is in the training data."""
        return not self.hits

    def render(self, *, examples: int = 3) -> str:
        """A plain-text table of objects per difficulty and kind, with a few examples."""
        lines = [
            f"leakage: {self.train_path} ({self.n_training} user messages)"
            f" vs {self.questions_path} ({self.n_facts} facts)",
            f"{'difficulty':<10} " + " ".join(f"{k:>10}" for k in KINDS),
        ]
        for difficulty, row in self.counts().items():
            lines.append(f"{difficulty:<10} " + " ".join(f"{row[k]:>10}" for k in KINDS))
        if self.clean:
            lines.append("no evaluation question found in the training data")
        for difficulty in DIFFICULTIES:
            for kind in KINDS:
                sample = [h for h in self.hits if h.difficulty == difficulty and h.kind == kind][:examples]
                for h in sample:
                    lines.append(
                        f"  {difficulty}/{kind}: {h.object}: {h.question!r}"
                        f" ~ line {h.line}: {h.training_text!r}"
                    )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


def _index(pairs: Iterable[tuple[str, tuple[int, str]]]) -> dict[str, tuple[int, str]]:
    table: dict[str, tuple[int, str]] = {}
    for key, value in pairs:
        table.setdefault(key, value)
    return table


def _scan(facts: Sequence[Fact], messages: Sequence[tuple[int, str]]) -> Iterator[LeakageHit]:
    shape_of = templater(f.object for f in facts)
    exact = _index((text.strip(), (n, text)) for n, text in messages)
    loose = _index((normalise(text), (n, text)) for n, text in messages)
    shape = _index((shape_of(text), (n, text)) for n, text in messages)
    for fact in facts:
        for difficulty, question in fact.questions.items():
            for kind, table, key in (
                ("verbatim", exact, question.strip()),
                ("normalised", loose, normalise(question)),
                ("template", shape, shape_of(question)),
            ):
                found = table.get(key)
                if found is not None:
                    yield LeakageHit(
                        object=fact.object,
                        difficulty=difficulty,
                        question=question,
                        kind=kind,
                        line=found[0],
                        training_text=found[1],
                    )
                    break


def find_leakage(train_jsonl: str | Path, questions_csv: str | Path) -> LeakageReport:
    """Report evaluation questions of ``questions_csv`` present in ``train_jsonl``.

    Usage: ``print(find_leakage("train.jsonl", "data/facts.csv"))``
    """
    facts = read_facts(questions_csv)
    messages = read_user_messages(train_jsonl)
    return LeakageReport(
        train_path=str(train_jsonl),
        questions_path=str(questions_csv),
        n_training=len(messages),
        n_facts=len(facts),
        hits=tuple(_scan(facts, messages)),
    )


def leaked_templates(facts: Sequence[Fact]) -> frozenset[str]:
    """Placeholder forms of every evaluation question, for builders that must avoid them.

    Usage: ``template_of(candidate, names) in leaked_templates(facts)``
    """
    shape_of = templater(f.object for f in facts)
    return frozenset(shape_of(q) for f in facts for q in f.questions.values())
