"""The endpoints of a run: local targets started and stopped, a preflight, headers, the transport.

Usage::

    with local_targets(spec, questions) as (urls, sim):
        await preflight(default_transport(8), urls["m1"], api_headers("chat", None), "'m1'")
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import anyio

from engine.endpoint.apis import API
from engine.endpoint.client import path_hint
from engine.endpoint.http11 import Http11Transport
from engine.endpoint.retry import RetryPolicy
from engine.endpoint.transport import Transport
from engine.errors import EndpointError, EngineError, TransportError
from engine.experiment.questions import Question
from engine.experiment.spec import Spec
from engine.run.targets import sim_config
from engine.sim.config import SIM_URL
from engine.sim.process import SimProcess


@contextlib.contextmanager
def local_targets(
    spec: Spec, questions: Sequence[Question], *, sim_url: str | None = None, spawned: SimProcess | None = None,
) -> Iterator[tuple[dict[str, str], SimProcess | None]]:
    """Start the built-in target and local GGUF servers the spec needs; stop them on exit.

    With ``sim_url`` the built-in target is the one already serving there (a fleet's, so its quota is
    the fleet's), not a new one; with ``spawned``, it is that child, already loading
    (:func:`engine.run.early.early_target`), handed its config here.
    Yields ``({model label: base_url}, sim process or None)``.
    Usage: ``with local_targets(spec, questions) as (urls, sim): ...``
    """
    urls: dict[str, str] = {}
    sim: SimProcess | None = None
    with contextlib.ExitStack() as stack:
        if sim_url is None and any(m.base_url == SIM_URL for m in spec.models):
            config = sim_config(spec, questions)
            sim = spawned or SimProcess(config)
            stack.push(sim)  # stopped on the way out, whatever happens from here on
            if spawned is None:
                sim.start()
            else:
                sim.configure(config)
        servers: dict[str, str] = {}
        for model in spec.models:
            if model.gguf is not None and model.gguf not in servers:
                from engine.local.serve import llama_server

                source = model.gguf if model.gguf == "smollm2" else spec.path.parent / model.gguf
                servers[model.gguf] = stack.enter_context(llama_server(source, n_parallel=min(model.concurrency, 8)))
        for model in spec.models:
            if model.gguf is not None:
                urls[model.name] = servers[model.gguf]
            elif model.base_url == SIM_URL:
                assert sim is not None or sim_url is not None
                urls[model.name] = sim.wait_ready() if sim is not None else str(sim_url)
            else:
                assert model.base_url is not None
                urls[model.name] = model.base_url
        yield urls, sim


async def preflight(
    transport: Transport, base_url: str, headers: dict[str, str], names: str, *, api: str = "chat"
) -> None:
    """Check the endpoint answers HTTP at all, before anything is written. Costs no tokens.

    ``GET {base_url}/models`` with the API's own headers (Anthropic's key goes in ``x-api-key``,
    with ``anthropic-version``); only reachability, a refused key and a non-JSON 404 are judged,
    because the model lists of the providers differ in shape and an OpenAI-compatible server
    may have none.
    Usage: ``await preflight(transport, "http://127.0.0.1:8000/v1", {}, "'m1'")``
    """
    kind = "Anthropic Messages" if api == "anthropic" else "OpenAI-compatible"
    for attempt in range(3):
        try:
            response = await transport.request("GET", f"{base_url}/models", body=None, headers=headers, timeout=10)
        except TransportError as exc:
            if attempt == 2:
                raise EndpointError(f"model {names}: endpoint {base_url} is unreachable ({exc})") from exc
            await anyio.sleep(0.5 * (attempt + 1))
            continue
        if response.status in (401, 403):
            raise EndpointError(f"model {names}: {base_url} refused the API key (HTTP {response.status})")
        if response.status == 404 and not response.body.lstrip().startswith(b"{"):
            hint = path_hint(base_url)
            raise EndpointError(
                f"model {names}: {base_url} does not look {kind} (GET /models answered 404, not JSON)"
                + (f"; {hint}" if hint else "")
            )
        return


def api_headers(api: str, key: str | None) -> dict[str, str]:
    """The headers one API's requests carry besides the body's type: its version, the key where it wants it.

    Usage: ``api_headers("anthropic", key)  # {'anthropic-version': '2023-06-01', 'x-api-key': ...}``
    """
    adapter = API[api]
    return {**adapter.headers, **(adapter.auth(key) if key else {})}


def default_transport(concurrency: int) -> Transport:
    """The default transport: :class:`engine.endpoint.http11.Http11Transport` (HTTP/1.1 of its own
    for ``http://``, aiohttp for ``https://``). Usage: ``default_transport(64)``"""
    return Http11Transport(concurrency=concurrency)


def retry_policy(spec: Spec) -> RetryPolicy:
    """The spec's retry settings as the client's policy. Usage: ``retry_policy(load_spec(path)).max_attempts``"""
    return RetryPolicy(
        max_attempts=spec.max_attempts, base_s=spec.backoff_base_s, cap_s=spec.backoff_cap_s,
        max_wait_s=spec.max_retry_wait_s, timeout_s=spec.timeout_s,
    )


def count_target_requests(sim: SimProcess | None) -> int | None:
    """The built-in target's own count of chat requests; None when it cannot say (or none ran).

    Usage: ``count_target_requests(sim)``
    """
    if sim is None:
        return None
    try:
        return int(sim.stats()["chat_requests"])
    except EngineError:
        return None  # the summary then has no count to print, rather than a traceback after the log is safe
