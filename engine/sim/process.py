"""The sim in a child process: :class:`SimProcess` (the sim in this process: :func:`engine.sim.serve.serve`).

The child is ``python -m engine.sim`` (:mod:`engine.sim.__main__`), which prints the start-up
banner (:data:`engine.sim.serve.BANNER`) once its port is bound; :class:`SimProcess` (the parent)
starts it and reads the banner to learn the URL. This module imports no event loop and no server,
so a run loads it before the child is spawned at no cost to either.

Usage::

    with SimProcess(cfg) as sim:                       # in a child process (another core)
        sim.base_url, sim.pid, sim.stats()
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import orjson

from engine.errors import EndpointError
from engine.sim.config import SimConfig

# What engine.sim.serve.BANNER says once the port is bound.
_BANNER_URL = re.compile(rb"listening on (http://\S+/v1)")


def _get(host: str, port: int, path: bytes, *, timeout: float) -> bytes:
    """The body of a ``GET`` answered 200 by the sim, over a plain socket: urllib would import
    http.client and ssl (about 0.02 s) on a run's way to its first request, for one call at its end."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n\r\n" % (path, host.encode(), port))
        reply = b"".join(iter(functools.partial(sock.recv, 65536), b""))
    head, _, body = reply.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if status.split(b" ", 2)[1:2] != [b"200"]:
        raise OSError(f"GET {path.decode()} answered {status[:60].decode(errors='replace')!r}")
    return body


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
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    @classmethod
    def spawned(cls, *, host: str = "127.0.0.1", start_timeout: float = 30.0) -> SimProcess:
        """A child started now that loads its interpreter and modules, then waits for :meth:`configure`.

        For a caller that knows it will need the sim before it knows the config: the child's
        start-up (about 0.2 s) then overlaps the caller's own. Stop it like any other (``with`` or
        :meth:`stop`); one never configured exits on its own once its parent's end of the pipe closes.
        Usage: ``sim = SimProcess.spawned(); ...; sim.configure(cfg); sim.wait_ready()``
        """
        sim = cls(host=host, start_timeout=start_timeout)
        sim._spawn(config_on_stdin=True)
        return sim

    def start(self) -> None:
        """Spawn the subprocess and hand it its config, without waiting for it to listen.

        Its start-up (about 0.2 s: an interpreter and imports) then runs on another core while the
        caller does its own preparing; :meth:`wait_ready` waits for it. Use it inside a ``with``
        block whose exit stops the process (e.g. ``stack.push(sim); sim.start()``).
        Usage: ``sim.start(); ...; sim.wait_ready()``
        """
        if self._proc is not None:
            return
        self._spawn(config_on_stdin=self.config is not None)
        self.configure(self.config)

    def configure(self, config: SimConfig | None) -> None:
        """Hand a spawned child its config (None: the defaults) and let it start listening.

        Usage: ``sim.configure(cfg)``
        """
        self.config = config
        proc = self._proc
        assert proc is not None and proc.stdin is not None, "spawn the sim before configuring it"
        try:
            if config is not None:
                proc.stdin.write(orjson.dumps(config.to_dict()))
            proc.stdin.close()
        except BrokenPipeError:
            pass  # it died at once; wait_ready reports why

    def _spawn(self, *, config_on_stdin: bool) -> None:
        root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        cmd = [sys.executable, "-m", "engine.sim", "--host", self.host, "--port", "0", "--exit-with-parent"]
        if config_on_stdin:
            cmd += ["--config-file", "-"]
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop, on every way out)
        # A session of its own: a terminal's Ctrl-C (sent to the whole foreground process group), a
        # hang-up or `timeout` then reach the engine only, which lets requests in flight finish against
        # a target still alive and stops it after the log is written. If the engine dies by SIGKILL,
        # --exit-with-parent still ends it.
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=env, start_new_session=True
        )

    def wait_ready(self) -> str:
        """Wait until the subprocess listens; returns (and sets) its ``base_url``. Usage: ``sim.wait_ready()``"""
        if not self.base_url:
            self.base_url = self._read_banner()
        return self.base_url

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

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
        try:
            stats: dict[str, Any] = orjson.loads(_get(self.host, self.port, b"/sim/stats", timeout=10))
        except (OSError, orjson.JSONDecodeError) as exc:
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

    def stop(self) -> None:
        """Stop the child if it runs (idempotent). Usage: ``sim.stop()``"""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None and not pipe.closed:
                    with contextlib.suppress(BrokenPipeError):
                        pipe.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
