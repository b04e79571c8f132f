"""Pacing on a virtual clock: quotas kept in every sliding window yet used, 429 pauses, AIMD, estimates.

Each pacing test asserts both bounds: no sliding window of the enforced length holds more than
its share of the quota (the built-in target's own window logic would admit every request), and
the run still reaches at least 95 % of the quota.
"""

from __future__ import annotations

import email.utils
import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio
import pytest

from engine.endpoint.limits import EndpointLimiter, LimitConfig
from engine.endpoint.pacer import pace_of
from engine.endpoint.retry import parse_duration, retry_after
from engine.sim.server import SlidingQuota
from tests.support.vtime import run_virtual

Server = Callable[[float, int], tuple[int, dict[str, str]]]


def send_times(limiter: EndpointLimiter, n: int, tokens: int = 1) -> list[float]:
    async def main() -> list[float]:
        times = []
        start = anyio.current_time()
        for _ in range(n):
            await limiter.acquire(tokens)
            limiter.release()
            times.append(anyio.current_time() - start)
        return times

    return run_virtual(main)


@dataclass
class Run:
    """What a virtual run sent: (time since start, status, cost) per request, and the limiter's rate over time."""

    sends: list[tuple[float, int, int]] = field(default_factory=list)
    rates: list[tuple[float, float | None]] = field(default_factory=list)

    def times(self, status: int | None = 200) -> list[float]:
        return [t for t, s, _ in self.sends if status is None or s == status]

    def share_429(self) -> float:
        return sum(1 for _, s, _ in self.sends if s == 429) / len(self.sends)


def drive(
    limiter: EndpointLimiter,
    *,
    tasks: int,
    workers: int,
    server: Server,
    latency: float = 0.02,
    tokens: int = 1,
) -> Run:
    """Run ``tasks`` requests through ``limiter`` from ``workers`` workers, as the client does:
    acquire, send (the server sees it at once), answer after ``latency``, observe, release, and
    after a 429 wait what it asked (or 0.5 s) before trying again."""
    run = Run()

    async def main() -> Run:
        start = anyio.current_time()
        left = [tasks]

        async def worker() -> None:
            while left[0] > 0:
                left[0] -= 1
                while True:
                    await limiter.acquire(tokens)
                    try:
                        now = anyio.current_time()
                        status, headers = server(now - start, tokens)
                        run.sends.append((now - start, status, tokens))
                        await anyio.sleep(latency)
                        limiter.learn(status=status, headers=headers)
                    finally:
                        limiter.release()
                    if status != 429:
                        break
                    wait = retry_after(headers)
                    await anyio.sleep(0.5 if wait is None else wait)

        async def watch() -> None:
            while True:
                run.rates.append((anyio.current_time() - start, limiter.rate))
                await anyio.sleep(1.0)

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            async with anyio.create_task_group() as workers_group:
                for _ in range(workers):
                    workers_group.start_soon(worker)
            tg.cancel_scope.cancel()
        return run

    return run_virtual(main)


def quota_server(
    *, rpm: float | None = None, tpm: float | None = None, window_s: float = 1.0, headers: bool = False
) -> Server:
    """A server enforcing rpm/tpm over sliding windows with the built-in target's own logic."""
    requests = SlidingQuota(rpm, window_s) if rpm else None
    token_quota = SlidingQuota(tpm, window_s) if tpm else None

    def respond(now: float, cost: int) -> tuple[int, dict[str, str]]:
        limits = [(q, c) for q, c in ((requests, 1), (token_quota, cost)) if q is not None]
        wait = max(q.wait_s(c, now) for q, c in limits)
        named = {"x-ratelimit-limit-requests": str(rpm)} if headers and rpm else {}
        if wait > 0:
            return 429, {"retry-after-ms": str(math.ceil(wait * 1000)), **named}
        for q, c in limits:
            q.take(c, now)
        return 200, named

    return respond


