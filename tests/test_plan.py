"""The plan: per-model counts, and time per endpoint as the run paces it (shared limits, tightest quota)."""

from __future__ import annotations

import pytest

import engine.grid
from engine.cli import main
from engine.grid import plan_model
from engine.plan import make_plan, plan_endpoints
from engine.questions import load_questions
from engine.runner import endpoint_groups, limit_config
from engine.spec import load_spec
from tests.conftest import BASE_SPEC, SpecDir

API = "https://api.example.test/v1"


def models_toml(*models: str) -> str:
    """BASE_SPEC's header with these [[models]] bodies (each a few TOML lines)."""
    head = BASE_SPEC.split("[[models]]")[0]
    return head + "".join(f"[[models]]\nname = \"m{i}\"\n{body}\n\n" for i, body in enumerate(models, 1))


def test_models_on_one_endpoint_share_its_quota(spec_dir: SpecDir) -> None:
    one = make_plan(spec_dir.write(models_toml(f'base_url = "{API}"\nrpm = 600'), name="one.toml"))
    four = make_plan(spec_dir.write(models_toml(*[f'base_url = "{API}"\nrpm = 600'] * 4), name="four.toml"))
    per_model = one.models[0].tasks  # 6 questions × 2 temperatures
    assert per_model == 12 and one.seconds_at_rate == pytest.approx(12 / 600 * 60)
    (endpoint,) = four.endpoints
    assert endpoint.models == ("m1", "m2", "m3", "m4") and endpoint.tasks == 4 * per_model
    assert four.seconds_at_rate == pytest.approx(4 * one.seconds_at_rate)  # not "side by side"
    assert [m.tasks for m in four.models] == [per_model] * 4  # per-model figures stay per model


def test_endpoints_run_side_by_side(spec_dir: SpecDir) -> None:
    plan = make_plan(spec_dir.write(models_toml(
        f'base_url = "{API}"\nrpm = 600', f'base_url = "{API}"\nrpm = 600',
        f'base_url = "{API}"\napi_key_env = "OTHER_KEY"\nrpm = 600',  # another key: its own quota
        'base_url = "https://other.example.test/v1"\nrpm = 60',
    )))
    times = {e.endpoint: e.seconds_at_rate for e in plan.endpoints}
    assert times == pytest.approx({
        (API, None): 24 / 600 * 60, (API, "OTHER_KEY"): 12 / 600 * 60, ("https://other.example.test/v1", None): 12.0,
    })
    assert plan.seconds_at_rate == pytest.approx(12.0)  # the slowest endpoint


def test_an_endpoint_takes_the_tightest_quota_any_of_its_models_sets(spec_dir: SpecDir) -> None:
    spec = load_spec(spec_dir.write(models_toml(
        f'base_url = "{API}"\nrpm = 600\ntpm = 1000', f'base_url = "{API}"\nrpm = 60', f'base_url = "{API}"',
    )))
    questions = load_questions(spec.questions)
    plans = [plan_model(spec, questions, m) for m in spec.models]
    (endpoint,) = plan_endpoints(spec.models, plans)
    limits = limit_config(spec, spec.models)  # what the run's limiter will use
    assert (endpoint.rpm, endpoint.tpm) == (limits.rpm, limits.tpm) == (60, 1000)
    tokens = sum(p.prompt_tokens + p.max_completion_tokens for p in plans)
    assert endpoint.seconds_at_rate == pytest.approx(max(36 / 60 * 60, tokens / 1000 * 60))


@pytest.mark.parametrize(
    "bodies",
    [
        ('base_url = "sim"', 'base_url = "sim"', 'gguf = "a.gguf"', 'gguf = "a.gguf"\napi_key_env = "K"',
         'gguf = "b.gguf"', f'base_url = "{API}"', f'base_url = "{API}"\napi_key_env = "K"'),
    ],
)
def test_endpoints_are_the_runs_groups(spec_dir: SpecDir, bodies: tuple[str, ...]) -> None:
    spec = load_spec(spec_dir.write(models_toml(*bodies)))
    plan = make_plan(spec.path)
    # The run maps each model to a served URL; distinct endpoints get distinct URLs.
    run_groups = endpoint_groups(spec, {m.name: m.endpoint[0] for m in spec.models})
    assert {e.endpoint: e.models for e in plan.endpoints} == {
        k: tuple(m.name for m in v) for k, v in run_groups.items()
    }


def test_without_a_rate_there_is_no_time(spec_dir: SpecDir) -> None:
    plan = make_plan(spec_dir.write(models_toml(f'base_url = "{API}"\nrpm = 600', 'base_url = "sim"')))
    assert [e.seconds_at_rate is None for e in plan.endpoints] == [False, True]
    assert plan.seconds_at_rate is None
    text = plan.render()
    assert "whole grid" not in text and "no rate configured" in text


def test_render_shows_models_endpoints_and_the_whole_grid(spec_dir: SpecDir) -> None:
    path = spec_dir.write(models_toml(
        f'base_url = "{API}"\napi_key_env = "MY_KEY"\nrpm = 6', f'base_url = "{API}"\napi_key_env = "MY_KEY"\nrpm = 6',
        'gguf = "a.gguf"\nrpm = 60',
    ))
    plan = make_plan(path)
    lines = plan.render().splitlines()
    assert lines[0] == "experiment 'tiny': 3 models × 6 questions × 2 temperatures × 1 repeats = 36 tasks"
    assert [line.split(":")[0].strip() for line in lines[1:4]] == ["m1", "m2", "m3"]
    assert lines[1].startswith(f"  m1: 12 tasks, ~{plan.models[0].prompt_tokens:,} prompt tokens, ≤ 192 completion")
    assert lines[4].startswith(f"  endpoint {API} (key $MY_KEY) [m1, m2]: 24 requests,")
    assert lines[4].endswith("about 4 min at 6 rpm")
    assert lines[5].startswith("  endpoint local a.gguf [m3]: 12 requests,") and lines[5].endswith("about 12s at 60 rpm")
    assert lines[6].startswith("  whole grid: about 4 min")


def test_the_prompt_is_built_once_for_all_models(spec_dir: SpecDir, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_spec(spec_dir.write(models_toml(*['base_url = "sim"'] * 5)))
    questions = load_questions(spec.questions)
    calls = []
    real = engine.grid.build_messages
    monkeypatch.setattr(engine.grid, "build_messages", lambda s, q: calls.append(q) or real(s, q))
    plan = make_plan(spec.path)
    assert len(calls) == len(questions)  # O(questions), not O(models × questions)
    assert all(m.prompt_tokens == plan.models[0].prompt_tokens for m in plan.models)
    assert plan.models[0].prompt_tokens == plan_model(spec, questions, spec.models[0]).prompt_tokens


def test_a_prompt_that_cannot_be_filled_is_one_error_line(
    spec_dir: SpecDir, capsys: pytest.CaptureFixture[str]
) -> None:
    path = spec_dir.write(BASE_SPEC.replace("max_tokens = 16", 'max_tokens = 16\nprompt = "{question} {object.foo}"'))
    assert main(["plan", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("engine: error: ") and "cannot fill the placeholders" in captured.err
    assert "object has no attribute 'foo'" in captured.err
