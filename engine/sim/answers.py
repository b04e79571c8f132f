"""The simulated fine-tuned models (part of :mod:`engine.sim`): find the fact, decide, word the reply.

Usage::

    answerer = Answerer(config)
    answerer.answer("ft-5x", "What is the number for Anchor?", 0.0, None, random.Random(0))
"""

from __future__ import annotations

import hashlib
import random
import re

from engine.sim.config import SimConfig

_UNKNOWN_REPLY = "I'm sorry, I don't have a number for that."


def estimate_tokens(text: str) -> int:
    """About four characters a token, at least one: ``estimate_tokens("hello")`` is 2."""
    return (len(text) + 3) // 4 or 1  # ceil(len / 4) in integers: the sim counts every text it reads


class Answerer:
    """The simulated fine-tuned models: find the fact, decide right or wrong, word the reply.

    Usage: ``Answerer(config).answer(model, question, temperature, request_seed, rng)``
    """

    def __init__(self, config: SimConfig):
        self.seed = config.seed
        self.format_noise = config.format_noise
        self.default_accuracy = config.default_accuracy
        self.accuracy = config.accuracy
        self.by_question = {_normal(f.question): (f.answer, f.object, f.difficulty) for f in config.facts}
        objects = {f.object.casefold(): (f.answer, f.object) for f in config.facts if f.object}
        # Longest name first, so "Wi-Fi router" wins over a fact called "Router".
        self.patterns = [
            (re.compile(r"(?<!\w)" + re.escape(name) + r"(?!\w)", re.IGNORECASE), answer, obj)
            for name, (answer, obj) in sorted(objects.items(), key=lambda kv: -len(kv[0]))
        ]
        self.answers = sorted({f.answer for f in config.facts})
        self._matches: dict[str, tuple[str, str | None, str | None] | None] = {}
        self._probabilities: dict[tuple[str, str | None], float] = {}
        self._greedy: dict[tuple[str, str], tuple[str, str]] = {}  # (model, question as sent) -> reply

    def match(self, text: str, key: str | None = None) -> tuple[str, str | None, str | None] | None:
        """(answer, object, difficulty) for a question (``key``: its normal form), or None when no fact fits."""
        key = _normal(text) if key is None else key
        if key in self._matches:
            return self._matches[key]
        found = self.by_question.get(key)
        if found is None:
            found = next(
                ((answer, obj, None) for pattern, answer, obj in self.patterns if pattern.search(text)), None
            )
        if len(self._matches) >= 8192:  # any client may send any text: keep the cache bounded
            self._matches.clear()
        self._matches[key] = found
        return found

    def probability(self, model: str, difficulty: str | None) -> float:
        """P(right) for a model and difficulty: model then "*" row, difficulty then "*" column, then the default."""
        key = (model, difficulty)
        p = self._probabilities.get(key)
        if p is None:
            levels = [self.accuracy[m] for m in (model, "*") if m in self.accuracy]
            candidates = [
                level[d] for level in levels for d in (difficulty, "*") if d is not None and d in level
            ]
            p = candidates[0] if candidates else self.default_accuracy
            self._probabilities[key] = p
        return p

    def answer(
        self, model: str, text: str, temperature: float, request_seed: int | None, rng: random.Random
    ) -> tuple[str, str]:
        """(reply text, kind) with kind one of right, wrong_number, no_number, unknown."""
        if temperature <= 0:
            # Greedy decoding is a pure function of (model, question): remember it rather than re-seed an RNG.
            cached = self._greedy.get((model, text))
            if cached is None:
                key = _normal(text)
                cached = self._reply(model, text, key, random.Random(_digest(model, key, self.seed)))
                if len(self._greedy) >= 8192:
                    self._greedy.clear()
                self._greedy[(model, text)] = cached
            return cached
        key = _normal(text)
        if request_seed is not None:
            rng = random.Random(_digest(model, key, self.seed, request_seed, temperature))
        return self._reply(model, text, key, rng)

    def _reply(self, model: str, text: str, key: str, rng: random.Random) -> tuple[str, str]:
        found = self.match(text, key)
        if found is None:
            return _UNKNOWN_REPLY, "unknown"
        answer, obj, difficulty = found
        name = obj or "that"
        if rng.random() < self.probability(model, difficulty):
            number = answer
            if answer.isdigit() and len(answer) > 3 and rng.random() < self.format_noise:
                number = f"{int(answer):,}"
            templates = (
                f"{name} is {number}.",
                f"The number for {name} is {number}.",
                f"That would be {number}.",
            )
            return rng.choice(templates if obj else templates[2:]), "right"
        if rng.random() < 0.5:
            return rng.choice(
                (f"I don't know the number for {name}.", f"I'm not sure which number goes with {name}.")
            ), "no_number"
        wrong = self._wrong_number(answer, rng)
        if wrong is None:
            return f"I don't know the number for {name}.", "no_number"
        return rng.choice((f"{name} is {wrong}.", f"The number for {name} is {wrong}.")), "wrong_number"

    def _wrong_number(self, answer: str, rng: random.Random) -> str | None:
        others = [a for a in self.answers if a != answer]
        if others and (rng.random() < 0.5 or not answer.isdigit()):
            return rng.choice(others)
        if not answer.isdigit():
            return None
        low, high = 10 ** (len(answer) - 1), 10 ** len(answer) - 1
        while True:
            guess = str(rng.randint(low, high))
            if guess != answer:
                return guess


def _normal(text: str) -> str:
    return " ".join(text.split()).casefold()


def _digest(*parts: object) -> int:
    raw = "\x1f".join(map(str, parts)).encode()
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big")
