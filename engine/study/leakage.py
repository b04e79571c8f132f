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

Apart from these exact kinds, every evaluation question gets its *nearest* training
question (:mod:`engine.study.similarity`: Ratcliff-Obershelp similarity of the normalised
texts, over every training question, any object) and counts as a ``near``-duplicate when
that similarity is at or above the threshold (0.85 unless told). Near-duplicates are kept
apart from the exact kinds (``report.near``), since a near-copy is a judgement, not a fact.

Usage::

    report = find_leakage("train-25.jsonl", "questions.csv")
    print(report)                      # a table per difficulty and kind
    report.objects("easy", "verbatim") # -> frozenset of object names
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from engine.errors import QuestionsError, TrainError
from engine.study.similarity import DEFAULT_THRESHOLD, nearest_all, normalise

__all__ = [
    "DIFFICULTIES",
    "KINDS",
    "Fact",
    "LeakageHit",
    "LeakageReport",
    "LeakageTable",
    "NearHit",
    "check_sets",
    "find_leakage",
    "leaked_templates",
    "nearest_training",
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


@dataclass(frozen=True, kw_only=True, slots=True)
class Fact:
    """One row of a wide facts CSV.

    Usage: ``Fact(object="Apple", answer="65451", questions={"easy": "What is ...?"})``
    """

    object: str
    answer: str
    questions: Mapping[str, str]


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
class NearHit:
    """An evaluation question's nearest training question, and how similar they are (0..1).

    Usage: ``f"{near.object}/{near.difficulty}: {near.similarity:.2f} ~ {near.training_text!r}"``
    """

    object: str
    difficulty: str
    question: str
    similarity: float
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
    threshold: float | None = None  # near-duplicate threshold; None: similarity not measured
    nearest: tuple[NearHit, ...] = field(default_factory=tuple)  # one per (object, difficulty), when measured

    @property
    def near(self) -> tuple[NearHit, ...]:
        """The evaluation questions with a training question at ``threshold`` similarity or more."""
        if self.threshold is None:
            return ()
        return tuple(n for n in self.nearest if n.similarity >= self.threshold)

    def near_counts(self) -> dict[str, int]:
        """{difficulty: number of objects with a near-duplicate}. Usage: ``report.near_counts()["easy"]``"""
        return {d: len({n.object for n in self.near if n.difficulty == d}) for d in DIFFICULTIES}

    def max_similarity(self) -> dict[str, float]:
        """{difficulty: highest similarity of any of its evaluation questions to any training question}."""
        return {d: max((n.similarity for n in self.nearest if n.difficulty == d), default=0.0) for d in DIFFICULTIES}

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
        measured = self.threshold is not None
        near_head = f" {f'near>={self.threshold:g}':>10} {'max sim':>8}" if measured else ""
        lines = [
            f"leakage: {self.train_path} ({self.n_training} user messages)"
            f" vs {self.questions_path} ({self.n_facts} facts)",
            f"{'difficulty':<10} " + " ".join(f"{k:>10}" for k in KINDS) + near_head,
        ]
        near, top = self.near_counts(), self.max_similarity()
        for difficulty, row in self.counts().items():
            tail = f" {near[difficulty]:>10} {top[difficulty]:>8.3f}" if measured else ""
            lines.append(f"{difficulty:<10} " + " ".join(f"{row[k]:>10}" for k in KINDS) + tail)
        if self.clean:
            lines.append("no evaluation question found in the training data")
        if measured and not self.near:
            lines.append(f"no training question within similarity {self.threshold:g} of an evaluation question")
        for difficulty in DIFFICULTIES:
            for kind in KINDS:
                sample = [h for h in self.hits if h.difficulty == difficulty and h.kind == kind][:examples]
                for h in sample:
                    lines.append(
                        f"  {difficulty}/{kind}: {h.object}: {h.question!r}"
                        f" ~ line {h.line}: {h.training_text!r}"
                    )
            for n in [n for n in self.near if n.difficulty == difficulty][:examples]:
                lines.append(
                    f"  {difficulty}/near: {n.object}: {n.question!r} ~ line {n.line}: {n.training_text!r}"
                    f" ({n.similarity:.3f})"
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


def nearest_training(facts: Sequence[Fact], messages: Sequence[tuple[int, str]]) -> Iterator[NearHit]:
    """Each evaluation question's most similar training question (any object), in fact order.

    Usage: ``max(n.similarity for n in nearest_training(facts, read_user_messages(path)))``
    """
    distinct = _index((normalise(text), (n, text)) for n, text in messages)  # repeats cost nothing twice
    texts = list(distinct)
    asked = [(fact, difficulty, question) for fact in facts for difficulty, question in fact.questions.items()]
    found = nearest_all([normalise(q) for _, _, q in asked], texts)
    for (fact, difficulty, question), (score, index) in zip(asked, found, strict=True):
        line, text = distinct[texts[index]] if index >= 0 else (0, "")
        yield NearHit(object=fact.object, difficulty=difficulty, question=question, similarity=score,
                      line=line, training_text=text)  # fmt: skip


def find_leakage(
    train_jsonl: str | Path, questions_csv: str | Path, *, threshold: float | None = DEFAULT_THRESHOLD
) -> LeakageReport:
    """Report evaluation questions of ``questions_csv`` present in ``train_jsonl``, and near-duplicates.

    ``threshold`` is the near-duplicate similarity (see :mod:`engine.study.similarity`); None skips it.
    Usage: ``print(find_leakage("train.jsonl", "data/facts.csv"))``
    """
    facts = read_facts(questions_csv)
    messages = read_user_messages(train_jsonl)
    if threshold is not None and not 0.0 < threshold <= 1.0:
        raise TrainError(f"similarity threshold must be in (0, 1], got {threshold:g}")
    return LeakageReport(
        train_path=str(train_jsonl),
        questions_path=str(questions_csv),
        n_training=len(messages),
        n_facts=len(facts),
        hits=tuple(_scan(facts, messages)),
        threshold=threshold,
        nearest=tuple(nearest_training(facts, messages)) if threshold is not None else (),
    )


def leaked_templates(facts: Sequence[Fact]) -> frozenset[str]:
    """Placeholder forms of every evaluation question, for builders that must avoid them.

    Usage: ``template_of(candidate, names) in leaked_templates(facts)``
    """
    shape_of = templater(f.object for f in facts)
    return frozenset(shape_of(q) for f in facts for q in f.questions.values())


@dataclass(frozen=True, kw_only=True, slots=True)
class LeakageTable:
    """The leakage reports of several sets against one question file, with a summary table.

    Usage: ``print(check_sets(["train-5.jsonl", "train-10.jsonl"], "data/facts.csv"))``
    """

    reports: tuple[LeakageReport, ...]

    def rows(self) -> list[tuple[str, str, int, int, int, int, float]]:
        """(set, difficulty, verbatim, normalised, template, near, max similarity) per set and difficulty."""
        out = []
        for report in self.reports:
            counts, near, top = report.counts(), report.near_counts(), report.max_similarity()
            for d in DIFFICULTIES:
                row = counts[d]
                out.append((Path(report.train_path).name, d, row["verbatim"], row["normalised"], row["template"],
                            near[d], top[d]))  # fmt: skip
        return out

    def markdown(self) -> str:
        """The summary as a Markdown table (objects per set and difficulty), for docs/results.md."""
        threshold = self.reports[0].threshold if self.reports else None
        near = f"near-duplicates (≥ {threshold:g})" if threshold is not None else "near-duplicates"
        lines = [f"| set | difficulty | verbatim | normalised | template | {near} | highest similarity |",
                 "|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
        lines += [f"| {s} | {d} | {v} | {n} | {t} | {x} | {m:.3f} |" for s, d, v, n, t, x, m in self.rows()]
        return "\n".join(lines)

    def __str__(self) -> str:
        if len(self.reports) == 1:
            return self.reports[0].render()
        parts = [r.render() for r in self.reports]
        parts.append("summary (objects per set and difficulty):")
        parts.append(self.markdown())
        return "\n\n".join(parts[:-2]) + "\n\n" + parts[-2] + "\n" + parts[-1]


def check_sets(
    train: Sequence[str | Path], questions_csv: str | Path, *, threshold: float = DEFAULT_THRESHOLD,
    max_similarity: float | None = None,
) -> LeakageTable:
    """Leakage of every set in ``train``; with ``max_similarity``, refuse any set holding a training
    question at that similarity or more to an evaluation question (TrainError naming the first).

    Usage: ``check_sets(paths, "data/facts.csv", max_similarity=0.85)``
    """
    if max_similarity is not None and not 0.0 < max_similarity <= 1.0:
        raise TrainError(f"--max-similarity must be in (0, 1], got {max_similarity:g}")
    measure = min(threshold, max_similarity) if max_similarity is not None else threshold
    reports = tuple(find_leakage(path, questions_csv, threshold=measure) for path in train)
    if max_similarity is not None:
        for report in reports:
            worst = max(report.nearest, key=lambda n: n.similarity, default=None)
            if worst is not None and worst.similarity >= max_similarity:
                raise TrainError(
                    f"{report.train_path}: line {worst.line} {worst.training_text!r} is {worst.similarity:.3f} similar "
                    f"to the {worst.difficulty} question of {worst.object} ({worst.question!r}), at or above "
                    f"--max-similarity {max_similarity:g}; refusing this set"
                )
    return LeakageTable(reports=reports)
