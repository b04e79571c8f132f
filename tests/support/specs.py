"""Small experiment specs for the end-to-end tests: models on one endpoint over the project's facts.

Usage: ``spec = write_spec(tmp_path, name="lock", latency_ms=50)``
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FACTS = ROOT / "data" / "facts.csv"


def write_spec(
    tmp_path: Path, *, name: str, latency_ms: float | None = None, base_url: str = "sim", concurrency: int = 8,
    models: int = 2, repeats: int = 1, temps: str = "[0.0, 1.0]", extra: str = "", sim: str = "",
    rpm: int | None = None,
) -> Path:
    """``models`` models at ``base_url`` × 150 questions × ``temps`` × ``repeats``; ``extra`` adds top-level
    lines, ``sim`` a ``[sim]`` table (or ``latency_ms`` alone, the target's answer time), ``rpm`` each
    model's known quota. Returns the spec's path."""
    quota = f"rpm = {rpm}\n" if rpm is not None else ""
    tables = "".join(
        f'[[models]]\nname = "m{i}"\nbase_url = "{base_url}"\nconcurrency = {concurrency}\n{quota}'
        for i in range(models)
    )
    if latency_ms is not None:
        sim = f"[sim]\nlatency_ms = {latency_ms}\n"
    spec = tmp_path / "spec.toml"
    spec.write_text(
        f'name = "{name}"\nquestions = "{FACTS}"\ntemperatures = {temps}\nrepeats = {repeats}\n{extra}\n'
        f"{tables}\n{sim}\n"
    )
    return spec
