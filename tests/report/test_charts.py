"""Charts: written as PNG, models in order, both intervals labelled, axes in percent."""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
import pytest
from matplotlib.axes import Axes
from matplotlib.legend import Legend

from engine.errors import ReportError
from engine.report.build import build_report
from engine.report.charts import CHART_FILES, chart_error_rate, chart_split, write_charts

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(tmp_path: Path, *, tags: bool = True) -> Path:
    lines = []
    for model in ("50x", "5x", "10x"):  # log order differs from the order charts must show
        for i in range(8):
            for difficulty in ("easy", "mid", "hard"):
                for t in (0.0, 0.5, 1.0):
                    wrong = difficulty == "hard" and i < {"5x": 4, "10x": 2, "50x": 1}[model]
                    qid = f"O{i}/{difficulty}"
                    rec = {
                        "v": 1, "key": hashlib.blake2b(f"{model}{qid}{t}".encode(), digest_size=10).hexdigest(),
                        "model": model, "model_id": model, "qid": qid, "question": "q",
                        "tags": {"object": f"O{i}", "difficulty": difficulty} if tags else {},
                        "temperature": t, "repeat": 0, "expected": "1", "reply": "1", "extracted": "1",
                        "outcome": "wrong" if wrong else "correct", "correct": not wrong, "status": "ok",
                        "error": None, "attempts": 1, "http": [200], "latency_ms": 5.0, "prompt_tokens": 3,
                        "completion_tokens": 2, "t_start": 1.0, "t_end": 2.0,
                    }  # fmt: skip
                    lines.append(orjson.dumps(rec))
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return run


def test_write_charts_makes_three_pngs(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    paths = write_charts(build_report(run), run)
    assert [p.name for p in paths] == list(CHART_FILES.values())
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_headline_chart_orders_models_and_labels_both_intervals(tmp_path: Path) -> None:
    fig = chart_error_rate(build_report(make_run(tmp_path)))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["5x", "10x", "50x"]
    legend = [t.get_text() for t in _legend(ax).get_texts()]
    assert any("Wilson" in t for t in legend) and any("cluster bootstrap" in t and "objects" in t for t in legend)
    fig.canvas.draw()
    assert all(t.get_text().endswith("%") for t in ax.get_yticklabels() if t.get_text())
    notes = [t.get_text() for t in ax.texts]
    assert notes[0] == "16.67%\n12/72"  # 5x: 4 objects x 3 temperatures wrong on hard, of 72


def test_split_charts_show_every_level(tmp_path: Path) -> None:
    report = build_report(make_run(tmp_path))
    ax = chart_split(report, "difficulty").axes[0]
    assert [t.get_text() for t in _legend(ax).get_texts()] == ["easy", "mid", "hard"]
    ax_t = chart_split(report, "temperature").axes[0]
    assert [t.get_text() for t in _legend(ax_t).get_texts()] == ["T = 0", "T = 0.5", "T = 1"]
    assert "bootstrap" in ax.get_title()


def test_without_difficulty_there_is_no_difficulty_chart(tmp_path: Path) -> None:
    run = make_run(tmp_path, tags=False)
    report = build_report(run)
    assert [p.name for p in write_charts(report, run)] == [CHART_FILES["overall"], CHART_FILES["temperature"]]
    with pytest.raises(ReportError, match="difficulty"):
        chart_split(report, "difficulty")


def _legend(ax: Axes) -> Legend:
    legend = ax.get_legend()
    assert legend is not None
    return legend
