"""The report's tokens and cost per model: prices from the run directory's spec.toml, batch-route records at half."""

from __future__ import annotations

import io
from pathlib import Path

import orjson
import pytest
from rich.console import Console

from engine.report.build import build_report
from engine.report.cost import run_prices
from engine.report.render import render_markdown, render_terminal, report_to_json
from engine.report.write import write_report
from engine.run.runner import RunOptions, run_experiment
from tests.support.batchspec import batch_spec, read_log

PRICES = {"ft-5x": (150.0, 600.0), "ft-50x": (30.0, 90.0)}  # dollars per million tokens: big, so cents show


def _spec(tmp_path: Path) -> Path:
    """ft-5x through the batch route (5 % of items errored, asked online again), ft-50x online, each with a price."""
    spec = batch_spec(tmp_path, questions=200, batch='resubmit = "online"', sim="batch_error_rate = 0.05")
    text = spec.read_text()
    for model, (inp, out) in PRICES.items():
        block = f'name = "{model}"\nbase_url = "sim"\napi = "chat"\nmode = "batch"\nconcurrency = 64\n'
        assert block in text
        mode = "batch" if model == "ft-5x" else "online"
        text = text.replace(block, block.replace('"batch"', f'"{mode}"') + f"price = {{ input = {inp}, output = {out} }}\n")
    spec.write_text(text)
    return spec


def _by_hand(records: list[dict[str, object]]) -> dict[str, tuple[int, int, int, float, float]]:
    """(prompt tokens, completion tokens, batch tasks, cost all online, cost) per model, from the log."""
    out = {}
    for model, (inp, outp) in PRICES.items():
        mine = [r for r in records if r["model"] == model]
        prompt = sum(int(r["prompt_tokens"] or 0) for r in mine)  # type: ignore[call-overload]
        completion = sum(int(r["completion_tokens"] or 0) for r in mine)  # type: ignore[call-overload]
        cost = 0.0
        for r in mine:
            share = 0.5 if r.get("route") == "batch" else 1.0
            cost += share * (int(r["prompt_tokens"]) * inp + int(r["completion_tokens"]) * outp) / 1e6  # type: ignore[call-overload]
        online = (prompt * inp + completion * outp) / 1e6
        out[model] = (prompt, completion, sum(r.get("route") == "batch" for r in mine), online, cost)
    return out


def test_the_report_shows_tokens_and_cost_per_model_batch_at_half(tmp_path: Path) -> None:
    out = tmp_path / "run"
    summary = run_experiment(_spec(tmp_path), options=RunOptions(out=out, quiet=True, report=False))
    assert summary.finished == 400 and summary.failed == 0
    records = read_log(out)
    assert all(r["prompt_tokens"] and r["completion_tokens"] for r in records)  # the target counts tokens
    routes = {m: {str(r.get("route")) for r in records if r["model"] == m} for m in PRICES}
    assert routes == {"ft-5x": {"batch", "online"}, "ft-50x": {"None"}}  # errored batch items went online
    hand = _by_hand(records)
    assert 150 <= hand["ft-5x"][2] <= 199  # most through the batch, a few (5 % errored) online

    report = build_report(out)
    assert report.cost is not None
    rows = {r["model"]: r for r in report.cost.iter_rows(named=True)}
    for model, (prompt, completion, batch, online, cost) in hand.items():
        row = rows[model]
        assert (row["tasks"], row["batch_tasks"], row["prompt_tokens"], row["completion_tokens"]) == \
            (200, batch, prompt, completion)
        assert row["cost_online"] == pytest.approx(online) and row["cost"] == pytest.approx(cost)
    # Half price for the batch share only: less than online, more than half of it.
    assert hand["ft-5x"][3] / 2 < rows["ft-5x"]["cost"] < hand["ft-5x"][3]
    assert rows["ft-50x"]["cost"] == pytest.approx(rows["ft-50x"]["cost_online"])

    total = hand["ft-5x"][4] + hand["ft-50x"][4]
    markdown = render_markdown(report)
    assert "## Tokens and cost" in markdown and f"${hand['ft-5x'][4]:,.2f}" in markdown
    assert f"| all priced models | 400 | {hand['ft-5x'][2]} |" in markdown and f"${total:,.2f}" in markdown
    console = Console(file=io.StringIO(), width=200)
    render_terminal(report, console)
    assert f"${hand['ft-50x'][4]:,.2f}" in console.file.getvalue()  # type: ignore[attr-defined]
    doc = orjson.loads(report_to_json(report))
    assert [r["model"] for r in doc["cost"]] == ["ft-5x", "ft-50x"]
    assert doc["cost"][0]["cost"] == pytest.approx(hand["ft-5x"][4])
    page = next(p for p in write_report(out, charts=False) if p.suffix == ".html").read_text()
    assert "Tokens and cost" in page and f"${total:,.2f}" in page


def test_no_price_no_cost_table_and_prices_come_from_the_run_directory(tmp_path: Path) -> None:
    out = tmp_path / "run"
    spec = batch_spec(tmp_path, questions=30, mode="online")
    run_experiment(spec, options=RunOptions(out=out, quiet=True, report=False))
    assert build_report(out).cost is None and "Tokens and cost" not in render_markdown(build_report(out))
    assert orjson.loads(report_to_json(build_report(out)))["cost"] is None
    # The saved copy is what counts: a price written there (not in the spec the user edits) shows.
    saved = out / "spec.toml"
    saved.write_text(saved.read_text().replace("concurrency = 64\n", "concurrency = 64\nprice = { input = 1, output = 2 }\n", 1))
    assert set(run_prices(out / "results.jsonl")) == {"ft-5x"}
    report = build_report(out)
    assert report.cost is not None and report.cost["cost"].to_list()[1] is None  # ft-50x has no price
    assert report.cost["cost"].to_list()[0] > 0
    saved.write_text("not toml [")
    assert run_prices(out / "results.jsonl") == {} and build_report(out).cost is None  # no prices, still a report
