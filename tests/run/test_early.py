"""The built-in target started before the run's modules load (engine.run.early): when, and that it never outlives the run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.results.lock import RunLock
from engine.run.early import early_target
from engine.run.options import RunOptions
from engine.run.runner import run_experiment
from engine.sim.process import SimProcess
from tests.conftest import BASE_SPEC, SpecDir

REPO = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes; stop() waits for it, so it should not even be that.
    return "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_a_spawned_target_is_used_by_the_run_and_stopped_after_it(spec_dir: SpecDir, tmp_path: Path) -> None:
    spec = spec_dir.write()
    out = tmp_path / "run"
    with early_target(spec, out=out) as spawned:
        assert spawned is not None and spawned.pid is not None
        pid = spawned.pid
        summary = run_experiment(spec, options=RunOptions(out=out, quiet=True, report=False), spawned=spawned)
        assert summary.target_requests == summary.finished == 24  # 2 models x 6 questions x 2 temperatures
        assert spawned.pid is None  # the run stopped the child it was handed
    assert not _alive(pid)


def test_no_early_target_where_the_run_would_not_use_one(spec_dir: SpecDir, tmp_path: Path) -> None:
    sim_spec = spec_dir.write()
    with early_target(sim_spec, out=tmp_path / "x", wanted=False) as spawned:
        assert spawned is None  # a shard, a fleet or a fleet's worker starts its target another way
    real = spec_dir.write(BASE_SPEC.replace('base_url = "sim"', 'base_url = "http://127.0.0.1:9/v1"'), name="real.toml")
    with early_target(real, out=tmp_path / "y") as spawned:
        assert spawned is None  # no model on the built-in target
    broken = spec_dir.write("name = ", name="broken.toml")
    with early_target(broken, out=tmp_path / "z") as spawned:
        assert spawned is None  # the run itself says what is wrong with the spec
    done = tmp_path / "done"
    run_experiment(sim_spec, options=RunOptions(out=done, quiet=True, report=False))
    assert (done / "complete.json").is_file()
    with early_target(sim_spec, out=done) as spawned:
        assert spawned is None  # a rerun of a complete run most likely sends nothing


def test_a_target_spawned_on_the_raw_toml_that_the_checked_spec_refuses_is_stopped_at_once(
    spec_dir: SpecDir, tmp_path: Path
) -> None:
    # The TOML names the built-in target, so the child is spawned before the spec is checked; the
    # checks refuse the spec, so none is handed to the run and none outlives the check.
    bad = spec_dir.write(BASE_SPEC.replace("temperatures = [0.0, 1.0]", 'temperatures = "hot"'), name="bad.toml")
    spawned_at_first: list[int] = []
    real_spawned = SimProcess.spawned

    def spawned_and_noted(**kwargs: Any) -> SimProcess:
        sim = real_spawned(**kwargs)
        spawned_at_first.append(sim.pid or 0)
        return sim

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SimProcess, "spawned", spawned_and_noted)
        with early_target(bad, out=tmp_path / "run") as spawned:
            assert spawned is None
            assert len(spawned_at_first) == 1  # spawned on the raw TOML ...
            assert not _alive(spawned_at_first[0])  # ... and gone once the checks refused the spec


def test_a_target_spawned_but_never_configured_is_stopped(spec_dir: SpecDir, tmp_path: Path) -> None:
    with early_target(spec_dir.write(), out=tmp_path / "run") as spawned:
        assert spawned is not None and spawned.pid is not None
        pid = spawned.pid
    assert not _alive(pid)


def test_a_refused_run_leaves_no_target_behind(spec_dir: SpecDir, tmp_path: Path) -> None:
    """A second `engine run` of a run directory in use is refused (exit 2): its early target goes too."""
    spec = spec_dir.write()
    out = tmp_path / "run"
    before = _sim_children_of_nobody()
    with RunLock(out):
        done = subprocess.run([sys.executable, "-m", "engine", "run", str(spec), "--out", str(out), "--quiet"],
                              capture_output=True, text=True, cwd=REPO, check=False, timeout=60)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "in use" in done.stderr and "Traceback" not in done.stderr
    assert _sim_children_of_nobody() <= before


def _sim_children_of_nobody() -> set[int]:
    """Built-in targets running on this machine (python -m engine.sim), by pid."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = stat.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"engine.sim" in argv and b"--exit-with-parent" in argv:
            found.add(int(stat.parent.name))
    return found


def test_the_run_record_names_the_target_the_early_child_became(spec_dir: SpecDir, tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "engine", "run", str(spec_dir.write()), "--out", str(out), "--quiet",
                           "--no-report"], capture_output=True, text=True, cwd=REPO, check=False, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    records = [orjson.loads(line) for line in (out / "results.jsonl").read_bytes().splitlines()]
    assert len(records) == 24 and all(r["simulated"] is True for r in records)
    assert all(r["target"].startswith("sim:") for r in records)
