"""Per-endpoint pacing: requests/min and tokens/min, smooth, and adaptive when the quota is unknown.

Known quota (``rpm``/``tpm`` in the spec): a schedule per quota (GCRA) paced ``margin`` (2 %)
under it, with a burst inside that margin, so no sliding window of a second or longer sees more
than its share, at the start, after a pause, at 1 request/min or 10,000/s. A pause (Retry-After,
``x-ratelimit-remaining: 0``) voids the places of requests still waiting: they queue again and go
out paced from its end. Unknown quota: one request first, slow start until the first 429, then
decrease on 429s and a quick climb back to the boundary they came at (see ``_cut``); a quota named
in ``x-ratelimit-limit-*`` becomes the pace. Tokens are estimated before sending and corrected from
each response's ``usage``. All timing uses the event loop's clock, so tests use a virtual one.

Usage::

    limiter = EndpointLimiter(LimitConfig(rpm=3500, tpm=90_000, concurrency=64))
    slot = limiter.slot(prompt_chars=120, max_tokens=32)   # one per task, entered once per attempt
    async with slot:                                       # waits for its place; frees it on exit
        response = ...  # send
        slot.observe(response.status, response.headers, usage=(31, 6))
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import anyio

from engine.endpoint.pacer import Pacer, pace_of
from engine.endpoint.retry import parse_duration, retry_after


@dataclass(frozen=True, kw_only=True, slots=True)
class LimitConfig:
    """Pacing settings of one endpoint; every default of the pacing lives here."""

    rpm: float | None = None
    tpm: float | None = None
    concurrency: int = 32
    margin: float = 0.02  # pace this share under a quota; half of it may go as a burst (see pace_of)
    start_concurrency: int = 1  # adaptive: one request first (its reply may name the quota), then doubling per round trip
    decrease: float = 0.7  # adaptive: rate and window multiplier on the first 429, or one well below the boundary
    near_decrease: float = 0.9  # adaptive: rate multiplier on a 429 near the boundary (the same quota again)
    near_boundary: float = 0.8  # adaptive: "near" is at least this share of the boundary
    recover_half_s: float = 0.5  # adaptive: after a cut, the gap to the boundary halves this often
    hold_s: float = 2.0  # adaptive: after a cut, stay at the boundary this long before probing above it
    transients: int = 2  # adaptive: 429s in a row while climbing back taken for transients, not a lower quota
    increase_per_s: float = 0.02  # adaptive: growth per clean second above the boundary, as a share of the rate
    min_rps: float = 0.2
    default_pause_s: float = 1.0  # a 429 that names no wait pauses the endpoint this long
    max_pause_s: float = 300.0


def prompt_token_estimate(chars: int, *, messages: int) -> float:
    """Estimated prompt tokens of one request of ``messages`` chat messages holding ``chars`` characters.

    About four characters a token, plus the chat framing providers bill: about 4 tokens a
    message (role and delimiters) and 3 that prime the reply. Without the framing a short
    prompt was underestimated by a quarter. This is the one estimate the plan and the rate
    limiter share, so the plan's token budget and the limiter's debits agree.
    Usage: ``prompt_token_estimate(sum(len(m["content"]) for m in messages), messages=len(messages))``
    """
    return chars / 4 + 4 * messages + 3


class EndpointLimiter:
    """Paces one endpoint: request and token pacers, a pause after 429s, adaptive when the quota is unknown.

    Usage: see the module docstring.
    """

    def __init__(self, config: LimitConfig) -> None:
        self.config = config
        self.adaptive = config.rpm is None
        margin = config.margin
        self._requests = Pacer(*pace_of(config.rpm / 60, margin)) if config.rpm else None
        self._tokens = Pacer(*pace_of(config.tpm / 60, margin)) if config.tpm else None
        # The highest request rate the adaptive mode may reach: a quota a header named, paced under it.
        self._ceiling = math.inf
        self._window = anyio.CapacityLimiter(config.start_concurrency if self.adaptive else config.concurrency)
        self._window.total_tokens = min(self._window.total_tokens, config.concurrency)
        self._window_size = float(self._window.total_tokens)
        self.paused_until = 0.0
        self._pauses = 0  # bumped by every pause: bookings made before it are void
        self._woken: anyio.Event | None = None  # set when a pause begins, to wake every booked waiter
        self._last_cost = 1.0  # tokens of the latest request: what the token pacer holds after a pause
        self.in_flight = 0
        self.recent_429: deque[float] = deque()
        self._sent: deque[float] = deque()  # send times of the last two seconds, for the adaptive cut
        self._last_cut = -math.inf
        self._last_growth = 0.0
        self._best = 0.0  # adaptive: the boundary, the rate of the last 429 at full pace; recovery climbs back to it
        self._transient = 0  # adaptive: 429s in a row while climbing back (transients, up to config.transients)
        self._seen_429 = False
        self._prompt_ratio = 1.0
        self._completion_estimate: float | None = None

    # -- estimates ---------------------------------------------------------------------------

    def estimate(self, *, prompt_chars: int, max_tokens: int, prompt_messages: int = 1) -> int:
        """Tokens this request will cost, from what earlier responses reported."""
        prompt = prompt_token_estimate(prompt_chars, messages=prompt_messages) * self._prompt_ratio
        completion = max_tokens if self._completion_estimate is None else min(max_tokens, self._completion_estimate)
        return int(prompt + completion) + 1

    def slot(self, *, prompt_chars: int, max_tokens: int, prompt_messages: int = 1) -> Slot:
        """One task's way through this limiter: ``async with`` it per attempt, ``observe`` each response.

        Usage: ``async with (slot := limiter.slot(prompt_chars=120, max_tokens=32)): ...``
        """
        return Slot(self, prompt_chars, max_tokens, prompt_messages)

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
            # A pause that begins while this request waits voids its place: it queues again behind
            # the pause, paced from the pause's end, so the queue never fires at once when it ends.
            while not await self._paced(tokens):
                pass
        except BaseException:
            self._window.release()
            raise
        self.in_flight += 1
        if self.adaptive:
            now = anyio.current_time()
            self._sent.append(now)
            while self._sent[0] < now - 2.0:
                self._sent.popleft()

    async def _paced(self, tokens: int) -> bool:
        """Sit out any pause, then wait for this request's place in the pacing; False if a pause voided it."""
        await self._sit_out_pause()
        requests, token_pacer = self._requests, self._tokens
        if requests is None and token_pacer is None:
            return True
        now = anyio.current_time()
        go = now
        if requests is not None:
            go = requests.earliest(1, now)
        if token_pacer is not None:
            self._last_cost = float(tokens)
            go = max(go, token_pacer.earliest(tokens, now))
        # Both pacers book the one time the request goes, so neither sees two sends closer than it allows.
        booked_requests = requests.take(1, go) if requests is not None else 0.0
        booked_tokens = token_pacer.take(tokens, go) if token_pacer is not None else 0.0
        if go > now:
            pauses = self._pauses
            if self._woken is None:
                self._woken = anyio.Event()
            woken = self._woken
            with anyio.move_on_after(go - now):
                await woken.wait()
            if self._pauses != pauses:
                return False
        if requests is not None:
            requests.sent(booked_requests)
        if token_pacer is not None:
            token_pacer.sent(booked_tokens)
        return True

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

    def learn(
        self,
        *,
        status: int,
        headers: Mapping[str, str],
        usage: tuple[int, int] | None = None,
        prompt_chars: int | None = None,
        prompt_messages: int = 1,
    ) -> None:
        """Learn from one response: token usage (for a prompt of ``prompt_chars``), rate-limit headers, 429s.

        Never waits, so it is a plain call; :meth:`Slot.observe` is the client's way to it.
        """
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
        self._adopt_headers(headers, now)
        if status == 429:
            self._on_429(headers, now)
        elif self.adaptive and status < 400:
            self._grow(now)

    def _adopt_headers(self, headers: Mapping[str, str], now: float) -> None:
        if self.adaptive:
            self._adopt_limit(headers, now)
        for kind, pacer in (("requests", self._requests), ("tokens", self._tokens)):
            # The last request of a window: wait for its reset, unless a known pace already spaces
            # the sends (a paced run that fills the window exactly sees this often, and need not stop).
            if pacer is None and headers.get(f"x-ratelimit-remaining-{kind}", "").strip() in ("0", "0.0"):
                wait = parse_duration(headers.get(f"x-ratelimit-reset-{kind}", ""))
                if wait is not None:
                    self.pause(now, wait)

    def _adopt_limit(self, headers: Mapping[str, str], now: float) -> None:
        """Adaptive mode: a quota named in ``x-ratelimit-limit-*`` (per minute, as OpenAI sends it) becomes the pace."""
        margin = self.config.margin
        if (limit := _per_second(headers.get("x-ratelimit-limit-requests"))) is not None:
            rate, burst = pace_of(limit, margin)
            if rate != self._ceiling:
                self._ceiling = rate
                if self._requests is None:
                    self._requests = self._pacer_after_sent(rate, burst)
                elif self._requests.per_second > rate:
                    self._requests.set_rate(rate, burst, now)
        if (limit := _per_second(headers.get("x-ratelimit-limit-tokens"))) is not None:
            self._pace_tokens(limit, now)

    def pause(self, now: float, seconds: float) -> None:
        """Hold every request of this endpoint for ``seconds`` (capped), as the provider asked.

        Requests already waiting for their place lose it and queue again behind the pause; the
        pacers restart at its end holding one request, so what queued goes out paced, not at once.
        """
        until = now + min(seconds, self.config.max_pause_s)
        if until <= self.paused_until:
            return
        self.paused_until = until
        self._pauses += 1
        if self._woken is not None:
            self._woken.set()
            self._woken = None
        if self._requests is not None:
            self._requests.restart(until, 1.0)
        if self._tokens is not None:
            self._tokens.restart(until, self._last_cost)

    def set_quota(self, now: float, *, rpm: float | None, tpm: float | None) -> None:
        """Pace at this quota from ``now`` (None leaves one as it is): a fleet's lease of its share.

        The fleet's budget (engine.run.budget) then decides the pace: an adaptive limiter stops adapting
        and opens its window. Usage: ``limiter.set_quota(anyio.current_time(), rpm=3000, tpm=None)``
        """
        margin = self.config.margin
        if rpm is not None:
            rate, burst = pace_of(max(rpm, 60 * self.config.min_rps) / 60, margin)
            if self._requests is None:
                self._requests = self._pacer_after_sent(rate, burst)
            elif self._requests.per_second != rate:
                self._requests.set_rate(rate, burst, now)
            if self.adaptive:
                self.adaptive = False
                self._resize_window(float(self.config.concurrency))
        if tpm is not None:
            self._pace_tokens(tpm / 60, now)

    @property
    def learned_rpm(self) -> float | None:
        """Adaptive: the request quota found (a header's, else the rate of the last 429); None yet. Usage: ``.learned_rpm``"""
        if not self.adaptive:
            return None
        if math.isfinite(self._ceiling):
            return self._ceiling / (1 - self.config.margin) * 60
        return self._best * 60 if self._best > 0 else None

    def _on_429(self, headers: Mapping[str, str], now: float) -> None:
        self.recent_429.append(now)
        while self.recent_429[0] < now - 60:
            self.recent_429.popleft()
        if self.adaptive and now - self._last_cut >= 1.0:  # one cut per second: a burst of 429s is one event
            self._cut(now)
        wait = retry_after(headers)
        self.pause(now, self.config.default_pause_s if wait is None else wait)

    def _sent_rate(self) -> float:
        return len(self._sent) / 2.0

    def _cut(self, now: float) -> None:
        """Multiplicative decrease that remembers the boundary (the rate of the last 429 at full pace).

        The first 429 (sending unpaced) cuts deep. Later ones cut mildly, and the recovery climbs
        back to the boundary fast: a 429 that comes while still climbing back is taken for a
        transient and leaves the boundary standing; a second one in a row moves it down to where it
        came (the quota is lower), and a 429 at or above the boundary moves it there.
        """
        config = self.config
        pacer = self._requests
        if pacer is None and len(self._sent) < 4:
            return  # too few sends to measure a rate from: the pause alone answers this 429
        self._last_cut = now
        if pacer is None:
            current = max(config.min_rps, self._sent_rate())  # unpaced: cut from what was sent
            self._best = current
            rate = current * config.decrease
        else:
            current = pacer.per_second
            if current < self._best * (1 - config.margin) and self._transient < config.transients:
                self._transient += 1
            else:
                self._transient = 0
                deep = current < config.near_boundary * self._best
                self._best = current
                if deep:
                    current *= config.decrease / config.near_decrease
            rate = current * config.near_decrease
        rate = max(config.min_rps, min(self._ceiling, rate))
        if pacer is None:
            self._requests = self._pacer_after_sent(rate, pace_of(rate, config.margin)[1])
        else:
            pacer.set_rate(rate, pace_of(rate, config.margin)[1], now)
        self._resize_window(max(1.0, self._window_size * config.decrease))
        self._seen_429 = True
        self._last_growth = now

    def _pace_tokens(self, per_second: float, now: float) -> None:
        """Pace tokens under a quota of ``per_second`` from ``now``: a new pacer, or the one there re-paced."""
        rate, burst = pace_of(per_second, self.config.margin)
        if self._tokens is None:
            self._tokens = Pacer(rate, burst)
        elif self._tokens.per_second != rate:
            self._tokens.set_rate(rate, burst, now)

    def _pacer_after_sent(self, rate: float, burst: float) -> Pacer:
        """A request pacer whose schedule already holds what was sent unpaced in the last seconds,
        so the first paced request does not follow them closer than the pace allows."""
        pacer = Pacer(rate, burst)
        for at in self._sent:
            pacer.sent(pacer.take(1, at))
        return pacer

    def _grow(self, now: float) -> None:
        if not self._seen_429:
            # Slow start: double the window each round of clean replies until the first 429.
            self._resize_window(self._window_size + 1)
            return
        self._resize_window(self._window_size + 1 / self._window_size)
        pacer = self._requests
        elapsed = now - self._last_growth
        if pacer is None or elapsed < 0.1:
            return
        self._last_growth = now
        elapsed = min(elapsed, 1.0)  # a long silence (a pause) is not a second of clean replies
        rate, best, config = pacer.per_second, self._best, self.config
        if rate < best * (1 - config.margin):
            # Climb back towards the boundary: half the gap every ``recover_half_s``.
            rate = best - (best - rate) * 0.5 ** (elapsed / config.recover_half_s)
        elif now - self._last_cut >= config.hold_s and (
            rate < 1.5 * self._sent_rate() or rate < 2 * config.min_rps
        ):
            # At the boundary a while, clean, and using the pace: probe above it, slowly at first and
            # faster the longer it stays clean (the quota may have risen, or the 429s were transient).
            self._transient = 0
            clean_s = now - self._last_cut
            rate *= 1 + config.increase_per_s * elapsed * clean_s / config.hold_s
        rate = min(rate, self._ceiling)
        if rate != pacer.per_second:
            pacer.set_rate(rate, pace_of(rate, config.margin)[1], now)

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


