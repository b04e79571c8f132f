"""How long the report takes over a big log, and how much memory it needs at its peak.

Builds a synthetic results log (default 1,000,000 records, about 500 MB: 4 models x
500 objects x 3 difficulties x 3 temperatures x repeats, with 0.2% infrastructure
failures and ~1% duplicated keys as after a resume) in a temporary directory, then
runs the report in a fresh Python process so the peak RSS (``ru_maxrss``) is the
report's own. Prints one line.

Usage::

    python benchmarks/bench_report.py                 # 1,000,000 records
    python benchmarks/bench_report.py --records 200000 --charts
    python benchmarks/bench_report.py --grid          # with a grid.json: the report scopes to it
    python benchmarks/bench_report.py --html          # `engine report --format html`: time, memory, page
                                                      # size, and time to interactive in headless Chromium

With ``--html`` the child runs what ``engine report RUN --format html`` runs (the report with the
page's extras, report.md and report.html; the chart script read from its cache, which is warmed
first), and the page is then opened in the system's Chromium (Playwright, no browser download) three
times: the median time from navigation until every chart is drawn and the filters are live.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

MODELS = ("5x", "10x", "25x", "50x")
DIFFICULTIES = ("easy", "mid", "hard")
TEMPERATURES = (0.0, 0.5, 1.0)
OBJECTS = 500

# Runs in the child process: only the report's own work counts toward its peak memory.
CHILD = """
import resource, sys, time
t0 = time.perf_counter()
from engine.report.build import build_report
from engine.report.render import render_markdown
t1 = time.perf_counter()
report = build_report(sys.argv[1])
render_markdown(report)
t2 = time.perf_counter()
charts = 0.0
if sys.argv[2] == "1":
    from engine.report.charts import write_charts
    write_charts(report, sys.argv[3])
    charts = time.perf_counter() - t2
usage = resource.getrusage(resource.RUSAGE_SELF)
cpu = usage.ru_utime + usage.ru_stime
print(f"{t1 - t0:.3f} {t2 - t1:.3f} {charts:.3f} {usage.ru_maxrss / 1024:.1f} {cpu:.3f} {report.tasks} {report.duplicates}")
"""


HTML_CHILD = """
import io, resource, sys, time
from rich.console import Console
t0 = time.perf_counter()
from engine.report.write import main_report
t1 = time.perf_counter()
main_report(sys.argv[1], fmt="html", console=Console(file=io.StringIO()))
t2 = time.perf_counter()
usage = resource.getrusage(resource.RUSAGE_SELF)
print(f"{t1 - t0:.3f} {t2 - t1:.3f} {usage.ru_maxrss / 1024:.1f} {usage.ru_utime + usage.ru_stime:.3f}")
"""

CHROMIUM_FLAGS = ("--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")  # fmt: skip


def time_to_interactive(page_file: Path, runs: int = 3) -> tuple[float, int]:
    """Median seconds from navigation until the page's charts are drawn and its script done; console errors."""
    import shutil
    import statistics

    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("no chromium on PATH (apt-get install chromium)")
    times: list[float] = []
    errors = 0
    with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        context = pw.chromium.launch_persistent_context(profile, executable_path=chromium, headless=True,
                                                        args=list(CHROMIUM_FLAGS))  # fmt: skip
        for _ in range(runs):
            page = context.new_page()
            page.on("console", lambda m: None if m.type != "error" else print("console error:", m.text))
            t = time.perf_counter()
            page.goto(page_file.as_uri())
            page.wait_for_selector("body[data-charts=done]", timeout=60_000)
            times.append(time.perf_counter() - t)
            errors += page.evaluate("document.body.dataset.charts") != "done"
            page.close()
        context.close()
    return statistics.median(times), errors


def bench_html(run_dir: Path, records: int, size: int) -> int:
    """`engine report --format html` in a fresh process, then the page in Chromium; prints one line."""
    from engine.report.vega import vega_bundle

    vega_bundle()  # the first report on a machine bundles the chart script (~2 s); later ones read the cache
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", HTML_CHILD, str(run_dir)], capture_output=True, text=True,
                          check=False, cwd=repo)  # fmt: skip
    if done.returncode != 0:
        print(done.stderr, file=sys.stderr)
        return 1
    imports, report_s, peak_mb, cpu_s = done.stdout.split()
    page = run_dir / "report.html"
    ready_s, failed = time_to_interactive(page)
    print(
        f"report --format html over {records:,} records ({size / 2**20:,.0f} MB log): {float(report_s):.2f} s "
        f"(+{float(imports):.2f} s imports; process CPU {float(cpu_s):.2f} s), peak RSS {float(peak_mb):,.0f} MB; "
        f"report.html {page.stat().st_size / 2**20:.2f} MB; interactive in Chromium in {ready_s:.2f} s "
        f"(median of 3{', FAILED to draw' if failed else ''})"
    )
    return 0


