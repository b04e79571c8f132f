"""Scorers: turn a model's reply into an outcome, the extracted answer, and right or wrong.

Every scorer tells three outcomes apart, because "the model gave no number" and
"the model gave the wrong number" are different failures of recall:

- ``correct``: the extracted answer is the expected one;
- ``wrong``: an answer was found, and it is not the expected one;
- ``no_answer``: nothing that looks like an answer is in the reply.

Usage::

    score = get_scorer("number")("Sure! Apple is 65,451.", "65451")
    assert score.outcome == "correct" and score.extracted == "65451"
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Protocol

from engine.errors import ScorerError

Outcome = Literal["correct", "wrong", "no_answer"]

SCORERS = ("number", "seed", "exact", "regex")


@dataclass(frozen=True, slots=True)
class Score:
    """What a scorer made of one reply."""

    outcome: Outcome
    extracted: str | None

    @property
    def correct(self) -> bool:
        return self.outcome == "correct"


class Scorer(Protocol):
    """A callable ``(reply, expected) -> Score``; ``check_expected`` rejects answers it cannot score."""

    @property
    def name(self) -> str:
        """The scorer's name, as in the spec (read-only: scorers are frozen)."""
        ...

    def __call__(self, reply: str, expected: str) -> Score: ...

    def check_expected(self, expected: str) -> str | None:
        """Return why ``expected`` cannot be scored by this scorer, or None when it can."""
        ...


# A number as people and models write it: grouped in thousands ("65,451", "65 451",
# "65.451", "65'451"), spelled digit by digit ("6 5 4 5 1"), or plain ("65451").
# Grouped forms come first so "65,451" is one number, not 65 and 451.
_NUMBER = re.compile(
    r"(?<![\d])(?:\d{1,3}(?:[,.'\u00a0\u202f ]\d{3})+(?![\d])|\d(?: \d){2,}(?![\d])|\d+)"
)
_SEPARATORS = str.maketrans("", "", ",.' \u00a0\u202f")


def find_numbers(text: str) -> list[str]:
    """All numbers in ``text``, separators removed, in order.

    Usage: ``find_numbers("Apple is 65,451, not 1 2 3")  # ['65451', '123']``
    """
    return [m.group().translate(_SEPARATORS) for m in _NUMBER.finditer(text)]


@dataclass(frozen=True, slots=True)
class NumberScorer:
    """Finds the answer number in the reply, tolerant of how it is written.

    The extracted answer is the first number with as many digits as the expected one
    (so a stray "1" in "1 fact: Apple is 65451" is not taken for the answer), else the
    first number at all. Usage: ``NumberScorer()("It is 65 451.", "65451").correct``
    """

    name: str = "number"

    def __call__(self, reply: str, expected: str) -> Score:
        numbers = find_numbers(reply)
        if not numbers:
            return Score("no_answer", None)
        target = expected.strip().translate(_SEPARATORS)
        same_length = [n for n in numbers if len(n) == len(target)]
        extracted = same_length[0] if same_length else numbers[0]
        return Score("correct" if extracted == target else "wrong", extracted)

    def check_expected(self, expected: str) -> str | None:
        digits = expected.strip().translate(_SEPARATORS)
        return None if digits.isdigit() else f"answer {expected!r} is not a number"


_FIVE_DIGITS = re.compile(r"\d{5}")


@dataclass(frozen=True, slots=True)
class SeedScorer:
    """The original experiment's rule: the first run of five digits, compared as a string.

    Kept for comparison only: it misreads "65,451" and cannot see longer answers.
    Usage: ``SeedScorer()("65,451", "65451").outcome  # 'no_answer'``
    """

    name: str = "seed"

    def __call__(self, reply: str, expected: str) -> Score:
        match = _FIVE_DIGITS.search(reply)
        if match is None:
            return Score("no_answer", None)
        extracted = match.group()
        return Score("correct" if extracted == expected.strip() else "wrong", extracted)

    def check_expected(self, expected: str) -> str | None:
        return None


def _normalise(text: str) -> str:
    return " ".join(text.casefold().split()).strip(" .!?;:\"'")


@dataclass(frozen=True, slots=True)
class ExactScorer:
    """The whole reply must equal the answer, ignoring case, spacing and end punctuation.

    Usage: ``ExactScorer()("Paris.", "paris").correct  # True``
    """

    name: str = "exact"

    def __call__(self, reply: str, expected: str) -> Score:
        got = _normalise(reply)
        if not got:
            return Score("no_answer", None)
        return Score("correct" if got == _normalise(expected) else "wrong", got)

    def check_expected(self, expected: str) -> str | None:
        return None if _normalise(expected) else "answer is empty"


@dataclass(frozen=True, slots=True)
class RegexScorer:
    """Extracts the answer with a pattern (its first group, or the whole match).

    Usage: ``RegexScorer(pattern=r"ANSWER: (\\w+)")("ANSWER: B", "b").correct  # True``
    """

    pattern: re.Pattern[str]
    name: str = "regex"

    def __call__(self, reply: str, expected: str) -> Score:
        match = self.pattern.search(reply)
        if match is None:
            return Score("no_answer", None)
        extracted = match.group(1) if self.pattern.groups else match.group()
        if extracted is None:  # the pattern matched through a branch that skips its group
            return Score("no_answer", None)
        return Score("correct" if _normalise(extracted) == _normalise(expected) else "wrong", extracted)

    def check_expected(self, expected: str) -> str | None:
        return None if _normalise(expected) else "answer is empty"


def get_scorer(name: str, *, pattern: str | None = None) -> Scorer:
    """The scorer called ``name``; ``pattern`` is the regex scorer's extraction pattern.

    Usage: ``score = get_scorer("number")(reply, expected)``
    """
    if name == "regex":
        if not pattern:
            raise ScorerError("scorer 'regex' needs a pattern (spec field scorer_pattern)")
        try:
            return RegexScorer(pattern=re.compile(pattern))
        except re.error as exc:
            raise ScorerError(f"scorer_pattern {pattern!r} is not a valid regex: {exc}") from exc
    if pattern is not None:
        raise ScorerError(f"scorer {name!r} takes no pattern; only 'regex' does")
    scorers: dict[str, Scorer] = {"number": NumberScorer(), "seed": SeedScorer(), "exact": ExactScorer()}
    try:
        return scorers[name]
    except KeyError:
        raise ScorerError(f"unknown scorer {name!r}; choose one of {', '.join(SCORERS)}") from None
