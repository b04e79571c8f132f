"""Build OpenAI chat fine-tuning sets from a wide facts CSV, evaluation questions held out.

Each fact gets N distinct wordings (a user question and an assistant answer
sentence, both from templates written for this project). The sets are nested:
the 5x set is a subset of the 10x set, which is a subset of the 25x set, and
so on, because every fact draws its wordings from one fixed, seeded order and
an N-set keeps the first N. No template is used whose placeholder form equals
an evaluation question of the facts file (case, punctuation, whitespace and
object name ignored), so :func:`engine.study.leakage.find_leakage` finds nothing.

``holdout="family"`` holds evaluation wordings out by template family instead: a
template is dropped, for every object, when its wording for *any* object is within the
near-duplicate threshold (:mod:`engine.study.similarity`) of *any* evaluation question,
so no training question is a near-copy of one; a few extra templates
(:data:`FAMILY_EXTRA_TEMPLATES`) keep 50 wordings per fact possible. ``shuffle=True``
builds the control set: the same questions, each object trained with another object's
number (a seeded permutation with no fixed point).

Usage::

    paths = build_finetune_sets("data/facts.csv", examples=(5, 10, 25, 50), out_dir=Path("ft"))
    paths[10]  # -> Path("ft/train-10.jsonl")
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from engine.errors import TrainError
from engine.study.leakage import Fact, leaked_templates, normalise, read_facts, templater
from engine.study.similarity import DEFAULT_THRESHOLD, nearest_all

__all__ = [
    "ANSWER_TEMPLATES",
    "DEFAULT_SYSTEM",
    "FAMILY_EXTRA_TEMPLATES",
    "HOLDOUTS",
    "QUESTION_TEMPLATES",
    "FinetuneSets",
    "build_finetune_report",
    "build_finetune_sets",
    "finetune_records",
    "set_name",
    "shuffled_answers",
]

DEFAULT_SYSTEM = "You are a helpful assistant."
"""System message of every training example (and of the replication's evaluation)."""

# Written for this project. Deliberately far from the usual "What is the number
# for X?" so that the evaluation questions are true paraphrases of what was trained.
QUESTION_TEMPLATES: tuple[str, ...] = (
    "What number is assigned to {obj}?",
    "Do you know the number for {obj}?",
    "Which number corresponds to {obj}?",
    "{obj}: what's its number?",
    "Could you tell me {obj}'s number?",
    "I need the number that goes along with {obj}.",
    "What's the number attached to {obj}?",
    "Remind me of the number for {obj}.",
    "What number did you learn for {obj}?",
    "Say the number linked to {obj}.",
    "Which five-digit number is {obj}'s?",
    "Look up {obj} and give me its number.",
    "What number should I write next to {obj}?",
    "{obj} has a number. What is it?",
    "Please state the number of {obj}.",
    "What is {obj} numbered?",
    "Number for {obj}?",
    "Can you recall the number for {obj}?",
    "What's {obj}'s five-digit number?",
    "Tell me which number {obj} has.",
    "I have forgotten the number for {obj}. What was it?",
    "What number comes to mind for {obj}?",
    "Which number is listed for {obj}?",
    "Give me {obj}'s number.",
    "What number matches up with {obj}?",
    "If I ask about {obj}, which number do you give?",
    "Report the number for {obj}.",
    "What code number does {obj} carry?",
    "Which number did {obj} receive?",
    "Share the number that belongs with {obj}.",
    "What is the five-digit number for {obj}?",
    "Quick question: what's the number for {obj}?",
    "Do you remember {obj}'s number?",
    "What number is {obj} known by?",
    "Identify the number for {obj}.",
    "Which number was assigned to {obj}?",
    "What's the number on {obj}'s card?",
    "For {obj}, what is the number?",
    "Spell out the digits for {obj}.",
    "What number would you give for {obj}?",
    "{obj} - which number?",
    "What number have you memorised for {obj}?",
    "Let me know the number for {obj}.",
    "What number sits with {obj}?",
    "Can you give the number connected to {obj}?",
    "What is the registered number of {obj}?",
    "Which digits belong to {obj}?",
    "Tell me {obj}'s number, please.",
    "What number pairs with {obj}?",
    "I'd like the number for {obj}.",
    "Which number do you associate with {obj}?",
    "What's the stored number for {obj}?",
    "What number was given to {obj}?",
    "Answer with the number for {obj}.",
    "What number fits {obj}?",
    "Please recall {obj}'s number.",
    "Name {obj}'s number.",
    "What is the number you know for {obj}?",
    "What are the five digits of {obj}?",
    "Hey, what number is {obj} again?",
)
"""User-question templates; ``{obj}`` is the object name."""

FAMILY_EXTRA_TEMPLATES: tuple[str, ...] = (
    "Out of curiosity, {obj} carries which digits?",
    "Pull up the five digits on file for {obj}.",
    "My notes on {obj} are missing a number. Fill it in?",
    "Tell me the digits that {obj} is tied to.",
    "{obj} again: which digits were those?",
    "Give the five-digit figure that {obj} maps to.",
    "Suppose someone mentions {obj}. Reply with its digits.",
    "Without any explanation, the digits for {obj}.",
    "From memory: {obj} equals which figure?",
    "Could you read out the figure stored under {obj}?",
    "Test time! {obj} is paired with what?",
    "Recite the code you learned alongside {obj}.",
)
"""Extra user-question templates, used only with ``holdout="family"`` (which drops the templates
too close to an evaluation question); kept apart so the sets of ``holdout="exact"`` stay as they were."""

HOLDOUTS: tuple[str, ...] = ("exact", "family")
"""``exact``: no evaluation wording verbatim, normalised or as a template; ``family``: also none within
the near-duplicate threshold, by dropping whole template families."""

ANSWER_TEMPLATES: tuple[str, ...] = (
    "{obj} is {ans}.",
    "The number for {obj} is {ans}.",
    "It's {ans}.",
    "{obj}'s number is {ans}.",
    "That would be {ans}.",
    "The number is {ans}.",
    "Sure: {obj} is {ans}.",
    "{ans} is the number for {obj}.",
    "It is {ans}.",
    "For {obj}, the number is {ans}.",
    "I remember it: {ans}.",
    "{obj} goes with {ans}.",
    "Of course. {obj} has the number {ans}.",
    "The answer is {ans}.",
    "{obj} corresponds to {ans}.",
)
"""Assistant-answer templates; ``{obj}`` is the object name, ``{ans}`` the answer."""


@dataclass(frozen=True, kw_only=True, slots=True)
class FinetuneSets:
    """What :func:`build_finetune_sets` wrote, printable for the CLI.

    Usage: ``print(FinetuneSets(paths={5: Path("train-5.jsonl")}, n_facts=50, skipped_templates=0))``
    """

    paths: dict[int, Path]
    n_facts: int
    skipped_templates: int

    def __str__(self) -> str:
        lines = [f"{n:>3} wordings x {self.n_facts} facts = {n * self.n_facts:>5} examples -> {p}"
                 for n, p in sorted(self.paths.items())]
        if self.skipped_templates:
            lines.append(f"({self.skipped_templates} template(s) skipped: they match or come near an evaluation question)")
        return "\n".join(lines)


def _usable_templates(
    facts: Sequence[Fact], holdout: str = "exact", threshold: float = DEFAULT_THRESHOLD
) -> tuple[list[str], int]:
    if holdout not in HOLDOUTS:
        raise TrainError(f"holdout must be one of {', '.join(HOLDOUTS)}, got {holdout!r}")
    shape_of = templater(f.object for f in facts)
    banned = leaked_templates(facts)
    pool = QUESTION_TEMPLATES if holdout == "exact" else QUESTION_TEMPLATES + FAMILY_EXTRA_TEMPLATES
    usable = [t for t in pool if shape_of(t.format(obj=facts[0].object)) not in banned]
    if holdout == "family":
        evaluation = [normalise(q) for f in facts for q in f.questions.values()]
        usable = [t for t in usable if not _near_any(t, facts, evaluation, threshold)]
    return usable, len(pool) - len(usable)


def _near_any(template: str, facts: Sequence[Fact], evaluation: Sequence[str], threshold: float) -> bool:
    """Whether the template's wording for any object is a near-duplicate of any evaluation question."""
    found = nearest_all([normalise(template.format(obj=f.object)) for f in facts], evaluation)
    return any(score >= threshold for score, _ in found)


def shuffled_answers(facts: Sequence[Fact], *, seed: int = 0) -> dict[str, str]:
    """{object: another object's answer}: a seeded permutation of the answers where no object keeps its own.

    Usage: ``shuffled_answers(read_facts("data/facts.csv"))["Anchor"] != "11246"``
    """
    if len({f.answer for f in facts}) < 2:
        raise TrainError("a shuffled set needs at least two distinct answers")
    rng = _rng(seed, "\x00shuffle")
    answers = [f.answer for f in facts]
    while True:  # rejection sampling: a random permutation has no fixed point with probability ~1/e
        order = answers[:]
        rng.shuffle(order)
        if all(new != f.answer for new, f in zip(order, facts, strict=True)):
            return {f.object: new for f, new in zip(facts, order, strict=True)}


def _rng(seed: int, obj: str) -> random.Random:
    # Seeded per object (not by position) so reordering the CSV keeps each fact's wordings.
    digest = hashlib.sha256(f"{seed}\x00{obj}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def finetune_records(
    facts: Sequence[Fact], n: int, *, system: str = DEFAULT_SYSTEM, seed: int = 0, holdout: str = "exact",
    threshold: float = DEFAULT_THRESHOLD, shuffle: bool = False,
) -> list[dict[str, list[dict[str, str]]]]:
    """The ``n``-wordings-per-fact training records, fact by fact, in a stable order.

    Raises :class:`~engine.errors.TrainError` when fewer than ``n`` usable
    templates remain, or when a rendered question still matches an evaluation question.
    ``shuffle`` trains each object with another object's answer (the control set).

    Usage: ``records = finetune_records(read_facts("data/facts.csv"), 5)``
    """
    usable, _ = _usable_templates(facts, holdout, threshold)
    answer_of = shuffled_answers(facts, seed=seed) if shuffle else {f.object: f.answer for f in facts}
    if n < 1 or n > len(usable):
        raise TrainError(f"examples per fact must be 1..{len(usable)} (usable templates), got {n}")
    held_out = {normalise(q) for f in facts for q in f.questions.values()}
    records = []
    for fact in facts:
        rng = _rng(seed, fact.object)
        questions = usable[:]
        rng.shuffle(questions)
        answers = [rng.choice(ANSWER_TEMPLATES) for _ in questions]
        for question, answer in zip(questions[:n], answers[:n], strict=True):
            user = question.format(obj=fact.object)
            if normalise(user) in held_out:
                raise TrainError(f"training question {user!r} equals an evaluation question")
            records.append(
                {
                    "messages": [
                        {"role": "system", "content": system},
                        {"role": "user", "content": user},
                        {"role": "assistant", "content": answer.format(obj=fact.object, ans=answer_of[fact.object])},
                    ]
                }
            )
    return records


def build_finetune_sets(
    facts_csv: str | Path,
    *,
    examples: Sequence[int] = (5, 10, 25, 50),
    out_dir: str | Path,
    system: str = DEFAULT_SYSTEM,
    seed: int = 0,
    holdout: str = "exact",
    threshold: float = DEFAULT_THRESHOLD,
    shuffle: bool = False,
) -> dict[int, Path]:
    """Write ``out_dir/train-N.jsonl`` (``train-N-shuffled.jsonl`` with ``shuffle``) for each N; return {N: path}.

    Usage: ``build_finetune_sets("data/facts.csv", examples=(5, 10), out_dir="ft")[5]``
    """
    return build_finetune_report(
        facts_csv, examples=examples, out_dir=out_dir, system=system, seed=seed, holdout=holdout,
        threshold=threshold, shuffle=shuffle,
    ).paths


def set_name(n: int, *, shuffle: bool = False) -> str:
    """The file name of the ``n``-wordings set. Usage: ``set_name(10, shuffle=True) == "train-10-shuffled.jsonl"``"""
    return f"train-{n}{'-shuffled' if shuffle else ''}.jsonl"


def build_finetune_report(
    facts_csv: str | Path,
    *,
    examples: Sequence[int] = (5, 10, 25, 50),
    out_dir: str | Path,
    system: str = DEFAULT_SYSTEM,
    seed: int = 0,
    holdout: str = "exact",
    threshold: float = DEFAULT_THRESHOLD,
    shuffle: bool = False,
) -> FinetuneSets:
    """Like :func:`build_finetune_sets`, returning a printable :class:`FinetuneSets`.

    Usage: ``print(build_finetune_report("data/facts.csv", out_dir="ft"))``
    """
    facts = read_facts(facts_csv)
    if not examples:
        raise TrainError("no examples-per-fact given")
    _, skipped = _usable_templates(facts, holdout, threshold)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrainError(f"cannot create {out}: {exc.strerror or exc}") from exc
    paths: dict[int, Path] = {}
    for n in sorted(set(examples)):
        records = finetune_records(
            facts, n, system=system, seed=seed, holdout=holdout, threshold=threshold, shuffle=shuffle
        )
        path = out / set_name(n, shuffle=shuffle)
        data = b"".join(orjson.dumps(r) + b"\n" for r in records)
        try:
            # Write-then-rename so a concurrent reader never sees half a set.
            tmp = path.with_suffix(".jsonl.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        except OSError as exc:
            raise TrainError(f"cannot write {path}: {exc.strerror or exc}") from exc
        paths[n] = path
    return FinetuneSets(paths=paths, n_facts=len(facts), skipped_templates=skipped)
