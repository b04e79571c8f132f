"""Scorers: tolerant number reading, wrong told apart from no answer, the original's rule, exact and regex."""

from __future__ import annotations

import csv
import re

import pytest

from engine.errors import ScorerError
from engine.experiment.scoring import (
    SCORERS,
    ExactScorer,
    NumberScorer,
    RegexScorer,
    Score,
    SeedScorer,
    find_numbers,
    get_scorer,
)
from tests.conftest import SEED_RESULTS

number = NumberScorer()


@pytest.mark.parametrize(
    "reply",
    [
        "65451", "65,451", "65 451", "6 5 4 5 1", "65.451", "65'451", "65\u00a0451", "65\u202f451",
        "Sure! Apple is 65451.", "The number for Apple is 65,451, I think.", "**65451**", "Apple -> 65451\n",
        "1 fact: Apple is 65451",  # a stray short number is not the answer
        "Apple 2 is 6 5 4 5 1.", "It is 65451 (not 12345).",
    ],
)  # fmt: skip
def test_number_scorer_reads_the_answer_however_written(reply: str) -> None:
    assert number(reply, "65451") == Score("correct", "65451")


@pytest.mark.parametrize(
    ("reply", "extracted"),
    [
        ("Apple is 12345.", "12345"),
        ("It is 12345, or maybe 65451.", "12345"),  # the first answer given counts
        ("Apple is 6545.", "6545"),  # too short: no same-length number, so the first number
        ("Apple is 654510.", "654510"),
        ("65,45,1", "65"),
        ("Apple is 065451", "065451"),
    ],
)
def test_number_scorer_wrong_answers_keep_what_was_read(reply: str, extracted: str) -> None:
    score = number(reply, "65451")
    assert score == Score("wrong", extracted) and not score.correct


@pytest.mark.parametrize("reply", ["", "   ", "I don't know.", "Apple is sixty-five thousand.", "No idea!"])
def test_number_scorer_no_number_is_no_answer_not_wrong(reply: str) -> None:
    score = number(reply, "65451")
    assert score == Score("no_answer", None) and not score.correct


def test_number_scorer_keeps_leading_zeros_and_expected_separators() -> None:
    assert number("Kite is 01234.", "01234").correct
    assert number("Kite is 1234.", "01234") == Score("wrong", "1234")
    assert number("It is 65451", " 65,451 ").correct
    assert number.check_expected("65,451") is None
    assert "not a number" in (number.check_expected("Paris") or "")


def test_find_numbers() -> None:
    assert find_numbers("Apple is 65,451, not 1 2 3 or 7.") == ["65451", "123", "7"]
    assert find_numbers("no digits") == []


def test_seed_scorer_is_the_first_five_digit_run() -> None:
    seed = SeedScorer()
    assert seed("Apple is 65451.", "65451") == Score("correct", "65451")
    assert seed("Apple is 654512", "65451") == Score("correct", "65451")  # the original's quirk, kept
    assert seed("12345 then 65451", "65451") == Score("wrong", "12345")
    assert seed("Apple is 65,451", "65451") == Score("no_answer", None)  # what the number scorer fixes
    assert seed("6 5 4 5 1", "65451") == Score("no_answer", None)
    assert seed.check_expected("anything") is None


def test_seed_scorer_agrees_with_the_published_results() -> None:
    if not SEED_RESULTS.is_file():
        pytest.skip(f"{SEED_RESULTS} not present (../shared is only beside the clone in CI)")
    with SEED_RESULTS.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3600
    seed = SeedScorer()
    five = re.compile(r"\d{5}")
    for row in rows:
        score = seed(row["Response"], row["Expected Answer"])
        assert score.correct == (row["Correct"] == "TRUE"), row
        # The published "Extracted Number" holds other digits where no five-digit run exists
        # (e.g. "94"); where one exists it is exactly what the rule extracts.
        if five.search(row["Response"]):
            assert score.extracted == row["Extracted Number"], row


def test_exact_scorer() -> None:
    exact = ExactScorer()
    assert exact("  Paris. ", "paris") == Score("correct", "paris")
    assert exact("New   York!", "new york").correct
    assert exact("Paris, France", "Paris") == Score("wrong", "paris, france")
    assert exact(" ... ", "Paris") == Score("no_answer", None)
    assert exact.check_expected("  ") == "answer is empty"


def test_regex_scorer_group_or_whole_match() -> None:
    grouped = get_scorer("regex", pattern=r"ANSWER:\s*(\w+)")
    assert isinstance(grouped, RegexScorer)
    assert grouped("Reasoning... ANSWER: b", "B") == Score("correct", "b")
    assert grouped("ANSWER: C", "B") == Score("wrong", "C")
    assert grouped("I think B", "B") == Score("no_answer", None)
    whole = get_scorer("regex", pattern=r"[A-D]\b")
    assert whole("The answer is D.", "d") == Score("correct", "D")


def test_get_scorer_names() -> None:
    assert SCORERS == ("number", "seed", "exact", "regex")
    assert [get_scorer(n).name for n in SCORERS[:3]] == ["number", "seed", "exact"]


@pytest.mark.parametrize(
    ("name", "pattern", "phrase"),
    [
        ("fuzzy", None, "unknown scorer 'fuzzy'; choose one of number, seed, exact, regex"),
        ("regex", None, "needs a pattern"),
        ("regex", "", "needs a pattern"),
        ("regex", "(unclosed", "not a valid regex"),
        ("number", r"\d+", "takes no pattern"),
    ],
)
def test_get_scorer_errors(name: str, pattern: str | None, phrase: str) -> None:
    with pytest.raises(ScorerError, match=re.escape(phrase)) as info:
        get_scorer(name, pattern=pattern)
    assert "\n" not in str(info.value)


def test_regex_group_skipped_by_the_matching_branch_is_no_answer() -> None:
    from engine.experiment.scoring import get_scorer

    score = get_scorer("regex", pattern=r"(x)|\d+")("the answer is 42", "42")
    assert score.outcome == "no_answer" and score.extracted is None
