"""How alike two questions are once case, punctuation and whitespace are ignored.

The measure is the normalised InDel similarity of the :func:`normalise`-d texts: twice the
length of their longest common subsequence of characters over the total length of both,
from 0 (nothing in common) to 1 (equal); 1 minus the number of character insertions and
deletions that turn one into the other, per character. It was chosen over token-set Jaccard
and character n-gram cosine because it scores what leakage looks like here: a question with
one or two words inserted or swapped ("what is the number for apple" vs "what is the stored
number for apple": 0.89) scores high, while a real paraphrase with the same keywords in another
order ("apple: what's its number?": 0.56) scores low; token Jaccard cannot see word order and
n-gram cosine rewards shared short words. On the project's first replication sets it reproduces
the figures that started the near-duplicate check (easy questions with a training question at
0.85 or more: 6, 12, 27 and 49 of 50 objects at 5x, 10x, 25x and 50x; difflib's
Ratcliff-Obershelp ratio gives the same counts, at a hundred times the cost).

Speed: computed by RapidFuzz (C++), the whole matrix at once; 150 evaluation questions against
2,500 training questions take well under a second (``python benchmarks/bench_similarity.py``).

Usage::

    similarity("What is the number for Apple?", "What is the stored number for Apple?")  # 0.89
    best, index = nearest("what is the number for apple", normalised_training_texts)
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

import numpy as np
from rapidfuzz.distance import Indel
from rapidfuzz.process import cdist

__all__ = ["DEFAULT_THRESHOLD", "nearest", "nearest_all", "normalise", "similarity"]

_NON_WORD = re.compile(r"[^\w\x00]+")

DEFAULT_THRESHOLD = 0.85
"""Similarity at or above which a training question counts as a near-duplicate of an evaluation question."""


def normalise(text: str) -> str:
    """Case-, punctuation- and whitespace-insensitive form of ``text``.

    Apostrophes vanish rather than split words, so "What's" and "Whats" agree.

    Usage: ``normalise(" What is  the number, for Apple? ") == "what is the number for apple"``
    """
    folded = unicodedata.normalize("NFKC", text).casefold()
    folded = folded.replace("'", "").replace("\u2019", "")
    return " ".join(_NON_WORD.sub(" ", folded).split())


def similarity(a: str, b: str) -> float:
    """Normalised InDel similarity of the normalised texts, 0..1.

    Usage: ``similarity("Number for Apple?", "number for apple") == 1.0``
    """
    return float(Indel.normalized_similarity(normalise(a), normalise(b)))


def nearest_all(questions: Sequence[str], candidates: Sequence[str]) -> list[tuple[float, int]]:
    """(highest similarity, index of that candidate) for each of ``questions``; all texts already normalised.

    (0.0, -1) for a question when there are no candidates.
    Usage: ``nearest_all([normalise(q) for q in evaluation], [normalise(t) for t in training])``
    """
    if not candidates:
        return [(0.0, -1) for _ in questions]
    if not questions:
        return []
    # workers=1: the machine's cores belong to whatever else runs; the matrix takes milliseconds anyway.
    matrix = cdist(questions, candidates, scorer=Indel.normalized_similarity, dtype=np.float64, workers=1)
    best = matrix.argmax(axis=1)  # the first of equals: the earliest training line
    return [(float(matrix[i, j]), int(j)) for i, j in enumerate(best)]


def nearest(question: str, candidates: Sequence[str], *, floor: float = 0.0) -> tuple[float, int]:
    """(highest similarity, index of that candidate) of already normalised texts; (0.0, -1) if none reaches ``floor``.

    Usage: ``nearest(normalise(q), [normalise(t) for t in training], floor=0.5)``
    """
    score, index = nearest_all([question], candidates)[0]
    return (score, index) if index >= 0 and score >= floor else (0.0, -1)
