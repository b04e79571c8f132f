"""The sim as a process (internal to :mod:`engine.sim`): the command line that serves it, and :class:`SimProcess`.

Both sides of the process boundary live here: :func:`main` (the child, ``python -m engine.sim``)
prints the start-up banner once its port is bound, and :class:`SimProcess` (the parent) starts
that child and reads the banner to learn the URL. Import both from :mod:`engine.sim`.

Usage::

    with SimProcess(cfg) as sim:
        sim.base_url, sim.pid, sim.stats()
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import anyio
import orjson
from anyio.abc import TaskStatus

from engine.errors import ConfigError, EndpointError, EngineError

if TYPE_CHECKING:
    from engine.sim import SimConfig

_BANNER = "engine-sim (a simulation, not a model) listening on http://{host}:{port}/v1"
_BANNER_URL = re.compile(rb"listening on (http://\S+/v1)")


class _Banner(TaskStatus[int]):
    """Prints the start-up line once the port is bound (no task group, so errors stay unwrapped)."""

    def __init__(self, host: str):
        self.host = host

    def started(self, value: int | None = None) -> None:
        print(_BANNER.format(host=self.host, port=value), flush=True)


def _load_config(args: argparse.Namespace) -> SimConfig:
    from engine.sim import SimConfig, default_config  # engine.sim re-exports this module: import it late

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
    if data is None:
        return default_config()
    config = SimConfig.from_dict(data)
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


def _exit_with_parent() -> None:
    """A parent killed with SIGKILL cannot stop us: a watcher thread notices the orphaning and ends us."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


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
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port (default 8000)")
    parser.add_argument("--exit-with-parent", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from engine.sim import serve  # engine.sim re-exports this module: import it late

    try:
        if not 0 <= args.port <= 65535:
            raise ConfigError(f"--port must be 0-65535 (0 picks a free port), got {args.port}")
        config = _load_config(args)
        if args.exit_with_parent:
            _exit_with_parent()
        anyio.run(
            functools.partial(serve, config, host=args.host, port=args.port, task_status=_Banner(args.host)),
            backend="asyncio",
        )
    except EngineError as exc:
        print(f"engine-sim: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 0
    return 0


class SimProcess:
    """The sim in a subprocess (so it runs on another core); a sync context manager.

    Usage::

        with SimProcess(cfg) as sim:
            httpx.post(sim.base_url + "/chat/completions", json=...)
            sim.stats()["completions"]
    """

    def __init__(
        self, config: SimConfig | None = None, *, host: str = "127.0.0.1", start_timeout: float = 30.0
    ):
        self.config = config
        self.host = host
        self.start_timeout = start_timeout
        self.base_url = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    def __enter__(self) -> SimProcess:
        root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        cmd = [sys.executable, "-m", "engine.sim", "--host", self.host, "--port", "0", "--exit-with-parent"]
        if self.config is not None:
            cmd += ["--config-file", "-"]
        self._stderr = tempfile.TemporaryFile()
        # A session of its own: a terminal's Ctrl-C (sent to the whole foreground process group), a
        # hang-up or `timeout` then reach the engine only, which lets requests in flight finish against
        # a target still alive and stops it after the log is written. If the engine dies by SIGKILL,
        # --exit-with-parent still ends it.
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=env, start_new_session=True
        )
        try:
            assert self._proc.stdin is not None
            try:
                if self.config is not None:
                    self._proc.stdin.write(orjson.dumps(self.config.to_dict()))
                self._proc.stdin.close()
            except BrokenPipeError:
                pass  # it died at once; _read_banner reports why
            self.base_url = self._read_banner()
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop()

    @property
    def pid(self) -> int | None:
        """The subprocess's process id while it runs, else None (e.g. to meter its CPU). Usage: ``sim.pid``"""
        return None if self._proc is None else self._proc.pid

    @property
    def port(self) -> int:
        """The port the subprocess listens on."""
        return int(self.base_url.rsplit(":", 1)[1].split("/", 1)[0])

    def stats(self) -> dict[str, Any]:
        """The sim's counters (``GET /sim/stats``): requests, completions, by_status, by_model, ...

        Usage: ``sim.stats()["by_status"]["429"]``
        """
        url = self.base_url.removesuffix("/v1") + "/sim/stats"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                stats: dict[str, Any] = orjson.loads(response.read())
        except (OSError, orjson.JSONDecodeError) as exc:  # URLError is an OSError
            raise EndpointError(f"the built-in target did not give its counts ({exc})") from exc
        return stats

    def _read_banner(self) -> str:
        assert self._proc is not None and self._proc.stdout is not None
        deadline = time.monotonic() + self.start_timeout
        out = b""
        with selectors.DefaultSelector() as selector:
            selector.register(self._proc.stdout, selectors.EVENT_READ)
            while b"\n" not in out:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise EndpointError(f"sim subprocess did not start within {self.start_timeout:g} s")
                if not selector.select(left):
                    continue
                chunk = os.read(self._proc.stdout.fileno(), 4096)
                if not chunk:
                    raise EndpointError(f"sim subprocess exited at start: {self._stderr_tail()}")
                out += chunk
        match = _BANNER_URL.search(out)
        if match is None:
            raise EndpointError(f"sim subprocess printed an unexpected line: {out.strip()[:200]!r}")
        return match.group(1).decode()

    def _stderr_tail(self) -> str:
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=2)
        if self._stderr is None:
            return "no output"
        self._stderr.seek(0)
        lines = self._stderr.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else "no output"

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
