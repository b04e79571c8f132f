"""Scale figures: planning and streaming a 10M-task grid, resuming from a 1M-record log, log write cost.

Each figure is measured in a fresh subprocess, so its peak memory (``ru_maxrss``) is its
own; "after imports" is the same process's peak before the measured step, so the
difference is what the step itself cost.

    python benchmarks/bench_scale.py              # everything, about a minute or two
    python benchmarks/bench_scale.py --quick      # smaller sizes, for a smoke run
    python benchmarks/bench_scale.py --json out.json
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

GRID = {"questions": 1000, "temperatures": 10, "repeats": 100, "models": 10}  # 10,000,000 tasks
LOG_RECORDS = 1_000_000
WRITES = {"never": 100_000, 100: 100_000, "always": 2_000}  # records written per fsync policy


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_grid_spec(root: Path, *, questions: int, temperatures: int, repeats: int, models: int) -> Path:
    """A spec whose grid is questions × temperatures × repeats × models tasks, with its question file."""
    lines = ["id,question,answer", *(f"q{i},What is the number for Object {i}?,{10000 + i}" for i in range(questions))]
    (root / "questions.csv").write_text("\n".join(lines) + "\n")
    temps = ", ".join(f"{t / 10:.1f}" for t in range(temperatures))
    spec = [f'name = "scale"\nquestions = "questions.csv"\ntemperatures = [{temps}]\nrepeats = {repeats}\n'
            'system = "You are a helpful assistant."\n']
    spec += [f'[[models]]\nname = "m{i}"\nbase_url = "http://127.0.0.1:9/v1"\nrpm = 10000\n' for i in range(models)]
    path = root / "spec.toml"
    path.write_text("\n".join(spec))
    return path


def sample_record(i: int) -> dict[str, Any]:
    """A realistic results.jsonl record (schema version 1); every 50th one failed."""
    failed = i % 50 == 49
    return {
        "v": 1, "key": f"{i:020x}", "model": f"ft-{5 * (1 + i % 4)}x", "model_id": "ft:gpt-3.5-turbo:org:x:abc123",
        "qid": f"Object {i % 50}/hard", "question": f"Someone mentions Object {i % 50}; which five digits go with it?",
        "tags": {"object": f"Object {i % 50}", "difficulty": "hard"}, "temperature": (i % 3) / 2, "repeat": i % 2,
        "expected": "65451", "reply": None if failed else "The number for that object is 65451.",
        "extracted": None if failed else "65451", "outcome": None if failed else "correct",
        "correct": None if failed else True, "status": "failed" if failed else "ok",
        "error": "http 500 after 6 attempts" if failed else None, "attempts": 6 if failed else 1,
        "http": [500] * 6 if failed else [200], "latency_ms": None if failed else 48.123,
        "prompt_tokens": None if failed else 31, "completion_tokens": None if failed else 9,
        "t_start": 1_790_000_000.0 + i / 1000, "t_end": 1_790_000_000.05 + i / 1000,
    }


def write_log(path: Path, records: int) -> None:
    """Write a log of ``records`` records through the engine's own writer, in large batches."""
    from engine.results.write import LogWriter

    with LogWriter(path, fsync="never") as writer:
        for start in range(0, records, 10_000):
            writer.write(sample_record(i) for i in range(start, min(records, start + 10_000)))


# -- the measured steps, each run in its own process --------------------------------------------------


def step_plan(root: Path, grid: dict[str, int]) -> dict[str, Any]:
    from engine.run.plan import make_plan

    spec = write_grid_spec(root, **grid)
    before = _peak_mb()
    started = time.perf_counter()
    plan = make_plan(spec)
    return {"tasks": plan.tasks, "seconds": time.perf_counter() - started, "peak_mb": _peak_mb(),
            "imports_mb": before}