def max_in_window(sends: Sequence[tuple[float, int]], length: float) -> int:
    """The most units any half-open window ``(t - length, t]`` holds, as a sliding-log server counts."""
    most, total, first = 0, 0, 0
    for at, cost in sends:
        total += cost
        while sends[first][0] <= at - length:
            total -= sends[first][1]
            first += 1
        most = max(most, total)
    return most


def share(per_minute: float, length: float, cost: int = 1) -> float:
    """What a window of ``length`` seconds may hold: its share of the quota, or one request alone."""
    return max(float(cost), per_minute * length / 60)


# --- known quotas: both bounds at every rate --------------------------------------------------------


@pytest.mark.parametrize(
    ("rpm", "tasks", "workers"),
    [(1, 4, 4), (3, 8, 4), (60, 90, 8), (120, 150, 8), (1200, 800, 32), (6000, 3000, 64)],
)
def test_known_rpm_keeps_every_sliding_window_and_reaches_the_quota(rpm: float, tasks: int, workers: int) -> None:
    run = drive(EndpointLimiter(LimitConfig(rpm=rpm, concurrency=workers)), tasks=tasks, workers=workers,
                server=quota_server(rpm=rpm, window_s=1.0))
    assert run.share_429() == 0  # the server (any 1-s window and any minute) admitted every request
    sent = [(t, 1) for t in run.times()]
    assert len(sent) == tasks
    for length in (1.0, 10.0, 60.0):  # not too fast: at most the window's share, at start and later
        assert max_in_window(sent, length) <= share(rpm, length), length
    assert sent[0][0] < 0.01  # the first goes at once
    rate_per_minute = (tasks - 1) / (sent[-1][0] - sent[0][0]) * 60
    assert 0.95 * rpm <= rate_per_minute <= rpm  # not too slow: at least 95 % of the quota


@pytest.mark.parametrize(("tpm", "tasks"), [(100, 7), (1000, 40), (60_000, 600)])
def test_known_tpm_keeps_every_sliding_window_and_reaches_the_quota(tpm: float, tasks: int) -> None:
    cost = 50
    run = drive(EndpointLimiter(LimitConfig(tpm=tpm, concurrency=8)), tasks=tasks, workers=8,
                server=quota_server(tpm=tpm, window_s=1.0), tokens=cost)
    assert run.share_429() == 0
    sent = [(t, cost) for t in run.times()]
    for length in (1.0, 60.0):  # the windows the server enforces
        assert max_in_window(sent, length) <= share(tpm, length, cost), length
    tokens_per_minute = (tasks - 1) * cost / (sent[-1][0] - sent[0][0]) * 60
    assert 0.95 * tpm <= tokens_per_minute <= tpm


def test_rpm_60_is_one_request_a_second_not_four() -> None:
    # The bucket once kept a 0.25 s period with a size floored at 1: rpm = 60 went out at 240/min.
    times = send_times(EndpointLimiter(LimitConfig(rpm=60, concurrency=4)), 31)
    assert 29.0 <= times[-1] <= 31.0  # 30 gaps of 1/0.98 s
    assert min(b - a for a, b in itertools.pairwise(times)) >= 1.0


def test_pace_sits_a_hair_under_the_quota_with_a_burst_inside_the_margin() -> None:
    assert pace_of(1.0, 0.02) == pytest.approx((0.98, 1.0))  # rpm 60: one at a time, evenly spaced
    assert pace_of(20.0, 0.02) == pytest.approx((19.6, 1.0))  # rpm 1,200
    rate, burst = pace_of(10_000.0, 0.02)  # 10,000/s
    assert rate == pytest.approx(9800) and burst == 100
    assert rate + burst <= 10_000  # a full bucket plus a second of pace fits one second's share


def test_a_very_high_rate_keeps_one_second_windows() -> None:
    times = send_times(EndpointLimiter(LimitConfig(rpm=600_000, concurrency=64)), 30_000)
    sent = [(t, 1) for t in times]
    assert max_in_window(sent, 1.0) <= 10_000
    assert (len(times) - 1) / (times[-1] - times[0]) >= 0.95 * 10_000


