"""Goodput and 429 share against the built-in target enforcing a quota over sliding windows.

The sim runs in its own process and enforces ``rpm`` over every sliding window of
``quota_window_s`` seconds (and of a minute); the engine runs in this process. Goodput is answered
requests per second over the run (the forced pause left out) as a share of the quota. "After the
pause" is the same in the seconds right after a forced Retry-After pause (``POST /sim/hold``): the
queue must go out paced again, not at once.

    python benchmarks/bench_quota.py                  # every scenario (~5 min)
    python benchmarks/bench_quota.py --only 1200      # scenarios of one quota
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx

from engine.bench.throughput import machine
from engine.run.runner import RunOptions, prepare, run_prepared
from engine.sim.config import SimConfig
from engine.sim.process import SimProcess

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True, kw_only=True, slots=True)
class Scenario:
    """One row: a quota, the window it is enforced over, whether the spec names it, and a forced pause."""

    rpm: float
    window_s: float
    known: bool
    seconds: float  # about how long the run lasts
    hold_at_s: float | None = None  # force a Retry-After pause this far into the run ...
    hold_s: float = 2.0  # ... this long
    headers: bool = True  # the sim names the quota in x-ratelimit-* headers

    @property
    def label(self) -> str:
        kind = "known" if self.known else ("unknown" if self.headers else "unknown, no limit headers")
        return f"rpm {self.rpm:,.0f} over {self.window_s:g} s windows, {kind}"


@dataclass(frozen=True, kw_only=True, slots=True)
class Result:
    answered: int
    requests: int
    quota_429: int
    failed: int
    elapsed_s: float
    goodput: float
    after_pause: float | None  # goodput in the seconds after the forced pause
    after_pause_429: int | None  # quota 429s in those seconds



def _questions(path: Path, n: int) -> None:
    path.write_text("Object,Answer,Question 1\n" + "".join(f"O{i},{10000 + i},Number for O{i}?\n" for i in range(n)))


def _watch(sim: SimProcess, stop: threading.Event, samples: list[tuple[float, int, int]], scenario: Scenario,
           start: float) -> None:
    """Poll the sim's counters every 0.1 s; force the pause when its time comes."""
    held = scenario.hold_at_s is None
    with httpx.Client(timeout=5) as client:
        base = sim.base_url.removesuffix("/v1")
        while not stop.is_set():
            now = time.monotonic()
            if not held and now - start >= (scenario.hold_at_s or 0):
                client.post(f"{base}/sim/hold?s={scenario.hold_s}")
                held = True
            stats = client.get(f"{base}/sim/stats").json()
            samples.append((now - start, stats["completions"], stats["quota_limited"]))
            stop.wait(0.1)


def run_scenario(scenario: Scenario) -> Result:
    quota_per_s = scenario.rpm / 60
    tasks = max(10, round(quota_per_s * scenario.seconds))
    config = SimConfig(rpm=scenario.rpm, quota_window_s=scenario.window_s, latency_ms=20, jitter_ms=5,
                       rate_headers=scenario.headers)
    samples: list[tuple[float, int, int]] = []
    with SimProcess(config) as sim, tempfile.TemporaryDirectory() as tmp:
        questions, spec = Path(tmp) / "q.csv", Path(tmp) / "spec.toml"
        _questions(questions, tasks)
        quota = f"rpm = {scenario.rpm}\n" if scenario.known else ""
        spec.write_text(
            f'name = "quota"\nquestions = "{questions}"\ntemperatures = [0.0]\nmax_attempts = 20\n'
            f'[[models]]\nname = "m"\nbase_url = "{sim.base_url}"\nconcurrency = 64\n{quota}'
        )
        options = RunOptions(out=Path(tmp) / "run", quiet=True, report=False)
        prepared = prepare(spec, options)
        stop = threading.Event()
        start = time.monotonic()
        watcher = threading.Thread(target=_watch, args=(sim, stop, samples, scenario, start), daemon=True)
        watcher.start()
        summary = anyio.run(run_prepared, prepared, options, backend="asyncio")
        elapsed = time.monotonic() - start
        stop.set()
        watcher.join()
        stats = sim.stats()
    held = scenario.hold_s if scenario.hold_at_s is not None else 0.0
    after, after_429 = None, None
    if scenario.hold_at_s is not None:
        # The 3 s after the pause ends (the engine's pause ends when the sim's hold does, give or take a poll).
        begin = scenario.hold_at_s + scenario.hold_s
        window = [s for s in samples if begin <= s[0] <= begin + 3.0]
        if len(window) >= 2:
            (t0, c0, q0), (t1, c1, q1) = window[0], window[-1]
            after, after_429 = (c1 - c0) / (t1 - t0) / quota_per_s, q1 - q0
    return Result(
        answered=summary.ok,
        requests=stats["chat_requests"],
        quota_429=stats["quota_limited"],
        failed=summary.failed,
        elapsed_s=elapsed,
        goodput=summary.ok / (elapsed - held) / quota_per_s,
        after_pause=after,
        after_pause_429=after_429,
    )


SCENARIOS = (
    Scenario(rpm=60, window_s=10, known=True, seconds=75),
    Scenario(rpm=1200, window_s=1, known=True, seconds=30, hold_at_s=12),
    Scenario(rpm=6000, window_s=1, known=True, seconds=30, hold_at_s=12),
    Scenario(rpm=60, window_s=10, known=False, seconds=75),
    Scenario(rpm=1200, window_s=1, known=False, seconds=30, hold_at_s=12),
    Scenario(rpm=6000, window_s=1, known=False, seconds=30, hold_at_s=12),
    Scenario(rpm=1200, window_s=1, known=False, seconds=30, headers=False),
    Scenario(rpm=6000, window_s=1, known=False, seconds=30, headers=False),
)


def _goal(scenario: Scenario, r: Result) -> str:
    share = r.quota_429 / max(1, r.requests)
    if not scenario.headers:
        return "(no goal)"
    if scenario.known and scenario.rpm == 60:
        ok = r.quota_429 == 0 and r.goodput >= 0.90
    elif scenario.known:
        ok = r.goodput >= 0.95 and share < 0.01 and (r.after_pause_429 or 0) == 0
    else:
        ok = r.goodput >= 0.85 and share < 0.03
    return "✅" if ok else "❌"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", type=float, help="run only the scenarios of this rpm")
    args = parser.parse_args(argv)
    print(f"machine: nproc {os.cpu_count()}, {machine()['cpu']}, Python {platform.python_version()}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average {os.getloadavg()}")
    print("sim latency 20 ± 5 ms, engine concurrency 64; goodput = answered/s ÷ quota (forced pause left out)\n")
    print("| scenario | answered | requests | 429 (quota) | 429 share | goodput | after the pause (3 s) | failed | elapsed | goal |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for scenario in SCENARIOS:
        if args.only is not None and scenario.rpm != args.only:
            continue
        r = run_scenario(scenario)
        after = "–" if r.after_pause is None else f"{r.after_pause:.0%}, {r.after_pause_429} × 429"
        print(f"| {scenario.label} | {r.answered:,} | {r.requests:,} | {r.quota_429} | {r.quota_429 / max(1, r.requests):.2%} "
              f"| {r.goodput:.1%} | {after} | {r.failed} | {r.elapsed_s:.1f} s | {_goal(scenario, r)} |")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
