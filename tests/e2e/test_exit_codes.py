"""Exit codes say what happened: 0 all ok, 1 some tasks failed (counted), 2 bad input, 128 + signal interrupted."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.run.runner import RunSummary

ROOT = Path(__file__).resolve().parents[2]
FACTS = ROOT / "data" / "facts.csv"


def summary(**changes: Any) -> RunSummary:
    base = RunSummary(
        run_dir=Path("run"), total=10, already_done=0, finished=10, ok=10, failed=0, elapsed_s=1.0,
        requests=10, retries=0, rate_limited=0, interrupted=False,
    )
    return dataclasses.replace(base, **changes)


def test_exit_code_of_a_summary() -> None:
    assert summary().exit_code == 0
    assert summary(ok=9, failed=1).exit_code == 1
    assert summary(ok=0, failed=10).exit_code == 1  # every task failed: never 0
    assert summary(interrupted=True).exit_code == 130  # stopped by a caller, no signal: as Ctrl-C
    assert summary(interrupted=True, stop_signal=signal.SIGINT, failed=3).exit_code == 130
    assert summary(interrupted=True, stop_signal=signal.SIGTERM).exit_code == 143
    assert summary(interrupted=True, stop_signal=signal.SIGHUP).exit_code == 129
    assert summary(interrupted=True, stop_signal=signal.SIGTERM).render().startswith("interrupted (SIGTERM): ")


def engine(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_a_run_in_which_every_task_failed_exits_1_and_says_how_many(tmp_path: Path) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text(
        f'name = "failing"\nquestions = "{FACTS}"\nmax_attempts = 1\n'
        '[[models]]\nname = "m"\nbase_url = "sim"\n[sim.faults]\nerror_500 = 1.0\n'
    )
    done = engine("run", str(spec), "--out", str(tmp_path / "run"), "--quiet", "--no-report")
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "failed tasks 150" in done.stdout
    assert "engine: 150 tasks failed this run" in done.stderr


def test_the_exit_codes_are_in_the_help() -> None:
    for args in (("--help",), ("run", "--help")):
        text = " ".join(engine(*args).stdout.split())
        for phrase in ("0 ok", "1 some tasks failed", "2 bad input or refused", "130/143/129 interrupted"):
            assert phrase in text, (args, phrase)


@pytest.mark.parametrize(
    ("config", "expect"),
    [
        ('{"latency_ms": -5}', "latency_ms must be a number in [0, inf], got -5"),
        ('{"accuracy": "high"}', "accuracy must map each model to difficulty -> probability"),
        ('{"facts": 3}', "facts must be a list of facts"),
        ('{"facts_csv": 3}', "facts_csv must be a path"),
        ('{"faults": {"slow_s": "x"}}', "faults.slow_s must be a number"),
        ("latency_ms = [1]\n", "latency_ms must be a number in [0, inf], got [1]"),
    ],
    ids=["negative latency", "accuracy not a table", "facts not a list", "facts_csv not a path", "bad fault", "toml"],
)
def test_engine_sim_with_a_bad_config_value_is_one_line_and_exit_2(tmp_path: Path, config: str, expect: str) -> None:
    path = tmp_path / ("sim.toml" if "=" in config else "sim.json")
    path.write_text(config)
    done = engine("sim", "--port", "0", "--config", str(path))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert done.stderr.count("\n") == 1 and expect in done.stderr, done.stderr


@pytest.mark.parametrize("port", ["99999", "-1"])
def test_engine_sim_with_a_port_out_of_range_is_one_line_and_exit_2(port: str) -> None:
    done = engine("sim", "--port", port)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert done.stderr == f"engine-sim: --port must be 0-65535 (0 picks a free port), got {port}\n"
