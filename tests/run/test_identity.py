"""Identity, scope and labels (issue 9): answers bound to who gave them, reports bound to the grid,
simulated answers labelled wherever a reader looks."""

from __future__ import annotations

import dataclasses
import errno
import io
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
from rich.console import Console

from engine.endpoint.httpx_transport import HttpxTransport
from engine.endpoint.transport import Transport
from engine.errors import ConfigError, LogError
from engine.experiment.grid import build_grid
from engine.experiment.questions import load_questions
from engine.experiment.spec import load_spec
from engine.report.build import build_report
from engine.report.model import Report
from engine.report.render import report_to_csv, report_to_json
from engine.report.write import main_report, write_report
from engine.run.runner import RunOptions, prepare, run_experiment, run_prepared
from engine.run.targets import gguf_target, model_targets, normalise_url, sim_target
from engine.sim.config import SimConfig

ROOT = Path(__file__).resolve().parents[2]
FACTS = ROOT / "data" / "facts.csv"


def spec_file(tmp_path: Path, *, temps: str = "[0.0, 1.0]", m1: str = 'base_url = "sim"', m2: str | None = None,
              sim: str = "", name: str = "spec.toml") -> Path:  # fmt: skip
    models = f'[[models]]\nname = "m1"\n{m1}\nconcurrency = 8\n'
    if m2 is not None:
        models += f'\n[[models]]\nname = "m2"\n{m2}\nconcurrency = 8\n'
    path = tmp_path / name
    path.write_text(f'name = "t"\nquestions = "{FACTS}"\ntemperatures = {temps}\nrepeats = 1\n{models}\n{sim}\n')
    return path


def keys_of(spec_path: Path) -> set[str]:
    spec = load_spec(spec_path)
    questions = load_questions(spec.questions)
    return set(build_grid(spec, questions, model_targets(spec, questions)).keys())


def read_log(run: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (run / "results.jsonl").read_bytes().splitlines()]


# ------------------------------------------------------------------------------ identity


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        ("HTTPS://API.OpenAI.com:443/v1/", "https://api.openai.com/v1"),
        ("http://LocalHost:80/v1", "http://localhost/v1"),
        ("http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000/v1"),
        ("https://host:8443/V1", "https://host:8443/V1"),  # a path keeps its case
        ("http://[::1]:8080/v1", "http://[::1]:8080/v1"),
    ],
)
def test_a_base_url_is_normalised_into_its_target(url: str, normal: str) -> None:
    assert normalise_url(url) == normal


def test_the_key_is_not_part_of_a_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEY_A", "sk-aaaa")
    monkeypatch.setenv("KEY_B", "sk-bbbb")
    url = 'base_url = "https://api.example.com/v1"'
    a = spec_file(tmp_path, m1=f'{url}\napi_key_env = "KEY_A"', name="a.toml")
    b = spec_file(tmp_path, m1=f'{url}\napi_key_env = "KEY_B"', name="b.toml")
    assert keys_of(a) == keys_of(b)  # a rotated key is the same target
    spec = load_spec(a)
    grid_json = build_grid(spec, load_questions(spec.questions), model_targets(spec, load_questions(spec.questions)))
    assert b"sk-aaaa" not in grid_json.to_json() and b"KEY_A" not in grid_json.to_json()


def test_the_sim_target_follows_what_changes_its_answers() -> None:
    base = SimConfig(accuracy={"m1": {"easy": 0.9}, "m2": {"easy": 0.5}})
    same = {
        sim_target(base, "m1"),
        sim_target(dataclasses.replace(base, latency_ms=50, rpm=60), "m1"),  # how fast, not what
        sim_target(dataclasses.replace(base, accuracy={"m1": {"easy": 0.9}, "m2": {"easy": 0.1}}), "m1"),
    }
    assert len(same) == 1
    changed = [
        sim_target(dataclasses.replace(base, accuracy={"m1": {"easy": 0.8}}), "m1"),
        sim_target(dataclasses.replace(base, accuracy={**base.accuracy, "*": {"hard": 0.1}}), "m1"),
        sim_target(dataclasses.replace(base, default_accuracy=0.5), "m1"),
        sim_target(dataclasses.replace(base, format_noise=0.0), "m1"),
        sim_target(dataclasses.replace(base, seed=1), "m1"),
        sim_target(base, "m2"),
    ]
    assert len({*same, *changed}) == 1 + len(changed)
    assert all(t.startswith("sim:") and len(t) == 4 + 12 for t in changed)


