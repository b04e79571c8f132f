"""The repository's promises about itself: the README is short and says what the code does.

The README's command table matches ``engine --help``, its Python API list is exactly
``engine.__all__``, every test docs/truth.md names exists, and no committed file is a
blob over 1 MB.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import engine
from engine.cli import parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def readme() -> str:
    return README.read_text(encoding="utf-8")


def section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert match is not None, f"README has no '## {title}' section"
    return match.group(1)


def subcommands() -> dict[str, str]:
    """Each command of ``engine --help`` with its help line."""
    actions = [a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(actions) == 1
    return {choice.dest: choice.help or "" for choice in actions[0]._choices_actions}


def test_the_readme_stays_short() -> None:
    assert len(README.read_bytes()) <= 8_500


def test_the_readme_command_table_matches_the_help() -> None:
    rows = [line for line in section(readme(), "Commands").splitlines() if line.startswith("| `engine ")]
    documented = {re.match(r"\| `engine (\w+)", row).group(1): row for row in rows}  # type: ignore[union-attr]
    commands = subcommands()
    assert set(documented) == set(commands)
    for name, help_line in commands.items():
        assert help_line, f"engine {name} has no help line"
        assert documented[name].rstrip(" |").endswith(help_line), (name, help_line, documented[name])


def test_every_option_has_a_help_line() -> None:
    def walk(p: argparse.ArgumentParser, where: str) -> list[str]:
        missing = []
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    missing += walk(sub, f"{where} {name}")
            elif not isinstance(action, argparse._HelpAction) and action.help in (None, ""):
                missing.append(f"{where}: {action.dest}")
        return missing

    assert walk(parser(), "engine") == []


def test_engine_version() -> None:
    with pytest.raises(SystemExit) as stop:
        parser().parse_args(["--version"])
    assert stop.value.code == 0


def test_the_readme_documents_exactly_the_public_api() -> None:
    documented = set(re.findall(r"`engine\.(\w+)", section(readme(), "Python API")))
    assert documented == set(engine.__all__)
    for name in engine.__all__:
        assert getattr(engine, name) is not None


def test_every_test_named_in_truth_md_exists() -> None:
    text = (ROOT / "docs" / "truth.md").read_text(encoding="utf-8")
    current: Path | None = None
    named = 0
    for match in re.finditer(r"`(tests/[\w/]+\.py)(?:::(\w+))?|`::(\w+)", text):
        if match.group(1):
            current = ROOT / match.group(1)
            assert current.exists(), match.group(1)
        name = match.group(2) or match.group(3)
        if name:
            assert current is not None
            assert f"def {name}(" in current.read_text(encoding="utf-8"), (current, name)
            named += 1
    assert named >= 40


def test_the_readme_links_resolve() -> None:
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme()):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_no_committed_file_is_over_one_megabyte() -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    big = [f.decode() for f in files if f and (ROOT / f.decode()).is_file() and (ROOT / f.decode()).stat().st_size > 1 << 20]
    assert big == []
