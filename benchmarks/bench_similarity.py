"""Near-duplicate leakage speed: the 50x set (2,500 training questions) against 150 evaluation questions.

Run: ``python benchmarks/bench_similarity.py`` (prints the median of 5 runs of ``find_leakage``,
and of the family holdout's template filter).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from engine.study.finetune import build_finetune_sets
from engine.study.leakage import find_leakage

FACTS = Path(__file__).resolve().parents[1] / "data" / "facts.csv"


def _median(step: object, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        paths = build_finetune_sets(FACTS, examples=(50,), out_dir=tmp)
        leak = _median(lambda: find_leakage(paths[50], FACTS))
        build = _median(lambda: build_finetune_sets(FACTS, examples=(50,), out_dir=tmp, holdout="family"), 3)
    print(f"find_leakage, 2,500 x 150 pairs (verbatim, template and near): median {leak:.3f} s")
    print(f"build the 50x set with holdout='family' (template filter included): median {build:.3f} s")


if __name__ == "__main__":
    main()
