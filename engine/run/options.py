"""What a run is asked to do and what it did: :class:`RunOptions`, :class:`Prepared`, :class:`RunSummary`.

Apart from the runner so the fleet's modules (workers, Ray) build and merge summaries without the
runner's machinery. Usage::

    summary = run_experiment(Path("spec.toml"), options=RunOptions(quiet=True))
    print(summary.render())
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.experiment.grid import Grid
from engine.experiment.questions import Question
from engine.experiment.scoring import Scorer
from engine.experiment.spec import Spec
from engine.results.paths import RunPaths, describe_logs
from engine.results.scan import LogScan
from engine.results.shards import Shard
from engine.run.interrupts import exit_code_of, signal_name

FAILED_EXIT = 1  # some tasks of this run failed (the others are in the log)


@dataclass(frozen=True, kw_only=True, slots=True)
class RunOptions:
    """How to run a spec; every default of a run lives here."""

    out: Path | None = None  # the run directory; runs/<name> by default
    fresh: bool = False  # start a new log (the old one is renamed aside)
    retry_failed: bool = True  # ask again the tasks a previous run logged as failed
    quiet: bool = False
    fsync: str | int | None = None  # overrides the spec's fsync policy
    grace_s: float = 10.0  # after Ctrl-C, how long requests in flight may finish
    report: bool = True  # write the report at the end
    write_ahead: bool = False  # journal each request before sending it, to count what a crash left in flight
    locked_by_caller: bool = False  # the caller holds the run directory's lock already (engine replicate)
    shard: Shard | None = None  # run only this shard of the grid, into its own log (engine.run.workers)
    sim_url: str | None = None  # a built-in target already serving this spec (started by the fleet's parent)
    fleet: str | None = None  # the fleet's coordinator (engine.run.fleet): pauses shared, progress reported
    budget: Any = None  # a Ray fleet's budget actor (engine.run.budget): leases of the quota, pauses shared


@dataclass(frozen=True, kw_only=True, slots=True)
class Prepared:
    """A spec with everything it needs, checked and ready to run."""

    spec: Spec
    spec_text: str
    questions: tuple[Question, ...]
    scorer: Scorer
    paths: RunPaths
    scan: LogScan
    grid: Grid  # the models with their targets: becomes the run directory's grid.json
    complete: bool = False  # the log holds every task of the grid (its complete stamp says so; not scanned)


@dataclass(frozen=True, kw_only=True, slots=True)
class RunSummary:
    """What a run did. Usage: ``print(summary.render())``"""

    run_dir: Path
    total: int
    already_done: int
    finished: int
    ok: int
    failed: int
    elapsed_s: float
    requests: int
    retries: int
    rate_limited: int
    interrupted: bool
    target_requests: int | None = None  # what the built-in target says it answered, when used
    in_flight_at_last_stop: int | None = None  # from the previous run's write-ahead journal, if it kept one
    by_model: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # label -> (ok, errors, failed)
    stop_signal: int | None = None  # the signal that interrupted the run
    simulated: frozenset[str] = frozenset()  # labels answered by the built-in simulation, marked as such

    @property
    def exit_code(self) -> int:
        """0: every task of this run ok; 1: some failed; 128 + signal (130 SIGINT, 143 SIGTERM, 129 SIGHUP)."""
        if self.interrupted:
            return exit_code_of(self.stop_signal or signal.SIGINT)
        return FAILED_EXIT if self.failed else 0

    def render(self) -> str:
        """A short plain-text summary for the terminal."""
        rate = self.finished / self.elapsed_s if self.elapsed_s > 0 else 0.0
        lines = [
            f"{self._ending()}: {self.finished:,} tasks this run "
            f"({self.already_done:,} already in the log, {self.total:,} in the grid) in {self.elapsed_s:,.1f}s, "
            f"{rate:,.1f} tasks/s",
            f"requests {self.requests:,} · retries {self.retries:,} · 429s {self.rate_limited:,} · "
            f"failed tasks {self.failed:,}",
        ]
        if self.in_flight_at_last_stop:
            lines.append(
                f"the previous run stopped with {self.in_flight_at_last_stop:,} requests in flight "
                "(sent, never logged: asked again now, so paid for twice if the provider finished them)"
            )
        if self.target_requests is not None:
            lines.append(f"built-in target (a simulation) answered {self.target_requests:,} chat requests")
        for label, (ok, errors, failed) in self.by_model.items():
            rate_text = f"{errors / ok:.2%}" if ok else "n/a"
            mark = " [simulation]" if label in self.simulated else ""
            lines.append(f"  {label}{mark}: error rate {rate_text} ({errors}/{ok} answered, {failed} failed) this run")
        lines.append(f"log: {describe_logs(self.run_dir)}")
        return "\n".join(lines)

    def _ending(self) -> str:
        if not self.interrupted:
            return "finished"
        return f"interrupted ({signal_name(self.stop_signal)})" if self.stop_signal else "interrupted"
