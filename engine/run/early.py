"""What a run starts before its own modules load: the built-in target's interpreter.

The target is another process on another core, and its start-up (an interpreter and its imports,
about 0.2 s) does not depend on anything the run prepares except its config, which it reads from a
pipe once it is ready for it. Spawned here, as soon as the spec's TOML names the built-in target
(read raw, before the spec module loads and checks it: about 0.05 s sooner), it loads while this
process imports the run's machinery and prepares; :func:`engine.run.endpoints.local_targets` then
hands it the config. The checked spec has the last word: a target it does not need is stopped, one
the raw reading missed is spawned then. This module imports only tomllib, two names of the run
directory's layout and the parent side of the sim, so it costs nothing the run would not pay anyway.

Usage::

    with early_target(Path("data/memorisation.toml"), out=None) as spawned:
        run_experiment(Path("data/memorisation.toml"), options=options, spawned=spawned)
"""

from __future__ import annotations

import contextlib
import tomllib
from collections.abc import Iterator
from pathlib import Path

from engine.results.layout import COMPLETE_STAMP, run_root
from engine.sim.config import SIM_URL
from engine.sim.process import SimProcess

__all__ = ["early_target"]


@contextlib.contextmanager
def early_target(spec_path: Path, *, out: Path | None, wanted: bool = True) -> Iterator[SimProcess | None]:
    """A built-in target spawned now and waiting for its config, or None; stopped on the way out.

    None when not ``wanted`` (a caller that starts its targets another way), when the spec cannot
    be read (the run then says why, in its own words) or names no model on the built-in target, and
    when its run directory holds a complete stamp (a rerun that most likely has nothing to send
    should not start a target it will not use).
    Usage: ``with early_target(spec_path, out=None) as spawned: ...``
    """
    sim = SimProcess.spawned() if wanted and _names_target(spec_path, out) else None
    try:
        needed = wanted and _needs_target(spec_path, out)
        if needed and sim is None:
            sim = SimProcess.spawned()
        elif not needed and sim is not None:
            sim.stop()
            sim = None
        yield sim
    finally:
        if sim is not None:
            sim.stop()


def _names_target(spec_path: Path, out: Path | None) -> bool:
    """The spec's raw TOML gives some model ``base_url = "sim"`` and its run directory no complete stamp."""
    try:
        doc = tomllib.loads(spec_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    models, name = doc.get("models"), doc.get("name")
    if not isinstance(models, list) or not isinstance(name, str):
        return False
    if not any(isinstance(m, dict) and m.get("base_url") == SIM_URL for m in models):
        return False
    return not run_root(name, out).joinpath(COMPLETE_STAMP).exists()


def _needs_target(spec_path: Path, out: Path | None) -> bool:
    """The checked spec's answer: a model on the built-in target, and no complete stamp."""
    # Late: the spec's checks and the run directory's layout (about 0.05 s of imports) load after
    # the target is spawned.
    from engine.errors import EngineError
    from engine.experiment.spec import load_spec
    from engine.results.paths import RunPaths

    try:
        spec = load_spec(spec_path)
    except EngineError:
        return False
    return any(m.base_url == SIM_URL for m in spec.models) and not RunPaths(run_root(spec.name, out)).complete.exists()
