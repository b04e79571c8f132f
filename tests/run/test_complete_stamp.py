"""The complete stamp: a rerun with nothing to send knows it without reading the log — and only then."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

import engine.run.runner as runner
from engine.results.stamps import write_json_atomic
from engine.run.runner import RunOptions, run_experiment
from tests.support import specs

ROOT = Path(__file__).resolve().parents[2]


def write_spec(tmp_path: Path, *, temps: str = "[0.0]", sim: str = "", extra: str = "") -> Path:
    return specs.write_spec(tmp_path, name="t", models=1, temps=temps, repeats=1, sim=sim, extra=extra)


def options(out: Path, **changes: object) -> RunOptions:
    return RunOptions(out=out, quiet=True, report=False, **changes)  # type: ignore[arg-type]


def no_scan(*_args: object) -> None:
    raise AssertionError("the log was scanned although its complete stamp matches")


def test_a_finished_run_is_stamped_and_its_rerun_reads_no_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec, out = write_spec(tmp_path), tmp_path / "run"
    first = run_experiment(spec, options=options(out))
    assert first.finished == 150 and (out / "complete.json").is_file()
    with monkeypatch.context() as patch:
        patch.setattr(runner, "scan_logs", no_scan)
        again = run_experiment(spec, options=options(out))
    assert again.finished == 0 and again.already_done == 150 and again.requests == 0


def test_a_rerun_settled_by_the_stamp_never_imports_polars(tmp_path: Path) -> None:
    spec, out = write_spec(tmp_path), tmp_path / "run"
    run_experiment(spec, options=RunOptions(out=out, quiet=True))  # with its report, as a user runs it
    code = (
        "import sys; from pathlib import Path; from engine.run.runner import RunOptions, run_experiment\n"
        f"s = run_experiment(Path({str(spec)!r}), options=RunOptions(out=Path({str(out)!r}), quiet=True))\n"
        "print(s.requests, s.already_done, sorted(m for m in ('polars', 'numpy', 'aiohttp') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.split("\n")[0] == "0 150 []"


def test_a_shortened_log_voids_the_stamp_and_the_missing_task_is_asked_again(tmp_path: Path) -> None:
    spec, out = write_spec(tmp_path), tmp_path / "run"
    run_experiment(spec, options=options(out))
    log = out / "results.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:-1]))  # one record lost (a restore from backup, a hand edit)
    again = run_experiment(spec, options=options(out))
    assert again.finished == 1 and again.already_done == 149
    assert len(log.read_bytes().splitlines()) == 150


def test_a_changed_grid_voids_the_stamp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    run_experiment(write_spec(tmp_path), options=options(out))
    wider = run_experiment(write_spec(tmp_path, temps="[0.0, 1.0]"), options=options(out))
    assert wider.finished == 150 and wider.already_done == 150
    # Back to the first grid: every task is in the log, the scan says so, and the stamp follows.
    narrower = run_experiment(write_spec(tmp_path), options=options(out))
    assert narrower.finished == 0 and narrower.already_done == 150
    monkeypatch.setattr(runner, "scan_logs", no_scan)
    assert run_experiment(write_spec(tmp_path), options=options(out)).requests == 0


def test_failed_tasks_are_asked_again_despite_the_stamp_unless_told_not_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    failing = write_spec(tmp_path, sim="[sim.faults]\nerror_500 = 1.0", extra="max_attempts = 1")
    assert run_experiment(failing, options=options(out)).failed == 150
    stamp = orjson.loads((out / "complete.json").read_bytes())
    assert stamp["all_ok"] is False
    with monkeypatch.context() as patch:
        patch.setattr(runner, "scan_logs", no_scan)  # every task has a record: the stamp settles it
        kept = run_experiment(failing, options=options(out, retry_failed=False))
    assert kept.requests == 0 and kept.already_done == 150
    retried = run_experiment(write_spec(tmp_path, extra="max_attempts = 1"), options=options(out))
    assert retried.finished == 150 and retried.ok == 150


def test_a_stamp_of_another_log_is_not_believed(tmp_path: Path) -> None:
    spec, out = write_spec(tmp_path), tmp_path / "run"
    run_experiment(spec, options=options(out))
    stamp = orjson.loads((out / "complete.json").read_bytes())
    (out / "results.jsonl").write_bytes(b"")  # emptied in place: same inode, other size and time
    write_json_atomic(out / "complete.json", stamp)
    assert run_experiment(spec, options=options(out)).finished == 150


def test_a_run_directory_that_refuses_the_stamp_still_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec, out = write_spec(tmp_path), tmp_path / "run"
    real_replace = os.replace

    def refuse(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if str(dst).endswith("complete.json"):
            raise OSError(errno.EROFS, "Read-only file system")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", refuse)
    assert run_experiment(spec, options=options(out)).finished == 150
    assert not (out / "complete.json").exists() and not list(out.glob("complete.json.*"))
    monkeypatch.undo()
    assert run_experiment(spec, options=options(out)).finished == 0  # scanned, then stamped
    assert (out / "complete.json").is_file()
