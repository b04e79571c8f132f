"""Kill a run with SIGKILL at random moments, resume it each time, and check nothing was lost.

Runs ``engine run`` as a subprocess against one built-in target started here (so the
target's own count of answered requests spans every attempt). Each round waits a
random time, kills the run with SIGKILL, and in some rounds also cuts the log in the
middle of its last line, as a kill during a write would. At the end a last run must
finish the grid, and the log must hold exactly one readable record per grid key.
Duplicate requests (answered by the target but not the reason a key is in the log)
must be no more than the requests that can be in flight at each kill.

Usage (also as a script)::

    result = kill_and_resume(work_dir, kills=5, seed=1)
    python tests/support/killharness.py --kills 8 --seed 3
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[2]
FACTS = ROOT / "data" / "facts.csv"


@dataclass(frozen=True, kw_only=True, slots=True)
class KillResult:
    """What the harness saw: kills, grid size, records, duplicates and the bound they must stay under."""

    kills: int
    torn_writes: int
    grid: int
    records: int
    unique_keys: int
    unreadable_lines: int
    answered_by_target: int
    duplicates: int
    in_flight_bound: int  # requests in flight at the kills, summed, from the write-ahead journal

    @property
    def ok(self) -> bool:
        return (
            self.records == self.unique_keys == self.grid
            and self.unreadable_lines == 0
            and 0 <= self.duplicates <= self.in_flight_bound
        )

    def render(self) -> str:
        return (
            f"{self.kills} kills ({self.torn_writes} with a torn write), {self.grid:,} tasks, "
            f"{self.records:,} records, {self.unique_keys:,} distinct keys, {self.unreadable_lines} unreadable, "
            f"{self.duplicates} duplicate requests ({self.in_flight_bound} in flight at the kills): "
            f"{'OK' if self.ok else 'FAILED'}"
        )


def _spec(work: Path, base_url: str, concurrency: int, models: int) -> Path:
    spec = work / "spec.toml"
    tables = "".join(
        f'[[models]]\nname = "m{i}"\nbase_url = "{base_url}"\nconcurrency = {concurrency}\n' for i in range(models)
    )
    spec.write_text(
        f'name = "kill"\nquestions = "{FACTS}"\ntemperatures = [0.0, 0.5, 1.0]\nrepeats = 2\n{tables}'
    )
    return spec


def _command(spec: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "engine", "run", str(spec), "--out", str(out), "--quiet", "--no-report",
            "--write-ahead"]


def _in_flight(out: Path, cut_key: str | None) -> int:
    """Requests journalled as sent whose result is not in the log: what this kill left in flight.

    A record the harness cut is asked again too; when it came from an earlier run it is not in
    this run's journal, so it is added here.
    """
    from engine.results.paths import RunPaths
    from engine.results.scan import scan_log
    from engine.results.write import in_flight_at_stop

    paths = RunPaths(out)
    if not paths.results.exists():
        return 0
    scan = scan_log(paths.results)
    count = in_flight_at_stop(paths, scan.ok | scan.failed) or 0
    journal = paths.started.read_bytes() if paths.started.exists() else b""
    if cut_key is not None and f'"{cut_key}"'.encode() not in journal:
        count += 1
    return count


def _records(log: Path) -> int:
    return log.read_bytes().count(b"\n") if log.exists() else 0


def _wait_for_more_records(log: Path, more: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    target = _records(log) + more
    deadline = time.monotonic() + timeout
    while _records(log) < target and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)


def kill_and_resume(
    work: Path, *, kills: int = 5, seed: int = 0, concurrency: int = 8, models: int = 2, latency_ms: float = 10
) -> KillResult:
    """Run the harness in ``work``; returns what it found (see :class:`KillResult`)."""
    from engine.run.targets import facts_from_csv
    from engine.sim.config import SimConfig
    from engine.sim.process import SimProcess

    rng = random.Random(seed)
    out = work / "run"
    log = out / "results.jsonl"
    torn = 0
    in_flight = 0
    config = SimConfig(facts=facts_from_csv(FACTS), latency_ms=latency_ms, jitter_ms=latency_ms / 2)
    with SimProcess(config) as sim:
        spec = _spec(work, sim.base_url, concurrency, models)
        for round_ in range(kills):
            proc = subprocess.Popen(_command(spec, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
            # Kill once the run has logged some more records, then a random moment later: tied to
            # progress, not to the clock, so a slow machine still kills mid-run.
            _wait_for_more_records(log, rng.randrange(20, 120), proc)
            time.sleep(rng.uniform(0, 0.2))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            cut_key = None
            if round_ % 2 == 1 and log.exists():
                data = log.read_bytes()
                if len(data) > 40:
                    # What a kill in the middle of write(2) leaves: half a record, no newline.
                    start = data.rfind(b"\n", 0, len(data) - 1) + 1
                    cut_key = orjson.loads(data[start:])["key"]
                    log.write_bytes(data[: min(start + rng.randrange(5, 30), len(data) - 1)])
                    torn += 1
            in_flight += _in_flight(out, cut_key)
        final = subprocess.run(_command(spec, out), capture_output=True, cwd=ROOT, timeout=300)
        if final.returncode != 0:
            raise AssertionError(f"final resume failed: {final.stderr.decode()[-500:]}")
        answered = int(sim.stats()["chat_requests"])
    keys: list[str] = []
    unreadable = 0
    attempts = 0
    for line in log.read_bytes().splitlines():
        try:
            record = orjson.loads(line)
            keys.append(record["key"])
            attempts += record["attempts"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            unreadable += 1
    grid = models * 150 * 3 * 2
    return KillResult(
        kills=kills, torn_writes=torn, grid=grid, records=len(keys), unique_keys=len(set(keys)),
        unreadable_lines=unreadable, answered_by_target=answered,
        # Requests the target answered beyond the attempts the log accounts for: lost to the kills.
        duplicates=answered - attempts,
        # Measured from the write-ahead journal after each kill (and cut): sent, never logged.
        in_flight_bound=in_flight,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--concurrency", type=int, default=8)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = kill_and_resume(Path(tmp), kills=args.kills, seed=args.seed, concurrency=args.concurrency)
    print(result.render())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
