"""The replication with controls: family holdout, training seeds, the shuffled control, the in-context model."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from engine.errors import SpecError
from engine.study.controls import chance_level, context_prompt
from engine.study.leakage import read_facts
from engine.study.replicate import TRAINING_FILE, load_plan, replicate

ROOT = Path(__file__).resolve().parents[2]

SPEC = """
name = "tiny-v2"
questions = "facts.csv"
temperatures = [0.0]
repeats = 1
system = "You are a helpful assistant."
max_tokens = 24
scorer = "number"

[[models]]
name = "5x-s0"
gguf = "models/5x-s0.gguf"

[[models]]
name = "5x-s1"
gguf = "models/5x-s1.gguf"

[[models]]
name = "shuffled-5x"
gguf = "models/shuffled-5x.gguf"

[[models]]
name = "in-context"
base_url = "sim"
system_file = "context.txt"

[replication]
holdout = "family"
base = "tiny"
epochs = 40
batch_size = 10
{extra}

[replication.models]
"5x-s0" = 5
"5x-s1" = {{ examples = 5, seed = 1 }}
"shuffled-5x" = {{ examples = 5, shuffle = true }}
"""


def _spec(folder: Path, extra: str = "") -> Path:
    lines = (ROOT / "data" / "facts.csv").read_text(encoding="utf-8").splitlines()
    (folder / "facts.csv").write_text("\n".join(lines[:5]) + "\n", encoding="utf-8")
    (folder / "context.txt").write_text(context_prompt(read_facts(folder / "facts.csv")), encoding="utf-8")
    path = folder / "spec.toml"
    path.write_text(SPEC.format(extra=extra), encoding="utf-8")
    return path


def test_the_committed_context_prompt_is_the_facts_prompt() -> None:
    text = (ROOT / "data" / "facts-context.txt").read_text(encoding="utf-8")
    assert text == context_prompt(read_facts(ROOT / "data" / "facts.csv"))
    assert "Anchor: 11246" in text.splitlines() and len(text.splitlines()) == 3 + 50


def test_the_v2_spec_plans_seeds_controls_and_the_in_context_model() -> None:
    plan = load_plan(ROOT / "data" / "replication-v2.toml")
    assert plan.holdout == "family" and plan.threshold == 0.85 and plan.grid_per_model == 900
    seeds = {m.label: (m.examples, m.seed, m.shuffle) for m in plan.models}
    assert [seeds[f"5x-s{i}"] for i in range(3)] == [(5, 0, False), (5, 1, False), (5, 2, False)]
    assert [seeds[f"10x-s{i}"][1] for i in range(3)] == [0, 1, 2]
    assert seeds["shuffled-10x"] == (10, 0, True)
    assert {"smollm2", "in-context"} <= set(plan.evaluated) and len(plan.evaluated) == 9  # 7 trained, 2 not


@pytest.mark.parametrize(
    ("extra", "message"),
    [('holdout = "fuzzy"', "holdout"), ("threshold = 1.5", "threshold")],
)
def test_bad_holdout_settings_are_spec_errors(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        load_plan(_spec(tmp_path, extra))


def test_a_bad_model_entry_is_a_spec_error(tmp_path: Path) -> None:
    path = _spec(tmp_path)
    for bad, message in (("{ examples = 5, seed = -1 }", "seed"), ("{ examples = 5, shuffle = 1 }", "shuffle"),
                         ("{ examples = 5, colour = 1 }", "unknown key")):  # fmt: skip
        path.write_text(SPEC.format(extra="").replace("{ examples = 5, seed = 1 }", bad), encoding="utf-8")
        with pytest.raises(SpecError, match=message):
            load_plan(path)


@pytest.mark.train
@pytest.mark.local
def test_tiny_v2_replication_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _spec(tmp_path)
    result = replicate(spec, out=tmp_path / "run")
    printed = capsys.readouterr().out
    assert "plan:" in printed and printed.count(" train ") >= 3 and "to train" in printed
    assert all(r.clean and not r.near for r in result.leakage)
    builds = {b.label: b for b in result.builds}
    assert builds["5x-s0"].seed == 0 and builds["5x-s1"].seed == 1
    assert builds["5x-s0"].dataset == builds["5x-s1"].dataset  # one set, two training seeds
    assert builds["5x-s0"].key != builds["5x-s1"].key
    assert builds["shuffled-5x"].dataset.name == "train-5-shuffled.jsonl"
    # 4 facts with distinct numbers, each trained 5 times: the most frequent number is right for 1 in 4.
    assert [c.share for c in result.chance] == [0.25, 0.25]
    assert chance_level(builds["5x-s0"].dataset, read_facts(tmp_path / "facts.csv")).times == 5
    training = orjson.loads((tmp_path / "run" / TRAINING_FILE).read_bytes())
    assert {m["label"]: m["train_key"] for m in training["models"]} == {b: builds[b].key for b in builds}
    assert training["holdout"] == "family" and training["models"][1]["settings"]["seed"] == 1
    records = [orjson.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_bytes().splitlines()]
    assert {r["model"] for r in records} == {"5x-s0", "5x-s1", "shuffled-5x", "in-context"}
    assert all(r["status"] == "ok" for r in records) and len(records) == 4 * 12
    shuffled = [r for r in records if r["model"] == "shuffled-5x"]
    assert sum(r["correct"] for r in shuffled) <= 3  # it was taught other objects' numbers

    again = replicate(spec, quiet=True, train_only=True)
    assert all(b.reused for b in again.builds)
