"""The plan: per-model counts, and time per quota as the run paces it (per model, or a shared [quotas] table)."""

from __future__ import annotations

import dataclasses

import httpx
import pytest

import engine.experiment.grid
import engine.run.plan
from engine.cli import main
from engine.endpoint.limits import prompt_token_estimate
from engine.experiment.grid import build_messages
from engine.experiment.questions import Question, load_questions
from engine.experiment.spec import Spec, load_spec
from engine.run.plan import make_plan, pass_prompt_tokens, plan_limiters, plan_model
from engine.run.quotas import quota_groups
from engine.run.targets import sim_config
from engine.sim.process import SimProcess
from tests.conftest import BASE_SPEC, REPO, SpecDir

API = "https://api.example.test/v1"


def models_toml(*models: str) -> str:
    """BASE_SPEC's header with these [[models]] bodies (each a few TOML lines)."""
    head = BASE_SPEC.split("[[models]]")[0]
    return head + "".join(f"[[models]]\nname = \"m{i}\"\n{body}\n\n" for i, body in enumerate(models, 1))


def test_each_model_on_an_endpoint_has_its_own_quota(spec_dir: SpecDir) -> None:
    # As providers count them: four models each allowed 600 rpm run side by side, not at 600 together.
    one = make_plan(spec_dir.write(models_toml(f'base_url = "{API}"\nrpm = 600'), name="one.toml"))
    four = make_plan(spec_dir.write(models_toml(*[f'base_url = "{API}"\nrpm = 600'] * 4), name="four.toml"))
    per_model = one.models[0].tasks  # 6 questions × 2 temperatures
    assert per_model == 12 and one.seconds_at_rate == pytest.approx(12 / 600 * 60)
    assert [e.models for e in four.limiters] == [("m1",), ("m2",), ("m3",), ("m4",)]
    assert [e.tasks for e in four.limiters] == [per_model] * 4
    assert four.seconds_at_rate == pytest.approx(one.seconds_at_rate)  # side by side, not 4x


def test_models_naming_one_quota_table_share_it(spec_dir: SpecDir) -> None:
    quota = '\n[quotas.pool]\nrpm = 600\ntpm = 100000\nconcurrency = 8\n'
    plan = make_plan(spec_dir.write(models_toml(
        *[f'base_url = "{API}"\nquota = "pool"'] * 3, f'base_url = "{API}"\nrpm = 60',
    ) + quota))
    shared, alone = plan.limiters
    assert shared.shared and shared.models == ("m1", "m2", "m3") and shared.tasks == 36
    assert (shared.rpm, shared.tpm, shared.concurrency) == (600, 100_000, 8)
    assert shared.seconds_at_rate == pytest.approx(36 / 600 * 60)  # one quota: their tasks add up
    assert not alone.shared and alone.models == ("m4",) and alone.seconds_at_rate == pytest.approx(12.0)
    assert plan.seconds_at_rate == pytest.approx(12.0)  # the slowest quota


def test_quotas_run_side_by_side(spec_dir: SpecDir) -> None:
    plan = make_plan(spec_dir.write(models_toml(
        f'base_url = "{API}"\nrpm = 600', f'base_url = "{API}"\nrpm = 600',
        f'base_url = "{API}"\napi_key_env = "OTHER_KEY"\nrpm = 600',  # another key: its own quota
        'base_url = "https://other.example.test/v1"\nrpm = 60',
    )))
    times = {e.models: e.seconds_at_rate for e in plan.limiters}
    assert times == pytest.approx({("m1",): 1.2, ("m2",): 1.2, ("m3",): 1.2, ("m4",): 12.0})
    assert plan.seconds_at_rate == pytest.approx(12.0)  # the slowest quota


def test_labels_of_one_model_id_are_one_quota(spec_dir: SpecDir) -> None:
    # Two sampling setups of one model: the provider counts one model, so one limiter paces both.
    spec = load_spec(spec_dir.write(models_toml(
        f'base_url = "{API}"\nmodel = "gpt-x"\nrpm = 60\ntpm = 1000',
        f'base_url = "{API}"\nmodel = "gpt-x"\nrpm = 60\ntpm = 1000\nparams = {{ seed = 1 }}',
        f'base_url = "{API}"\nmodel = "gpt-y"',
    )))
    questions = load_questions(spec.questions)
    plans = [plan_model(spec, questions, m) for m in spec.models]
    together, other = plan_limiters(quota_groups(spec), plans)
    assert together.models == ("m1", "m2") and (together.rpm, together.tpm) == (60, 1000)
    assert together.label == f"model 'gpt-x' (as m1, m2) at {API}"
    tokens = sum(p.prompt_tokens + p.max_completion_tokens for p in plans[:2])
    assert together.seconds_at_rate == pytest.approx(max(24 / 60 * 60, tokens / 1000 * 60))
    assert other.models == ("m3",) and other.seconds_at_rate is None


