"""The client: one request per task, paced, retried, never silently dropped, in any of three APIs.

Each task is asked through its model's API (``api="chat" | "responses" | "anthropic"``, see
:mod:`engine.endpoint.apis`): the adapter builds the body and reads the reply; everything below
holds for all three. Anthropic's 529 ``overloaded_error`` is a 5xx, retried like 503.

Retried: 429 (waiting as long as ``Retry-After``/``retry-after-ms`` asks), 408, 409,
5xx, connection errors, timeouts, and a 200 whose body is not a valid completion.
Waits are jittered exponential backoff, capped. A task that runs out of attempts
comes back as failed with its reason; it is logged, not lost.

Not retried, because retrying cannot help: 400/422 fail the task, and so does a 200
whose message has no text (``content: null``, no text blocks or output_text parts, a refusal:
a content filter, a tool call; the reason names the finish or stop reason; an empty string
is a reply); 401/403 (bad key),
404 (not an OpenAI-compatible endpoint, or unknown model) stop the run with an
EndpointError; a 429 saying the quota is spent (``insufficient_quota``) stops it
with QuotaExhausted.

Usage::

    client = ChatClient(base_url="http://127.0.0.1:8000/v1", api_key=None,
                        transport=Http11Transport(concurrency=64),
                        limiter=EndpointLimiter(LimitConfig()), policy=RetryPolicy())
    result = await client.complete(model="sim", messages=[...], temperature=0.0, max_tokens=32)
    result = await client.complete(model="claude-x", messages=[...], temperature=0.0, max_tokens=32, api="anthropic")
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import anyio
import orjson

from engine.endpoint.apis import API, Api, NoText
from engine.endpoint.limits import EndpointLimiter, Slot
from engine.endpoint.retry import RetryPolicy, retry_after
from engine.endpoint.transport import Response, Transport
from engine.errors import EndpointError, QuotaExhausted, TransportError

__all__ = ["ChatClient", "Completion", "EndpointStats", "NoText", "path_hint"]

RETRY_STATUSES = frozenset({408, 409, 429})
FATAL_STATUSES = frozenset({401, 403, 404})
_VERSION_SEGMENT = re.compile(r"v\d+[a-z0-9]*", re.IGNORECASE)  # v1, v2beta, v1alpha1: an API version


@dataclass(slots=True)
class EndpointStats:
    """Live counters of one endpoint, read by the progress display."""

    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    failures: int = 0


@dataclass(slots=True)
class Completion:
    """The outcome of one task's requests: the reply, or why there is none."""

    reply: str | None
    error: str | None
    attempts: int
    http: list[int] = field(default_factory=list)
    latency_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    @property
    def ok(self) -> bool:
        return self.reply is not None


