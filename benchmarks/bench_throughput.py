"""Throughput in one run: the engine end to end against reference client loops, on the built-in target.

For each target latency one sim subprocess is started and shared by every contestant;
for each concurrency, each contestant runs in its own subprocess (its own CPU time and
peak memory), rounds alternate the contestants, and the tables show medians and
ratios within the run (see engine/bench/throughput.py). Prints Markdown for benchmarks/README.md.

    python benchmarks/bench_throughput.py                    # the README's table, about 5 minutes
    python benchmarks/bench_throughput.py --tasks 2000 --repeats 1 --latency 0   # a quick look

Besides chat, the engine runs over the Responses and Anthropic Messages APIs in the same rounds
(rows "engine end to end, ... API"; ``--no-apis`` leaves them out), and the goals compare each
with the engine over chat.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

import orjson

sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1]))

from engine.bench.throughput import (
    API_CONTESTANTS,
    CONTESTANTS,
    BenchConfig,
    BenchTable,
    bench_target,
    machine,
    run_bench,
)


def _numbers(text: str, kind: type) -> list:  # type: ignore[type-arg]
    return [kind(x) for x in text.split(",") if x.strip()]


def goals(tables: list[BenchTable]) -> list[str]:
    """The throughput goals, each with the figure that meets or misses it."""
    lines = []

    def mark(ok: bool) -> str:
        return "✅" if ok else "❌"

    for t in tables:
        c = t.config
        names = {r.contestant for r in t.rows}
        engine = t.row("engine")
        where = f"latency {c.latency_ms:g} ms, concurrency {c.concurrency}"
        if c.latency_ms == 0 and engine.ratio is not None:
            lines.append(f"- {mark(engine.ratio >= 0.7)} engine ≥ 0.7× bare aiohttp ({where}): "
                         f"{engine.ratio:.2f}×, {engine.cpu_us:,.0f} µs CPU/request "
                         f"(bare loop {t.row('aiohttp').cpu_us:,.0f} µs)")
        if c.latency_ms > 0 and c.concurrency == 64 and t.ideal_rate:
            share = engine.rate / t.ideal_rate
            lines.append(f"- {mark(share >= 0.9)} engine ≥ 0.9 × concurrency ÷ latency ({where}): "
                         f"{engine.rate:,.0f} of {t.ideal_rate:,.0f} req/s = {share:.2f}")
        for api in API_CONTESTANTS:
            # Each API's adapter against chat in the same rounds: both as multiples of the bare loop, per round.
            if api in names and engine.ratio and t.row(api).ratio is not None:
                share = t.row(api).ratio / engine.ratio
                lines.append(f"- {mark(share >= 0.85)} {api} within 15 % of engine over chat ({where}): "
                             f"{share:.2f} ({t.row(api).rate:,.0f} vs {engine.rate:,.0f} req/s, "
                             f"{t.row(api).cpu_us:,.0f} vs {engine.cpu_us:,.0f} µs CPU/request)")
        for peer, goal in (("openai", 10), ("httpx", 20)):
            # At a fixed latency no client beats concurrency ÷ latency, so "N× a peer" is a CPU race: latency 0.
            if peer in names and c.latency_ms == 0:
                times = engine.rate / t.row(peer).rate
                lines.append(f"- {mark(times >= goal)} engine ≥ {goal}× {peer} ({where}): {times:,.1f}×")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=10_000, help="requests per engine / aiohttp run")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per table (medians)")
    parser.add_argument("--slow-repeats", type=int, default=1, help="rounds of the slow clients (httpx, openai)")
    parser.add_argument("--concurrency", default="64,256", help="comma-separated concurrencies (default 64,256)")
    parser.add_argument("--latency", default="0,50", help="target latencies in ms")
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    parser.add_argument("--no-apis", action="store_true",
                        help="leave out the engine's Responses and Anthropic rows (asked over chat only)")
    args = parser.parse_args()

    m = machine()
    print(f"- machine: {m['nproc']} cores, {m['cpu']}, {m['system']}, Python {m['python']}")
    print(f"- date: {m['date']}; load average at start {m['loadavg']}")
    print(f"- command: `python {shlex.join(sys.argv)}`\n", flush=True)
    tables: list[BenchTable] = []
    for latency in _numbers(args.latency, float):
        with bench_target(latency_ms=latency) as target:
            for concurrency in _numbers(args.concurrency, int):
                config = BenchConfig(tasks=args.tasks, concurrency=concurrency, latency_ms=latency,
                                     repeats=args.repeats, slow_repeats=args.slow_repeats,
                                     contestants=CONTESTANTS + (() if args.no_apis else API_CONTESTANTS))
                tables.append(table := run_bench(config, target=target))
                print(table.render() + "\n", flush=True)
    print("Goals:\n")
    print("\n".join(goals(tables)))
    print(f"\nload average at the end {machine()['loadavg']}")
    if args.json:
        args.json.write_bytes(orjson.dumps({"machine": m, "tables": [t.to_dict() for t in tables]},
                                           option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
