"""Near-duplicate similarity: the measure, its bounds, and the figures it gives on the first sets."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import TrainError
from engine.study.finetune import build_finetune_sets, finetune_records, shuffled_answers
from engine.study.leakage import check_sets, find_leakage, read_facts
from engine.study.similarity import nearest, normalise, similarity

FACTS = Path(__file__).resolve().parents[2] / "data" / "facts.csv"


def test_the_measure_scores_near_copies_high_and_paraphrases_low() -> None:
    assert similarity("What is the number for Apple?", "what is the number, for apple") == 1.0
    near = similarity("What is the number for Apple?", "What is the stored number for Apple?")
    assert 0.85 <= near < 0.95
    far = similarity("What is the number for Apple?", "Apple: what's its number?")
    assert 0.3 < far < 0.7
    assert similarity("abc", "xyz") == 0.0


def test_nearest_finds_the_best_candidate_and_respects_the_floor() -> None:
    texts = [normalise(t) for t in ("Say Apple's code.", "What is the stored number for Apple?", "unrelated words")]
    score, index = nearest(normalise("What is the number for Apple?"), texts)
    assert index == 1
    assert score == pytest.approx(similarity("What is the number for Apple?", texts[1]))
    assert nearest(normalise("What is the number for Apple?"), texts, floor=0.95) == (0.0, -1)
    assert nearest("anything", []) == (0.0, -1)


@pytest.fixture(scope="module")
def exact_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    return build_finetune_sets(FACTS, out_dir=tmp_path_factory.mktemp("exact"))


@pytest.fixture(scope="module")
def family_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    return build_finetune_sets(FACTS, out_dir=tmp_path_factory.mktemp("family"), holdout="family")


def test_the_first_sets_have_the_near_duplicates_the_issue_counted(exact_sets: dict[int, Path]) -> None:
    # Easy questions with a training question at similarity >= 0.85: 6, 12, 27, 49 of 50 objects.
    easy = {n: find_leakage(p, FACTS).near_counts()["easy"] for n, p in exact_sets.items()}
    assert easy == {5: 6, 10: 12, 25: 27, 50: 49}
    assert all(find_leakage(p, FACTS).near_counts()["hard"] == 0 for p in exact_sets.values())


def test_family_holdout_leaves_nothing_within_the_threshold(family_sets: dict[int, Path]) -> None:
    table = check_sets(list(family_sets.values()), FACTS, max_similarity=0.85)  # would raise on any near-copy
    for _set, _difficulty, verbatim, normalised, template, near, top in table.rows():
        assert (verbatim, normalised, template, near) == (0, 0, 0, 0)
        assert 0.5 < top < 0.85
    assert "| train-50.jsonl | easy | 0 | 0 | 0 | 0 |" in table.markdown()


def test_family_sets_stay_nested(family_sets: dict[int, Path]) -> None:
    lines = {n: p.read_bytes().splitlines() for n, p in family_sets.items()}
    for small, big in ((5, 10), (10, 25), (25, 50)):
        assert set(lines[small]) <= set(lines[big])
        assert len(lines[big]) == big * 50


def test_max_similarity_refuses_a_set_with_a_near_copy(exact_sets: dict[int, Path]) -> None:
    with pytest.raises(TrainError, match=r"train-5\.jsonl: line \d+ .* refusing this set"):
        check_sets([exact_sets[5]], FACTS, max_similarity=0.85)
    check_sets([exact_sets[5]], FACTS, max_similarity=0.95)  # below every pair: accepted
    with pytest.raises(TrainError, match="must be in"):
        check_sets([exact_sets[5]], FACTS, max_similarity=1.5)


def test_the_shuffled_control_gives_every_object_another_objects_number() -> None:
    facts = read_facts(FACTS)
    mapping = shuffled_answers(facts, seed=0)
    assert sorted(mapping.values()) == sorted(f.answer for f in facts)  # a permutation
    assert all(mapping[f.object] != f.answer for f in facts)  # no object keeps its own
    assert shuffled_answers(facts, seed=0) == mapping and shuffled_answers(facts, seed=1) != mapping
    plain = finetune_records(facts, 5, holdout="family")
    shuffled = finetune_records(facts, 5, holdout="family", shuffle=True)
    assert [r["messages"][1] for r in plain] == [r["messages"][1] for r in shuffled]  # same questions
    for record, fact in zip(shuffled[::5], facts, strict=True):
        reply = record["messages"][2]["content"]
        assert mapping[fact.object] in reply and fact.answer not in reply