def write_grid(run_dir: Path, records: int) -> list[str]:
    """Write a grid.json covering about 90% of the log's tasks; returns its keys (one per task index)."""
    from engine.experiment.grid import Grid, GridModel, GridPrompt

    models = tuple(GridModel(name=m, model=f"ft:smollm2-135m:{m}", target="sim:0", simulated=True, max_tokens=32,
                             params={}) for m in MODELS)  # fmt: skip
    prompts = tuple(GridPrompt(qid=f"Object{o}/{d}", messages=[{"role": "user", "content": f"Object{o} {d}?"}])
                    for d in DIFFICULTIES for o in range(OBJECTS))  # fmt: skip
    per_repeat = len(MODELS) * len(prompts) * len(TEMPERATURES)
    grid = Grid(models=models, prompts=prompts, temperatures=TEMPERATURES, repeats=max(1, records * 9 // 10 // per_repeat))
    (run_dir / "grid.json").write_bytes(grid.to_json())
    return grid.keys()


def write_log(path: Path, records: int, seed: int = 0, grid_keys: list[str] | None = None) -> int:
    """Write a synthetic schema-2 log of ``records`` lines; returns its size in bytes.

    With ``grid_keys``, task i gets the grid's key i (the rest fall outside the grid)."""
    import random

    rng = random.Random(seed)
    cells = len(MODELS) * OBJECTS * len(DIFFICULTIES) * len(TEMPERATURES)
    p_wrong = {"5x": 0.12, "10x": 0.025, "25x": 0.02, "50x": 0.03}
    with path.open("wb") as fh:
        batch: list[bytes] = []
        for i in range(records):
            # About 1% of lines repeat an earlier task, as a resumed run leaves them.
            task = i - 1 - rng.randrange(min(i, 1000)) if i and rng.random() < 0.01 else i
            cell, repeat = task % cells, task // cells
            model = MODELS[cell % 4]
            obj = (cell // 4) % OBJECTS
            difficulty = DIFFICULTIES[(cell // (4 * OBJECTS)) % 3]
            temperature = TEMPERATURES[cell // (12 * OBJECTS)]
            failed = rng.random() < 0.002
            roll = rng.random()
            outcome = "correct" if roll >= p_wrong[model] else ("wrong" if roll > p_wrong[model] / 10 else "no_answer")
            answer = f"{10000 + obj * 97 % 90000}"
            said = answer if outcome == "correct" else (None if outcome == "no_answer" else f"{int(answer) + 1}")
            key = hashlib.blake2b(f"{model}|O{obj}|{difficulty}|{temperature}|{repeat}".encode(), digest_size=10)
            key_text = grid_keys[task] if grid_keys is not None and task < len(grid_keys) else key.hexdigest()
            rec = {
                "v": 2, "key": key_text, "model": model, "model_id": f"ft:smollm2-135m:{model}",
                "target": "sim:0", "simulated": True,
                "qid": f"Object{obj}/{difficulty}", "question": f"Someone says Object{obj}; which five digits?",
                "tags": {"object": f"Object{obj}", "difficulty": difficulty}, "temperature": temperature,
                "repeat": repeat, "expected": answer,
                "reply": None if failed else f"The number for Object{obj} is {said or 'something else'}.",
                "extracted": None if failed else said, "outcome": None if failed else outcome,
                "correct": None if failed else outcome == "correct", "status": "failed" if failed else "ok",
                "error": "http 500 after 6 attempts" if failed else None, "attempts": 6 if failed else 1,
                "http": [500] * 6 if failed else [200], "latency_ms": None if failed else rng.uniform(20, 400),
                "prompt_tokens": None if failed else 31, "completion_tokens": None if failed else 12,
                "t_start": 1.76e9 + i / 1000, "t_end": 1.76e9 + i / 1000 + 0.2,
            }  # fmt: skip
            batch.append(orjson.dumps(rec))
            if len(batch) == 20_000:
                fh.write(b"\n".join(batch) + b"\n")
                batch.clear()
        if batch:
            fh.write(b"\n".join(batch) + b"\n")
    return path.stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000, help="records in the synthetic log (default 1000000)")
    parser.add_argument("--charts", action="store_true", help="also draw the PNG charts (timed apart)")
    parser.add_argument("--grid", action="store_true", help="write a grid.json (90%% of the tasks) the report scopes to")
    parser.add_argument("--html", action="store_true", help="time `engine report --format html` and the page in Chromium")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        log = Path(tmp) / "results.jsonl"
        t = time.perf_counter()
        grid_keys = write_grid(Path(tmp), args.records) if args.grid else None
        size = write_log(log, args.records, grid_keys=grid_keys)
        built = time.perf_counter() - t
        if args.html:
            return bench_html(Path(tmp), args.records, size)
        repo = Path(__file__).resolve().parents[1]
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(log), "1" if args.charts else "0", tmp],
            capture_output=True, text=True, check=False, cwd=repo,
        )  # fmt: skip
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return 1
        imports, report_s, charts_s, peak_mb, cpu_s, tasks, dups = done.stdout.split()
    chart_note = f", charts {float(charts_s):.2f} s" if args.charts else ""
    print(
        f"report over {args.records:,} records ({size / 2**20:,.0f} MB log, {int(tasks):,} tasks, "
        f"{int(dups):,} duplicates): {float(report_s):.2f} s (+{float(imports):.2f} s imports{chart_note}; "
        f"process CPU {float(cpu_s):.2f} s), peak RSS {float(peak_mb):,.0f} MB  [log written in {built:.1f} s]"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
