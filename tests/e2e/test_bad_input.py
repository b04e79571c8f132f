"""Bad input, table-driven: each row is one mistake a user can make, run through the real command.

Every row runs ``python -m engine run spec.toml --out runs/tiny --quiet`` in a subprocess
against a run directory that already holds a good log, and must give exit code 2, exactly
one line on stderr naming the problem, no traceback, no secret, and not one byte changed in
the run directory. Each row changes one thing in a valid experiment (the one in conftest),
and ``test_the_unchanged_experiment_runs`` shows that experiment itself is fine.

The table of messages for the README is made from the same rows: ``run_row`` is importable.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import BASE_SPEC, WIDE_CSV, SpecDir
from tests.support.net import refusing_port

SECRET = "sk-test-SECRET-1234"  # a recognisable fake key: it must never be printed
KEY_VAR = "ENGINE_TEST_KEY"  # set to SECRET in every row
MISSING_VAR = "ENGINE_TEST_MISSING_KEY"  # never set
EMPTY_VAR = "ENGINE_TEST_EMPTY_KEY"  # set, to ""
RUN_DIR = Path("runs") / "tiny"  # relative to the row's directory, so messages read as a user sees them
CLOSED = "{closed_url}"  # placeholders for endpoints started by the test
HTML = "{html_url}"
HTML_ROOT = "{html_root}"  # the same server, without /v1


@dataclass(frozen=True, kw_only=True, slots=True)
class Row:
    """One bad input: what is wrong, the files that show it, and what the message must say."""

    problem: str
    spec: str = BASE_SPEC
    questions: str | bytes = WIDE_CSV
    log: str = "good"  # the run directory's state: "good", "garbage" (a bad line 3) or "no-meta"
    args: tuple[str, ...] = ()
    expect: tuple[str, ...]


def edit(old: str, new: str, text: str = BASE_SPEC) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def top(line: str) -> str:
    """The base spec with one more top-level line (before the first table)."""
    return edit("max_tokens = 16", f"max_tokens = 16\n{line}")


def http_models(url: str, second_key: str = KEY_VAR) -> str:
    """The base spec with both models at ``url``, authenticated by environment variables."""
    text = BASE_SPEC.replace('base_url = "sim"', f'base_url = "{url}"')
    text = edit(f'name = "m1"\nbase_url = "{url}"', f'name = "m1"\nbase_url = "{url}"\napi_key_env = "{KEY_VAR}"', text)
    return edit(f'name = "m2"\nbase_url = "{url}"', f'name = "m2"\nbase_url = "{url}"\napi_key_env = "{second_key}"', text)


HEADER = "Object,Answer,Question 1,Question 2,Question 3\n"

ROWS = [
    Row(problem="malformed TOML (unclosed string)", spec=edit('name = "tiny"', 'name = "tiny'),
        expect=("spec.toml: malformed TOML", "line 1")),
    Row(problem="unknown key (misspelt `temperature`)", spec=top("temprature = 0.5"),
        expect=("spec.toml: temprature: unknown key 'temprature'",)),
    Row(problem="unknown key in a `[[models]]` table", spec=edit('name = "m2"', 'name = "m2"\nbase_ur = "sim"'),
        expect=("spec.toml: models[1]: unknown key 'base_ur'",)),
    Row(problem="wrong type: `repeats = \"two\"`", spec=edit("repeats = 1", 'repeats = "two"'),
        expect=("spec.toml: repeats: must be an integer",)),
    Row(problem="wrong type: `temperatures = 0.5`", spec=edit("temperatures = [0.0, 1.0]", "temperatures = 0.5"),
        expect=("spec.toml: temperatures: must be a non-empty list",)),
    Row(problem="empty model list", spec=BASE_SPEC.split("[[models]]")[0] + "models = []\n",
        expect=("spec.toml: models: needs at least one",)),
    Row(problem="duplicate model names", spec=edit('name = "m2"', 'name = "m1"'),
        expect=("spec.toml: models: duplicate model name 'm1'",)),
    Row(problem="missing questions file", spec=edit('questions = "questions.csv"', 'questions = "facts.csv"'),
        expect=("questions file not found: facts.csv",)),
    Row(problem="missing column (`Answer`)", questions="Object,Question 1\nAnchor,What is the number for Anchor?\n",
        expect=("questions.csv: missing column 'Answer'",)),
    Row(problem="duplicate question id", questions=WIDE_CSV + "Anchor,99999,a,b,c\n",
        expect=("questions.csv: duplicate question id 'Anchor/easy'",)),
    Row(problem="empty answer", questions=HEADER + "Anchor,11246,a,b,c\nKite,,d,e,f\n",
        expect=("questions.csv:3: empty Answer for 'Kite'",)),
    Row(problem="answer the scorer cannot score (`number` scorer, answer `Paris`)",
        questions=HEADER + "France,Paris,a,b,c\n", expect=("question 'France/easy': answer 'Paris' is not a number",)),
    Row(problem="questions file not UTF-8", questions=HEADER.encode() + b"Caf\xe9,11246,a,b,c\n",
        expect=("questions.csv: not UTF-8",)),
    Row(problem="temperature out of range (2.5)", spec=edit("temperatures = [0.0, 1.0]", "temperatures = [0.0, 2.5]"),
        expect=("spec.toml: temperatures[1]: must be >= 0.0 and <= 2.0, got 2.5",)),
    Row(problem="repeats <= 0", spec=edit("repeats = 1", "repeats = 0"),
        expect=("spec.toml: repeats: must be >= 1, got 0",)),
    Row(problem="unknown scorer", spec=edit('scorer = "number"', 'scorer = "fuzzy"'),
        expect=("spec.toml: scorer: unknown scorer 'fuzzy'",)),
    Row(problem="prompt without `{question}`", spec=top('prompt = "Answer with a number."'),
        expect=("spec.toml: prompt: must contain the placeholder {question}",)),
    Row(problem="prompt placeholder no question has (`{topic}`)", spec=top('prompt = "{topic}: {question}"'),
        expect=("spec.toml: prompt: placeholder 'topic'",)),
    Row(problem="both `base_url` and `gguf` on a model", spec=edit('name = "m2"', 'name = "m2"\ngguf = "m2.gguf"'),
        expect=("spec.toml: models[1] (m2): needs exactly one of base_url or gguf",)),
    Row(problem="unknown fault in `[sim.faults]`", spec=BASE_SPEC + "\n[sim.faults]\nerror_501 = 0.1\n",
        expect=("spec.toml: sim.faults: unknown key 'error_501'",)),
    Row(problem="missing API key variable", spec=http_models("http://127.0.0.1:9/v1", second_key=MISSING_VAR),
        expect=(f"model 'm2': environment variable {MISSING_VAR} is not set",)),
    Row(problem="empty API key variable", spec=http_models("http://127.0.0.1:9/v1", second_key=EMPTY_VAR),
        expect=(f"model 'm2': environment variable {EMPTY_VAR} is set but empty",)),
    Row(problem="unreachable endpoint (closed port)", spec=http_models(CLOSED),
        expect=("model 'm1', 'm2': endpoint http://127.0.0.1:", "is unreachable")),
    Row(problem="endpoint not OpenAI-compatible (404 HTML)", spec=http_models(HTML),
        expect=("does not look OpenAI-compatible (GET /models answered 404, not JSON)",)),
    Row(problem="`base_url` without `/v1` (404 HTML)", spec=http_models(HTML_ROOT),
        expect=("(GET /models answered 404, not JSON); did you mean http://127.0.0.1:", "/v1?")),
    Row(problem="model names differing only by case (`m1`, `M1`)", spec=edit('name = "m2"', 'name = "M1"'),
        expect=("spec.toml: models: model names 'm1' and 'M1' differ only by case",)),
    Row(problem="model name with a trailing space (`\"m1 \"`)", spec=edit('name = "m2"', 'name = "m1 "'),
        expect=("spec.toml: models[1].name: has leading or trailing whitespace: 'm1 '",)),
    Row(problem="log from another spec in the run dir", spec=edit('name = "tiny"', 'name = "other-experiment"'),
        expect=(f"{RUN_DIR} holds the log of experiment 'tiny', not 'other-experiment'",)),
    Row(problem="log with a garbage line in the middle", log="garbage",
        expect=(f"{RUN_DIR / 'results.jsonl'}:3: unreadable record",)),
    Row(problem="log not written by engine (no run.json)", log="no-meta",
        expect=(f"{RUN_DIR / 'results.jsonl'} has no run.json",)),
    Row(problem="bad `--fsync` value", args=("--fsync", "sometimes"),
        expect=("--fsync must be never, always or a record count, got 'sometimes'",)),
]  # fmt: skip


@contextlib.contextmanager
def closed_port() -> Iterator[str]:
    """A loopback URL nothing listens on: the port is bound (so nobody else takes it) but not listening."""
    with refusing_port() as port:
        yield f"http://127.0.0.1:{port}/v1"


class _NotFound(http.server.BaseHTTPRequestHandler):
    """Answers every request with an HTML 404 page, as a web server that is not an API does."""

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = b"<!DOCTYPE html><html><body><h1>404 Not Found</h1></body></html>"
        self.send_response(404)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_HEAD = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass  # the test's output is the engine's, not this server's


@contextlib.contextmanager
def html_server() -> Iterator[str]:
    """A loopback HTTP server that answers 404 HTML to everything; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def engine(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``python -m engine ARGS`` with the fake key set and the missing one surely unset."""
    env = {k: v for k, v in os.environ.items() if k != MISSING_VAR}
    env[KEY_VAR] = SECRET
    env[EMPTY_VAR] = ""
    return subprocess.run(
        [sys.executable, "-m", "engine", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def make_good_run(workdir: Path) -> Path:
    """Run the unchanged experiment once, for real, and return its run directory (a good log to protect)."""
    SpecDir(workdir).write()
    done = engine(["run", "spec.toml", "--out", str(RUN_DIR), "--quiet", "--no-report"], workdir)
    assert done.returncode == 0, done.stderr
    return workdir / RUN_DIR


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` by relative path, with its SHA-256."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()
    }


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one row's run did."""

    returncode: int
    stdout: str
    stderr: str
    before: dict[str, str]
    after: dict[str, str]


def run_row(row: Row, workdir: Path, good_run: Path, urls: dict[str, str]) -> Outcome:
    """Lay out the row's experiment and run directory in ``workdir``, then run the engine on it."""
    spec = row.spec.replace(CLOSED, urls["closed_url"]).replace(HTML, urls["html_url"])
    spec = spec.replace(HTML_ROOT, urls["html_url"].removesuffix("/v1"))
    SpecDir(workdir).write(spec, questions=row.questions)
    run_dir = workdir / RUN_DIR
    shutil.copytree(good_run, run_dir)
    results = run_dir / "results.jsonl"
    if row.log == "garbage":
        lines = results.read_bytes().splitlines(keepends=True)
        results.write_bytes(b"".join(lines[:2]) + b"this is not a record\n" + b"".join(lines[2:]))
    elif row.log == "no-meta":
        (run_dir / "run.json").unlink()
    before = snapshot(workdir / "runs")
    done = engine(["run", "spec.toml", "--out", str(RUN_DIR), "--quiet", *row.args], workdir)
    return Outcome(done.returncode, done.stdout, done.stderr, before, snapshot(workdir / "runs"))


@pytest.fixture(scope="module")
def good_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_good_run(tmp_path_factory.mktemp("good"))


@pytest.fixture(scope="module")
def urls() -> Iterator[dict[str, str]]:
    with closed_port() as closed_url, html_server() as html_url:
        yield {"closed_url": closed_url, "html_url": html_url}


def test_the_table_covers_the_issue() -> None:
    assert len(ROWS) >= 15
    assert len({row.problem for row in ROWS}) == len(ROWS)


@pytest.mark.parametrize("row", ROWS, ids=[row.problem for row in ROWS])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(
    row: Row, tmp_path: Path, good_run: Path, urls: dict[str, str]
) -> None:
    outcome = run_row(row, tmp_path, good_run, urls)
    output = outcome.stdout + outcome.stderr
    assert "Traceback" not in output, output
    assert outcome.returncode == 2, output
    assert outcome.stdout == ""
    lines = outcome.stderr.splitlines()
    assert len(lines) == 1 and outcome.stderr.endswith("\n"), outcome.stderr
    assert lines[0].startswith("engine: error: "), lines[0]
    for phrase in row.expect:
        assert phrase in lines[0], lines[0]
    assert SECRET not in output
    assert outcome.after == outcome.before  # the existing log, run.json and spec copy: byte for byte


def test_the_unchanged_experiment_runs(tmp_path: Path, good_run: Path) -> None:
    # The rows' baseline is fine on its own: resuming its complete log asks nothing and exits 0.
    SpecDir(tmp_path).write()
    shutil.copytree(good_run, tmp_path / RUN_DIR)
    log = tmp_path / RUN_DIR / "results.jsonl"
    assert len(log.read_bytes().splitlines()) == 24  # 2 models × 6 questions × 2 temperatures
    before = log.read_bytes()
    done = engine(["run", "spec.toml", "--out", str(RUN_DIR), "--quiet", "--no-report"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert log.read_bytes() == before  # every task was done: nothing asked again
