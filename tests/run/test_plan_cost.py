"""`engine plan` prices a spec both ways: online, and through the Batch API at half."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.cli import main
from engine.errors import SpecError
from engine.experiment.spec import load_spec
from engine.run.plan import make_plan
from tests.support.batchspec import batch_spec

PRICE = "price = { input = 150.0, output = 600.0 }"


def test_plan_prints_the_cost_online_and_batch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = batch_spec(tmp_path, questions=300, price=PRICE)
    plan = make_plan(spec)
    model = plan.models[0]
    online = (model.prompt_tokens * 150.0 + model.max_completion_tokens * 600.0) / 1e6
    assert model.cost_online == pytest.approx(online) and model.cost_batch == pytest.approx(online / 2)
    assert main(["plan", str(spec)]) == 0
    out = capsys.readouterr().out
    assert f"cost at most ${online:,.2f} online, ${online / 2:,.2f} batch" in out
    assert f"cost at most: ${2 * online:,.2f} all online, ${online:,.2f} all batch, ${online:,.2f} as the spec routes it" in out


def test_a_spec_without_prices_shows_no_cost(tmp_path: Path) -> None:
    assert "cost" not in make_plan(batch_spec(tmp_path, questions=30)).render()


@pytest.mark.parametrize(("edit", "phrase"), [
    (('mode = "batch"', 'mode = "bulk"'), "mode: must be one of online, batch, got 'bulk'"),
    (('api = "chat"', 'api = "responses"'), "mode: batch takes api chat or anthropic, not 'responses'"),
    (("concurrency = 64", "concurrency = 64\nprice = { input = 1 }"), "price.output: required, but missing"),
    (("concurrency = 64", 'concurrency = 64\nprice = { input = 1, output = -2 }'), "price.output: must be >= 0"),
    (("poll_s = 0.05", "poll_s = 0.05\nchunk = 3"), "batch: unknown key 'chunk'"),
    (("poll_s = 0.05", "poll_s = 0"), "batch.poll_s: must be > 0"),
    (("poll_s = 0.05", 'poll_s = 0.05\nresubmit = "later"'), "batch.resubmit: must be one of batch, online, got 'later'"),
])  # fmt: skip
def test_bad_batch_settings_are_one_line(tmp_path: Path, edit: tuple[str, str], phrase: str) -> None:
    spec = batch_spec(tmp_path, questions=30)
    spec.write_text(spec.read_text().replace(*edit, 1))
    with pytest.raises(SpecError, match=phrase.replace("(", r"\(").replace(")", r"\)")):
        load_spec(spec)
