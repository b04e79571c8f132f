"""Training-seed groups: spread between seeds, and intervals that count objects and seeds."""

from __future__ import annotations

import polars as pl
import pytest

from engine.report.seeds import group_of, seed_comparisons, seed_groups


def _cells(rates: dict[str, list[int]], n: int = 18) -> pl.DataFrame:
    """model x object cells: errors per object (out of n) for each model."""
    rows = [{"model": m, "object": f"o{i}", "n": n, "errors": e} for m, errs in rates.items() for i, e in enumerate(errs)]
    return pl.DataFrame(rows)


def test_group_of_reads_seed_labels_only() -> None:
    assert group_of("5x-s2") == "5x" and group_of("shuffled-10x") == "shuffled-10x"
    assert group_of("ft-5x-s10") == "ft-5x" and group_of("5x-sx") == "5x-sx"


def test_groups_show_each_seed_and_an_interval_wider_than_one_seeds() -> None:
    objects = 20
    cells = _cells({
        "5x-s0": [1] * objects, "5x-s1": [3] * objects, "5x-s2": [5] * objects,  # seeds differ, objects alike
        "10x-s0": [0] * (objects - 1) + [2], "smollm2": [18] * objects,
    })  # fmt: skip
    table = seed_groups(cells, cluster="object", seed=0, reps=500, confidence=0.95)
    assert table.get_column("group").to_list() == ["10x", "5x"]  # the control has no seed label
    five = table.filter(pl.col("group") == "5x").row(0, named=True)
    assert five["seeds"] == 3 and five["seed_rates"] == pytest.approx([1 / 18, 3 / 18, 5 / 18])
    assert five["mean_rate"] == pytest.approx(3 / 18) and five["sd_rate"] == pytest.approx(2 / 18)
    # Objects are all alike here, so the whole interval comes from the seeds: it spans most of their range.
    assert 1 / 18 <= five["lo"] < 2.5 / 18 and 3.5 / 18 < five["hi"] <= 5 / 18
    ten = table.filter(pl.col("group") == "10x").row(0, named=True)
    # one object with 2 errors in 18: the interval runs from 0 to about 3 draws of it
    assert ten["sd_rate"] is None and ten["lo"] == 0.0 and 2 / (18 * objects) < ten["hi"] <= 4 * 2 / (18 * objects)


def test_comparisons_call_a_difference_only_when_seeds_and_objects_agree() -> None:
    objects = 30
    cells = _cells({
        "a-s0": [4] * objects, "a-s1": [5] * objects, "a-s2": [6] * objects,
        "b-s0": [0] * objects, "b-s1": [1] * objects, "b-s2": [0] * objects,
        "c-s0": [0] * objects, "c-s1": [9] * objects, "c-s2": [1] * objects,  # one wild seed
    })  # fmt: skip
    pairs = {(r["a"], r["b"]): r for r in seed_comparisons(cells, cluster="object", seed=0, reps=1000,
                                                           confidence=0.95).iter_rows(named=True)}  # fmt: skip
    assert pairs["a", "b"]["differs"] and pairs["a", "b"]["lo"] > 0
    assert not pairs["b", "c"]["differs"]  # c's mean is higher, but its seeds disagree too much to say
    assert pairs["a", "c"]["diff"] == pytest.approx(5 / 18 - 10 / 3 / 18)
