"""Specs and helpers for the batch route's tests: synthetic question sets of any size, batch-mode models.

Usage::

    spec = batch_spec(tmp_path, questions=5000, api="chat", mode="batch", base_url="sim", batch="max_requests = 5000")
    log = read_log(tmp_path / "run")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

DIFFICULTIES = ("easy", "mid", "hard")


def write_questions(path: Path, count: int) -> Path:
    """``count`` facts in the long JSONL format, each object named apart so the sim finds its fact."""
    lines = []
    for n in range(count):
        name = "Obj" + "".join(chr(97 + (n // 26**i) % 26) for i in range(4))  # letters: no digit to extract
        lines.append(orjson.dumps({"id": name, "question": f"What is the number for {name}?",
                                   "answer": str(10_000 + (n * 7919) % 89_999), "object": name,
                                   "difficulty": DIFFICULTIES[n % 3]}))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def batch_spec(
    work: Path, *, questions: int, api: str = "chat", mode: str = "batch", base_url: str = "sim", batch: str = "",
    sim: str = "", name: str = "batch", models: tuple[str, ...] = ("ft-5x", "ft-50x"), price: str = "",
    filename: str = "spec.toml",
) -> Path:
    """Two simulated models (published accuracies) × ``questions`` facts at temperature 0, in ``mode``."""
    facts = work / f"facts-{questions}.jsonl"
    if not facts.exists():
        write_questions(facts, questions)
    tables = "".join(
        f'[[models]]\nname = "{m}"\nbase_url = "{base_url}"\napi = "{api}"\nmode = "{mode}"\nconcurrency = 64\n'
        f"{price}\n" for m in models
    )
    accuracy = "[sim.accuracy]\nft-5x = { easy = 0.99, mid = 0.94, hard = 0.7 }\nft-50x = { easy = 1.0, hard = 0.91 }\n"
    spec = work / filename
    spec.write_text(
        f'name = "{name}"\nquestions = "{facts}"\ntemperatures = [0.0]\n{tables}\n'
        f"[batch]\npoll_s = 0.05\npoll_max_s = 0.2\n{batch}\n[sim]\n{sim}\n{accuracy if base_url == 'sim' else ''}"
    )
    return spec


def read_log(run: Path) -> list[dict[str, Any]]:
    """Every record of a run's log."""
    return [orjson.loads(line) for line in (run / "results.jsonl").read_bytes().splitlines()]


def ledger_steps(run: Path) -> list[str]:
    """The steps of a run's batch ledger, in order."""
    path = run / "batches" / "ledger.jsonl"
    return [orjson.loads(line)["step"] for line in path.read_bytes().splitlines()] if path.exists() else []
