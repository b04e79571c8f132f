"""Names in the runs folder that code outside :mod:`engine.results` needs before it loads the rest.

:mod:`engine.results.paths` (:class:`~engine.results.paths.RunPaths`) is the run directory's whole
layout; this leaf holds the two names a run reads before its spec is even checked (whether a rerun
is complete, so its built-in target is not started), without paths' imports.

Usage: ``default_run_dir("memorisation") / COMPLETE_STAMP``
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["COMPLETE_STAMP", "default_run_dir"]

COMPLETE_STAMP = "complete.json"  # the stamp saying the log holds every task of the grid


def default_run_dir(name: str) -> Path:
    """Where a run goes without ``--out``: runs/<the spec's name>. Usage: ``default_run_dir("memorisation")``"""
    return Path("runs") / name