def test_a_changed_sim_setting_gives_new_keys_only_to_the_model_it_touches(tmp_path: Path) -> None:
    before = spec_file(tmp_path, m2='base_url = "sim"', name="a.toml")
    after = spec_file(tmp_path, m2='base_url = "sim"', sim='[sim.accuracy.m1]\nhard = 0.5', name="b.toml")
    old, new = keys_of(before), keys_of(after)
    assert len(old) == len(new) == 2 * 150 * 2
    assert len(old & new) == 300  # m2's 300 tasks keep their keys, m1's 300 are new


def test_swapping_a_gguf_file_gives_every_task_a_new_key(tmp_path: Path) -> None:
    # Must-show 1 (GGUF): the same label and path, other content (a retrained model): no key survives.
    model = tmp_path / "ft.gguf"
    model.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    spec = spec_file(tmp_path, m1='gguf = "ft.gguf"')
    first = keys_of(spec)
    target = gguf_target(model)
    assert target.startswith("gguf:sha256:") and len(target) == len("gguf:sha256:") + 16
    model.write_bytes(b"GGUF" + bytes(range(255, -1, -1)) * 64)  # same size, other weights
    second = keys_of(spec)
    assert len(first) == len(second) == 300 and not first & second
    assert gguf_target(model) != target
    model.write_bytes(b"GGUF" + bytes(range(256)) * 64)  # the first file back: its answers count again
    assert keys_of(spec) == first


def test_a_missing_gguf_file_is_one_line_before_anything_is_written(tmp_path: Path) -> None:
    spec = spec_file(tmp_path, m1='gguf = "absent.gguf"')
    with pytest.raises(ConfigError, match="model file not found"):
        prepare(spec, RunOptions(out=tmp_path / "run"))
    assert not (tmp_path / "run").exists()


class RealServer:
    """Stands in for a real OpenAI-compatible server: answers every question with the same wrong number."""

    def __init__(self) -> None:
        self.chat = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [{"id": "m1", "object": "model"}]})
        self.chat += 1
        body = {
            "id": f"c{self.chat}", "object": "chat.completion", "model": "m1",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "It is 99999."},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25},
        }  # fmt: skip
        return httpx.Response(200, json=body)


def test_sim_then_a_real_server_under_one_label_asks_everything_again(tmp_path: Path) -> None:
    # Must-show 1: the simulation's answers never pass as the real server's.
    out = tmp_path / "run"
    sim_spec = spec_file(tmp_path, name="sim.toml")
    first = run_experiment(sim_spec, options=RunOptions(out=out, quiet=True))
    assert first.finished == 300 and first.target_requests == 300
    sim_report = build_report(out)
    assert sim_report.overall.row(0, named=True)["error_rate"] < 0.5  # the simulation mostly answers right

    real_spec = spec_file(tmp_path, m1='base_url = "http://Real.test:80/v1/"', name="real.toml")
    server = RealServer()
    options = RunOptions(out=out, quiet=True)
    prepared = prepare(real_spec, options)
    factory = lambda _n: HttpxTransport(httpx.AsyncClient(transport=httpx.MockTransport(server)))  # noqa: E731
    summary = anyio.run(lambda: run_prepared(prepared, options, transport_factory=factory), backend="asyncio")
    assert server.chat == summary.finished == 300 and summary.already_done == 0  # every task asked again
    records = read_log(out)
    assert len(records) == 600  # the simulation's records stay in the log
    assert {r["target"] for r in records[300:]} == {"http://real.test/v1"}
    assert {r["simulated"] for r in records[300:]} == {False}
    assert {r["simulated"] for r in records[:300]} == {True}

    report = build_report(out)
    row = report.overall.row(0, named=True)
    assert (row["model"], row["n"], row["errors"]) == ("m1", 300, 300)  # only the real server's answers
    assert report.targets.rows() == [("m1", "http://real.test/v1", False)]
    sim_id = records[0]["target"]
    assert report.scope.outside == 300 and report.scope.reasons == ((f"model m1 @ {sim_id}", 300),)
    md = render_md(report)
    assert "Simulation" not in md.splitlines()[0]
    assert f"300 records outside the current grid (model m1 @ {sim_id}: 300), not reported; --all to include" in md


