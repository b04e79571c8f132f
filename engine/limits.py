"""Per-endpoint pacing: requests/min and tokens/min, smooth, and adaptive when the quota is unknown.

Known quota (``rpm``/``tpm`` in the spec): two aiolimiter leaky buckets holding at
most ``burst_s`` seconds of quota, so a run never fires a minute's quota in its first
second (providers enforce quotas over sub-minute windows).

Unknown quota: no pacing until the first 429, then additive increase, multiplicative
decrease on the request rate and on concurrency, like TCP. Headers are used when
sent: ``Retry-After``/``retry-after-ms`` pause the whole endpoint (not just one task,
so a storm is not prolonged by everyone else), ``x-ratelimit-remaining-*``/``-reset-*``
pause before the quota runs out, and ``x-ratelimit-limit-*`` (per minute, as OpenAI
sends it) becomes the pace.

Tokens are estimated before sending and the estimate is corrected from each
response's ``usage``: the prompt estimate is scaled by the observed ratio, and the
completion estimate follows observed completion lengths instead of ``max_tokens``.

All timing uses the event loop's clock (``anyio.current_time``/``anyio.sleep``), so
tests drive it with a virtual-time loop.

Usage::

    limiter = EndpointLimiter(LimitConfig(rpm=3500, tpm=90_000, concurrency=64))
    tokens = limiter.estimate(prompt_chars=120, max_tokens=32)
    await limiter.acquire(tokens)
    try:
        ...  # send
    finally:
        limiter.release()
    limiter.observe(status=200, headers=resp.headers, usage=(31, 6), estimated=tokens)
"""

from __future__ import annotations

import math
import random
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import anyio
from aiolimiter import AsyncLimiter


