"""A 10,000-task run under the fault mix: 5% 500s, 2% dropped connections, 1% malformed JSON, 1% slow.

Every task must end in the log exactly once, ok or failed with its reason.

    python benchmarks/bench_faults.py [--tasks 10000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import orjson

from engine.run.runner import RunOptions, run_experiment

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=10_000, help="requests per run (default 10000)")
    args = p.parse_args(argv)
    repeats = -(-args.tasks // 150)
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "faults.toml"
        spec.write_text(
            f'name = "faults"\nquestions = "{ROOT / "data" / "facts.csv"}"\ntemperatures = [1.0]\n'
            f"repeats = {repeats}\ntimeout_s = 2\nmax_attempts = 6\nbackoff_base_s = 0.1\n"
            '[[models]]\nname = "m"\nbase_url = "sim"\nconcurrency = 64\n'
            "[sim]\nlatency_ms = 5\n[sim.faults]\nerror_500 = 0.05\ndrop = 0.02\nmalformed = 0.01\n"
            "slow = 0.01\nslow_s = 5.0\n"
        )
        out = Path(tmp) / "run"
        started = time.monotonic()
        summary = run_experiment(spec, options=RunOptions(out=out, quiet=True, report=False))
        elapsed = time.monotonic() - started
        records = [orjson.loads(line) for line in (out / "results.jsonl").read_bytes().splitlines()]
    keys = {r["key"] for r in records}
    status = Counter(r["status"] for r in records)
    attempts = Counter(r["attempts"] for r in records)
    print(f"grid {summary.total:,} tasks · log {len(records):,} records, {len(keys):,} distinct keys · "
          f"ok {status['ok']:,} · failed {status['failed']:,} (each with a reason: "
          f"{all(r['error'] for r in records if r['status'] == 'failed')}) · requests {summary.requests:,} · "
          f"retries {summary.retries:,} · {elapsed:.1f}s")
    print("attempts per task:", dict(sorted(attempts.items())))
    complete = len(records) == len(keys) == summary.total
    print("every task logged exactly once:", complete)
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
