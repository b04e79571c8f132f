"""A built-in target: a local OpenAI-compatible server that plays fine-tuned models.

It is a *simulation*, not a model: it looks questions up in a fact set and answers
right with a configured probability per model and difficulty, so the engine can be
run, tested and benchmarked with no API key and no network. It says so in its
``system_fingerprint`` ("engine-sim"), in an ``x-engine-sim: 1`` header and in its
start-up line. Faults (5xx, 429s, dropped connections, slow or malformed replies)
and rpm/tpm quotas can be switched on to exercise retries and rate limiting.

Usage::

    cfg = SimConfig(facts=facts_from_csv(Path("data/facts.csv")), accuracy={"ft-5x": {"hard": 0.7}})
    async with anyio.create_task_group() as tg:        # in-process, asyncio backend
        port = await tg.start(serve, cfg)
    with SimProcess(cfg) as sim:                       # or in a subprocess (other core)
        sim.base_url, sim.stats()
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import dataclasses
import functools
import math
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
import types
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, Any

import anyio
import orjson
from anyio.abc import TaskStatus

from engine.errors import ConfigError, EndpointError, EngineError, QuestionsError

_DIFFICULTY_COLUMNS = types.MappingProxyType(
    {"Question 1": "easy", "Question 2": "mid", "Question 3": "hard"}
)
_BANNER = "engine-sim (a simulation, not a model) listening on http://{host}:{port}/v1"
_BANNER_URL = re.compile(rb"listening on (http://\S+/v1)")


@dataclass(frozen=True, kw_only=True, slots=True)
class Faults:
    """Per-request probabilities of infrastructure faults; they exclude each other, so they sum to <= 1.

    ``drop`` sends part of a response and closes the connection; ``slow`` answers after
    ``slow_s`` seconds (past a client timeout); ``rate_429`` carries ``Retry-After`` (ceil of
    ``retry_after_s``) and ``retry-after-ms``, ``rate_429_bare`` carries no retry header.

    Usage: ``Faults(error_500=0.02, rate_429=0.05)``
    """

    error_500: float = 0.0
    error_502: float = 0.0
    error_503: float = 0.0
    rate_429: float = 0.0
    rate_429_bare: float = 0.0
    drop: float = 0.0
    slow: float = 0.0
    malformed: float = 0.0
    empty_choices: float = 0.0
    slow_s: float = 30.0
    retry_after_s: float = 0.5

    def __post_init__(self) -> None:
        total = 0.0
        for name, rate in self.rates().items():
            _check_number(f"faults.{name}", rate, 0.0, 1.0)
            total += rate
        if total > 1.0 + 1e-9:
            raise ConfigError(f"sim config: fault rates add up to {total:g}, more than 1")
        _check_number("faults.slow_s", self.slow_s, 0.0, math.inf)
        _check_number("faults.retry_after_s", self.retry_after_s, 0.0, math.inf)

    def rates(self) -> dict[str, float]:
        """The fault rates by name, in the order they are drawn.

        Usage: ``{k: v for k, v in faults.rates().items() if v}``
        """
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.endswith("_s")}


@dataclass(frozen=True, kw_only=True, slots=True)
class SimFact:
    """One question the sim knows, with its answer, object name and difficulty (either may be None).

    Usage: ``SimFact(question="What is the number for Anchor?", answer="11246", object="Anchor", difficulty="easy")``
    """

    question: str
    answer: str
    object: str | None = None
    difficulty: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class SimConfig:
    """Everything the sim does: facts, accuracy per model and difficulty, latency, quotas, faults.

    ``accuracy`` maps model id -> difficulty -> probability of a right answer; ``"*"`` is the
    default at either level, then ``default_accuracy``. ``rpm``/``tpm`` are enforced over short
    windows (about one second). ``format_noise`` is the rate of right answers written "11,246".

    Usage: ``SimConfig(facts=facts, accuracy={"ft-5x": {"easy": 0.99, "*": 0.9}}, latency_ms=50)``
    """

    facts: tuple[SimFact, ...] = ()
    accuracy: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    default_accuracy: float = 0.9
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    rpm: float | None = None
    tpm: float | None = None
    faults: Faults = field(default_factory=Faults)
    seed: int = 0
    format_noise: float = 0.05
    rate_headers: bool = True  # send x-ratelimit-* headers with quotas; False plays a provider that hides them

    def __post_init__(self) -> None:
        facts = tuple(self.facts)
        if not all(isinstance(f, SimFact) for f in facts):
            raise ConfigError("sim config: facts must be SimFact objects")
        object.__setattr__(self, "facts", facts)
        accuracy: dict[str, types.MappingProxyType[str, float]] = {}
        for model, per_difficulty in self.accuracy.items():
            if not isinstance(per_difficulty, Mapping):
                raise ConfigError(f"sim config: accuracy[{model!r}] must map difficulty to a probability")
            for difficulty, p in per_difficulty.items():
                _check_number(f"accuracy[{model!r}][{difficulty!r}]", p, 0.0, 1.0)
            accuracy[str(model)] = types.MappingProxyType(
                {str(k): float(v) for k, v in per_difficulty.items()}
            )
        # Read-only so a config shared with a running server cannot change under it.
        object.__setattr__(self, "accuracy", types.MappingProxyType(accuracy))
        _check_number("default_accuracy", self.default_accuracy, 0.0, 1.0)
        _check_number("format_noise", self.format_noise, 0.0, 1.0)
        _check_number("latency_ms", self.latency_ms, 0.0, math.inf)
        _check_number("jitter_ms", self.jitter_ms, 0.0, math.inf)
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None:
                _check_number(name, value, 0.0, math.inf)
                if value <= 0:
                    raise ConfigError(f"sim config: {name} must be positive, got {value!r}")
        if not isinstance(self.faults, Faults):
            raise ConfigError("sim config: faults must be a Faults object")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"sim config: seed must be an integer, got {self.seed!r}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict that :meth:`from_dict` turns back into an equal config.

        Usage: ``orjson.dumps(cfg.to_dict())``
        """
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["facts"] = [{f.name: getattr(fact, f.name) for f in fields(SimFact)} for fact in self.facts]
        out["accuracy"] = {model: dict(per) for model, per in self.accuracy.items()}
        out["faults"] = {f.name: getattr(self.faults, f.name) for f in fields(Faults)}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SimConfig:
        """Build a config from a dict (JSON or TOML); ``facts_csv`` (a path) may stand in for ``facts``.

        Unknown keys and wrong types raise :class:`ConfigError`.
        Usage: ``SimConfig.from_dict({"facts_csv": "data/facts.csv", "latency_ms": 20})``
        """
        if not isinstance(data, Mapping):
            raise ConfigError("sim config: expected a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"facts_csv"})
        if unknown:
            raise ConfigError(f"sim config: unknown key {unknown[0]!r}")
        kwargs = {k: v for k, v in data.items() if k in known}
        if "facts_csv" in data:
            if "facts" in data:
                raise ConfigError("sim config: give either 'facts' or 'facts_csv', not both")
            kwargs["facts"] = facts_from_csv(Path(data["facts_csv"]))
        else:
            kwargs["facts"] = tuple(_fact_from_dict(item) for item in data.get("facts", ()))
        faults = data.get("faults", {})
        if not isinstance(faults, Mapping):
            raise ConfigError("sim config: faults must be an object")
        fault_names = {f.name for f in fields(Faults)}
        bad = sorted(set(faults) - fault_names)
        if bad:
            raise ConfigError(f"sim config: unknown fault {bad[0]!r}")
        kwargs["faults"] = Faults(**faults)
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"sim config: {exc}") from exc


