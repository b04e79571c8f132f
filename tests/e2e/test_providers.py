"""One spec, three APIs on the built-in target (a real sim subprocess): every task answered, and each
model scores exactly as the same simulated model asked over Chat Completions; switching a model's
API makes new task keys while chat keys stay as they were."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import orjson

from engine.experiment.grid import Grid, build_grid
from engine.experiment.questions import load_questions
from engine.experiment.spec import load_spec
from engine.run.runner import RunOptions, run_experiment
from engine.run.targets import model_targets

ROOT = Path(__file__).resolve().parents[2]
FACTS = ROOT / "data" / "facts.csv"
# One simulated model per API; the chat spec asks the same model ids over Chat Completions.
MODELS = (("ft-5x", "responses"), ("ft-10x", "anthropic"), ("ft-25x", "chat"))


def write_spec(path: Path, *, apis: bool) -> Path:
    models = "".join(
        f'[[models]]\nname = "{name}"\nbase_url = "sim"\n' + (f'api = "{api}"\n' if apis else "")
        for name, api in MODELS
    )
    path.write_text(
        f'name = "{path.stem}"\nquestions = "{FACTS}"\nsystem = "Answer with the number."\n'
        "temperatures = [0.0, 0.7]\n\n[sim]\nseed = 3\n\n" + models
    )
    return path


def outcomes(run_dir: Path) -> dict[tuple[str, str, float], tuple[str, bool]]:
    records = [orjson.loads(line) for line in (run_dir / "results.jsonl").read_bytes().splitlines() if line]
    return {(r["model"], r["qid"], r["temperature"]): (r["status"], r["correct"]) for r in records}


def test_three_apis_in_one_spec_answer_every_task_with_chat_scores(tmp_path: Path) -> None:
    by_api = run_experiment(write_spec(tmp_path / "apis.toml", apis=True),
                            options=RunOptions(out=tmp_path / "apis", quiet=True, report=False))
    by_chat = run_experiment(write_spec(tmp_path / "chat.toml", apis=False),
                             options=RunOptions(out=tmp_path / "chat", quiet=True, report=False))
    tasks = 3 * 150 * 2
    assert (by_api.ok, by_api.failed, by_api.finished) == (tasks, 0, tasks)
    assert (by_chat.ok, by_chat.failed) == (tasks, 0)
    api_out, chat_out = outcomes(tmp_path / "apis"), outcomes(tmp_path / "chat")
    greedy = {k: v for k, v in api_out.items() if k[2] == 0.0}
    assert len(greedy) == 450 and all(status == "ok" for status, _ in api_out.values())
    # Greedy answers are a function of (model, question): each API's model scores as over chat, task by task
    # (at 0.7 the sim draws from its shared generator, so only the greedy half is compared).
    assert greedy == {k: v for k, v in chat_out.items() if k[2] == 0.0}
    for name, _ in MODELS:
        right = sum(correct for (model, _, t), (_, correct) in api_out.items() if model == name and t == 0.0)
        assert right == sum(correct for (m, _, t), (_, correct) in chat_out.items() if m == name and t == 0.0)
        assert 0 < right <= 150
    # Each API was really used: the records name the target with its API, chat's without one.
    targets = {orjson.loads(line)["model"]: orjson.loads(line)["target"]
               for line in (tmp_path / "apis" / "results.jsonl").read_bytes().splitlines()}
    assert targets["ft-5x"].endswith(" api=responses") and targets["ft-10x"].endswith(" api=anthropic")
    assert targets["ft-25x"].startswith("sim:") and " api=" not in targets["ft-25x"]


def test_switching_a_model_to_another_api_makes_new_keys_and_chat_keys_stay(tmp_path: Path) -> None:
    questions = load_questions(FACTS)
    chat = load_spec(write_spec(tmp_path / "same.toml", apis=False))
    grid_chat = build_grid(chat, questions, model_targets(chat, questions))
    apis = load_spec(write_spec(tmp_path / "same.toml", apis=True))
    grid_apis = build_grid(apis, questions, model_targets(apis, questions))

    def keys(grid: Grid, index: int) -> set[str]:
        return set(dataclasses.replace(grid, models=(grid.models[index],)).keys())

    assert len(keys(grid_chat, 0)) == 300
    assert keys(grid_apis, 2) == keys(grid_chat, 2)  # ft-25x is still asked over chat: the same keys as before
    assert not keys(grid_apis, 0) & keys(grid_chat, 0)  # ft-5x now over responses: everything asked again
    assert not keys(grid_apis, 1) & keys(grid_chat, 1)  # ft-10x now over anthropic