def _per_second(per_minute: str | None) -> float | None:
    """A positive per-minute quota header as units a second; None when absent or unreadable."""
    if per_minute is None:
        return None
    try:
        value = float(per_minute) / 60
    except ValueError:
        return None
    return value if value > 0 and math.isfinite(value) else None


class Slot:
    """A task's place at one endpoint: the one way the client asks the limiter.

    Entering estimates the request's tokens (from what earlier responses reported) and waits
    for its place (:meth:`EndpointLimiter.acquire`); leaving frees it (:meth:`EndpointLimiter.release`);
    :meth:`observe` feeds the response back. Made once per task and entered once per attempt, so
    the hot path allocates nothing more than it did with the four calls.
    Usage: ``async with slot: response = await send(); slot.observe(response.status, response.headers)``
    """

    __slots__ = ("_limiter", "_max_tokens", "_prompt_chars", "_prompt_messages")

    def __init__(self, limiter: EndpointLimiter, prompt_chars: int, max_tokens: int, prompt_messages: int) -> None:
        self._limiter = limiter
        self._prompt_chars = prompt_chars
        self._max_tokens = max_tokens
        self._prompt_messages = prompt_messages

    async def __aenter__(self) -> Slot:
        limiter = self._limiter
        tokens = limiter.estimate(
            prompt_chars=self._prompt_chars, max_tokens=self._max_tokens, prompt_messages=self._prompt_messages
        )
        await limiter.acquire(tokens)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._limiter.release()

    def observe(self, status: int, headers: Mapping[str, str], usage: tuple[int, int] | None = None) -> None:
        """Learn from this attempt's response: token usage, rate-limit headers, 429s."""
        self._limiter.learn(
            status=status, headers=headers, usage=usage, prompt_chars=self._prompt_chars,
            prompt_messages=self._prompt_messages,
        )