# --- pauses -----------------------------------------------------------------------------------------


def test_no_burst_after_a_retry_after_pause() -> None:
    rpm = 1200  # 20 in any second
    quota = quota_server(rpm=rpm)
    pause_at, pause_s = 5.0, 2.0
    forced = [False]

    def server(now: float, cost: int) -> tuple[int, dict[str, str]]:
        if now >= pause_at and not forced[0]:
            forced[0] = True
            return 429, {"retry-after": str(int(pause_s))}
        return quota(now, cost)

    run = drive(EndpointLimiter(LimitConfig(rpm=rpm, concurrency=32)), tasks=400, workers=32, server=server)
    assert run.share_429() == pytest.approx(1 / len(run.sends))  # only the forced one
    times = run.times()
    resumed = min(t for t in times if t > pause_at + 0.1)
    assert resumed >= pause_at + pause_s  # everyone held, including what had queued in the pacer
    after = [t for t in times if resumed <= t < resumed + 1.0]
    assert 15 <= len(after) <= 20  # paced again from the pause's end: neither a burst nor a stall
    assert max_in_window([(t, 1) for t in times], 1.0) <= 20


def test_429_with_retry_after_pauses_the_whole_endpoint_as_long_as_asked() -> None:
    limiter = EndpointLimiter(LimitConfig(rpm=6000, concurrency=8))

    async def main() -> float:
        limiter.learn(status=429, headers={"retry-after": "3"})
        start = anyio.current_time()
        await limiter.acquire(1)
        limiter.release()
        return anyio.current_time() - start

    waited = run_virtual(main)
    assert waited == pytest.approx(3.0, abs=0.05)


def test_remaining_zero_pauses_until_reset_when_no_pace_is_known() -> None:
    limiter = EndpointLimiter(LimitConfig())

    async def main() -> float:
        limiter.learn(
            status=200, headers={"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1.5s"}
        )
        start = anyio.current_time()
        await limiter.acquire(1)
        limiter.release()
        return anyio.current_time() - start

    assert run_virtual(main) == pytest.approx(1.5, abs=0.05)


def test_remaining_zero_under_a_known_pace_does_not_stop_the_pace() -> None:
    # A paced run that fills the window exactly is told "0 remaining" often; its pace already waits.
    limiter = EndpointLimiter(LimitConfig(rpm=6000))

    async def main() -> float:
        limiter.learn(
            status=200, headers={"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1.5s"}
        )
        start = anyio.current_time()
        await limiter.acquire(1)
        limiter.release()
        return anyio.current_time() - start

    assert run_virtual(main) < 0.02


def test_a_pause_also_holds_requests_already_queued_in_the_pacer() -> None:
    limiter = EndpointLimiter(LimitConfig(rpm=60, concurrency=8))  # about one request a second

    async def main() -> list[float]:
        sent: list[float] = []

        async def one() -> None:
            await limiter.acquire(1)
            sent.append(anyio.current_time())
            limiter.release()

        start = anyio.current_time()
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(one)
            await anyio.sleep(0.01)  # the first is sent, the other two wait in the pacer
            limiter.learn(status=429, headers={"retry-after": "5"})
        return [t - start for t in sent]

    times = run_virtual(main)
    assert times[0] < 0.01
    assert times[1] == pytest.approx(5.01, abs=0.001)  # held until the pause ends, then one ...
    assert times[2] == pytest.approx(5.01 + 1 / 0.98, abs=0.001)  # ... and the next one paced, not with it


# --- adaptive (no quota in the spec) ----------------------------------------------------------------


