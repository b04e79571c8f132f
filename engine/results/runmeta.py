"""``run.json``: which experiment a run directory holds, whether its answers are simulated, who answered.

The simulation statement comes first, so the first lines of ``run.json`` say whether a
reader is looking at a language model's answers or at engine's built-in simulation.
Rewritten by every run (its ``created`` time kept) from the run's grid.

Usage::

    meta = run_meta(spec.name, grid, {}, schema=2)
    meta["simulation"]   # 'yes: every answer in this run comes from ...'
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from engine.experiment.grid import Grid

__all__ = ["run_meta", "simulation_statement"]


def simulation_statement(grid: Grid) -> str:
    """One sentence saying which of a grid's models engine's built-in simulation answers, if any.

    Usage: ``simulation_statement(grid)  # 'yes: every answer ... simulated target ...'``
    """
    simulated = [m.name for m in grid.models if m.simulated]
    if not simulated:
        return "no: every model is a real endpoint or local model file"
    what = ("engine's built-in simulated target (a lookup table playing configured rates), "
            "not a language model")  # fmt: skip
    if len(simulated) == len(grid.models):
        return f"yes: every answer in this run comes from {what}"
    real = [m.name for m in grid.models if not m.simulated]
    return f"partly: {', '.join(simulated)} answered by {what}; {', '.join(real)} real"


def run_meta(name: str, grid: Grid, old: Mapping[str, Any], *, schema: int) -> dict[str, Any]:
    """run.json's content: the simulation statement first, then the owner, then each model's target.

    Fields of an older run.json that this does not set are kept, and so is its ``created``.
    ``schema`` is the version of the records the run writes (``engine.results.record.SCHEMA_VERSION``).
    Usage: ``run_meta(spec.name, grid, {}, schema=2)["simulation"]``
    """
    now = time.time()
    meta: dict[str, Any] = {
        "simulation": simulation_statement(grid),
        "name": name,
        "schema": schema,
        "created": old.get("created", now),
        "updated": now,
        "models": [{"name": m.name, "model": m.model, "target": m.target, "simulated": m.simulated}
                   for m in grid.models],
    }  # fmt: skip
    for key, value in old.items():
        meta.setdefault(key, value)
    return meta