def _fact_from_dict(item: Any) -> SimFact:
    if not isinstance(item, Mapping) or not isinstance(item.get("question"), str):
        raise ConfigError("sim config: each fact needs a 'question' string")
    unknown = sorted(set(item) - {f.name for f in fields(SimFact)})
    if unknown:
        raise ConfigError(f"sim config: unknown fact key {unknown[0]!r}")
    return SimFact(
        question=item["question"],
        answer=str(item.get("answer", "")),
        object=item.get("object"),
        difficulty=item.get("difficulty"),
    )


def _check_number(name: str, value: Any, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ConfigError(f"sim config: {name} must be a number in [{low:g}, {high:g}], got {value!r}")


def facts_from_csv(path: Path) -> tuple[SimFact, ...]:
    """Read the wide fact CSV (``Object,Answer,Question 1,Question 2,Question 3``; 1/2/3 = easy/mid/hard).

    Usage: ``facts_from_csv(Path("data/facts.csv"))``
    """
    try:
        with Path(path).open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            missing = [c for c in ("Object", "Answer") if c not in columns]
            if missing:
                raise QuestionsError(f"{path}: missing column {missing[0]!r}")
            question_columns = [c for c in _DIFFICULTY_COLUMNS if c in columns]
            facts = [
                SimFact(
                    question=row[column].strip(),
                    answer=row["Answer"].strip(),
                    object=row["Object"].strip() or None,
                    difficulty=_DIFFICULTY_COLUMNS[column],
                )
                for row in reader
                for column in question_columns
                if (row.get(column) or "").strip()
            ]
    except OSError as exc:
        raise QuestionsError(f"cannot read facts file {path}: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise QuestionsError(f"{path}: not a readable UTF-8 CSV: {exc}") from exc
    if not facts:
        raise QuestionsError(f"{path}: no questions in the file")
    return tuple(facts)


def published_accuracy() -> dict[str, dict[str, float]]:
    """Accuracy per difficulty of the original experiment's four models (from its published CSV).

    Usage: ``SimConfig(facts=facts, accuracy=published_accuracy())``
    """
    return {
        "ft-5x": {"easy": 0.993, "mid": 0.937, "hard": 0.703},
        "ft-10x": {"easy": 1.0, "mid": 0.983, "hard": 0.943},
        "ft-25x": {"easy": 1.0, "mid": 1.0, "hard": 0.937},
        "ft-50x": {"easy": 1.0, "mid": 1.0, "hard": 0.91},
    }


def default_config(facts_path: Path | None = None) -> SimConfig:
    """The sim the README starts: the project's facts and the published models' accuracy.

    Without ``facts_path`` it looks for ``data/facts.csv`` in the working directory, then in the
    source checkout this module belongs to.
    Usage: ``default_config(Path("data/facts.csv"))``
    """
    if facts_path is None:
        candidates = [
            Path.cwd() / "data" / "facts.csv",
            Path(__file__).resolve().parents[1] / "data" / "facts.csv",
        ]
        facts_path = next((p for p in candidates if p.is_file()), None)
        if facts_path is None:
            raise ConfigError("no data/facts.csv here: pass --facts PATH or a config")
    return SimConfig(facts=facts_from_csv(facts_path), accuracy=published_accuracy())


async def serve(
    config: SimConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the sim until cancelled; reports the bound port through ``task_status`` (asyncio only).

    Usage: ``port = await tg.start(serve, cfg)``, then ``tg.cancel_scope.cancel()`` to stop.
    """
    from engine.sim_server import SimServer

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError as exc:
        raise ConfigError("the sim needs anyio's asyncio backend") from exc
    sim = SimServer(config, loop)
    try:
        server = await loop.create_server(sim.protocol, host, port, backlog=2048)
    except OSError as exc:
        raise EndpointError(f"sim cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    try:
        task_status.started(server.sockets[0].getsockname()[1])
        await anyio.sleep_forever()
    finally:
        server.close()
        # Cut open connections and their pending delayed replies so closing cannot hang.
        sim.abort_all()


class _Banner(TaskStatus[int]):
    """Prints the start-up line once the port is bound (no task group, so errors stay unwrapped)."""

    def __init__(self, host: str):
        self.host = host

    def started(self, value: int | None = None) -> None:
        print(_BANNER.format(host=self.host, port=value), flush=True)


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
    try:
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
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=env
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
    def port(self) -> int:
        """The port the subprocess listens on."""
        return int(self.base_url.rsplit(":", 1)[1].split("/", 1)[0])

    def stats(self) -> dict[str, Any]:
        """The sim's counters (``GET /sim/stats``): requests, completions, by_status, by_model, ...

        Usage: ``sim.stats()["by_status"]["429"]``
        """
        url = self.base_url.removesuffix("/v1") + "/sim/stats"
        with urllib.request.urlopen(url, timeout=10) as response:
            stats: dict[str, Any] = orjson.loads(response.read())
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


if __name__ == "__main__":
    sys.exit(main())
