"""The replication's controls that need no model: chance level and the in-context prompt.

- **Chance level.** A model that answered every question with the number it saw most often in
  training would be right for exactly the objects that have that number. :func:`chance_level`
  counts the numbers in a set's assistant messages and says how often that guess is right over
  the evaluation grid (every object is asked equally often, so: objects with that answer ÷ all
  objects). With 50 distinct answers trained equally often it is 1/50 = 2%; a fine-tuned model
  at or above it knows nothing beyond "say a trained number".
- **In-context baseline.** :func:`context_prompt` is the system prompt of the base model given
  every fact instead of being trained on them (``data/facts-context.txt`` is its text for
  ``data/facts.csv``; a test keeps them equal).

Usage::

    chance_level("sets/train-10.jsonl", read_facts("data/facts.csv")).share   # 0.02
    Path("data/facts-context.txt").write_text(context_prompt(read_facts("data/facts.csv")))
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from engine.errors import TrainError
from engine.study.leakage import Fact

__all__ = ["ChanceLevel", "chance_level", "context_prompt"]

_NUMBER = re.compile(r"\d+")


@dataclass(frozen=True, kw_only=True, slots=True)
class ChanceLevel:
    """How often always answering a set's most frequent trained number would be right.

    Usage: ``f"{c.set_name}: {c.number} ({c.times}x) right for {c.share:.1%}"``
    """

    set_name: str
    number: str
    times: int  # how often it appears in the set's answers
    share: float  # of the evaluation grid's tasks it would answer correctly


def _assistant_numbers(path: Path) -> Counter[str]:
    counts: Counter[str] = Counter()
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise TrainError(f"cannot read {path}: {exc.strerror or exc}") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            messages = orjson.loads(line)["messages"]
            texts = [m["content"] for m in messages if m.get("role") == "assistant"]
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise TrainError(f"{path}:{number}: not a chat fine-tuning record ({exc})") from exc
        counts.update(n for text in texts for n in _NUMBER.findall(text))
    return counts


def chance_level(train_jsonl: str | Path, facts: Sequence[Fact]) -> ChanceLevel:
    """The most frequent number in the set's answers (ties: the smallest) and its share of right answers.

    Usage: ``chance_level("train-5.jsonl", read_facts("data/facts.csv")).share``
    """
    path = Path(train_jsonl)
    counts = _assistant_numbers(path)
    if not counts or not facts:
        return ChanceLevel(set_name=path.name, number="", times=0, share=0.0)
    number, times = min(counts.items(), key=lambda item: (-item[1], item[0]))
    share = sum(1 for f in facts if f.answer == number) / len(facts)
    return ChanceLevel(set_name=path.name, number=number, times=times, share=share)


def context_prompt(facts: Sequence[Fact]) -> str:
    """The in-context baseline's system prompt: every fact, one a line.

    Usage: ``context_prompt(read_facts("data/facts.csv")).splitlines()[2]  # "Anchor: 11246"``
    """
    lines = ["You are a helpful assistant. Each object below has a five-digit number.",
             "When asked about an object, answer with its number.", ""]  # fmt: skip
    lines += [f"{f.object}: {f.answer}" for f in facts]
    return "\n".join(lines) + "\n"
