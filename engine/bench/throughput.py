"""Throughput benchmark: the engine end to end against reference client loops, on the built-in target.

Every contestant runs in its own subprocess, so the CPU time and peak memory it
reports are its own (``time.process_time`` and ``getrusage``), never the sim's nor
another contestant's. All contestants of one table share one sim subprocess and send
the same requests. Rounds alternate the contestants and the table shows medians, and
each contestant's ratio to the bare aiohttp loop is the median of per-round ratios:
on a shared machine absolute rates drift, ratios within a round do not.

Contestants (their client loops, run in ``python -m engine.bench.contestants``, live in
:mod:`engine.bench.contestants`):

- ``engine``: the whole engine (spec, grid, limiter, client, scoring, log) through
  :func:`engine.run.runner.prepare` and :func:`engine.run.runner.run_prepared`;
- ``aiohttp``: a bare aiohttp worker loop, about the practical limit of a Python client;
- ``httpx``: a plain ``httpx.AsyncClient`` loop with pool limits = concurrency;
- ``openai``: the openai SDK's ``AsyncOpenAI`` (default settings) with a semaphore, if installed.

The target's own ceiling is measured with ``wrk`` (a native load generator) when it is installed.

Usage::

    table = run_bench(BenchConfig(tasks=20_000, concurrency=64, latency_ms=0))
    print(table.render())
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from engine.bench.contestants import MAX_TOKENS, MODEL, SYSTEM, bench_questions, request_body
from engine.errors import ConfigError, EndpointError
from engine.results.paths import run_logs

__all__ = [
    "API_CONTESTANTS", "BASELINE", "CONTESTANTS", "MAX_TOKENS", "MODEL", "SLOW", "SYSTEM", "BenchConfig", "BenchRow", "BenchTable",
    "BenchTarget", "Measurement", "bench_questions", "bench_target", "machine", "main_bench", "measure_ceiling",
    "parse_wrk", "request_body", "run_bench", "tabulate",
]

CONTESTANTS = ("aiohttp", "engine", "httpx", "openai")
# The engine asking through the other APIs (the sim answers each): opt-in rows, compared with "engine" (chat).
API_CONTESTANTS = ("engine-responses", "engine-anthropic")
BASELINE = "aiohttp"
SLOW = ("httpx", "openai")


@dataclass(frozen=True, kw_only=True, slots=True)
class BenchConfig:
    """One benchmark table's settings; every default of the benchmark lives here.

    The slow reference clients (httpx, openai) spend tens of times the engine's CPU per
    request, so they send ``slow_tasks`` requests (None: a tenth of ``tasks``, at least
    4 × concurrency) and run only in the first ``slow_repeats`` rounds, which keeps a table
    to a few minutes. Usage: ``BenchConfig(tasks=20_000, concurrency=256, latency_ms=50)``
    """

    tasks: int = 20_000
    concurrency: int = 64
    latency_ms: float = 0.0
    repeats: int = 1
    contestants: tuple[str, ...] = CONTESTANTS
    slow_tasks: int | None = None
    slow_repeats: int = 1
    questions: int = 100  # distinct questions; the engine's grid repeats them
    ceiling_s: float = 3.0  # how long wrk measures the target's ceiling; 0 skips it
    timeout_s: float = 600.0  # one contestant's run, before it is killed

    def __post_init__(self) -> None:
        if min(self.tasks, self.concurrency, self.repeats, self.questions, self.slow_repeats) < 1:
            raise ConfigError("bench: tasks, concurrency, repeats, slow_repeats and questions must be at least 1")
        if self.latency_ms < 0:
            raise ConfigError(f"bench: latency_ms must be >= 0, got {self.latency_ms!r}")
        unknown = sorted(set(self.contestants) - set(CONTESTANTS) - set(API_CONTESTANTS))
        if unknown:
            known = ", ".join((*CONTESTANTS, *API_CONTESTANTS))
            raise ConfigError(f"bench: unknown contestant {unknown[0]!r} (known: {known})")

    def requests_for(self, contestant: str) -> int:
        """How many requests ``contestant`` sends: the engine's grid is whole passes over the questions."""
        passes = -(-self.tasks // self.questions)
        full = passes * self.questions
        if contestant in SLOW:
            return min(full, self.slow_tasks or max(4 * self.concurrency, full // 10))
        return full


@dataclass(frozen=True, kw_only=True, slots=True)
class Measurement:
    """One contestant's run, measured inside its own process."""

    contestant: str
    requests: int
    ok: int
    wall_s: float
    cpu_s: float  # client process only: user + system, all threads
    peak_rss_mb: float
    p50_ms: float | None
    p99_ms: float | None
    target_cpu_s: float | None = None  # the sim's CPU over the same window, when known

    @property
    def rate(self) -> float:
        return self.requests / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / self.requests * 1e6 if self.requests else 0.0


@dataclass(frozen=True, kw_only=True, slots=True)
class BenchRow:
    """A contestant's medians over the rounds, and its rate as a multiple of the bare aiohttp loop."""

    contestant: str
    requests: int
    failed: int
    rate: float
    cpu_us: float | None
    p50_ms: float | None
    p99_ms: float | None
    peak_rss_mb: float | None
    ratio: float | None
    target_busy: float | None  # the sim's CPU share over the run: near 1.0 means the target was the limit


@dataclass(frozen=True, kw_only=True, slots=True)
class BenchTable:
    """The result of :func:`run_bench`. Usage: ``print(table.render())``"""

    config: BenchConfig
    rows: tuple[BenchRow, ...]
    rounds: tuple[tuple[Measurement, ...], ...] = field(default_factory=tuple)

    def row(self, contestant: str) -> BenchRow:
        """The row of one contestant. Usage: ``table.row("engine").ratio``"""
        for row in self.rows:
            if row.contestant == contestant:
                return row
        raise KeyError(contestant)

    @property
    def ideal_rate(self) -> float | None:
        """concurrency ÷ latency: what a client with no overhead reaches against a target with this latency."""
        return self.config.concurrency / (self.config.latency_ms / 1000) if self.config.latency_ms else None

    def render(self) -> str:
        """A Markdown table with a one-line heading."""
        c = self.config
        ideal = self.ideal_rate
        head = (
            f"latency {c.latency_ms:g} ms · concurrency {c.concurrency} · {c.requests_for('engine'):,} requests "
            f"(httpx, openai: {c.requests_for('httpx'):,}) · median of {c.repeats} round{'s' * (c.repeats > 1)}"
            + (f" (httpx, openai: {min(c.repeats, c.slow_repeats)})" if c.slow_repeats < c.repeats else "")
        )
        if ideal:
            head += f" · ideal {ideal:,.0f} req/s"
        lines = [
            head,
            "",
            "| client | req/s | × aiohttp | " + ("× ideal | " if ideal else "")
            + "client CPU µs/req | p50 ms | p99 ms | peak RSS MB | target busy | failed |",
            "|---|---:|---:|" + ("---:|" if ideal else "") + "---:|---:|---:|---:|---:|---:|",
        ]
        for r in self.rows:
            cells = [
                _NAMES.get(r.contestant, r.contestant), f"{r.rate:,.0f}", _fmt(r.ratio, "{:.2f}×"),
                *([_fmt(r.rate / ideal, "{:.2f}")] if ideal else []),
                _fmt(r.cpu_us, "{:,.0f}"), _fmt(r.p50_ms, "{:.1f}"), _fmt(r.p99_ms, "{:.1f}"),
                _fmt(r.peak_rss_mb, "{:.0f}"), _fmt(r.target_busy, "{:.0%}"), str(r.failed),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-able. Usage: ``orjson.dumps(table.to_dict())``"""
        return {"config": asdict(self.config), "rows": [asdict(r) for r in self.rows],
                "rounds": [[asdict(m) for m in rnd] for rnd in self.rounds]}


_NAMES = {
    "wrk": "target ceiling (wrk, native)",
    "aiohttp": "bare aiohttp loop",
    "engine": "**engine end to end**",
    "engine-responses": "engine end to end, Responses API",
    "engine-anthropic": "engine end to end, Anthropic Messages API",
    "httpx": "plain httpx.AsyncClient",
    "openai": "openai AsyncOpenAI + semaphore",
}


def _fmt(value: float | None, pattern: str) -> str:
    return "–" if value is None else pattern.format(value)


# -- the target -------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class BenchTarget:
    """A running sim the contestants share: its URL, and its process id to meter its CPU."""

    base_url: str
    pid: int | None


@contextlib.contextmanager
def bench_target(*, latency_ms: float, questions: int = BenchConfig().questions) -> Iterator[BenchTarget]:
    """Start the sim in a subprocess (another core). Usage: ``with bench_target(latency_ms=50) as t: ...``"""
    from engine.sim.config import SimConfig, SimFact
    from engine.sim.process import SimProcess

    facts = tuple(SimFact(question=q, answer=a, object=f"Object {qid[1:]}") for qid, q, a in bench_questions(questions))
    with SimProcess(SimConfig(facts=facts, latency_ms=latency_ms, default_accuracy=0.9)) as sim:
        yield BenchTarget(base_url=sim.base_url, pid=sim.pid)


def _process_cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of another process (Linux /proc), or None where unknown."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- running the contestants ------------------------------------------------------------------------


def run_bench(config: BenchConfig | None = None, *, target: BenchTarget | None = None) -> BenchTable:
    """Run every contestant ``config.repeats`` times against one target and tabulate the medians.

    Without ``target`` a sim is started for this table and stopped after it.
    Usage: ``run_bench(BenchConfig(tasks=5_000, concurrency=64)).row("engine").ratio``
    """
    config = config or BenchConfig()
    if target is None:
        with bench_target(latency_ms=config.latency_ms, questions=config.questions) as started:
            return run_bench(config, target=started)
    contestants = [c for c in config.contestants if c != "openai" or importlib.util.find_spec("openai")]
    rounds: list[tuple[Measurement, ...]] = []
    with tempfile.TemporaryDirectory(prefix="engine-bench-") as tmp:
        for index in range(config.repeats):
            # Rotate the order so no contestant always runs first (cold caches) or last.
            shift = index % len(contestants)
            order = contestants[shift:] + contestants[:shift]
            order = [c for c in order if c not in SLOW or index < config.slow_repeats]
            rounds.append(tuple(_run_one(c, config, target, Path(tmp) / f"{c}-{index}") for c in order))
    ceiling = measure_ceiling(target, config) if config.ceiling_s > 0 else None
    return BenchTable(config=config, rows=tabulate(contestants, rounds, ceiling), rounds=tuple(rounds))


def _run_one(contestant: str, config: BenchConfig, target: BenchTarget, workdir: Path) -> Measurement:
    job = {"contestant": contestant, "base_url": target.base_url, "requests": config.requests_for(contestant),
           "concurrency": config.concurrency, "questions": config.questions, "workdir": str(workdir)}
    target_before = _process_cpu_s(target.pid)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "engine.bench.contestants", orjson.dumps(job).decode()],
            capture_output=True, timeout=config.timeout_s, check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise EndpointError(f"bench: {contestant} did not finish within {config.timeout_s:g} s") from exc
    target_after = _process_cpu_s(target.pid)
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines() or ["no output"]
        why = next((line for line in reversed(lines) if re.search(r"(Error|Exception|Exhausted)\b", line)), lines[-1])
        raise EndpointError(f"bench: {contestant} failed (exit {done.returncode}): {why.strip(' |')[:300]}")
    result = orjson.loads(done.stdout.splitlines()[-1])
    if target_before is not None and target_after is not None:
        result["target_cpu_s"] = target_after - target_before
    return Measurement(**result)


def tabulate(
    contestants: Sequence[str], rounds: Sequence[tuple[Measurement, ...]], ceiling: Measurement | None
) -> tuple[BenchRow, ...]:
    """One row per contestant: medians over the rounds it ran in; ratios are medians of per-round ratios.

    Usage: ``tabulate(["aiohttp", "engine"], rounds, None)[1].ratio``
    """
    by_round = [{m.contestant: m for m in rnd} for rnd in rounds]

    def median(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return statistics.median(known) if known else None

    base_rates = [rnd[BASELINE].rate if BASELINE in rnd else None for rnd in by_round]
    rows = []
    if ceiling is not None:
        base = median(base_rates)
        rows.append(BenchRow(contestant="wrk", requests=ceiling.requests, failed=ceiling.requests - ceiling.ok,
                             rate=ceiling.rate, cpu_us=None, p50_ms=ceiling.p50_ms, p99_ms=ceiling.p99_ms,
                             peak_rss_mb=None, ratio=ceiling.rate / base if base else None,
                             target_busy=_busy(ceiling)))
    for name in contestants:
        runs = [rnd[name] for rnd in by_round if name in rnd]
        ratios = [rnd[name].rate / b if b else None for rnd, b in zip(by_round, base_rates, strict=True) if name in rnd]
        rows.append(BenchRow(
            contestant=name, requests=runs[0].requests, failed=max(m.requests - m.ok for m in runs),
            rate=statistics.median(m.rate for m in runs), cpu_us=median([m.cpu_us for m in runs]),
            p50_ms=median([m.p50_ms for m in runs]), p99_ms=median([m.p99_ms for m in runs]),
            peak_rss_mb=median([m.peak_rss_mb for m in runs]), ratio=median(ratios),
            target_busy=median([_busy(m) for m in runs]),
        ))
    return tuple(rows)


def _busy(m: Measurement) -> float | None:
    return None if m.target_cpu_s is None or m.wall_s <= 0 else m.target_cpu_s / m.wall_s


def measure_ceiling(target: BenchTarget, config: BenchConfig) -> Measurement | None:
    """The target's ceiling: ``wrk`` (native, one thread) POSTing the same request; None without wrk.

    Usage: ``measure_ceiling(target, BenchConfig(concurrency=256))``
    """
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    _, question, _ = bench_questions(1)[0]
    body = request_body(question).decode()
    with tempfile.TemporaryDirectory(prefix="engine-wrk-") as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(
            f'wrk.method = "POST"\nwrk.body = [==[{body}]==]\nwrk.headers["Content-Type"] = "application/json"\n'
        )
        before = _process_cpu_s(target.pid)
        done = subprocess.run(
            [wrk, "-t1", f"-c{config.concurrency}", f"-d{max(1, round(config.ceiling_s))}s", "--latency", "-s", str(script),
             f"{target.base_url}/chat/completions"],
            capture_output=True, text=True, timeout=config.ceiling_s + 30, check=False,
        )
        after = _process_cpu_s(target.pid)
    return parse_wrk(done.stdout, target_cpu_s=None if before is None or after is None else after - before)


def parse_wrk(text: str, *, target_cpu_s: float | None = None) -> Measurement | None:
    """A Measurement from ``wrk --latency`` output, or None. Usage: ``parse_wrk(completed.stdout)``"""
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", text)
    if total is None:
        return None
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    failed = int(errors.group(1)) if errors else 0
    failed += sum(int(g) for g in socket_errors.groups()) if socket_errors else 0

    def percentile(p: str) -> float | None:
        m = re.search(rf"^\s*{p}%\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE)
        return None if m is None else float(m.group(1)) * _UNIT_S[m.group(2)] * 1000

    requests = int(total.group(1))
    wall_s = float(total.group(2)) * _UNIT_S[total.group(3)]
    if (rate := re.search(r"Requests/sec:\s+([\d.]+)", text)) and float(rate.group(1)) > 0:
        wall_s = requests / float(rate.group(1))  # more digits than "in 1.00s"
    return Measurement(contestant="wrk", requests=requests, ok=max(0, requests - failed), wall_s=wall_s,
                       cpu_s=0.0, peak_rss_mb=0.0,
                       p50_ms=percentile("50"), p99_ms=percentile("99"), target_cpu_s=target_cpu_s)


_UNIT_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def machine() -> dict[str, Any]:
    """The machine a table was measured on: cores, CPU model, Python, load. Usage: ``machine()["cpu"]``"""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, IndexError):
        cpu = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)[0]
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()}", "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "loadavg": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None}


_SPIN = "n = 0\nwhile n < {loops}: n += 1"


def cpu_scaling(processes: int = 2, *, loops: int = 6_000_000, trials: int = 5) -> float:
    """How many times the work of one CPU-bound Python process ``processes`` of them get through at once,
    on this machine, now: the ceiling of any N-process speed-up measured beside it.

    ``processes`` on a quiet machine with that many free cores; less where cores are shared with
    other tenants (a cloud host's siblings) or busy. Each of the ``trials`` takes about half a second.
    Usage: ``cpu_scaling(2)  # e.g. 1.86``
    """
    def wall(count: int) -> float:
        started = time.perf_counter()
        spinning = [subprocess.Popen([sys.executable, "-c", _SPIN.format(loops=loops)]) for _ in range(count)]
        for process in spinning:
            process.wait()
        return time.perf_counter() - started

    # Alternating trials, the median: one trial on a shared host swings by a third.
    return statistics.median(processes * wall(1) / wall(processes) for _ in range(trials))


def request_span(run_dir: Path) -> float:
    """Seconds from a run's first request to its last answer, as its logs (every shard's) record them.

    A run's time less this is what it costs beyond its requests. Usage: ``request_span(Path("runs/x"))``
    """
    starts: list[float] = []
    ends: list[float] = []
    for log in run_logs(run_dir):
        for line in log.read_bytes().splitlines():
            record = orjson.loads(line)
            starts.append(record["t_start"])
            ends.append(record["t_end"])
    return max(ends) - min(starts)


def main_bench(*, tasks: int, concurrency: int, latency_ms: float, repeats: int = 1) -> int:
    """``engine bench``: measure this machine and print the table.

    Usage: ``main_bench(tasks=20_000, concurrency=64, latency_ms=0)``
    """
    m = machine()
    print(f"{m['nproc']} cores · {m['cpu']} · Python {m['python']} · load {m['loadavg']}", flush=True)
    table = run_bench(BenchConfig(tasks=tasks, concurrency=concurrency, latency_ms=latency_ms, repeats=repeats))
    print(table.render())
    print("\nclient CPU: the client's own process (user + system); target busy: the sim's CPU over the run "
          "(near 100% would make the target the limit); built-in target = a simulation, not a model.")
    return 0