def render_md(report: Report) -> str:
    from engine.report.render import render_markdown

    return render_markdown(report)


# --------------------------------------------------------------------------------- scope


def test_a_grid_cut_from_300_to_150_tasks_reports_150_and_names_the_rest(tmp_path: Path) -> None:
    # Must-show 2.
    out = tmp_path / "run"
    run_experiment(spec_file(tmp_path, temps="[0.0, 1.0]"), options=RunOptions(out=out, quiet=True))
    cut = run_experiment(spec_file(tmp_path, temps="[0.0]"), options=RunOptions(out=out, quiet=True))
    assert cut.total == 150 and cut.already_done == 150 and cut.finished == 0
    report = build_report(out)
    assert report.tasks == 150 and int(report.overall["n"].sum()) == 150
    assert report.scope.grid_tasks == 150 and report.scope.outside == 150
    assert report.scope.reasons == (("temperature 1.0", 150),)
    assert report.by_temperature["temperature"].to_list() == [0.0]
    md = (out / "report.md").read_text()
    assert "150 tasks of the current grid's 150" in md
    assert "150 records outside the current grid (temperature 1.0: 150), not reported; --all to include" in md
    everything = build_report(out, all_records=True)
    assert everything.tasks == 300 and sorted(set(everything.by_temperature["temperature"])) == [0.0, 1.0]
    doc = orjson.loads(report_to_json(report))
    assert (doc["tasks"], doc["grid_tasks"], doc["outside_grid"], doc["outside_grid_by"]) == (
        150, 150, 150, {"temperature 1.0": 150})
    assert len(read_log(out)) == 300  # kept in the log
    grid = orjson.loads((out / "grid.json").read_bytes())
    assert grid["temperatures"] == [0.0] and len(grid["questions"]) == 150


