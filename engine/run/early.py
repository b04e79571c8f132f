"""What a run starts before its own modules load: the built-in target's interpreter.

The target is another process on another core, and its start-up (an interpreter and its imports,
about 0.2 s) does not depend on anything the run prepares except its config, which it reads from a
pipe once it is ready for it. Spawned here, as soon as the spec says the built-in target is
needed, it loads while this process imports the run's machinery and prepares;
:func:`engine.run.endpoints.local_targets` then hands it the config. This module imports only the
spec reader and the parent side of the sim, so it costs nothing the run would not pay anyway.

Usage::

    with early_target(Path("data/memorisation.toml"), out=None) as spawned:
        run_experiment(Path("data/memorisation.toml"), options=options, spawned=spawned)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from engine.errors import EngineError
from engine.experiment.spec import SIM_URL, Spec, load_spec
from engine.results.paths import RunPaths
from engine.sim.process import SimProcess

__all__ = ["early_target", "run_dir_of"]


def run_dir_of(spec: Spec, out: Path | None) -> Path:
    """The run directory: ``out``, or runs/<name> by default. Usage: ``run_dir_of(load_spec(path), None)``"""
    return out or Path("runs") / spec.name


@contextlib.contextmanager
def early_target(spec_path: Path, *, out: Path | None, wanted: bool = True) -> Iterator[SimProcess | None]:
    """A built-in target spawned now and waiting for its config, or None; stopped on the way out.

    None when not ``wanted`` (a caller that starts its targets another way), when the spec cannot
    be read (the run then says why, in its own words) or names no model on the built-in target, and
    when its run directory holds a complete stamp (a rerun that most likely has nothing to send
    should not start a target it will not use).
    Usage: ``with early_target(spec_path, out=None) as spawned: ...``
    """
    try:
        spec = load_spec(spec_path) if wanted else None
    except EngineError:
        spec = None
    needed = (
        spec is not None
        and any(m.base_url == SIM_URL for m in spec.models)
        and not RunPaths(run_dir_of(spec, out)).complete.exists()
    )
    if not needed:
        yield None
        return
    sim = SimProcess.spawned()
    try:
        yield sim
    finally:
        sim.stop()