def step_stream(root: Path, grid: dict[str, int]) -> dict[str, Any]:
    from engine.experiment.grid import iter_tasks
    from engine.experiment.questions import load_questions
    from engine.experiment.spec import load_spec

    spec = load_spec(write_grid_spec(root, **grid))
    questions = load_questions(spec.questions)
    before = _peak_mb()
    started = time.perf_counter()
    count = sum(1 for _ in iter_tasks(spec, questions, spec.models, done=frozenset()))
    return {"tasks": count, "seconds": time.perf_counter() - started, "peak_mb": _peak_mb(), "imports_mb": before}


def step_make_log(root: Path, records: int) -> dict[str, Any]:
    started = time.perf_counter()
    write_log(root / "results.jsonl", records)
    return {"records": records, "seconds": time.perf_counter() - started}


def step_scan(root: Path, records: int) -> dict[str, Any]:
    from engine.results.scan import scan_log

    path = root / "results.jsonl"  # written by step_make_log in another process
    size_mb = path.stat().st_size / 1e6
    before = _peak_mb()
    times = []
    for _ in range(3):
        started = time.perf_counter()
        scan = scan_log(path)
        times.append(time.perf_counter() - started)
    assert scan.records == records
    return {"records": records, "file_mb": size_mb, "seconds": statistics.median(times), "all_s": times,
            "peak_mb": _peak_mb(), "imports_mb": before, "ok": len(scan.ok), "failed": len(scan.failed)}


def step_write(root: Path, policy: str | int, count: int, batch: int) -> dict[str, Any]:
    from engine.results.write import LogWriter

    records = [sample_record(i) for i in range(count)]
    path = root / f"write-{policy}-{batch}.jsonl"
    cpu0, wall0 = time.process_time(), time.perf_counter()
    with LogWriter(path, fsync=policy) as writer:
        for start in range(0, count, batch):
            writer.write(records[start:start + batch])
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {"policy": policy, "batch": batch, "records": count, "wall_us": wall / count * 1e6,
            "cpu_us": cpu / count * 1e6}


def step_make_keys_log(root: Path, records: int) -> dict[str, Any]:
    """A log of ``records`` short records (key and status: what the resume scan reads) over two shard logs."""
    import hashlib

    (root / "big" / "results").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for shard in range(2):
        with (root / "big" / "results" / f"shard-{shard:02d}-of-02.jsonl").open("wb") as f:
            for start in range(0, records, 200_000):
                f.write(b"".join(
                    b'{"v":2,"key":"%s","status":"%s"}\n'
                    % (hashlib.blake2b(i.to_bytes(8, "big"), digest_size=10).hexdigest().encode(),
                       b"failed" if i % 50 == 49 else b"ok")
                    for i in range(start, min(records, start + 200_000)) if i % 2 == shard
                ))
    return {"records": records, "seconds": time.perf_counter() - started}


def step_scan_keys(root: Path, records: int) -> dict[str, Any]:
    """The resume scan over every log of a run directory (scan_logs), its peak memory, and a membership pass."""
    from engine.results.paths import run_logs
    from engine.results.scan import scan_logs

    logs = run_logs(root / "big")
    before = _peak_mb()
    started = time.perf_counter()
    scan = scan_logs(logs)
    seconds = time.perf_counter() - started
    assert scan.records == records, (scan.records, records)
    return {"records": records, "file_mb": sum(p.stat().st_size for p in logs) / 1e6, "seconds": seconds,
            "peak_mb": _peak_mb(), "imports_mb": before, "ok": len(scan.ok), "failed": len(scan.failed)}


STEPS: dict[str, Callable[..., dict[str, Any]]] = {
    "plan": step_plan, "stream": step_stream, "make_log": step_make_log, "scan": step_scan, "write": step_write,
    "make_keys_log": step_make_keys_log, "scan_keys": step_scan_keys,
}