@dataclass(frozen=True, kw_only=True, slots=True)
class LimitConfig:
    """Pacing settings of one endpoint; every default of the pacing lives here."""

    rpm: float | None = None
    tpm: float | None = None
    concurrency: int = 32
    burst_s: float = 0.25  # largest burst, in seconds of quota: providers enforce sub-minute windows
    start_concurrency: int = 16  # adaptive: where the window starts before doubling per round trip
    decrease: float = 0.7  # adaptive: rate and window multiplier on a 429
    increase_per_s: float = 0.03  # adaptive: rate growth per clean second, as a share of the rate
    min_rps: float = 0.2
    default_pause_s: float = 1.0  # a 429 that names no wait pauses the endpoint this long
    max_pause_s: float = 300.0


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    """How hard to try one task: attempts, backoff base and cap, and the cap on any single wait."""

    max_attempts: int = 6
    base_s: float = 0.5
    cap_s: float = 30.0
    max_wait_s: float = 300.0  # also caps a provider's Retry-After
    timeout_s: float = 60.0

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Full-jitter exponential backoff before attempt ``attempt + 1``."""
        return rng.uniform(0, min(self.cap_s, self.base_s * 2 ** (attempt - 1)))


def prompt_token_estimate(chars: int, *, messages: int) -> float:
    """Estimated prompt tokens of one request of ``messages`` chat messages holding ``chars`` characters.

    About four characters a token, plus the chat framing providers bill: about 4 tokens a
    message (role and delimiters) and 3 that prime the reply. Without the framing a short
    prompt was underestimated by a quarter. This is the one estimate the plan and the rate
    limiter share, so the plan's token budget and the limiter's debits agree.
    Usage: ``prompt_token_estimate(sum(len(m["content"]) for m in messages), messages=len(messages))``
    """
    return chars / 4 + 4 * messages + 3



class _Bucket:
    """A leaky bucket whose rate can change; wraps aiolimiter with a burst of ``burst_s`` seconds."""

    def __init__(self, per_second: float, burst_s: float) -> None:
        self.per_second = per_second
        self._burst_s = burst_s
        self._limiter = AsyncLimiter(max(1.0, per_second * burst_s), burst_s)

    @property
    def capacity(self) -> float:
        return self._limiter.max_rate

    async def acquire(self, amount: float) -> None:
        # A request larger than the bucket is charged in bucket-sized pieces: clamping it
        # instead would let big requests through at a fraction of their real cost.
        limiter = self._limiter
        while amount > limiter.max_rate:
            await limiter.acquire(limiter.max_rate)
            amount -= limiter.max_rate
        await limiter.acquire(amount)

    async def set_rate(self, per_second: float) -> None:
        """Change the rate; the new bucket starts full, so a cut is never followed by a burst."""
        self.per_second = per_second
        fresh = AsyncLimiter(max(1.0, per_second * self._burst_s), self._burst_s)
        await fresh.acquire(fresh.max_rate)  # never waits: an empty bucket has room
        self._limiter = fresh


_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)(ms|h|m|s))")


def parse_duration(text: str) -> float | None:
    """Seconds in a reset header: "1s", "120ms", "6m0s", "0.5" (seconds). Usage: ``parse_duration("1m30s")``"""
    text = text.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


def retry_after(headers: Mapping[str, str]) -> float | None:
    """The wait a response asks for, in seconds: ``retry-after-ms`` or ``Retry-After`` (seconds).

    An HTTP-date Retry-After is not honoured (providers send seconds); None when absent.
    Usage: ``retry_after({"retry-after": "2"})  # 2.0``
    """
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    if (seconds := headers.get("retry-after")) is not None:
        try:
            return max(0.0, float(seconds))
        except ValueError:
            return None
    return None


class EndpointLimiter:
    """Paces one endpoint: rate and token buckets, a pause after 429s, adaptive when the quota is unknown.

    Usage: see the module docstring.
    """

    def __init__(self, config: LimitConfig) -> None:
        self.config = config
        self.adaptive = config.rpm is None
        self._requests = _Bucket(config.rpm / 60, config.burst_s) if config.rpm else None
        self._tokens = _Bucket(config.tpm / 60, config.burst_s) if config.tpm else None
        self._window = anyio.CapacityLimiter(config.start_concurrency if self.adaptive else config.concurrency)
        self._window.total_tokens = min(self._window.total_tokens, config.concurrency)
        self._window_size = float(self._window.total_tokens)
        self.paused_until = 0.0
        self.in_flight = 0
        self.recent_429: deque[float] = deque()
        self._sent: deque[float] = deque()  # send times of the last few seconds, for the adaptive cut
        self._last_cut = -math.inf
        self._last_growth = 0.0
        self._seen_429 = False
        self._prompt_ratio = 1.0
        self._completion_estimate: float | None = None

    # -- estimates ---------------------------------------------------------------------------

    def estimate(self, *, prompt_chars: int, max_tokens: int, prompt_messages: int = 1) -> int:
        """Tokens this request will cost, from what earlier responses reported."""
        prompt = prompt_token_estimate(prompt_chars, messages=prompt_messages) * self._prompt_ratio
        completion = max_tokens if self._completion_estimate is None else min(max_tokens, self._completion_estimate)
        return int(prompt + completion) + 1

    # -- the gate ----------------------------------------------------------------------------

    async def acquire(self, tokens: int) -> None:
        """Wait until this endpoint may send a request of ``tokens`` tokens."""
        await self._sit_out_pause()
        try:
            # A free slot is taken without a trip through the event loop: CapacityLimiter.acquire always
            # yields (a shielded checkpoint), about a quarter of the engine's own CPU per request.
            self._window.acquire_nowait()
        except anyio.WouldBlock:
            await self._window.acquire()
        try:
            if self._requests is not None:
                await self._requests.acquire(1)
            if self._tokens is not None:
                await self._tokens.acquire(tokens)
            # A 429 may have paused the endpoint while this request queued for a slot or a bucket.
            await self._sit_out_pause()
        except BaseException:
            self._window.release()
            raise
        self.in_flight += 1
        if self.adaptive:
            now = anyio.current_time()
            self._sent.append(now)
            while self._sent[0] < now - 2.0:
                self._sent.popleft()

    async def _sit_out_pause(self) -> None:
        if self.paused_until:
            while (wait := self.paused_until - anyio.current_time()) > 0:
                await anyio.sleep(wait)
            self.paused_until = 0.0

    def release(self) -> None:
        """The request is over (answered or failed); frees its concurrency slot."""
        self.in_flight -= 1
        self._window.release()

    # -- feedback ----------------------------------------------------------------------------

    async def observe(
        self,
        *,
        status: int,
        headers: Mapping[str, str],
        usage: tuple[int, int] | None = None,
        prompt_chars: int | None = None,
        prompt_messages: int = 1,
    ) -> None:
        """Learn from one response: token usage (for a prompt of ``prompt_chars``), rate-limit headers, 429s."""
        now = anyio.current_time()
        if usage is not None:
            prompt_tokens, completion_tokens = usage
            if prompt_chars is not None:
                # Against the unscaled estimate, so this is the ratio itself.
                observed = prompt_tokens / prompt_token_estimate(prompt_chars, messages=prompt_messages)
                self._prompt_ratio += 0.1 * (observed - self._prompt_ratio)
            previous = self._completion_estimate
            self._completion_estimate = (
                float(completion_tokens) if previous is None else previous + 0.1 * (completion_tokens - previous)
            )
        await self._adopt_headers(headers, now)
        if status == 429:
            await self._on_429(headers, now)
        elif self.adaptive and status < 400:
            await self._grow(now)

    async def _adopt_headers(self, headers: Mapping[str, str], now: float) -> None:
        for kind, bucket_name in (("requests", "_requests"), ("tokens", "_tokens")):
            remaining = headers.get(f"x-ratelimit-remaining-{kind}")
            reset = headers.get(f"x-ratelimit-reset-{kind}")
            if remaining is not None and reset is not None and remaining.strip() in ("0", "0.0"):
                wait = parse_duration(reset)
                if wait is not None:
                    self.pause(now, wait)
            limit = headers.get(f"x-ratelimit-limit-{kind}")
            if limit is not None and self.adaptive:
                try:
                    per_second = float(limit) / 60
                except ValueError:
                    continue
                bucket: _Bucket | None = getattr(self, bucket_name)
                if per_second > 0 and (bucket is None or bucket.per_second > per_second):
                    if bucket is None:
                        setattr(self, bucket_name, _Bucket(per_second, self.config.burst_s))
                    else:
                        await bucket.set_rate(per_second)

    def pause(self, now: float, seconds: float) -> None:
        """Hold every request of this endpoint for ``seconds`` (capped), as the provider asked."""
        seconds = min(seconds, self.config.max_pause_s)
        self.paused_until = max(self.paused_until, now + seconds)

    async def _on_429(self, headers: Mapping[str, str], now: float) -> None:
        self.recent_429.append(now)
        while self.recent_429[0] < now - 60:
            self.recent_429.popleft()
        wait = retry_after(headers)
        self.pause(now, self.config.default_pause_s if wait is None else wait)
        if not self.adaptive or now - self._last_cut < 1.0:
            return  # one cut per second: a burst of 429s is one congestion event
        self._last_cut = now
        if self._requests is None:
            # First 429 with no known quota: start pacing just under what was being sent.
            sent_rate = len(self._sent) / 2.0 if self._sent else self.config.min_rps
            self._requests = _Bucket(max(self.config.min_rps, sent_rate * self.config.decrease), self.config.burst_s)
        else:
            await self._requests.set_rate(max(self.config.min_rps, self._requests.per_second * self.config.decrease))
        self._resize_window(max(1.0, self._window_size * self.config.decrease))
        self._seen_429 = True

    async def _grow(self, now: float) -> None:
        if not self._seen_429:
            # Slow start: double the window each round of clean replies until the first 429.
            self._resize_window(self._window_size + 1)
            return
        self._resize_window(self._window_size + 1 / self._window_size)
        if self._requests is not None and now - self._last_growth >= 1.0:
            self._last_growth = now
            rate = self._requests.per_second
            await self._requests.set_rate(rate + max(0.5, rate * self.config.increase_per_s))

    def _resize_window(self, size: float) -> None:
        self._window_size = min(float(self.config.concurrency), size)
        tokens = max(1, int(self._window_size))
        if tokens != self._window.total_tokens:
            self._window.total_tokens = tokens

    # -- for the progress display --------------------------------------------------------------

    @property
    def rate(self) -> float | None:
        """Requests per second currently allowed; None while unpaced."""
        return None if self._requests is None else self._requests.per_second

    @property
    def window(self) -> int:
        return int(self._window.total_tokens)
