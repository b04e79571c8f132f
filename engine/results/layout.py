"""Where a run's directory is, and the name of its complete stamp: needed before the rest loads.

:mod:`engine.results.paths` (:class:`~engine.results.paths.RunPaths`) is the run directory's whole
layout; this leaf holds what a run reads before its spec is even checked (whether a rerun is
complete, so its built-in target is not started), without paths' imports, and is the one place
that says a run goes to runs/<name> without ``--out``.

Usage: ``run_root("memorisation", None) / COMPLETE_STAMP``
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["COMPLETE_STAMP", "run_root"]

COMPLETE_STAMP = "complete.json"  # the stamp saying the log holds every task of the grid


def run_root(name: str, out: Path | None) -> Path:
    """A run's directory: ``out`` (``--out``), or runs/<the spec's name>. Usage: ``run_root(spec.name, None)``"""
    return out or Path("runs") / name
