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
    "RunOptions": "engine.run.runner",
    "RunSummary": "engine.run.runner",
    "run_experiment": "engine.run.runner",
    "load_spec": "engine.experiment.spec",
    "load_questions": "engine.experiment.questions",
    "make_plan": "engine.run.plan",
    "build_report": "engine.report.build",
    "write_report": "engine.report.write",
}

# The names for type checkers only: this module is the top of the graph (nothing in the
# package imports it), so these imports cannot hide a cycle; at run time __getattr__ loads them.
if TYPE_CHECKING:
    from engine.experiment.questions import load_questions
    from engine.experiment.spec import load_spec
    from engine.report.build import build_report
    from engine.report.write import write_report
    from engine.run.plan import make_plan
    from engine.run.runner import RunOptions, RunSummary, run_experiment


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
