"""The command line: thin wiring over the library, one line per error, no tracebacks."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "data" / "memorisation.toml"


def test_plan_prints_the_grid_and_its_cost(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "4 models × 150 questions × 3 temperatures × 2 repeats = 3,600 tasks" in out
    assert "ft-5x: 900 tasks" in out


def test_an_engine_error_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(tmp_path / "missing.toml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("engine: error: spec file not found")


def test_a_reader_that_leaves_early_gets_no_traceback() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from engine.cli import main; sys.exit(main(sys.argv[1:]))",
         "plan", str(EXAMPLE)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # like `engine plan ... | head -0`
    err = proc.stderr.read()
    proc.wait(timeout=30)
    assert b"Traceback" not in err


def test_run_then_report_and_export_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "tiny.toml"
    spec.write_text(
        f'name = "tiny"\nquestions = "{ROOT / "data" / "facts.csv"}"\n'
        '[[models]]\nname = "ft-5x"\nbase_url = "sim"\n'
    )
    out = tmp_path / "run"
    assert main(["run", str(spec), "--out", str(out), "--quiet"]) == 0
    assert "finished: 150 tasks this run" in capsys.readouterr().out
    # The run writes report.md and report.html (charts inside); the PNGs (matplotlib) are `engine report`'s.
    assert (out / "report.md").exists() and (out / "report.html").exists()
    assert not (out / "chart_error_rate.png").exists()
    assert main(["report", str(out)]) == 0
    assert (out / "chart_error_rate.png").exists()
    capsys.readouterr()
    assert main(["report", str(out), "--format", "json"]) == 0
    assert '"ft-5x"' in capsys.readouterr().out
    assert main(["export", str(out), "--format", "seed-csv", "--out", str(tmp_path / "results.csv")]) == 0
    lines = (tmp_path / "results.csv").read_text().splitlines()
    assert len(lines) == 151  # a header and one row per answered task
    printed = capsys.readouterr()
    assert printed.out == "" and printed.err.startswith(f"wrote {tmp_path / 'results.csv'} (150 rows")


def test_export_without_out_writes_only_the_csv_to_stdout(tmp_path: Path) -> None:
    # `engine export RUN --format seed-csv > x.csv`: x.csv must be the CSV and nothing else.
    spec = tmp_path / "tiny.toml"
    spec.write_text(
        f'name = "tiny"\nquestions = "{ROOT / "data" / "facts.csv"}"\nrepeats = 2\n'
        '[[models]]\nname = "ft-5x"\nbase_url = "sim"\n'
    )
    out = tmp_path / "run"
    assert main(["run", str(spec), "--out", str(out), "--quiet", "--no-report"]) == 0
    assert main(["export", str(out), "--format", "seed-csv", "--out", str(tmp_path / "file.csv")]) == 0
    redirected = tmp_path / "x.csv"
    with redirected.open("wb") as stdout:
        done = subprocess.run([sys.executable, "-m", "engine", "export", str(out), "--format", "seed-csv"],
                              stdout=stdout, stderr=subprocess.PIPE, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    # Byte for byte what --out writes: the combined layout (two repeats), CRLF line ends kept.
    assert redirected.read_bytes() == (tmp_path / "file.csv").read_bytes()
    assert redirected.read_bytes().count(b"\r\n") == 301  # a header and 300 rows
    assert done.stderr.decode() == "wrote the CSV to stdout (300 rows, all layout)\n"
    assert not (out / "results.csv").exists()  # nothing written into the run directory


def _actions(parser: argparse.ArgumentParser, where: str) -> list[tuple[str, argparse.Action]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += _actions(child, f"{where} {name}")
        elif not isinstance(action, argparse._HelpAction):
            found.append((where, action))
    return found


def test_every_argument_and_option_has_a_help_line() -> None:
    from engine.cli import parser

    missing = [f"{where} {a.dest}" for where, a in _actions(parser(), "engine") if not a.help]
    assert missing == []


def test_version_prints_the_version(capsys: pytest.CaptureFixture[str]) -> None:
    from engine import __version__
    from engine.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"engine {__version__}"


@pytest.mark.parametrize(
    ("args", "named"), [(["--threads", "0"], "--threads"), (["--precision", "fp16"], "--precision")]
)
def test_bad_train_options_are_one_line_and_exit_2(
    args: list[str], named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "set.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n')
    try:  # argparse's own checks exit; the engine's return the code
        code = main(["train", str(data), "--out", str(tmp_path / "m.gguf"), *args])
    except SystemExit as exited:
        code = int(exited.code or 0)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and named in err[-1] and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "m.gguf").exists()
