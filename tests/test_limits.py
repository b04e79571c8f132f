"""Pacing on a virtual clock: smooth quotas, token budgets learnt from usage, 429 pauses, AIMD."""

from __future__ import annotations

import anyio
import pytest

from engine.limits import EndpointLimiter, LimitConfig, parse_duration, retry_after
from tests.vtime import run_virtual


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


def test_rpm_is_paced_smoothly_without_a_minute_burst() -> None:
    times = send_times(EndpointLimiter(LimitConfig(rpm=600, concurrency=4)), 200)
    # 600/min is 10/s: 200 requests need about 19 s beyond the first second's burst.
    assert 18.0 <= times[-1] <= 20.5
    first_second = sum(1 for t in times if t < 1.0)
    assert first_second <= 21  # at most one second's quota at once, never a minute's (600)
    for start in range(2, 18):  # every later one-second window stays at the quota
        assert sum(1 for t in times if start <= t < start + 1) <= 11


def test_tpm_paces_by_tokens() -> None:
    times = send_times(EndpointLimiter(LimitConfig(tpm=6000, concurrency=4)), 50, tokens=100)
    # 6000 tokens/min = 100 tokens/s: one request of 100 tokens a second after the first burst.
    assert 47.0 <= times[-1] <= 50.5


def test_token_estimate_learns_from_usage() -> None:
    limiter = EndpointLimiter(LimitConfig(tpm=10_000))
    first = limiter.estimate(prompt_chars=400, max_tokens=256)
    assert first >= 256 + 100  # nothing learnt yet: assume the whole max_tokens

    async def learn() -> None:
        for _ in range(50):
            await limiter.observe(status=200, headers={}, usage=(50, 5), prompt_chars=400)

    run_virtual(learn)
    learnt = limiter.estimate(prompt_chars=400, max_tokens=256)
    assert 50 <= learnt < 80  # about 50 prompt + 5 completion tokens, not 356


def test_token_estimate_settles_when_the_endpoint_counts_more_than_estimated() -> None:
    # Chat formatting makes real prompts cost more tokens than chars / 4: the learnt ratio must settle
    # at that ratio, not compound on every reply (it once overflowed after ~19,500 replies).
    limiter = EndpointLimiter(LimitConfig())

    async def learn() -> None:
        for _ in range(30_000):
            await limiter.observe(status=200, headers={}, usage=(26, 9), prompt_chars=60)

    run_virtual(learn)
    assert limiter.estimate(prompt_chars=60, max_tokens=32) == pytest.approx(26 + 9, abs=2)


def test_429_with_retry_after_pauses_the_whole_endpoint_as_long_as_asked() -> None:
    limiter = EndpointLimiter(LimitConfig(rpm=6000, concurrency=8))

    async def main() -> float:
        await limiter.observe(status=429, headers={"retry-after": "3"})
        start = anyio.current_time()
        await limiter.acquire(1)
        limiter.release()
        return anyio.current_time() - start

    waited = run_virtual(main)
    assert waited == pytest.approx(3.0, abs=0.05)


def test_remaining_zero_pauses_until_reset() -> None:
    limiter = EndpointLimiter(LimitConfig(rpm=6000))

    async def main() -> float:
        await limiter.observe(
            status=200, headers={"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1.5s"}
        )
        start = anyio.current_time()
        await limiter.acquire(1)
        limiter.release()
        return anyio.current_time() - start

    assert run_virtual(main) == pytest.approx(1.5, abs=0.05)


def test_unknown_quota_starts_unpaced_then_cuts_on_429_and_grows_back() -> None:
    limiter = EndpointLimiter(LimitConfig(concurrency=64))
    assert limiter.rate is None

    async def main() -> tuple[float, float, int]:
        for _ in range(40):  # 40 quick sends over 2 s
            await limiter.acquire(1)
            limiter.release()
            await limiter.observe(status=200, headers={})
            await anyio.sleep(0.05)
        await limiter.observe(status=429, headers={})
        cut = limiter.rate
        assert cut is not None
        window_after_cut = limiter.window
        for _ in range(100):
            await limiter.acquire(1)
            limiter.release()
            await limiter.observe(status=200, headers={})
        return cut, limiter.rate or 0.0, window_after_cut

    cut, grown, window = run_virtual(main)
    assert 10 <= cut <= 20  # about 0.7 × the 20/s it was sending
    assert grown > cut  # additive increase while clean
    assert window < 64


def test_adaptive_adopts_the_limit_header_as_its_pace() -> None:
    limiter = EndpointLimiter(LimitConfig())

    async def main() -> None:
        await limiter.observe(status=200, headers={"x-ratelimit-limit-requests": "120"})

    run_virtual(main)
    assert limiter.rate == pytest.approx(2.0)


def test_retry_after_and_durations() -> None:
    assert retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after({"retry-after": "2"}) == 2.0
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) is None
    assert retry_after({}) is None
    assert parse_duration("120ms") == pytest.approx(0.12)
    assert parse_duration("6m0s") == 360
    assert parse_duration("1.5") == 1.5
    assert parse_duration("soon") is None


def test_a_pause_also_holds_requests_already_queued_in_the_bucket() -> None:
    limiter = EndpointLimiter(LimitConfig(rpm=60, concurrency=8))  # one request a second

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
            await anyio.sleep(0.01)  # the first is sent, the other two wait in the bucket
            await limiter.observe(status=429, headers={"retry-after": "5"})
        return [t - start for t in sent]

    times = run_virtual(main)
    assert times[0] < 0.01
    assert all(t >= 5.0 for t in times[1:])  # queued before the 429, still held until the pause ends
