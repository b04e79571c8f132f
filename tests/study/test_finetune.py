"""Fine-tuning sets: N distinct wordings per fact, nested, evaluation questions held out."""

from __future__ import annotations

import collections
from pathlib import Path

import orjson
import pytest

from engine.errors import QuestionsError, TrainError
from engine.study.finetune import (
    QUESTION_TEMPLATES,
    build_finetune_report,
    build_finetune_sets,
    finetune_records,
)
from engine.study.leakage import find_leakage, normalise, read_facts, template_of

FACTS = Path(__file__).resolve().parents[2] / "data" / "facts.csv"


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def _records(path: Path) -> list[list[dict[str, str]]]:
    return [orjson.loads(line)["messages"] for line in _lines(path)]


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    return build_finetune_sets(FACTS, examples=(5, 10, 25, 50), out_dir=tmp_path_factory.mktemp("sets"))


def test_sets_are_nested_and_sized(sets: dict[int, Path]) -> None:
    n_facts = len(read_facts(FACTS))
    assert sorted(sets) == [5, 10, 25, 50]
    for n, path in sets.items():
        assert len(_lines(path)) == n * n_facts
    for small, big in ((5, 10), (10, 25), (25, 50)):
        assert set(_lines(sets[small])) <= set(_lines(sets[big]))


def test_each_fact_has_n_distinct_wordings_and_right_answer(sets: dict[int, Path]) -> None:
    facts = {f.object: f for f in read_facts(FACTS)}
    for n, path in sets.items():
        questions: dict[str, set[str]] = collections.defaultdict(set)
        answers: dict[str, set[str]] = collections.defaultdict(set)
        for system, user, assistant in _records(path):
            assert (system["role"], user["role"], assistant["role"]) == ("system", "user", "assistant")
            obj = next(o for o in sorted(facts, key=len, reverse=True) if o in user["content"])
            assert facts[obj].answer in assistant["content"]
            questions[obj].add(normalise(user["content"]))
            answers[obj].add(assistant["content"])
        assert set(questions) == set(facts)
        assert all(len(q) == n for q in questions.values())
        if n >= 10:
            # Varied answer sentences, not one fixed reply per fact.
            assert all(len(a) >= 3 for a in answers.values())


def test_evaluation_questions_never_in_training(sets: dict[int, Path]) -> None:
    facts = read_facts(FACTS)
    names = [f.object for f in facts]
    held_out = {normalise(q) for f in facts for q in f.questions.values()}
    held_templates = {template_of(q, names) for f in facts for q in f.questions.values()}
    for path in sets.values():
        for _, user, _ in _records(path):
            assert normalise(user["content"]) not in held_out
            assert template_of(user["content"], names) not in held_templates
        assert find_leakage(path, FACTS).clean


def test_build_is_deterministic_and_seeded(tmp_path: Path) -> None:
    a = build_finetune_sets(FACTS, examples=(5,), out_dir=tmp_path / "a")
    b = build_finetune_sets(FACTS, examples=(5,), out_dir=tmp_path / "b")
    c = build_finetune_sets(FACTS, examples=(5,), out_dir=tmp_path / "c", seed=1)
    assert a[5].read_bytes() == b[5].read_bytes()
    assert a[5].read_bytes() != c[5].read_bytes()


def test_custom_system_message(tmp_path: Path) -> None:
    path = build_finetune_sets(FACTS, examples=(5,), out_dir=tmp_path, system="Answer briefly.")[5]
    assert {r[0]["content"] for r in _records(path)} == {"Answer briefly."}


def test_template_equal_to_an_evaluation_question_is_skipped(tmp_path: Path) -> None:
    clash = QUESTION_TEMPLATES[0]
    rows = ["Object,Answer,Question 1,Question 2,Question 3"]
    for obj, ans in (("Wi-Fi router", "70658"), ("Ink pot", "52807"), ("Yo-yo", "25804")):
        # The mid question is one of our templates, with different case and punctuation.
        mid = clash.format(obj=obj).upper().replace("?", " !")
        rows.append(f'{obj},{ans},What is the number for {obj}?,"{mid}",{obj} -> ?')
    facts_csv = tmp_path / "facts.csv"
    facts_csv.write_text("\n".join(rows) + "\n", encoding="utf-8")
    report = build_finetune_report(facts_csv, examples=(5, len(QUESTION_TEMPLATES) - 1), out_dir=tmp_path / "out")
    assert report.skipped_templates == 1
    assert "skipped" in str(report)
    for path in report.paths.values():
        assert find_leakage(path, facts_csv).clean
    with pytest.raises(TrainError, match="usable templates"):
        finetune_records(read_facts(facts_csv), len(QUESTION_TEMPLATES))


def test_report_text_lists_every_set(tmp_path: Path) -> None:
    report = build_finetune_report(FACTS, examples=(10, 5), out_dir=tmp_path)
    text = str(report)
    assert "train-5.jsonl" in text and "train-10.jsonl" in text and "250 examples" in text


def test_bad_inputs_raise_engine_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("Object,Answer,Question 1\nApple,1,What?\n", encoding="utf-8")
    with pytest.raises(QuestionsError, match="missing column"):
        build_finetune_sets(bad, out_dir=tmp_path)
    with pytest.raises(QuestionsError, match="cannot read"):
        build_finetune_sets(tmp_path / "absent.csv", out_dir=tmp_path)
    with pytest.raises(TrainError, match="examples per fact"):
        build_finetune_sets(FACTS, examples=(0,), out_dir=tmp_path)
    with pytest.raises(TrainError):
        build_finetune_sets(FACTS, examples=(), out_dir=tmp_path)