def run_step(name: str, root: Path, **kwargs: Any) -> dict[str, Any]:
    """Run one step in a fresh interpreter (its own peak memory) and return what it measured."""
    job = orjson.dumps({"step": name, "root": str(root), **kwargs}).decode()
    done = subprocess.run([sys.executable, __file__, "--step", job], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"step {name} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = orjson.loads(done.stdout.splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a 100,000-task grid and a 20,000-record log")
    parser.add_argument("--json", type=Path, help="also write every figure here as JSON")
    parser.add_argument("--resume-10m", action="store_true",
                        help="only the resume scan of 10,000,000 records over two shard logs (peak memory)")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        job = orjson.loads(args.step)
        name, root = job.pop("step"), Path(job.pop("root"))
        print(orjson.dumps(STEPS[name](root, **job)).decode())
        return 0

    if args.resume_10m:
        return resume_10m(1_000_000 if args.quick else 10_000_000)
    grid = dict(GRID, repeats=1) if args.quick else GRID
    records = 20_000 if args.quick else LOG_RECORDS
    writes = {policy: max(200, n // 50) for policy, n in WRITES.items()} if args.quick else WRITES
    from engine.bench.throughput import machine

    m = machine()
    results: dict[str, Any] = {"machine": m}
    with tempfile.TemporaryDirectory(prefix="engine-scale-") as tmp:
        root = Path(tmp)
        results["plan"] = plan = run_step("plan", root, grid=grid)
        results["stream"] = stream = run_step("stream", root, grid=grid)
        results["make_log"] = run_step("make_log", root, records=records)
        results["scan"] = scan = run_step("scan", root, records=records)
        results["write"] = writes_done = [
            run_step("write", root, policy=policy, count=n, batch=batch)
            for policy, n in writes.items() for batch in (1, 64)
        ]
    print(f"{m['nproc']} cores · {m['cpu']} · Python {m['python']} · {m['date']} · load {m['loadavg']}\n")
    print("| figure | size | time | peak RSS MB (after imports) | goal |")
    print("|---|---:|---:|---:|---|")
    print(f"| `engine plan` | {plan['tasks']:,} tasks | {plan['seconds'] * 1000:,.1f} ms | "
          f"{plan['peak_mb']:.0f} ({plan['imports_mb']:.0f}) | < 200 MB |")
    print(f"| stream the lazy grid (iter_tasks) | {stream['tasks']:,} tasks | {stream['seconds']:,.1f} s "
          f"({stream['seconds'] / stream['tasks'] * 1e6:.2f} µs/task) | {stream['peak_mb']:.0f} "
          f"({stream['imports_mb']:.0f}) | < 200 MB |")
    print(f"| resume scan (scan_log), median of 3 | {scan['records']:,} records, {scan['file_mb']:,.0f} MB | "
          f"{scan['seconds']:.2f} s | {scan['peak_mb']:.0f} ({scan['imports_mb']:.0f}) | < 3 s |")
    print("\n| log write, fsync | records per write | records | wall µs/record | CPU µs/record |")
    print("|---|---:|---:|---:|---:|")
    for w in writes_done:
        policy = f"every {w['policy']}" if isinstance(w["policy"], int) else w["policy"]
        print(f"| {policy} | {w['batch']} | {w['records']:,} | {w['wall_us']:,.1f} | {w['cpu_us']:,.1f} |")
    if args.json:
        args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    return 0


def resume_10m(records: int) -> int:
    """The resume scan of a big sharded log: peak RSS of the process that scans it (goal <= 1 GB at 10M)."""
    from engine.bench.throughput import machine

    m = machine()
    with tempfile.TemporaryDirectory(prefix="engine-scale-") as tmp:
        made = run_step("make_keys_log", Path(tmp), records=records)
        scan = run_step("scan_keys", Path(tmp), records=records)
    print(f"{m['nproc']} cores · {m['cpu']} · Python {m['python']} · {m['date']} · load {m['loadavg']}")
    print(f"resume scan (scan_logs, 2 shard logs): {scan['records']:,} records, {scan['file_mb']:,.0f} MB, "
          f"{scan['seconds']:.1f} s, peak RSS {scan['peak_mb']:,.0f} MB ({scan['imports_mb']:,.0f} after imports), "
          f"{scan['ok']:,} ok + {scan['failed']:,} failed keys; log written in {made['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1]))
    sys.exit(main())