def test_unknown_quota_starts_unpaced_then_cuts_on_429_and_grows_back() -> None:
    limiter = EndpointLimiter(LimitConfig(concurrency=64))
    assert limiter.rate is None

    async def main() -> tuple[float, float, int]:
        for _ in range(40):  # 40 quick sends over 2 s
            await limiter.acquire(1)
            limiter.release()
            limiter.learn(status=200, headers={})
            await anyio.sleep(0.05)
        limiter.learn(status=429, headers={})
        cut = limiter.rate
        assert cut is not None
        window_after_cut = limiter.window
        for _ in range(100):
            await limiter.acquire(1)
            limiter.release()
            limiter.learn(status=200, headers={})
        return cut, limiter.rate or 0.0, window_after_cut

    cut, grown, window = run_virtual(main)
    assert 10 <= cut <= 20  # about 0.7 × the 20/s it was sending
    assert grown > cut  # climbs back while clean
    assert window < 64


def test_adaptive_adopts_the_limit_header_as_its_pace() -> None:
    limiter = EndpointLimiter(LimitConfig())

    async def main() -> None:
        limiter.learn(status=200, headers={"x-ratelimit-limit-requests": "120"})

    run_virtual(main)
    assert limiter.rate == pytest.approx(2.0 * 0.98)  # a hair under the named quota


@pytest.mark.parametrize(("rpm", "window_s", "tasks"), [(60, 10.0, 40), (1200, 1.0, 600)])
def test_adaptive_with_limit_headers_sends_no_429(rpm: float, window_s: float, tasks: int) -> None:
    # One request first; its reply names the quota, which becomes the pace, counting that first send.
    run = drive(EndpointLimiter(LimitConfig(concurrency=64)), tasks=tasks, workers=64,
                server=quota_server(rpm=rpm, window_s=window_s, headers=True))
    assert run.share_429() == 0
    times = run.times()
    assert (tasks - 1) / (times[-1] - times[0]) * 60 >= 0.95 * rpm


def test_adaptive_reaches_its_floor() -> None:
    config = LimitConfig(concurrency=8)

    def always_429(now: float, cost: int) -> tuple[int, dict[str, str]]:
        return 429, {"retry-after-ms": "10"}

    limiter = EndpointLimiter(config)

    async def main() -> list[float]:
        sent: list[float] = []
        start = anyio.current_time()
        with anyio.move_on_after(300):
            while True:
                await limiter.acquire(1)
                sent.append(anyio.current_time() - start)
                status, headers = always_429(0, 1)
                limiter.learn(status=status, headers=headers)
                limiter.release()
        return sent

    sent = run_virtual(main)
    assert limiter.rate == pytest.approx(config.min_rps)
    last_minute = [t for t in sent if t >= 240]
    assert 11 <= len(last_minute) <= 13  # one request every 5 s, not the 4/s a quarter-second bucket allowed


def test_adaptive_recovers_after_transient_429s() -> None:
    rpm = 3000  # 50/s, no headers: the limiter must find it from 429s alone
    quota = quota_server(rpm=rpm)
    rng = random.Random(1)

    def server(now: float, cost: int) -> tuple[int, dict[str, str]]:
        if 30 <= now < 35 and rng.random() < 0.5:  # five seconds of a provider's hiccup
            return 429, {"retry-after-ms": "200"}
        return quota(now, cost)

    run = drive(EndpointLimiter(LimitConfig(concurrency=64)), tasks=5000, workers=64, server=server)
    ok = run.times()

    def rate(start: float, end: float) -> float:
        return sum(1 for t in ok if start <= t < end) / (end - start) * 60

    assert rate(20, 30) >= 0.85 * rpm  # found the quota before the hiccup
    assert rate(45, 60) >= 0.85 * rpm  # and climbed back within ten seconds after it
    settled = [s for t, s, _ in run.sends if t >= 10 and not 30 <= t < 35]  # after the unpaced start's overshoot
    assert sum(1 for s in settled if s == 429) / len(settled) < 0.02