@pytest.mark.parametrize(
    "bodies",
    [
        ('base_url = "sim"', 'base_url = "sim"', 'gguf = "a.gguf"', 'gguf = "a.gguf"\napi_key_env = "K"',
         'gguf = "b.gguf"', f'base_url = "{API}"', f'base_url = "{API}"\napi_key_env = "K"',
         f'base_url = "{API}"\nquota = "pool"', f'base_url = "{API}"\nquota = "pool"'),
    ],
)
def test_the_plans_quotas_are_the_runs_limiters(spec_dir: SpecDir, bodies: tuple[str, ...]) -> None:
    spec = load_spec(spec_dir.write(models_toml(*bodies) + "[quotas.pool]\nrpm = 6\n"))
    plan = make_plan(spec.path)
    groups = quota_groups(spec)  # what run_prepared builds one EndpointLimiter from, each
    assert [(e.label, e.models, e.rpm, e.tpm, e.concurrency) for e in plan.limiters] == [
        (g.label, tuple(m.name for m in g.models), g.limits.rpm, g.limits.tpm, g.limits.concurrency) for g in groups
    ]
    assert [e.models for e in plan.limiters] == [
        ("m1",), ("m2",), ("m3",), ("m4",), ("m5",), ("m6",), ("m7",), ("m8", "m9"),
    ]


def test_without_a_rate_there_is_no_time(spec_dir: SpecDir) -> None:
    plan = make_plan(spec_dir.write(models_toml(f'base_url = "{API}"\nrpm = 600', 'base_url = "sim"')))
    assert [e.seconds_at_rate is None for e in plan.limiters] == [False, True]
    assert plan.seconds_at_rate is None
    text = plan.render()
    assert "whole grid" not in text and "no rate configured" in text


def test_render_shows_models_quotas_and_the_whole_grid(spec_dir: SpecDir) -> None:
    path = spec_dir.write(models_toml(
        f'base_url = "{API}"\napi_key_env = "MY_KEY"\nquota = "team"',
        f'base_url = "{API}"\napi_key_env = "MY_KEY"\nquota = "team"',
        'gguf = "a.gguf"\nrpm = 60', f'base_url = "{API}"\napi_key_env = "MY_KEY"\nrpm = 6',
    ) + "[quotas.team]\nrpm = 6\nconcurrency = 2\n")
    plan = make_plan(path)
    lines = plan.render().splitlines()
    assert lines[0] == "experiment 'tiny': 4 models × 6 questions × 2 temperatures × 1 repeats = 48 tasks"
    assert [line.split(":")[0].strip() for line in lines[1:5]] == ["m1", "m2", "m3", "m4"]
    assert lines[1].startswith(f"  m1: 12 tasks, ~{plan.models[0].prompt_tokens:,} prompt tokens, ≤ 192 completion")
    assert lines[5] == "  quotas, each paced on its own, all side by side:"
    assert lines[6].startswith(f"    quota 'team' shared by m1, m2 at {API} (key $MY_KEY): 24 requests,")
    assert lines[6].endswith("concurrency 2, about 4 min at 6 rpm")
    assert lines[7].startswith("    m3 at local a.gguf: 12 requests,") and lines[7].endswith("about 12s at 60 rpm")
    assert lines[8].startswith(f"    m4 at {API} (key $MY_KEY): 12 requests,")
    assert lines[8].endswith("concurrency 32, about 2 min at 6 rpm")
    assert lines[9] == "  whole grid: about 4 min (the slowest quota's time)"


def test_the_prompt_is_built_once_for_all_models(spec_dir: SpecDir, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_spec(spec_dir.write(models_toml(*['base_url = "sim"'] * 5)))
    questions = load_questions(spec.questions)
    calls: list[Question] = []
    real = engine.experiment.grid.build_messages

    def counted(s: Spec, q: Question) -> list[dict[str, str]]:
        calls.append(q)
        return real(s, q)

    monkeypatch.setattr(engine.run.plan, "build_messages", counted)
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


def test_the_prompt_estimate_is_within_ten_percent_of_the_built_in_targets_usage() -> None:
    # The example spec's own messages (a system prompt and a short question), sent once each.
    spec = load_spec(REPO / "data" / "memorisation.toml")
    questions = load_questions(spec.questions)
    config = dataclasses.replace(sim_config(spec, questions), latency_ms=0, jitter_ms=0)
    reported = []
    with SimProcess(config) as sim, httpx.Client(base_url=sim.base_url) as http:
        for question in questions:
            body = {"model": spec.models[0].model, "messages": build_messages(spec, question), "max_tokens": 8}
            reported.append(http.post("/chat/completions", json=body).json()["usage"]["prompt_tokens"])
    estimated = pass_prompt_tokens(spec, questions)  # what `engine plan` and the limiter count
    assert len(reported) == 150
    assert 0.9 <= estimated / sum(reported) <= 1.1, (estimated, sum(reported))
    for question, tokens in zip(questions, reported, strict=True):
        messages = build_messages(spec, question)
        one = prompt_token_estimate(sum(len(m["content"]) for m in messages), messages=len(messages))
        assert 0.8 <= one / tokens <= 1.2, (question.id, one, tokens)


@pytest.mark.parametrize(("chars", "messages", "tokens"), [(0, 1, 7.0), (40, 1, 17.0), (40, 2, 21.0), (400, 3, 115.0)])
def test_the_prompt_estimate_counts_chat_framing_per_message(chars: int, messages: int, tokens: float) -> None:
    # about 4 characters a token, 4 tokens of framing a message, 3 that prime the reply
    assert prompt_token_estimate(chars, messages=messages) == pytest.approx(tokens)
