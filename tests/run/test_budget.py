"""The Ray fleet's budget: leases of a known quota, a dead actor's share returned, pauses for all, one probe."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import anyio
import pytest

from engine.endpoint.client import ChatClient
from engine.endpoint.limits import EndpointLimiter, LimitConfig
from engine.experiment.grid import Skipped
from engine.run.budget import LEASE_S, SLICE_S, Budget, BudgetLink
from engine.run.scheduler import Counters


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _report(
    pause: float = 0.0, learned: float | None = None, limited: int = 0, open: bool = False
) -> list[dict[str, Any]]:
    return [{"pause": pause, "learned_rpm": learned, "rate_limited": limited, "open": open}]


def _rpm(budget: Budget, holder: int, **kw: Any) -> float:
    grant = budget.lease(holder, _report(**kw))[0]
    return 0.0 if grant["hold"] else float(grant["rpm"] or 0.0)


def test_a_known_quota_is_split_and_never_exceeded_while_an_actor_dies_and_returns() -> None:
    clock = Clock()
    budget = Budget([(6000.0, None)], fleet=2, clock=clock)
    clock.now += LEASE_S  # past the warm-up of a fresh budget
    held: dict[int, float] = {}
    for _ in range(4):
        for holder in (0, 1):
            held[holder] = _rpm(budget, holder)
            assert sum(held.values()) <= 6000.0
        clock.now += SLICE_S
    assert held == {0: 3000.0, 1: 3000.0}
    # Actor 1 dies: its lease expires, and a window later actor 0 gets the whole quota.
    for _ in range(8):
        held[0] = _rpm(budget, 0)
        clock.now += SLICE_S
    del held[1]
    assert held[0] == 6000.0
    # Actor 1 restarts: it holds until actor 0's next renewal makes room, and the sum never exceeds.
    held[1] = _rpm(budget, 1)
    assert held[1] == 0.0
    for _ in range(3):
        for holder in (0, 1):
            held[holder] = _rpm(budget, holder)
            assert sum(held.values()) <= 6000.0
        clock.now += SLICE_S
    assert held == {0: 3000.0, 1: 3000.0}


def test_a_released_share_returns_a_window_later_and_a_fresh_budget_grants_no_more_than_an_even_share() -> None:
    clock = Clock()
    budget = Budget([(6000.0, 60_000.0)], fleet=3, clock=clock)
    grant = budget.lease(0, _report())[0]
    assert grant["rpm"] == pytest.approx(2000.0) and grant["tpm"] == pytest.approx(20_000.0)
    clock.now += LEASE_S
    assert _rpm(budget, 1) == pytest.approx(3000.0)  # 0 and 1 hold leases
    budget.release(0)
    assert _rpm(budget, 1) == pytest.approx(4000.0)  # 0's lease (2,000) still counts: its sends are in the window
    clock.now += 1.01
    assert _rpm(budget, 1) == pytest.approx(6000.0)


def test_a_pause_one_actor_met_reaches_every_other_within_a_lease() -> None:
    clock = Clock()
    budget = Budget([(6000.0, None)], fleet=2, clock=clock)
    budget.lease(0, _report())
    budget.lease(1, _report(pause=3.0))
    clock.now += SLICE_S
    assert budget.lease(0, _report())[0]["pause"] == pytest.approx(3.0 - SLICE_S)
    clock.now += 3.0
    assert budget.lease(0, _report())[0]["pause"] == 0.0


def test_an_unknown_quota_is_probed_by_one_actor_and_its_finding_shared() -> None:
    clock = Clock()
    budget = Budget([(None, None)], fleet=2, clock=clock)
    first, second = budget.lease(0, _report())[0], budget.lease(1, _report())[0]
    assert not first["hold"] and first["rpm"] is None  # the prober adapts on its own
    assert second["hold"]  # the other waits: the quota is discovered once, not twice
    clock.now += SLICE_S
    budget.lease(0, _report(learned=6000.0))
    clock.now += LEASE_S
    shares = [_rpm(budget, h) for h in (0, 1)] + [_rpm(budget, h) for h in (0, 1)]
    assert shares[2:] == [3000.0, 3000.0]
    # A 429 on the learned quota cuts it for the fleet, once (a burst is one event).
    clock.now += 1.0
    budget.lease(1, _report(limited=1))
    budget.lease(0, _report(limited=5))
    assert budget.groups[0].rpm == pytest.approx(6000.0 * 0.9)


def test_a_probe_at_full_concurrency_without_a_429_lets_everyone_send() -> None:
    clock = Clock()
    budget = Budget([(None, None)], fleet=2, clock=clock)
    budget.lease(0, _report())
    assert budget.lease(1, _report())[0]["hold"]
    budget.lease(0, _report(open=True))  # no quota in sight: a server of one's own
    assert not budget.lease(1, _report())[0]["hold"]
    budget.lease(1, _report(learned=3000.0))  # a quota met later, by one of two senders
    assert budget.groups[0].rpm == pytest.approx(6000.0)


def test_the_prober_gone_another_actor_probes() -> None:
    clock = Clock()
    budget = Budget([(None, None)], fleet=2, clock=clock)
    budget.lease(0, _report())
    assert budget.lease(1, _report())[0]["hold"]
    clock.now += LEASE_S + 0.01  # actor 0 died without releasing: its lease expires
    assert not budget.lease(1, _report())[0]["hold"]


@dataclass
class _Stats:
    rate_limited: int = 0


@dataclass
class _Client:
    limiter: EndpointLimiter
    stats: _Stats = field(default_factory=_Stats)


class _Method:
    def __init__(self, fn: Any, answer: anyio.Event | None = None) -> None:
        self.fn = fn
        self.answer = answer  # set: the budget answers only once this is (slow to start, or restarting)

    async def remote(self, *args: Any) -> Any:  # a Ray handle's method: .remote(...) gives an awaitable
        if self.answer is not None:
            await self.answer.wait()
        return self.fn(*args)


class _Handle:
    def __init__(self, budget: Budget) -> None:
        self.lease, self.release = _Method(budget.lease), _Method(budget.release)


def test_the_link_feeds_the_leased_share_and_the_fleets_pauses_to_its_limiter() -> None:
    async def main() -> tuple[float | None, float, bool]:
        budget = Budget([(6000.0, None)], fleet=2, clock=anyio.current_time)
        budget.lease(1, _report())  # another actor holds half
        limiter = EndpointLimiter(LimitConfig(rpm=3000, concurrency=4))
        clients = cast(list[ChatClient], [_Client(limiter)])
        async with anyio.create_task_group() as tg:
            tg.start_soon(BudgetLink(_Handle(budget), 0).run, clients, Counters(), Skipped())
            await anyio.sleep(SLICE_S / 2)
            rate = limiter.rate
            budget.lease(1, _report(pause=2.0))  # actor 1 is asked to pause
            await anyio.sleep(SLICE_S * 1.5)
            paused = limiter.paused_until - anyio.current_time()
            tg.cancel_scope.cancel()
        return rate, paused, budget.groups[0].leases[0].ended

    rate, paused, released = anyio.run(main)
    assert rate == pytest.approx(3000 / 60 * 0.98)  # the lease's share, paced under by the limiter's margin
    assert 1.0 < paused <= 2.0
    assert released  # the link released its lease on the way out


def test_an_actor_sends_once_its_first_lease_comes_not_before_and_not_a_slice_later() -> None:
    """Nothing goes out before the first lease; once it comes the run starts at once (a hold until a
    quarter second had passed cost every actor's start, and every restart, that much)."""

    async def main() -> tuple[bool, bool, float]:
        budget = Budget([(6000.0, None)], fleet=2, clock=anyio.current_time)
        limiter = EndpointLimiter(LimitConfig(rpm=3000, concurrency=4))
        clients = cast(list[ChatClient], [_Client(limiter)])
        answer = anyio.Event()
        handle = _Handle(budget)
        handle.lease = _Method(budget.lease, answer)
        link = BudgetLink(handle, 0)
        async with anyio.create_task_group() as tg:
            tg.start_soon(link.run, clients, Counters(), Skipped())
            await anyio.sleep(0.05)
            early = link.go.is_set()
            answer.set()
            await link.go.wait()
            paused = limiter.paused_until - anyio.current_time()
            tg.cancel_scope.cancel()
        return early, link.go.is_set(), paused

    early, went, paused = anyio.run(main)
    assert not early and went
    assert paused <= 0  # the limiter is not held: its first request may go now
