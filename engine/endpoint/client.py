"""The chat-completions client: one request per task, paced, retried, never silently dropped.

Retried: 429 (waiting as long as ``Retry-After``/``retry-after-ms`` asks), 408, 409,
5xx, connection errors, timeouts, and a 200 whose body is not a valid completion.
Waits are jittered exponential backoff, capped. A task that runs out of attempts
comes back as failed with its reason; it is logged, not lost.

Not retried, because retrying cannot help: 400/422 fail the task, and so does a 200
whose message has no text (``content: null``: a content filter, a tool call, a refusal;
the reason names the finish_reason; an empty string is a reply); 401/403 (bad key),
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
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import anyio
import orjson

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
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
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
        on_send: Callable[[], None] | None = None,
    ) -> Completion:
        """Ask once, retrying as the policy allows; never raises for a per-task failure.

        ``on_send`` is called right before each attempt goes out, after the limiter admitted
        it: once per request really sent, never for one still waiting out a pause (the
        write-ahead journal hangs here).
        """
        body = orjson.dumps(
            {"model": model, "messages": messages, "temperature": temperature, "max_tokens": max_tokens,
             **(params or {})}
        )
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
                        "POST", self.url, body=body, headers=self._headers, timeout=self.policy.timeout_s
                    )
                except TransportError as exc:
                    error = str(exc)
                    wait = self.policy.backoff(attempt, self._rng)
                else:
                    latency_ms = (time.perf_counter() - started) * 1000
                    statuses.append(response.status)
                    outcome = self._handle(response, slot, model, attempt)
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

    def _handle(self, response: Response, slot: Slot, model: str, attempt: int) -> Completion | tuple[str, float | None]:
        """A Completion when done; else (reason, wait before retrying or None for no retry)."""
        status = response.status
        if status == 200:
            parsed = _parse_completion(response.body)
            slot.observe(status, response.headers, parsed[1] if isinstance(parsed, tuple) else None)
            if isinstance(parsed, NoText):
                return parsed.reason, None  # the model chose not to write text: asking again gives the same
            if isinstance(parsed, str):
                return parsed, self.policy.backoff(attempt, self._rng)
            reply, tokens = parsed
            prompt_tokens, completion_tokens = tokens if tokens is not None else (None, None)
            return Completion(reply=reply, error=None, attempts=0, prompt_tokens=prompt_tokens,
                              completion_tokens=completion_tokens)
        slot.observe(status, response.headers)
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
            raise EndpointError(_fatal_message(self.label, self.base_url, self.url, model, status, detail))
        if status in RETRY_STATUSES or status >= 500:
            asked = retry_after(response.headers)
            wait = self.policy.backoff(attempt, self._rng) if asked is None else asked
            return f"http {status} {detail}".strip(), wait
        return f"http {status} {detail}".strip(), None


@dataclass(frozen=True, slots=True)
class NoText:
    """A well-formed completion with no text in it (content filter, tool call, refusal): the task fails."""

    reason: str


def _parse_completion(body: bytes) -> tuple[str, tuple[int, int] | None] | NoText | str:
    """(reply, (prompt_tokens, completion_tokens)) from a completion body; NoText; or why it is not one.

    An empty string is a reply (the model said nothing, scored as no answer); a null or
    absent content is no reply at all, and the reason names the finish_reason.
    """
    try:
        data = orjson.loads(body)
        choice = data["choices"][0]
        message = choice["message"]
        content = message.get("content")
    except orjson.JSONDecodeError:
        return "malformed completion: body is not JSON"
    except (KeyError, IndexError, TypeError, AttributeError):
        return "malformed completion: no choices[0].message"
    if content is None:
        return NoText(_no_text_reason(choice, message))
    if not isinstance(content, str):
        return "malformed completion: message content is not text"
    usage = data.get("usage")
    try:
        tokens = (int(usage["prompt_tokens"]), int(usage["completion_tokens"])) if usage else None
    except (KeyError, TypeError, ValueError):
        tokens = None
    return content, tokens


def _no_text_reason(choice: Mapping[str, Any], message: Mapping[str, Any]) -> str:
    """Why a completion holds no text, for the log: the finish_reason, and a refusal or tool call if any."""
    finish = choice.get("finish_reason")
    parts = [f"finish_reason={finish}" if finish else "no finish_reason given"]
    if message.get("tool_calls") or message.get("function_call"):
        parts.append("a tool call instead of text")
    if refusal := message.get("refusal"):
        parts.append(f"refusal: {str(refusal)[:80]}")
    return f"no text in reply ({', '.join(parts)})"


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


def _fatal_message(label: str, base_url: str, url: str, model: str, status: int, detail: str) -> str:
    if status in (401, 403):
        return f"{label}: {url} refused the API key (HTTP {status}); check the key's variable"
    hint = path_hint(base_url) if status == 404 else ""
    if detail == "(not JSON)" or not detail:
        text = f"{label}: {url} answered HTTP {status} {detail}".rstrip()
        return f"{text}; is base_url an OpenAI-compatible /v1 endpoint?{' ' + hint if hint else ''}"
    # Even a JSON 404 naming the model may come from a server whose API sits under /v1.
    return (f"{label}: {url} answered HTTP {status} ({detail}); is the model {model!r} served there?"
            f"{f' (base_url has no /v1: {hint})' if hint else ''}")
