"""engine: an async, high-throughput evaluation engine for language models.

Usage::

    from pathlib import Path
    import engine

    summary = engine.run_experiment(Path("data/memorisation.toml"))
    print(summary.render())
    report = engine.build_report(Path("runs/memorisation"))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "RunOptions",
    "RunSummary",
    "__version__",
    "build_report",
    "load_questions",
    "load_spec",
    "make_plan",
    "run_experiment",
    "write_report",
]

# Imported on first use, so `import engine` stays cheap for the sim subprocess and the CLI.
_LAZY = {
    "RunOptions": "engine.runner",
    "RunSummary": "engine.runner",
    "run_experiment": "engine.runner",
    "load_spec": "engine.spec",
    "load_questions": "engine.questions",
    "make_plan": "engine.plan",
    "build_report": "engine.report",
    "write_report": "engine.report",
}

if TYPE_CHECKING:
    from engine.plan import make_plan
    from engine.questions import load_questions
    from engine.report import build_report, write_report
    from engine.runner import RunOptions, RunSummary, run_experiment
    from engine.spec import load_spec


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
