"""Question sets: the wide CSV of the original, long CSV with tags, JSONL, and every way a file can be unusable."""

from __future__ import annotations

import csv
from pathlib import Path

import orjson
import pytest

from engine.errors import QuestionsError
from engine.experiment.questions import Question, load_questions
from tests.conftest import FACTS_CSV, WIDE_CSV

WIDE_HEADER = "Object,Answer,Question 1,Question 2,Question 3\n"


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def test_wide_csv_gives_three_tagged_questions_per_object(tmp_path: Path) -> None:
    questions = load_questions(write(tmp_path, "q.csv", WIDE_CSV))
    assert [q.id for q in questions] == [
        "Anchor/easy", "Anchor/mid", "Anchor/hard", "Ice cream/easy", "Ice cream/mid", "Ice cream/hard",
    ]  # fmt: skip
    assert questions[2] == Question(
        id="Anchor/hard", text="Anchor, again: which five digits?", answer="11246",
        tags={"object": "Anchor", "difficulty": "hard"},
    )
    assert questions[3].answer == "01234"  # answers stay text: a leading zero is part of the answer


def test_project_facts_load() -> None:
    questions = load_questions(FACTS_CSV)
    with FACTS_CSV.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(questions) == 3 * len(rows)
    by_id = {q.id: q for q in questions}
    for row in rows:
        for n, difficulty in (("1", "easy"), ("2", "mid"), ("3", "hard")):
            q = by_id[f"{row['Object']}/{difficulty}"]
            assert (q.text, q.answer) == (row[f"Question {n}"], row["Answer"])
    assert {frozenset(q.tags) for q in questions} == {frozenset({"object", "difficulty"})}


def test_seed_questions_with_spaces_and_hyphens(seed_questions: Path) -> None:
    questions = load_questions(seed_questions)
    assert len(questions) == 150
    by_id = {q.id: q for q in questions}
    assert by_id["Apple/easy"].answer == "65451"
    assert by_id["Ice cream/mid"].tags == {"object": "Ice cream", "difficulty": "mid"}
    assert by_id["X-ray/hard"].tags["object"] == "X-ray"
    assert all(q.text.strip() == q.text and q.text for q in questions)


def test_wide_csv_with_bom_crlf_and_a_fourth_question(tmp_path: Path) -> None:
    content = "\ufeffObject,Answer,Question 1,Question 4\r\nKite,34569,Kite?,Kite again?\r\n"
    questions = load_questions(write(tmp_path, "q.csv", content))
    assert [(q.id, q.tags["difficulty"]) for q in questions] == [("Kite/easy", "easy"), ("Kite/q4", "q4")]


def test_long_csv_keeps_other_columns_as_tags(tmp_path: Path) -> None:
    content = "id,question,answer,topic,level\ncap-fr,Capital of France?,Paris,geo,1\nsq-9, What is 9*9? ,81,math,2\n"
    questions = load_questions(write(tmp_path, "q.csv", content))
    assert questions == (
        Question(id="cap-fr", text="Capital of France?", answer="Paris", tags={"topic": "geo", "level": "1"}),
        Question(id="sq-9", text="What is 9*9?", answer="81", tags={"topic": "math", "level": "2"}),
    )


def test_long_csv_without_tag_columns_has_empty_tags(tmp_path: Path) -> None:
    questions = load_questions(write(tmp_path, "q.csv", "answer,question,id\n42,Meaning?,q1\n"))
    assert questions == (Question(id="q1", text="Meaning?", answer="42", tags={}),)


def test_jsonl_long_and_wide(tmp_path: Path) -> None:
    lines = [{"id": "a", "question": "Q a?", "answer": 12345, "set": "x"}, {}, {"id": "b", "question": "Q b?", "answer": "7", "set": None}]
    text = "\n".join("" if not row else orjson.dumps(row).decode() for row in lines) + "\n"
    questions = load_questions(write(tmp_path, "q.jsonl", text))
    assert questions == (
        Question(id="a", text="Q a?", answer="12345", tags={"set": "x"}),  # numbers become text
        Question(id="b", text="Q b?", answer="7", tags={"set": ""}),
    )
    wide = orjson.dumps({"Object": "Kite", "Answer": "34569", "Question 1": "Kite?"}).decode()
    assert load_questions(write(tmp_path, "w.ndjson", wide))[0].id == "Kite/easy"


