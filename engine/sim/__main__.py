"""The sim's command line: ``python -m engine.sim`` and ``engine sim``.

Reads a sim config (JSON or TOML) and a question file as its facts, then serves until stopped,
printing the start-up banner once its port is bound (:class:`engine.sim.process.SimProcess`
reads it). A front door, like ``engine/__main__.py``: only :mod:`engine.cli` imports it, so it
may read questions through :mod:`engine.run.targets` while the rest of the sim imports neither.

Usage: ``python -m engine.sim --port 8000 --config-file sim.json``
"""

from __future__ import annotations

from engine.interpreter import tune_for_batch

tune_for_batch()  # first: the imports below are most of the target's start-up (about 0.05 s less)

import argparse
import contextlib
import dataclasses
import importlib.util
import os
import signal
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import anyio
import orjson
from anyio.abc import TaskStatus

from engine.errors import ConfigError, EngineError
from engine.sim.config import SimConfig
from engine.sim.serve import BANNER, serve

_HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None


class _Banner(TaskStatus[int]):
    """Prints the start-up line once the port is bound (no task group, so errors stay unwrapped)."""

    def __init__(self, host: str):
        self.host = host

    def started(self, value: int | None = None) -> None:
        print(BANNER.format(host=self.host, port=value), flush=True)


def _load_config(args: argparse.Namespace) -> SimConfig:
    data: Any = None
    if args.config_json is not None:
        try:
            data = orjson.loads(args.config_json)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"--config-json is not valid JSON: {exc}") from exc
    elif args.config_file is not None:
        data = _read_config_file(args.config_file)
    if args.facts is not None:
        data = dict(data or {})
        data.pop("facts", None)
        data["facts_csv"] = args.facts
    if isinstance(data, dict) and "facts" in data and "facts_csv" not in data:
        return SimConfig.from_dict(data)  # a run's own target: its facts inline, no question loader
    # Late: only a config naming a question file, or none, reads questions. A run's own target
    # starts about 0.04 s sooner without the question loader's imports.
    from engine.run.targets import default_config, facts_from_csv

    if data is None:
        return default_config()
    config = SimConfig.from_dict(data, read_facts=facts_from_csv)
    if "facts" not in data and "facts_csv" not in data:
        config = dataclasses.replace(config, facts=default_config().facts)
    return config


def _read_config_file(name: str) -> Any:
    try:
        raw = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read sim config {name}: {exc.strerror or exc}") from exc
    try:
        if name.endswith(".toml"):
            return tomllib.loads(raw.decode("utf-8"))
        return orjson.loads(raw)
    except (orjson.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"sim config {name}: not valid {'TOML' if name.endswith('.toml') else 'JSON'}: {exc}"
        ) from exc


def _yield_to_clients() -> None:
    """Run as a batch job (Linux's SCHED_BATCH): woken by a request, wait for a busy core's slice to
    end rather than preempt whoever runs there.

    Why: the target's clients are often on the same machine and fill its cores (``--workers 2`` on 2
    cores). Woken by each request, the target preempted a worker about every third request (each a
    context switch and cold caches for the worker: two workers then cost 35 % more CPU a request than
    one). As a batch job it answers what came in the meantime in one go: 0.03 wake-ups a request
    instead of 0.65, and a third less CPU a request. Nothing else changes: what it answers, and on a
    free core it runs at once, as before. Elsewhere (no such class, or refused) it runs as any
    process does.

    Not for a target that enforces a quota: it stamps a request when it reads it, and a read put off
    to the end of a busy core's slice would count requests in a later window than they were sent in,
    so it could answer 429 to a client that kept the quota (a provider stamps on arrival).
    Called from the event loop's thread: the class is a thread's, and that thread does the serving.
    """
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_BATCH"):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


def _exit_with_parent() -> None:
    """A parent killed with SIGKILL cannot stop us: a watcher thread notices the orphaning and ends us."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


async def _configured_then_serve(args: argparse.Namespace) -> None:
    # A run's target gets its config on stdin once the run has prepared it. Read in a thread, so
    # that the event loop and anyio's backend (about 0.03 s of imports) load while it waits, not
    # after; a Ctrl-C need not wait for stdin.
    config = await anyio.to_thread.run_sync(_load_config, args, abandon_on_cancel=True)
    if config.rpm is None and config.tpm is None:
        _yield_to_clients()
    await serve(config, host=args.host, port=args.port, task_status=_Banner(args.host))


def main(argv: list[str] | None = None) -> int:
    """Run the sim in the foreground (``python -m engine.sim`` / ``engine sim``); returns an exit code.

    Bad input (a port outside 0-65535, a bad config value) is one line and exit code 2.
    Usage: ``main(["--port", "8000", "--config-file", "sim.json"])``
    """
    parser = argparse.ArgumentParser(
        prog="engine sim",
        description="Serve a simulated OpenAI-compatible endpoint (not a model) for demos, tests and benchmarks.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config-json", metavar="JSON", help="the sim config as a JSON object")
    source.add_argument(
        "--config-file", metavar="PATH", help="the sim config, JSON or .toml ('-' reads stdin)"
    )
    parser.add_argument("--facts", metavar="CSV", help="wide fact CSV (default: data/facts.csv)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port (default 8000)")
    parser.add_argument("--exit-with-parent", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    try:
        if not 0 <= args.port <= 65535:
            raise ConfigError(f"--port must be 0-65535 (0 picks a free port), got {args.port}")
        if args.exit_with_parent:
            _exit_with_parent()
        anyio.run(
            _configured_then_serve, args,
            backend="asyncio",
            # uvloop where it installs (not Windows): the sim then spends about a third less CPU per
            # request, which leaves the engine's own workers the cores in a --workers benchmark.
            backend_options={"use_uvloop": _HAVE_UVLOOP},
        )
    except EngineError as exc:
        print(f"engine-sim: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