class ChatClient:
    """Asks one endpoint, each task through its model's API (chat by default). Usage: see the module docstring."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None,
        transport: Transport,
        limiter: EndpointLimiter,
        policy: RetryPolicy,
        label: str = "",
        rng: random.Random | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"  # the chat URL, as named in messages and tests
        self.label = label or base_url
        self.transport = transport
        self.limiter = limiter
        self.policy = policy
        self.stats = EndpointStats()
        self._rng = rng or random.Random()
        self._api_key = api_key
        # (url, headers) per API, made once: a task picks its model's by name.
        self._routes = {
            name: (f"{self.base_url}{api.path}",
                   {"Content-Type": "application/json", **api.headers, **(api.auth(api_key) if api_key else {})})
            for name, api in API.items()
        }

    async def complete(
        self,
        *,
        model: str,
        messages: list[dict[str, str]],
        temperature: float,
        max_tokens: int,
        params: Mapping[str, Any] | None = None,
        on_send: Callable[[], None] | None = None,
        api: str = "chat",
    ) -> Completion:
        """Ask once, retrying as the policy allows; never raises for a per-task failure.

        ``on_send`` is called right before each attempt goes out, after the limiter admitted
        it: once per request really sent, never for one still waiting out a pause (the
        write-ahead journal hangs here).
        """
        adapter = API[api]
        url, headers = self._routes[api]
        body = adapter.body(model, messages, temperature, max_tokens, params)
        prompt_chars = sum(len(m["content"]) for m in messages)
        statuses: list[int] = []
        error = "no attempt made"
        wait: float | None
        attempt = 0
        slot = self.limiter.slot(prompt_chars=prompt_chars, max_tokens=max_tokens, prompt_messages=len(messages))
        while attempt < self.policy.max_attempts:
            attempt += 1
            async with slot:  # waits for this endpoint's pacing; the place is freed however the attempt ends
                self.stats.requests += 1
                started = time.perf_counter()
                try:
                    if on_send is not None:
                        on_send()
                    response = await self.transport.request(
                        "POST", url, body=body, headers=headers, timeout=self.policy.timeout_s
                    )
                except TransportError as exc:
                    error = str(exc)
                    wait = self.policy.backoff(attempt, self._rng)
                else:
                    latency_ms = (time.perf_counter() - started) * 1000
                    statuses.append(response.status)
                    outcome = self._handle(response, slot, model, attempt, adapter, url)
                    if isinstance(outcome, Completion):
                        outcome.attempts, outcome.http, outcome.latency_ms = attempt, statuses, latency_ms
                        return outcome
                    error, wait = outcome
            if wait is None:
                break
            if attempt < self.policy.max_attempts:
                self.stats.retries += 1
                await anyio.sleep(min(wait, self.policy.max_wait_s))
        self.stats.failures += 1
        return Completion(reply=None, error=f"{error} (after {attempt} attempt{'s' * (attempt > 1)})",
                          attempts=attempt, http=statuses)

    def _handle(self, response: Response, slot: Slot, model: str, attempt: int, api: Api,
                url: str) -> Completion | tuple[str, float | None]:
        """A Completion when done; else (reason, wait before retrying or None for no retry)."""
        status = response.status
        # The provider's rate-limit headers in the one shape the limiter reads (OpenAI's: as they come).
        rate_headers = response.headers if api.rate_headers is None else api.rate_headers(response.headers)
        if status == 200:
            parsed = api.parse(response.body)
            slot.observe(status, rate_headers, parsed[1] if isinstance(parsed, tuple) else None)
            if isinstance(parsed, NoText):
                return parsed.reason, None  # the model chose not to write text: asking again gives the same
            if isinstance(parsed, str):
                return parsed, self.policy.backoff(attempt, self._rng)
            reply, tokens = parsed
            prompt_tokens, completion_tokens = tokens if tokens is not None else (None, None)
            return Completion(reply=reply, error=None, attempts=0, prompt_tokens=prompt_tokens,
                              completion_tokens=completion_tokens)
        slot.observe(status, rate_headers)
        detail = _error_detail(response.body)
        if self._api_key and self._api_key in detail:
            detail = detail.replace(self._api_key, "[api key]")  # a provider or proxy echoing it
        if status == 429:
            self.stats.rate_limited += 1
            if "insufficient_quota" in detail:
                raise QuotaExhausted(f"{self.label}: the provider says the quota is spent ({detail}); retrying cannot help")
            asked = retry_after(rate_headers)
            return f"http 429 {detail}".strip(), asked if asked is not None else self.policy.backoff(attempt, self._rng)
        if status in FATAL_STATUSES:
            raise EndpointError(_fatal_message(self.label, self.base_url, url, model, status, detail, api.name))
        if status in RETRY_STATUSES or status >= 500:  # Anthropic's 529 overloaded_error among them
            asked = retry_after(rate_headers)
            wait = self.policy.backoff(attempt, self._rng) if asked is None else asked
            return f"http {status} {detail}".strip(), wait
        return f"http {status} {detail}".strip(), None


def path_hint(base_url: str) -> str:
    """"did you mean <base_url>/v1?" when ``base_url`` ends in no version segment (``/v1``), else "".

    Shown with a 404: an OpenAI-compatible server at the root of a host serves its API under /v1.
    Usage: ``path_hint("http://host:8000")  # 'did you mean http://host:8000/v1?'``
    """
    last = urlsplit(base_url).path.rstrip("/").rsplit("/", 1)[-1]
    if _VERSION_SEGMENT.fullmatch(last):
        return ""
    return f"did you mean {base_url.rstrip('/')}/v1?"


def _error_detail(body: bytes) -> str:
    """The provider's error code or message, short, for the log (never echoes request headers)."""
    try:
        error = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return "(not JSON)" if body.lstrip()[:1] == b"<" else ""
    if isinstance(error, dict):
        text = error.get("code") or error.get("type") or error.get("message") or ""
        return str(text)[:120]
    return str(error)[:120] if error else ""


_KIND = {"chat": "an OpenAI-compatible", "responses": "an OpenAI Responses", "anthropic": "an Anthropic Messages"}


def _fatal_message(label: str, base_url: str, url: str, model: str, status: int, detail: str, api: str) -> str:
    if status in (401, 403):
        return f"{label}: {url} refused the API key (HTTP {status}); check the key's variable"
    hint = path_hint(base_url) if status == 404 else ""
    if detail == "(not JSON)" or not detail:
        text = f"{label}: {url} answered HTTP {status} {detail}".rstrip()
        return f"{text}; is base_url {_KIND[api]} /v1 endpoint?{' ' + hint if hint else ''}"
    # Even a JSON 404 naming the model may come from a server whose API sits under /v1.
    return (f"{label}: {url} answered HTTP {status} ({detail}); is the model {model!r} served there?"
            f"{f' (base_url has no /v1: {hint})' if hint else ''}")