# (id, file name, content, phrases the one-line message must contain)
BAD_FILES = [
    ("empty file", "q.csv", "", ["no questions"]),
    ("header only", "q.csv", WIDE_HEADER, ["no questions"]),
    ("wide without Answer", "q.csv", "Object,Question 1\nKite,Kite?\n", ["missing column 'Answer'"]),
    ("wide without questions", "q.csv", "Object,Answer\nKite,1\n", ["missing column 'Question 1'"]),
    ("long without answer", "q.csv", "id,question,topic\na,Q?,t\n", ["missing column 'answer'"]),
    ("long without id", "q.csv", "question,answer\nQ?,1\n", ["missing column 'id'"]),
    ("duplicate object", "q.csv", WIDE_HEADER + "Kite,1,a,b,c\nKite,2,d,e,f\n", ["duplicate question id 'Kite/easy'"]),
    ("duplicate long id", "q.csv", "id,question,answer\na,Q1?,1\na,Q2?,2\n", ["duplicate question id 'a'"]),
    ("empty wide answer", "q.csv", WIDE_HEADER + "Kite,1,a,b,c\nRose, ,d,e,f\n", [":3:", "empty Answer", "'Rose'"]),
    ("empty wide question", "q.csv", WIDE_HEADER + "Kite,1,a,,c\n", [":2:", "empty 'Question 2'", "'Kite'"]),
    ("short wide row", "q.csv", WIDE_HEADER + "Kite,1,a,b\n", [":2:", "empty 'Question 3'"]),
    ("unquoted comma", "q.csv", WIDE_HEADER + "Kite,1,a,b,Kite, again?\n", [":2:", "more fields than the header"]),
    ("empty object", "q.csv", WIDE_HEADER + ",1,a,b,c\n", [":2:", "empty Object"]),
    ("empty long answer", "q.csv", "id,question,answer\na,Q?,\n", [":2:", "empty answer", "'a'"]),
    ("empty long question", "q.csv", "id,question,answer\na,  ,1\n", [":2:", "empty question", "'a'"]),
    ("empty long id", "q.csv", "id,question,answer\n,Q?,1\n", [":2:", "empty id"]),
    ("not utf-8", "q.csv", WIDE_HEADER.encode() + b"Caf\xe9,1,a,b,c\n", ["not UTF-8"]),
    ("bad jsonl line", "q.jsonl", '{"id": "a", "question": "Q?", "answer": "1"}\n{"id": "b",\n', [":2:", "not valid JSON"]),
    ("jsonl not an object", "q.jsonl", '["a", "Q?", "1"]\n', [":1:", "JSON object"]),
    ("jsonl not utf-8", "q.jsonl", b'{"id": "a", "question": "Caf\xe9?", "answer": "1"}\n', [":1:"]),
    ("empty jsonl", "q.jsonl", "\n\n", ["no questions"]),
]  # fmt: skip


@pytest.mark.parametrize(("name", "content", "phrases"), [r[1:] for r in BAD_FILES], ids=[r[0] for r in BAD_FILES])
def test_bad_question_file_is_one_clear_error(tmp_path: Path, name: str, content: str | bytes, phrases: list[str]) -> None:
    path = write(tmp_path, name, content)
    with pytest.raises(QuestionsError) as info:
        load_questions(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert "\n" not in message
    for phrase in phrases:
        assert phrase in message, message


@pytest.mark.parametrize("make", [lambda d: d / "absent.csv", lambda d: d], ids=["missing", "directory"])
def test_missing_questions_file(tmp_path: Path, make) -> None:  # type: ignore[no-untyped-def]
    path = make(tmp_path)
    with pytest.raises(QuestionsError, match="questions file not found") as info:
        load_questions(path)
    assert str(path) in str(info.value)


def test_jsonl_with_a_bom(tmp_path: Path) -> None:
    path = write(tmp_path, "q.jsonl", b'\xef\xbb\xbf{"id": "a", "question": "Q?", "answer": "1"}\n')
    assert load_questions(path)[0].id == "a"


def test_empty_surplus_fields_are_ignored(tmp_path: Path) -> None:
    # Spreadsheets often end rows with a comma; only surplus *text* means a field was split.
    questions = load_questions(write(tmp_path, "q.csv", WIDE_HEADER + "Kite,1,a,b,c,,\n"))
    assert [q.text for q in questions] == ["a", "b", "c"]


def test_jsonl_errors_name_the_real_line_and_tags_are_the_union_of_keys(tmp_path: Path) -> None:
    good = '{"id": "a", "question": "Q?", "answer": "1"}\n\n{"id": "b", "question": "Q?", "answer": "2", "topic": "t"}\n'
    questions = load_questions(write(tmp_path, "q.jsonl", good))
    assert [dict(q.tags) for q in questions] == [{"topic": ""}, {"topic": "t"}]  # same tag keys on every question
    bad = good + '\n{"id": "c", "question": "Q?", "answer": ""}\n'
    with pytest.raises(QuestionsError, match=r"q\.jsonl:5: empty answer for id 'c'"):
        load_questions(write(tmp_path, "q.jsonl", bad))


def test_csv_errors_name_the_physical_line(tmp_path: Path) -> None:
    # A quoted field spanning two lines shifts every later row by one physical line.
    content = WIDE_HEADER + 'Kite,1,"a\nstill a",b,c\nRose,,d,e,f\n'
    with pytest.raises(QuestionsError, match=r"q\.csv:4: empty Answer for 'Rose'"):
        load_questions(write(tmp_path, "q.csv", content))
