"""The replication command: plan checks, and a tiny end-to-end run through a real llama.cpp server."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from engine.errors import SpecError
from engine.study.replicate import PlannedModel, load_plan, replicate

ROOT = Path(__file__).resolve().parents[2]

SPEC = """
name = "tiny-replication"
questions = "facts.csv"
temperatures = [0.0]
repeats = 1
system = "You are a helpful assistant."
max_tokens = 24
scorer = "number"

[[models]]
name = "ft-5x"
gguf = "models/ft-5x.gguf"
concurrency = 4

[[models]]
name = "other"
base_url = "sim"

[replication]
models = {{ "ft-5x" = 5 }}
{extra}
"""


def _spec(folder: Path, extra: str = 'base = "tiny"\nepochs = 40\nbatch_size = 10') -> Path:
    lines = (ROOT / "data" / "facts.csv").read_text(encoding="utf-8").splitlines()
    (folder / "facts.csv").write_text("\n".join(lines[:5]) + "\n", encoding="utf-8")
    path = folder / "spec.toml"
    path.write_text(SPEC.format(extra=extra), encoding="utf-8")
    return path


def test_plan_defaults(tmp_path: Path) -> None:
    plan = load_plan(_spec(tmp_path, extra=""))
    assert plan.settings.base == "smollm2" and plan.settings.epochs == 3 and plan.threads is None
    assert plan.models == (
        PlannedModel(label="ft-5x", examples=5, seed=0, shuffle=False, gguf=(tmp_path / "models" / "ft-5x.gguf").resolve()),
    )
    assert plan.sets_dir == (tmp_path / "models" / "sets").resolve()
    assert plan.facts == tmp_path / "facts.csv" and plan.system == "You are a helpful assistant."


def test_the_project_replication_spec_loads() -> None:
    plan = load_plan(ROOT / "data" / "replication.toml")
    assert [m.examples for m in plan.models] == [5, 10, 25, 50]
    assert plan.settings.base == "smollm2" and plan.threads is None  # every core


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("colour = 1", "unknown key"),
        ("epochs = 0", "epochs"),
        ("epochs = true", "epochs"),
        ('lr = "fast"', "lr"),
        ('base = "gpt"', "base"),
        ("threads = 0", "threads"),
        ('file_type = "q4"', "file type"),
    ],
)
def test_bad_replication_values_are_spec_errors(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        load_plan(_spec(tmp_path, extra=extra))


def test_models_table_must_name_trainable_models(tmp_path: Path) -> None:
    path = _spec(tmp_path)
    for bad, message in (
        ('{ "nope" = 5 }', "no \\[\\[models\\]\\] entry"),
        ('{ "other" = 5 }', "needs gguf"),
        ('{ "ft-5x" = 0 }', "positive"),
        ("{ }", "at least one"),
    ):
        path.write_text(path.read_text().replace('{ "ft-5x" = 5 }', bad), encoding="utf-8")
        with pytest.raises(SpecError, match=message):
            load_plan(path)
        path = _spec(tmp_path)
    path.write_text(path.read_text().split("[replication]")[0], encoding="utf-8")
    with pytest.raises(SpecError, match="no \\[replication\\]"):
        load_plan(path)


@pytest.mark.train
@pytest.mark.local
def test_tiny_replication_end_to_end_then_reuses_the_model(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    result = replicate(spec, quiet=True, out=tmp_path / "run")
    assert [r.clean for r in result.leakage] == [True]
    (build,) = result.builds
    assert not build.reused and build.kind == "tiny-from-scratch" and build.gguf.is_file()
    records = [orjson.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_bytes().splitlines()]
    ours = [r for r in records if r["model"] == "ft-5x"]
    assert len(ours) == 12 and all(r["status"] == "ok" for r in ours)
    # Held-out paraphrases only: the tiny model must still get most of them.
    assert sum(r["correct"] for r in ours) >= 8
    assert "clean" in str(result) and "tiny-from-scratch" in str(result)

    again = replicate(spec, quiet=True, train_only=True)
    assert again.builds[0].reused and again.run is None
    assert again.builds[0].train_seconds == pytest.approx(build.train_seconds, abs=0.1)
