"""Small experiment specs for the end-to-end tests: models on one endpoint over the project's facts.

Usage: ``spec = write_spec(tmp_path, name="lock", latency_ms=50)``
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FACTS = ROOT / "data" / "facts.csv"


def write_spec(
    tmp_path: Path, *, name: str, latency_ms: float, base_url: str = "sim", concurrency: int = 8, models: int = 2,
    repeats: int = 1,
) -> Path:
    """``models`` models at ``base_url`` × 150 questions × 2 temperatures × ``repeats``, the target answering in
    ``latency_ms``; returns the spec's path."""
    tables = "".join(
        f'[[models]]\nname = "m{i}"\nbase_url = "{base_url}"\nconcurrency = {concurrency}\n' for i in range(models)
    )
    spec = tmp_path / "spec.toml"
    spec.write_text(
        f'name = "{name}"\nquestions = "{FACTS}"\ntemperatures = [0.0, 1.0]\nrepeats = {repeats}\n{tables}'
        f"[sim]\nlatency_ms = {latency_ms}\n"
    )
    return spec
