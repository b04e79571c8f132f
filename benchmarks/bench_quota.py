"""Quota utilisation and 429 share against the built-in target's enforced quota.

Known quota: the spec gives the endpoint's rpm; the engine paces smoothly at it.
Unknown quota: the spec says nothing; the engine discovers it (AIMD on 429s and headers).
Goodput is tasks answered per second over the run, as a share of the quota.

    python benchmarks/bench_quota.py [--rpm 6000] [--tasks 3000] [--latency-ms 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from engine.runner import RunOptions, prepare, run_prepared
from engine.sim import SimConfig, SimProcess, facts_from_csv

ROOT = Path(__file__).resolve().parents[1]


def run_once(*, rpm: float, tasks: int, latency_ms: float, known: bool, headers_hint: bool) -> dict[str, float]:
    import anyio

    facts = facts_from_csv(ROOT / "data" / "facts.csv")
    repeats = max(1, tasks // len(facts))
    config = SimConfig(facts=facts, latency_ms=latency_ms, jitter_ms=latency_ms / 4, rpm=rpm, rate_headers=headers_hint)
    with SimProcess(config) as sim, tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "spec.toml"
        quota = f"rpm = {rpm}\n" if known else ""
        spec.write_text(
            f'name = "quota"\nquestions = "{ROOT / "data" / "facts.csv"}"\nrepeats = {repeats}\n'
            f"temperatures = [1.0]\nmax_attempts = 20\n"
            f'[[models]]\nname = "m"\nbase_url = "{sim.base_url}"\nconcurrency = 64\n{quota}'
        )
        options = RunOptions(out=Path(tmp) / "run", quiet=True, report=False)
        prepared = prepare(spec, options)
        started = time.monotonic()
        summary = anyio.run(run_prepared, prepared, options, backend="asyncio")
        elapsed = time.monotonic() - started
        stats = sim.stats()
    answered = summary.ok
    return {
        "tasks": summary.finished,
        "ok": answered,
        "elapsed_s": elapsed,
        "goodput_share": answered / elapsed / (rpm / 60),
        "share_429": stats.get("rate_limited", 0) / max(1, stats["chat_requests"]),
        "failed": summary.failed,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rpm", type=float, default=6000)
    p.add_argument("--tasks", type=int, default=3000)
    p.add_argument("--latency-ms", type=float, default=20)
    args = p.parse_args(argv)
    print(f"quota {args.rpm:,.0f} rpm ({args.rpm / 60:,.0f}/s), {args.tasks:,} tasks, latency {args.latency_ms} ms")
    print("| quota | goodput / quota | 429 share | failed | elapsed |")
    print("| --- | --- | --- | --- | --- |")
    cases = [
        (True, True, "known (rpm in spec)"),
        (False, True, "unknown, limit headers sent"),
        (False, False, "unknown, no limit headers (AIMD alone)"),
    ]
    for known, headers, label in cases:
        r = run_once(rpm=args.rpm, tasks=args.tasks, latency_ms=args.latency_ms, known=known, headers_hint=headers)
        print(f"| {label} | {r['goodput_share']:.1%} | {r['share_429']:.2%} | {r['failed']:.0f} | {r['elapsed_s']:.1f}s |")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
