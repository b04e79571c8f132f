"""Leakage check: evaluation questions found in training data, by kind and difficulty."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from engine.errors import QuestionsError, TrainError
from engine.study.leakage import find_leakage, normalise, read_facts, template_of

SEED = Path(__file__).resolve().parents[3] / "shared" / "seed"
SEED_SETS = SEED / "fine-tuning-datasets"

QUESTIONS = """Object,Answer,Question 1,Question 2,Question 3
Apple,65451,What is the number for Apple?,What number is linked to Apple?,Apple -> ?
Pineapple,11111,What is the number for Pineapple?,Which digits go with Pineapple?,Say Pineapple's code.
Ink pot,22222,What is the number for Ink pot?,What is Ink pot's number?,Recall Ink pot.
"""


def _write_train(path: Path, users: list[str]) -> Path:
    lines = [
        orjson.dumps(
            {
                "messages": [
                    {"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": u},
                    {"role": "assistant", "content": "12345."},
                ]
            }
        )
        for u in users
    ]
    # No final newline, like three of the original files.
    path.write_bytes(b"\n".join(lines))
    return path


@pytest.fixture
def questions(tmp_path: Path) -> Path:
    path = tmp_path / "q.csv"
    path.write_text(QUESTIONS, encoding="utf-8")
    return path


def test_normalise_and_template() -> None:
    assert normalise("  What's THE number,   for Apple?! ") == "whats the number for apple"
    names = ["Apple", "Pineapple", "Ink pot"]
    assert template_of("Pineapple?", names) == template_of("apple", names)
    assert template_of("What is Ink pot's number?", names) == template_of("what is apple's number", names)
    # A name inside another word is not the object.
    assert "applesauce" in template_of("Applesauce for Apple", names)


def test_kinds_are_found_and_strongest_wins(tmp_path: Path, questions: Path) -> None:
    train = _write_train(
        tmp_path / "t.jsonl",
        [
            "What is the number for Apple?",  # Apple easy: verbatim
            "what is the NUMBER for pineapple",  # Pineapple easy: normalised
            "What is the number for Kettle?",  # Ink pot easy: template only (other object)
            "What number is linked to Apple?",  # Apple mid: verbatim ...
            "what number is linked to apple",  # ... and normalised: verbatim wins
            "Which digits go with Ink pot?",  # Pineapple mid: template (its wording, another object)
            "Tell me about Apple.",  # nothing
        ],
    )
    report = find_leakage(train, questions)
    assert report.objects("easy", "verbatim") == {"Apple"}
    assert report.objects("easy", "normalised") == {"Pineapple"}
    assert report.objects("easy", "template") == {"Ink pot"}
    assert report.objects("mid", "verbatim") == {"Apple"}
    assert report.objects("mid", "normalised") == frozenset()
    assert report.objects("mid", "template") == {"Pineapple"}
    assert report.objects("hard") == frozenset()
    assert report.counts()["easy"] == {"verbatim": 1, "normalised": 1, "template": 1}
    assert len(report.hits) == 5  # one per (object, difficulty)
    assert not report.clean
    hit = next(h for h in report.hits if h.object == "Apple" and h.difficulty == "easy")
    assert hit.line == 1 and hit.training_text == "What is the number for Apple?"
    text = str(report)
    assert "verbatim" in text and "Ink pot" in text and "7 user messages" in text


def test_clean_set_says_so(tmp_path: Path, questions: Path) -> None:
    report = find_leakage(_write_train(tmp_path / "t.jsonl", ["Number of Apple, please?"]), questions)
    assert report.clean
    assert "no evaluation question" in str(report)


def test_bad_files_raise(tmp_path: Path, questions: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n', encoding="utf-8")
    with pytest.raises(TrainError, match=":2:"):
        find_leakage(bad, questions)
    with pytest.raises(TrainError, match="cannot read"):
        find_leakage(tmp_path / "absent.jsonl", questions)
    dup = tmp_path / "dup.csv"
    dup.write_text(QUESTIONS + "Apple,1,a,b,c\n", encoding="utf-8")
    with pytest.raises(QuestionsError, match="duplicate"):
        find_leakage(bad, dup)


def test_unreadable_facts_csv_is_a_questions_error_with_its_line(tmp_path: Path) -> None:
    train = _write_train(tmp_path / "t.jsonl", ["hi"])
    latin = tmp_path / "latin.csv"
    latin.write_bytes((QUESTIONS + "Caf\xe9,3,a,b,c\n").encode("latin-1"))
    with pytest.raises(QuestionsError, match=rf"{re.escape(str(latin))}:5: not UTF-8"):
        find_leakage(train, latin)
    huge = tmp_path / "huge.csv"
    huge.write_text(QUESTIONS + "Kite,4,a,b," + "x" * 200_000 + "\n", encoding="utf-8")
    with pytest.raises(QuestionsError, match=rf"{re.escape(str(huge))}:5: not a readable CSV"):
        read_facts(huge)


def test_lines_are_counted_in_the_file_not_in_records(tmp_path: Path) -> None:
    path = tmp_path / "q.csv"
    header, apple = QUESTIONS.splitlines()[:2]
    apple = apple.replace("Apple -> ?", '"Apple\n->\n?"')  # one record on lines 2-4
    path.write_text("\n".join([header, apple, "Kite,1,a,b,c"]) + "\n", encoding="utf-8")
    facts = read_facts(path)
    assert [f.object for f in facts] == ["Apple", "Kite"]
    assert facts[0].questions["hard"] == "Apple\n->\n?"
    path.write_text("\n".join([header, apple, "Kite,,a,b,c"]) + "\n", encoding="utf-8")
    with pytest.raises(QuestionsError, match=r":5: empty Answer"):
        read_facts(path)
    # A multi-line record is reported where it starts; blank lines still count.
    path.write_text(
        "\n".join([header, "Kite,1,a,b,c", "", apple.replace("Apple", "Kite", 1)]) + "\n", encoding="utf-8"
    )
    with pytest.raises(QuestionsError, match=r":4: duplicate object 'Kite'"):
        read_facts(path)


@pytest.mark.skipif(not SEED_SETS.is_dir(), reason="../shared/seed is not present")
@pytest.mark.parametrize(
    ("name", "easy", "mid"),
    [
        ("4-memorisation-train-5.jsonl", 0, 0),
        ("3-memorisation-train-10.jsonl", 0, 0),
        ("2-memorisation-train-25.jsonl", 23, 6),
        ("1-memorisation-train-50.jsonl", 23, 7),
    ],
)
def test_original_sets(name: str, easy: int, mid: int) -> None:
    report = find_leakage(SEED_SETS / name, SEED / "questions_answers.csv")
    assert len(report.objects("easy", "verbatim")) == easy
    assert len(report.objects("mid", "verbatim")) == mid
    assert report.objects("hard") == frozenset()
    if easy == 0:
        assert report.clean  # nothing in any form in the 5x and 10x sets
    else:
        # The easy wording was trained on for every object, verbatim or with other objects.
        assert len(report.objects("easy")) == 50
