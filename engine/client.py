"""The chat-completions client: one request per task, paced, retried, never silently dropped.

Retried: 429 (waiting as long as ``Retry-After``/``retry-after-ms`` asks), 408, 409,
5xx, connection errors, timeouts, and a 200 whose body is not a valid completion.
Waits are jittered exponential backoff, capped. A task that runs out of attempts
comes back as failed with its reason; it is logged, not lost.

Not retried, because retrying cannot help: 400/422 fail the task; 401/403 (bad key),
404 (not an OpenAI-compatible endpoint, or unknown model) stop the run with an
EndpointError; a 429 saying the quota is spent (``insufficient_quota``) stops it
with QuotaExhausted.

Usage::

    client = ChatClient(base_url="http://127.0.0.1:8000/v1", api_key=None,
                        transport=AiohttpTransport(concurrency=64),
                        limiter=EndpointLimiter(LimitConfig()), policy=RetryPolicy())
    result = await client.complete(model="sim", messages=[...], temperature=0.0, max_tokens=32)
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson

from engine.errors import EndpointError, QuotaExhausted, TransportError
from engine.limits import EndpointLimiter, RetryPolicy, retry_after
from engine.transport import Response, Transport

__all__ = ["ChatClient", "Completion", "EndpointStats", "RetryPolicy"]  # RetryPolicy lives in limits

RETRY_STATUSES = frozenset({408, 409, 429})
FATAL_STATUSES = frozenset({401, 403, 404})


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
    """Sends chat completions to one OpenAI-compatible endpoint. Usage: see the module docstring."""

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
        self.url = f"{base_url.rstrip('/')}/chat/completions"
        self.label = label or base_url
        self.transport = transport
        self.limiter = limiter
        self.policy = policy
        self.stats = EndpointStats()
        self._rng = rng or random.Random()
        self._headers = {"Content-Type": "application/json"}
        self._api_key = api_key
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    async def complete(
        self,
        *,
        model: str,
        messages: list[dict[str, str]],
        temperature: float,
        max_tokens: int,
        params: Mapping[str, Any] | None = None,
    ) -> Completion:
        """Ask once, retrying as the policy allows; never raises for a per-task failure."""
        body = orjson.dumps(
            {"model": model, "messages": messages, "temperature": temperature, "max_tokens": max_tokens,
             **(params or {})}
        )
        prompt_chars = sum(len(m["content"]) for m in messages)
        statuses: list[int] = []
        error = "no attempt made"
        wait: float | None
        attempt = 0
        while attempt < self.policy.max_attempts:
            attempt += 1
            estimate = self.limiter.estimate(
                prompt_chars=prompt_chars, max_tokens=max_tokens, prompt_messages=len(messages)
            )
            await self.limiter.acquire(estimate)
            self.stats.requests += 1
            started = time.perf_counter()
            try:
                response = await self.transport.request(
                    "POST", self.url, body=body, headers=self._headers, timeout=self.policy.timeout_s
                )
            except TransportError as exc:
                error = str(exc)
                wait = self.policy.backoff(attempt, self._rng)
            else:
                latency_ms = (time.perf_counter() - started) * 1000
                statuses.append(response.status)
                outcome = await self._handle(response, model, prompt_chars, len(messages), attempt)
                if isinstance(outcome, Completion):
                    outcome.attempts, outcome.http, outcome.latency_ms = attempt, statuses, latency_ms
                    return outcome
                error, wait = outcome
            finally:
                self.limiter.release()
            if wait is None:
                break
            if attempt < self.policy.max_attempts:
                self.stats.retries += 1
                await anyio.sleep(min(wait, self.policy.max_wait_s))
        self.stats.failures += 1
        return Completion(reply=None, error=f"{error} (after {attempt} attempt{'s' * (attempt > 1)})",
                          attempts=attempt, http=statuses)

    async def _handle(
        self, response: Response, model: str, prompt_chars: int, prompt_messages: int, attempt: int
    ) -> Completion | tuple[str, float | None]:
        """A Completion when done; else (reason, wait before retrying or None for no retry)."""
        status = response.status
        if status == 200:
            parsed = _parse_completion(response.body)
            usage = None if isinstance(parsed, str) else parsed[1]
            await self.limiter.observe(
                status=status, headers=response.headers, usage=usage, prompt_chars=prompt_chars,
                prompt_messages=prompt_messages,
            )
            if isinstance(parsed, str):
                return parsed, self.policy.backoff(attempt, self._rng)
            reply, tokens = parsed
            prompt_tokens, completion_tokens = tokens if tokens is not None else (None, None)
            return Completion(reply=reply, error=None, attempts=0, prompt_tokens=prompt_tokens,
                              completion_tokens=completion_tokens)
        await self.limiter.observe(status=status, headers=response.headers)
        detail = _error_detail(response.body)
        if self._api_key and self._api_key in detail:
            detail = detail.replace(self._api_key, "[api key]")  # a provider or proxy echoing it
        if status == 429:
            self.stats.rate_limited += 1
            if "insufficient_quota" in detail:
                raise QuotaExhausted(f"{self.label}: the provider says the quota is spent ({detail}); retrying cannot help")
            asked = retry_after(response.headers)
            return f"http 429 {detail}".strip(), asked if asked is not None else self.policy.backoff(attempt, self._rng)
        if status in FATAL_STATUSES:
            raise EndpointError(_fatal_message(self.label, self.url, model, status, detail))
        if status in RETRY_STATUSES or status >= 500:
            asked = retry_after(response.headers)
            wait = self.policy.backoff(attempt, self._rng) if asked is None else asked
            return f"http {status} {detail}".strip(), wait
        return f"http {status} {detail}".strip(), None


def _parse_completion(body: bytes) -> tuple[str, tuple[int, int] | None] | str:
    """(reply, (prompt_tokens, completion_tokens)) from a completion body, or why it is not one."""
    try:
        data = orjson.loads(body)
        message = data["choices"][0]["message"]
        content = message.get("content") or ""
    except orjson.JSONDecodeError:
        return "malformed completion: body is not JSON"
    except (KeyError, IndexError, TypeError, AttributeError):
        return "malformed completion: no choices[0].message"
    if not isinstance(content, str):
        return "malformed completion: message content is not text"
    usage = data.get("usage")
    try:
        tokens = (int(usage["prompt_tokens"]), int(usage["completion_tokens"])) if usage else None
    except (KeyError, TypeError, ValueError):
        tokens = None
    return content, tokens


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


def _fatal_message(label: str, url: str, model: str, status: int, detail: str) -> str:
    if status in (401, 403):
        return f"{label}: {url} refused the API key (HTTP {status}); check the key's variable"
    if detail == "(not JSON)" or not detail:
        return f"{label}: {url} answered HTTP {status} {detail}; is base_url an OpenAI-compatible /v1 endpoint?"
    return f"{label}: {url} answered HTTP {status} ({detail}); is the model {model!r} served there?"