def test_outside_records_are_named_by_what_left_them_out(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_experiment(spec_file(tmp_path, m2='base_url = "sim"'), options=RunOptions(out=out, quiet=True))
    # m2 dropped, m1's simulation changed: both named, nothing of theirs reported.
    changed = spec_file(tmp_path, temps="[0.0, 1.0]", sim='[sim.accuracy.m1]\nhard = 0.1', name="b.toml")
    old_target = read_log(out)[0]["target"]
    run_experiment(changed, options=RunOptions(out=out, quiet=True))
    report = build_report(out)
    assert report.tasks == 300 and report.overall["model"].to_list() == ["m1"]
    assert dict(report.scope.reasons) == {"model m2": 300, f"model m1 @ {old_target}": 300}


def test_a_run_dir_without_grid_json_reports_every_record_and_says_so(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_experiment(spec_file(tmp_path), options=RunOptions(out=out, quiet=True, report=False))
    (out / "grid.json").unlink()
    report = build_report(out)
    assert report.tasks == 300 and report.scope.kind == "log"
    assert "no grid.json" in render_md(report)


def test_schema_1_records_still_report_and_are_outside_a_new_grid(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_experiment(spec_file(tmp_path), options=RunOptions(out=out, quiet=True, report=False))
    old = []
    for r in read_log(out):  # as an older engine wrote them: no target, no simulated, other keys
        r = {k: v for k, v in r.items() if k not in ("target", "simulated")}
        old.append(orjson.dumps({**r, "v": 1, "key": r["key"][::-1]}))
    (out / "results.jsonl").write_bytes(b"\n".join(old) + b"\n")
    (out / "grid.json").rename(out / "grid.json.aside")
    whole = build_report(out)
    assert whole.tasks == 300 and whole.targets.rows() == [("m1", "unknown", None)]
    (out / "grid.json.aside").rename(out / "grid.json")
    # A resume re-asks them (their keys cannot match) and the report counts only the new answers.
    resumed = run_experiment(spec_file(tmp_path), options=RunOptions(out=out, quiet=True))
    assert resumed.finished == 300 and resumed.already_done == 0
    report = build_report(out)
    assert report.tasks == 300 and report.scope.outside == 300
    assert report.scope.reasons == (("model m1 @ unknown target (written before targets were recorded)", 300),)


# -------------------------------------------------------------------------------- labels


def test_engine_run_memorisation_says_simulation_in_the_first_lines(tmp_path: Path) -> None:
    # Must-show 3, as a user runs it.
    out = tmp_path / "mem"
    done = subprocess.run(
        [sys.executable, "-m", "engine", "run", str(ROOT / "data" / "memorisation.toml"), "--out", str(out), "--quiet"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    per_model = [line for line in done.stdout.splitlines() if ": error rate " in line]
    assert len(per_model) == 4 and all("[simulation]: error rate" in line for line in per_model), done.stdout
    first = (out / "report.md").read_text().splitlines()[0]
    assert first.startswith("> **Simulation** — every answer below came from engine's built-in simulated target")
    meta_lines = (out / "run.json").read_text().splitlines()
    assert '"simulation": "yes: every answer in this run comes from engine\'s built-in simulated' in meta_lines[1]
    meta = orjson.loads((out / "run.json").read_bytes())
    assert [m["simulated"] for m in meta["models"]] == [True] * 4
    assert all(m["target"].startswith("sim:") for m in meta["models"])
    records = read_log(out)
    assert len(records) == 3600 and all(r["simulated"] is True and r["v"] == 2 for r in records)
    report = build_report(out)
    doc = orjson.loads(report_to_json(report))
    assert doc["simulation"].startswith("Simulation — ")
    assert all(row["simulated"] is True and row["target"].startswith("sim:") for row in doc["overall"])
    header = report_to_csv(report).splitlines()[0].split(",")
    assert header[:4] == ["table", "model", "target", "simulated"]
    from engine.report.charts import chart_error_rate, chart_split

    assert chart_error_rate(report).axes[0].get_title().startswith("[simulation] ")
    assert chart_split(report, "difficulty").axes[0].get_title().startswith("[simulation] ")


def test_a_mixed_report_says_which_model_is_simulated(tmp_path: Path) -> None:
    out = tmp_path / "run"
    spec = spec_file(tmp_path, temps="[0.0]", m2='base_url = "http://real.test/v1"')
    options = RunOptions(out=out, quiet=True)
    prepared = prepare(spec, options)
    server = RealServer()
    real = HttpxTransport(httpx.AsyncClient(transport=httpx.MockTransport(server)))
    from engine.endpoint.aiohttp_transport import AiohttpTransport

    # The sim's endpoint is created first (models in spec order): a real transport for it, the mock for m2.
    made: Iterator[Callable[[int], Transport]] = iter([lambda n: AiohttpTransport(concurrency=n), lambda _n: real])
    anyio.run(lambda: run_prepared(prepared, options, transport_factory=lambda n: next(made)(n)), backend="asyncio")
    assert server.chat == 150
    write_report(out)
    report = build_report(out)
    targets = {m: (t, s) for m, t, s in report.targets.rows()}
    assert targets["m2"] == ("http://real.test/v1", False) and targets["m1"][1] is True
    first = (out / "report.md").read_text().splitlines()[0]
    assert first.startswith("> **Partly simulated** — the answers of m1 came from engine's built-in simulated")
    assert "m2: real targets" in first
    meta = orjson.loads((out / "run.json").read_bytes())
    assert meta["simulation"].startswith("partly: m1 answered by engine's built-in simulated target")
    rows = {r["model"]: r for r in orjson.loads(report_to_json(report))["overall"]}
    assert rows["m1"]["simulated"] is True and rows["m2"]["simulated"] is False
    from engine.report.charts import chart_error_rate

    ax = chart_error_rate(report).axes[0]
    assert ax.get_title().startswith("[partly simulated: m1] ")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["m1\n[simulation]", "m2"]


# ------------------------------------------------------------------ report bugs (item 7)


def test_report_of_a_spec_file_says_to_pass_the_run_directory(tmp_path: Path) -> None:
    spec = spec_file(tmp_path)
    done = subprocess.run([sys.executable, "-m", "engine", "report", str(spec)], capture_output=True, text=True,
                          check=False, timeout=120)  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"engine: error: {spec} is a spec file; pass its run directory (runs/t, or the --out given to engine run)"
    ]


@pytest.fixture
def small_run(tmp_path: Path) -> Path:
    out = tmp_path / "run"
    run_experiment(spec_file(tmp_path, temps="[0.0]"), options=RunOptions(out=out, quiet=True))
    return out


def test_by_and_all_print_but_never_rewrite_report_md(small_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The run saves report.md without the PNG charts (they are `engine report`'s): draw them first.
    assert main_report(small_run, console=Console(file=io.StringIO())) == 0
    before = (small_run / "report.md").read_bytes()
    charts = {p: p.read_bytes() for p in small_run.glob("*.png")}
    assert len(charts) == 3  # error rate, by difficulty, by temperature
    options: tuple[dict[str, Any], ...] = ({"by": "model,repeat"}, {"all_records": True}, {"by": "difficulty", "fmt": "md"})
    for kwargs in options:
        out = io.StringIO()
        assert main_report(small_run, console=Console(file=out, width=200), **kwargs) == 0
        assert "Error rate per model" in out.getvalue()
        assert "report.md left as it is" in capsys.readouterr().err
    assert (small_run / "report.md").read_bytes() == before
    assert {p: p.read_bytes() for p in small_run.glob("*.png")} == charts
    (small_run / "report.md").unlink()
    assert main_report(small_run, console=Console(file=io.StringIO())) == 0  # the default report writes it
    assert (small_run / "report.md").read_bytes() == before


def test_a_read_only_run_directory_is_still_reported(
    small_run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from matplotlib.figure import Figure

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    # As on a read-only mount: every write fails (chmod would not stop a test running as root).
    monkeypatch.setattr(Figure, "savefig", refuse)
    monkeypatch.setattr(Path, "write_text", refuse)
    for fmt in ("table", "md"):
        out = io.StringIO()
        assert main_report(small_run, fmt=fmt, console=Console(file=out, width=200)) == 0
        assert "Error rate per model" in out.getvalue()
        err = capsys.readouterr().err
        assert err.startswith("engine: note: cannot write chart") and "Read-only file system" in err
        assert "the report is printed, not saved" in err and "Traceback" not in err


def test_a_record_with_an_unknown_status_is_counted_and_named(small_run: Path) -> None:
    records = read_log(small_run)
    records[0]["status"] = "pending"
    records[1]["status"] = "pending"
    records[2]["outcome"] = None  # ok, but no outcome
    (small_run / "results.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    report = build_report(small_run)
    assert report.tasks == 150 and report.answered == 147 and report.failed == 0
    assert report.unknown == (("status pending", 2), ("status ok without an outcome (null)", 1))
    assert ("3 records are neither answered nor failed (status pending: 2, status ok without an outcome "
            "(null): 1): counted here, in no rate.") in render_md(report)  # fmt: skip
    assert orjson.loads(report_to_json(report))["unknown_status"] == {
        "status pending": 2, "status ok without an outcome (null)": 1}


def test_a_report_of_nothing_in_the_grid_is_not_a_crash(small_run: Path) -> None:
    grid = orjson.loads((small_run / "grid.json").read_bytes())
    grid["temperatures"] = [0.5]
    (small_run / "grid.json").write_bytes(orjson.dumps(grid))
    report = build_report(small_run)
    assert report.tasks == 0 and report.scope.outside == 150
    assert report.scope.reasons == (("temperature 0.0", 150),)
    render_md(report)


def test_a_damaged_grid_json_is_one_line(small_run: Path) -> None:
    (small_run / "grid.json").write_bytes(b"{not json")
    with pytest.raises(LogError, match=r"grid\.json: not a grid written by engine"):
        build_report(small_run)


def test_a_record_has_exactly_the_fields_of_the_one_definition(small_run: Path) -> None:
    from engine.results.record import OPTIONAL_SCHEMA, RECORD_FIELDS, Record

    assert [k for k in Record.__annotations__ if k in Record.__required_keys__] == list(RECORD_FIELDS)
    assert Record.__optional_keys__ == frozenset(OPTIONAL_SCHEMA)  # the batch route's, absent online
    assert all(set(r) == set(RECORD_FIELDS) for r in read_log(small_run))