def test_adaptive_rate_holds_under_steady_random_429s() -> None:
    # 5 % of requests answered 429 (Retry-After 0.5 s) by a server with no quota: the rate once
    # sank from 1,500/min to about 240/min and stayed there. It must hold and climb back.
    rng = random.Random(7)

    def flaky(now: float, cost: int) -> tuple[int, dict[str, str]]:
        if now < 120 and rng.random() < 0.05:
            return 429, {"retry-after": "1", "retry-after-ms": "500"}
        return 200, {}

    run = drive(EndpointLimiter(LimitConfig(concurrency=4)), tasks=6000, workers=4, server=flaky, latency=0.16)
    steady = [r for t, r in run.rates if 60 <= t < 120 and r is not None]
    assert min(steady) * 60 >= 480  # twice the old floor at least (the 0.5-s pauses cap what is sent at ~900/min)
    after = [r for t, r in run.rates if t >= 135 and r is not None]
    assert after and min(after) * 60 >= 1200  # back near 1,500/min once the 429s stop


# --- estimates and headers --------------------------------------------------------------------------


def test_token_estimate_learns_from_usage() -> None:
    limiter = EndpointLimiter(LimitConfig(tpm=10_000))
    first = limiter.estimate(prompt_chars=400, max_tokens=256)
    assert first >= 256 + 100  # nothing learnt yet: assume the whole max_tokens

    async def learn() -> None:
        for _ in range(50):
            limiter.learn(status=200, headers={}, usage=(50, 5), prompt_chars=400)

    run_virtual(learn)
    learnt = limiter.estimate(prompt_chars=400, max_tokens=256)
    assert 50 <= learnt < 80  # about 50 prompt + 5 completion tokens, not 356


def test_token_estimate_settles_when_the_endpoint_counts_more_than_estimated() -> None:
    # Chat formatting makes real prompts cost more tokens than chars / 4: the learnt ratio must settle
    # at that ratio, not compound on every reply (it once overflowed after ~19,500 replies).
    limiter = EndpointLimiter(LimitConfig())

    async def learn() -> None:
        for _ in range(30_000):
            limiter.learn(status=200, headers={}, usage=(26, 9), prompt_chars=60)

    run_virtual(learn)
    assert limiter.estimate(prompt_chars=60, max_tokens=32) == pytest.approx(26 + 9, abs=2)


def test_retry_after_and_durations() -> None:
    assert retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after({"retry-after": "2"}) == 2.0
    assert retry_after({"retry-after": "-3"}) == 0.0
    assert retry_after({"retry-after": "soon"}) is None
    assert retry_after({}) is None
    assert parse_duration("120ms") == pytest.approx(0.12)
    assert parse_duration("6m0s") == 360
    assert parse_duration("1.5") == 1.5
    assert parse_duration("soon") is None


def test_retry_after_as_an_http_date() -> None:
    now = 1_700_000_000.0
    in_90_s = email.utils.formatdate(now + 90, usegmt=True)  # "Tue, 14 Nov 2023 22:14:50 GMT"
    assert retry_after({"retry-after": in_90_s}, now=now) == pytest.approx(90)
    past = email.utils.formatdate(now - 90, usegmt=True)
    assert retry_after({"retry-after": past}, now=now) == 0.0  # a date gone by: no wait, never negative
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert retry_after({"retry-after": "Sunday, 06-Nov-94 08:49:37 GMT"}) == 0.0  # the obsolete RFC 850 form


def test_a_leased_quota_paces_an_adaptive_limiter_and_a_named_quota_is_what_it_learned() -> None:
    async def main() -> tuple[float | None, float | None, bool, int, float | None]:
        limiter = EndpointLimiter(LimitConfig(concurrency=8))  # unknown quota: adaptive, one request first
        before = limiter.learned_rpm
        limiter.learn(status=200, headers={"x-ratelimit-limit-requests": "6000"})
        learned = limiter.learned_rpm
        limiter.set_quota(anyio.current_time(), rpm=3000, tpm=None)  # a fleet's lease of half
        return before, learned, limiter.adaptive, limiter.window, limiter.rate

    before, learned, adaptive, window, rate = anyio.run(main)
    assert before is None and learned == pytest.approx(6000.0)
    assert not adaptive and window == 8  # the budget decides the pace now; the window opens
    assert rate == pytest.approx(3000 / 60 * 0.98)
