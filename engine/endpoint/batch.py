"""What both Batch APIs share: a batch's state, one item's result, and the control requests' HTTP.

A provider's Batch API (OpenAI Batch, Anthropic Message Batches) takes many requests at once and
answers them within 24 hours at half the price. The wire formats differ
(:mod:`engine.endpoint.batch_openai`, :mod:`engine.endpoint.batch_anthropic`); what the run needs of
them is the same: put one request in a line, submit, ask how far it got, fetch the results, and read
each result back into the body the online API would have sent, so the one adapter of
:mod:`engine.endpoint.apis` reads both routes' replies.

Control requests (upload, create, retrieve, cancel, download) are few and not paced by a limiter;
they are retried here on connection errors, 408/409/429 and 5xx, with capped exponential backoff.
401/403/404 and other 4xx stop the run with an EndpointError naming the step.

Usage::

    http = BatchHttp(transport=transport, base_url=url, headers=batch_headers("chat", key), attempts=5, timeout_s=600)
    response = await http.call("GET", "/batches/batch_1", step="retrieve")
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field

import anyio
import orjson

from engine.endpoint.apis import API
from engine.endpoint.retry import retry_after
from engine.endpoint.transport import Response, Transport
from engine.errors import EndpointError, TransportError

__all__ = ["BatchHttp", "BatchStatus", "ItemResult", "batch_headers", "error_text"]

_RETRY = frozenset({408, 409, 429})


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchStatus:
    """One batch as the provider last described it.

    ``ended``: nothing more will change (OpenAI completed/failed/expired/cancelled; Anthropic ended).
    ``downloads``: what to fetch for the results (file ids at OpenAI, the batch id at Anthropic).
    ``failure``: why the batch as a whole was refused (validation, enqueued-token limit), else None.
    Usage: ``status.ended and not status.failure``
    """

    id: str
    state: str
    ended: bool
    counts: Mapping[str, int] = field(default_factory=dict)
    downloads: tuple[str, ...] = ()
    failure: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ItemResult:
    """One request's result, matched by ``custom_id`` (the task key).

    ``body`` is the reply as the online API sends it (read with ``API[api].parse``), or None with
    ``error`` saying why (errored, expired, canceled); ``retry`` says whether another batch may help
    (server errors, expiry, cancellation) or not (a request the API refuses).
    Usage: ``ItemResult(custom_id=key, body=b"{...}", status=200)``
    """

    custom_id: str
    body: bytes | None
    status: int | None = None
    error: str | None = None
    retry: bool = False


def batch_headers(api: str, key: str | None) -> dict[str, str]:
    """The headers every control request of one API carries: its version, the key where it wants it.

    Usage: ``batch_headers("anthropic", key)  # {'anthropic-version': ..., 'x-api-key': ...}``
    """
    adapter = API[api]
    return {**adapter.headers, **(adapter.auth(key) if key else {})}


def error_text(body: bytes) -> str:
    """The provider's error code or message from an error body, short (either provider's shape)."""
    try:
        error = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return ""
    if isinstance(error, dict):
        inner = error.get("error")  # Anthropic's errored item nests {"type": "error", "error": {...}}
        if isinstance(inner, dict):
            error = inner
        return str(error.get("code") or error.get("type") or error.get("message") or "")[:120]
    return str(error)[:120] if error else ""


class BatchHttp:
    """The control requests of one Batch API at one endpoint, retried. Usage: see the module docstring."""

    def __init__(self, *, transport: Transport, base_url: str, headers: Mapping[str, str], attempts: int,
                 timeout_s: float, backoff_s: float = 1.0, cap_s: float = 60.0, rng: random.Random | None = None):
        self.transport = transport
        self.base_url = base_url.rstrip("/")
        self.headers = dict(headers)
        self.attempts = attempts
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.cap_s = cap_s
        self.calls = 0
        self._secret = [v for k, v in headers.items() if k.lower() in ("authorization", "x-api-key")]
        self._rng = rng or random.Random()

    async def call(self, method: str, path: str, *, step: str, body: bytes | None = None,
                   content_type: str = "application/json") -> Response:
        """One control request; returns a 2xx response or raises EndpointError (after retries for transient ones)."""
        url = f"{self.base_url}{path}"
        headers = {**self.headers, **({"Content-Type": content_type} if body is not None else {})}
        problem = "no attempt made"
        for attempt in range(1, self.attempts + 1):
            self.calls += 1
            wait: float | None = None
            try:
                response = await self.transport.request(method, url, body=body, headers=headers, timeout=self.timeout_s)
            except TransportError as exc:
                problem = str(exc)
            else:
                if 200 <= response.status < 300:
                    return response
                detail = self._clean(error_text(response.body))
                problem = f"http {response.status} {detail}".strip()
                if response.status in (401, 403):
                    raise EndpointError(f"{url}: the API key was refused (HTTP {response.status}) at batch {step}")
                if response.status not in _RETRY and response.status < 500:
                    raise EndpointError(f"{url}: batch {step} answered {problem}")
                wait = retry_after(response.headers)
            if attempt < self.attempts:
                if wait is None:
                    wait = self._rng.uniform(0, min(self.cap_s, self.backoff_s * 2 ** (attempt - 1)))
                await anyio.sleep(min(wait, self.cap_s))
        raise EndpointError(f"{url}: batch {step} failed after {self.attempts} attempts ({problem})")

    def _clean(self, text: str) -> str:
        for secret in self._secret:
            token = secret.removeprefix("Bearer ")
            if token and token in text:
                text = text.replace(token, "[api key]")
        return text
