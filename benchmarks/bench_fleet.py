"""Scale-out figures: --workers 2 vs 1, a quota held by the fleet, shards as separate commands.

Every figure runs the real command line (``python -m engine run ...``) against the built-in target,
each in a fresh run directory, and checks the merged logs hold every key exactly once.

    python benchmarks/bench_fleet.py                       # everything (~3 min on a quiet 2-core machine)
    python benchmarks/bench_fleet.py --only throughput     # or: quota, shards, ray-kill
    python benchmarks/bench_fleet.py --tasks 20000         # a smaller throughput grid, for a smoke run

Throughput: latency 0, concurrency 64 per worker, ``--tasks`` tasks (100,000 by default), the
same grid run with ``--workers 1`` and ``--workers 2`` (median of ``--repeat`` alternating runs),
each pair beside the machine's own two-process CPU scaling at that moment (``cpu_scaling``: two
spinning Python processes against one; 2.00 on two free cores, less on a shared host).
The built-in target is one process (one core) serving every worker, so on a 2-core machine the
engine's workers and the target share two cores: the ratio says how much of the client's own
CPU limit a second worker lifts while the target keeps up, not what two machines would do.

Quota: 6,000 requests/min enforced by the target over every 1 s window (and every minute); the
spec names the quota; ``--workers 2`` (and ``--ray auto`` with ``--ray``): goodput as a share
of the quota, and the share of requests answered 429.

Ray kill (``--only ray-kill``, needs the ray extra; not in the default set): a local Ray instance,
2 actors, 36,000 tasks (latency 20 ms, concurrency 32), run once whole and once with actor 0's
process SIGKILLed when a third of its shard is logged; Ray restarts it and it resumes from its log.
Every key once (logs and ``engine report``), and the requests the target answered beyond 36,000
(re-sent) against what the killed actor could have had in flight (its concurrency).
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
from pathlib import Path
from typing import Any

import orjson

from engine.bench.throughput import cpu_scaling, machine, request_span
from engine.results.paths import run_logs

ROOT = Path(__file__).resolve().parents[1]


def _spec(root: Path, *, tasks: int, concurrency: int, sim: str, extra: str = "") -> Path:
    """One model, ``tasks`` tasks (100 questions x repeats), temperature 0 (answers alike in any order)."""
    questions = 100
    lines = ["id,question,answer", *(f"q{i},What is the number for Object {i}?,{10000 + i}" for i in range(questions))]
    (root / "questions.csv").write_text("\n".join(lines) + "\n")
    spec = root / "spec.toml"
    spec.write_text(
        f'name = "fleet"\nquestions = "questions.csv"\ntemperatures = [0.0]\nrepeats = {tasks // questions}\n'
        f'max_tokens = 16\n\n[[models]]\nname = "m"\nbase_url = "sim"\nconcurrency = {concurrency}\n{extra}\n'
        f"[sim]\n{sim}\n"
    )
    return spec


def _children_cpu() -> float:
    """CPU seconds (user + system) of every process this one has waited for, and of theirs."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def _run(spec: Path, out: Path, *flags: str) -> tuple[float, str, float]:
    """(wall seconds, stdout, CPU seconds of the whole command: its workers and the target included)."""
    cpu, started = _children_cpu(), time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "engine", "run", str(spec), "--out", str(out), "--quiet",
                           "--no-report", *flags], capture_output=True, text=True, check=False, cwd=ROOT)  # fmt: skip
    wall = time.perf_counter() - started
    if done.returncode not in (0, 1):
        raise SystemExit(f"engine run {' '.join(flags)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return wall, done.stdout, _children_cpu() - cpu


def _keys(run: Path) -> tuple[int, int]:
    """(records, distinct keys) over every log of a run."""
    keys = [orjson.loads(line)["key"] for log in run_logs(run) for line in log.read_bytes().splitlines()]
    return len(keys), len(set(keys))


def _summary_number(stdout: str, label: str) -> int:
    for part in stdout.replace("\n", " · ").split(" · "):
        part = part.strip()
        if part.startswith(label):
            return int(part[len(label):].strip().split()[0].replace(",", ""))
    raise SystemExit(f"no {label!r} in the summary:\n{stdout}")


def throughput(root: Path, tasks: int, repeat: int) -> dict[str, Any]:
    spec = _spec(root, tasks=tasks, concurrency=64, sim="latency_ms = 0")
    rates: dict[int, list[float]] = {1: [], 2: []}
    sending: dict[int, list[float]] = {1: [], 2: []}
    cpu_us: dict[int, list[float]] = {1: [], 2: []}
    busy: dict[int, list[float]] = {1: [], 2: []}
    scaling = []
    for r in range(repeat):
        scaling.append(cpu_scaling(2))  # the machine's own two-process ceiling, next to each pair of runs
        for workers in (1, 2):
            out = root / f"tp-{workers}-{r}"
            wall, _, cpu = _run(spec, out, "--workers", str(workers))
            records, distinct = _keys(out)
            assert records == distinct == tasks, (records, distinct, tasks)
            rates[workers].append(tasks / wall)  # wall includes start-up (target, imports): the user's view
            sending[workers].append(tasks / request_span(out))  # first request sent to last answer logged
            cpu_us[workers].append(cpu / tasks * 1e6)  # every process of the run: parent, workers, target
            busy[workers].append(cpu / wall)  # cores kept busy on average
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    send_one, send_two = statistics.median(sending[1]), statistics.median(sending[2])
    return {"tasks": tasks, "w1_rps": one, "w2_rps": two, "ratio": two / one, "send_w1_rps": send_one,
            "send_w2_rps": send_two, "send_ratio": send_two / send_one, "all": rates,
            "pairs": [b / a for a, b in zip(rates[1], rates[2], strict=True)], "cpu_scaling": scaling,
            "cpu_us": {w: statistics.median(v) for w, v in cpu_us.items()},
            "busy": {w: statistics.median(v) for w, v in busy.items()}}  # fmt: skip


def quota(root: Path, *, ray: bool) -> list[dict[str, Any]]:
    rpm, seconds = 6000, 30
    tasks = rpm // 60 * seconds
    sim = f"latency_ms = 20\nquota_window_s = 1.0\nrpm = {rpm}\n"
    spec = _spec(root, tasks=tasks, concurrency=32, sim=sim, extra=f"rpm = {rpm}")
    rows = []
    modes = [("--workers 2", ["--workers", "2"])] + ([("--ray auto", ["--ray", "auto", "--actors", "2"])] if ray else [])
    for label, flags in modes:
        out = root / f"quota-{label.split()[0].strip('-')}"
        wall, stdout, _ = _run(spec, out, *flags)
        records, distinct = _keys(out)
        limited = _summary_number(stdout, "429s")
        requests = _summary_number(stdout, "requests")
        # Goodput over the sending time: the wall clock less the start-up before the first request.
        span = request_span(out)
        rows.append({"mode": label, "tasks": tasks, "records": records, "distinct": distinct,
                     "goodput_share": distinct / span / (rpm / 60), "share_429": limited / max(1, requests),
                     "wall_s": wall, "span_s": span})  # fmt: skip
    return rows


def shards(root: Path) -> dict[str, Any]:
    spec = _spec(root, tasks=20_000, concurrency=32, sim="latency_ms = 0")
    _run(spec, root / "single")
    env_out = root / "sharded"
    for k in range(4):
        if k == 2:  # killed partway, then rerun
            proc = subprocess.Popen([sys.executable, "-m", "engine", "run", str(spec), "--out", str(env_out), "--quiet",
                                     "--no-report", "--shard", f"{k}/4"], cwd=ROOT)  # fmt: skip
            time.sleep(3)
            proc.kill()
            proc.wait()
        _run(spec, env_out, "--shard", f"{k}/4")
    reports = []
    for run in (root / "single", env_out):
        done = subprocess.run([sys.executable, "-m", "engine", "report", str(run), "--format", "json"],
                              capture_output=True, text=True, check=True, cwd=ROOT)  # fmt: skip
        doc = orjson.loads(done.stdout)
        reports.append({"overall": doc["overall"], "tasks": doc["tasks"]})
    records, distinct = _keys(env_out)
    return {"identical": reports[0] == reports[1], "tasks": reports[0]["tasks"], "records": records,
            "distinct": distinct}  # fmt: skip


def ray_kill(root: Path, *, tasks: int = 36_000, concurrency: int = 32) -> list[dict[str, Any]]:
    """The same grid on 2 Ray actors, whole and with actor 0 killed partway; keys, re-sent, wall time."""
    import ray  # late: the ray extra is optional, and only this figure needs it

    from engine.run.endpoints import local_targets
    from engine.run.options import RunOptions
    from engine.run.ray_fleet import start_actors, start_budget
    from engine.run.runner import prepare

    spec = _spec(root, tasks=tasks, concurrency=concurrency, sim="latency_ms = 20")
    ray.init(include_dashboard=False, log_to_driver=False, num_cpus=2)
    rows = []
    try:
        for kill in (False, True):
            out = root / f"ray-{'kill' if kill else 'whole'}"
            options = RunOptions(out=out, quiet=True, report=False)
            prepared = prepare(spec, options)
            started = time.perf_counter()
            with local_targets(prepared.spec, prepared.questions) as (_urls, sim):
                assert sim is not None
                budget = start_budget(prepared.spec, actors=2)
                _handles, refs = start_actors(spec, options, actors=2, sim_url=sim.base_url, budget=budget)
                logged_at_kill = 0
                if kill:
                    log = out / "results" / "shard-00-of-02.jsonl"
                    while not log.exists() or (logged_at_kill := log.read_bytes().count(b"\n")) < tasks // 6:
                        time.sleep(0.02)
                    pid = orjson.loads((out / "results" / ".shard-00-of-02.lock").read_bytes())["pid"]
                    os.kill(pid, 9)  # SIGKILL: no drain, no goodbye; Ray restarts the actor
                results = ray.get(refs)
                answered = int(sim.stats()["chat_requests"])
            wall = time.perf_counter() - started
            records, distinct = _keys(out)
            done = subprocess.run([sys.executable, "-m", "engine", "report", str(out), "--format", "json"],
                                  capture_output=True, text=True, check=True, cwd=ROOT)  # fmt: skip
            rows.append({"mode": "killed" if kill else "whole", "tasks": tasks, "records": records,
                         "distinct": distinct, "report_tasks": orjson.loads(done.stdout)["tasks"],
                         "answered": answered, "resent": answered - tasks, "in_flight_bound": concurrency,
                         "logged_at_kill": logged_at_kill, "skipped_on_restart": results[0]["skipped"],
                         "wall_s": wall})  # fmt: skip
    finally:
        ray.shutdown()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("throughput", "quota", "shards", "ray-kill"))
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--ray", action="store_true", help="also the quota with --ray auto (needs the ray extra)")
    args = parser.parse_args()
    uptime = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="engine-fleet-") as tmp:
        root = Path(tmp)
        print(f"{os.cpu_count()} cores · {machine()['cpu']} · {time.strftime('%Y-%m-%d')} · load {uptime[0]:.2f}")
        if args.only in (None, "throughput"):
            t = throughput(root, args.tasks, args.repeat)
            print(f"throughput, {t['tasks']:,} tasks: --workers 1 {t['w1_rps']:,.0f}/s, --workers 2 "
                  f"{t['w2_rps']:,.0f}/s, ratio {t['ratio']:.2f} (medians of {args.repeat}; all {t['all']}); "
                  f"while sending: {t['send_w1_rps']:,.0f}/s vs {t['send_w2_rps']:,.0f}/s, ratio {t['send_ratio']:.2f}")
            print(f"  ratio of each pair: {', '.join(f'{x:.2f}' for x in t['pairs'])}; the machine's own two-process "
                  f"CPU scaling beside each pair: {', '.join(f'{x:.2f}' for x in t['cpu_scaling'])} "
                  f"(median {statistics.median(t['cpu_scaling']):.2f}; 2.00 = two free cores)")
            cpu, busy = t["cpu_us"], t["busy"]
            print(f"  CPU per request, every process of the run (parent, workers, target): --workers 1 "
                  f"{cpu[1]:.0f} us, --workers 2 {cpu[2]:.0f} us; cores busy on average {busy[1]:.2f} and "
                  f"{busy[2]:.2f} (medians): two workers reach {busy[2] / busy[1] * cpu[1] / cpu[2]:.2f}x one "
                  "= the cores they keep busy over one's, times one's CPU per request over theirs")
        if args.only in (None, "quota"):
            for row in quota(root, ray=args.ray):
                print(f"quota 6,000/min over 1 s windows, {row['mode']}: goodput {row['goodput_share']:.1%} of the "
                      f"quota, 429s {row['share_429']:.2%} of requests, {row['distinct']:,}/{row['tasks']:,} keys "
                      f"({row['records']:,} records)")
        if args.only in (None, "shards"):
            s = shards(root)
            print(f"--shard k/4 (one killed, rerun) vs one process: report identical {s['identical']}, "
                  f"{s['distinct']:,} keys / {s['records']:,} records of {s['tasks']:,} tasks")
        if args.only == "ray-kill":
            for row in ray_kill(root):
                print(f"--ray auto, 2 actors, {row['mode']}: {row['distinct']:,} keys / {row['records']:,} records "
                      f"of {row['tasks']:,} tasks, report {row['report_tasks']:,} tasks; target answered "
                      f"{row['answered']:,} (re-sent {row['resent']:,}, bound {row['in_flight_bound']}); "
                      f"killed at {row['logged_at_kill']:,} logged, restart skipped {row['skipped_on_restart']:,}; "
                      f"{row['wall_s']:.1f}s")
    print(f"load after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
