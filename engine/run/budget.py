"""One quota for Ray actors: a budget that leases quota in short slices and broadcasts pauses.

On Ray there is no parent process beside the actors to relay pauses, and a dead actor's share of a
known quota should not sit idle until Ray restarts it. So the fleet has one small :class:`Budget`
(a Ray actor itself, made in :mod:`engine.run.ray_fleet`), and every shard actor's
:class:`BudgetLink` asks it for a *lease* every ``SLICE_S`` (a quarter second):

- **Known quota.** A lease is a share of each quota group's ``rpm``/``tpm``: the quota divided by
  the actors holding a lease, and never more than what the other leases leave. A lease not renewed
  within ``LEASE_S`` expires, so a dead actor's share returns to the others (a lease ended or expired
  still counts for ``WINDOW_S``, while the provider's window holds its sends); a restarted actor gets
  nothing (it holds) until the others' next renewals make room. The actor stops sending when its own
  lease runs out unrenewed (measured from when it asked, so before the budget counts it expired):
  the fleet never exceeds the quota.
- **Pauses.** A pause an actor's limiter took (Retry-After, ``x-ratelimit-remaining: 0``) goes to the
  budget with its next lease request; every lease carries the group's pause, so it reaches every
  actor within a slice.
- **Unknown quota.** One actor (the first to ask) probes it with its adaptive limiter; the others
  hold. The quota it finds (a header's limit, or the rate of its last 429) becomes the fleet's, split
  like a known one; a 429 afterwards cuts the fleet's rate (once a second), a clean stretch lets it
  grow slowly. Discovered once, not once per actor. A probe that reaches its full concurrency with
  no 429 (a server of one's own) opens the group: every actor sends, each adapting, pauses shared;
  a quota found later is taken as the finder's rate times the actors sending.

The limiter stays the one pacer of each process: a lease only sets its pace
(:meth:`~engine.endpoint.limits.EndpointLimiter.set_quota`) and its pauses.

Usage::

    budget = Budget(fleet_quotas(spec), fleet=2)           # inside a Ray actor
    link = BudgetLink(budget_handle, holder=shard.index)   # in each shard actor's run
    tg.start_soon(link.run, clients, counters, skipped)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from engine.endpoint.client import ChatClient
from engine.endpoint.limits import EndpointLimiter
from engine.experiment.grid import Skipped
from engine.experiment.spec import Spec
from engine.run.fleet import FleetLink
from engine.run.options import RunOptions
from engine.run.quotas import by_endpoint, quota_groups
from engine.run.scheduler import Counters

SLICE_S = 0.25  # how often an actor renews its lease (and hears of pauses)
LEASE_S = 0.75  # a lease not renewed this long returns to the pool: three slices, for a busy machine's delays
WINDOW_S = 1.0  # a lease ended still counts this long: the provider's window (1 s or longer) still holds its sends
CUT = 0.9  # a learned quota after a 429: the limiter's own near-boundary decrease, for the fleet
CLEAN_S = 2.0  # a learned quota grows after this long without a 429 ...
GROW_PER_S = 0.01  # ... by this share a second (the quota may have been learned low)

Quota = tuple[float | None, float | None]  # (rpm, tpm) of one quota group, None where unknown


def fleet_quotas(spec: Spec) -> list[Quota]:
    """Each quota group's (rpm, tpm), in the order a run opens its clients (by endpoint, then group).

    Usage: ``Budget(fleet_quotas(spec), fleet=4)``
    """
    return [(g.limits.rpm, g.limits.tpm) for groups in by_endpoint(quota_groups(spec)).values() for g in groups]


@dataclass(slots=True)
class _Lease:
    until: float
    ended: bool = False  # released: its holder sends no more
    rpm: float = 0.0
    tpm: float = 0.0


@dataclass(slots=True)
class _Group:
    rpm: float | None
    tpm: float | None
    learned: bool = False  # rpm came from a probe, not the spec: it may be cut and grown
    open: bool = False  # the probe reached full concurrency without a 429: everyone sends, each adapting
    paused_until: float = 0.0
    prober: int | None = None
    last_429: float = -math.inf
    last_growth: float = -math.inf
    limited: dict[int, int] = field(default_factory=dict)  # each holder's 429 count last reported
    leases: dict[int, _Lease] = field(default_factory=dict)


class Budget:
    """Leases a fleet's quota to its actors in short slices; see the module docstring.

    Usage: ``budget.lease(0, [{"pause": 0.0, "learned_rpm": None, "rate_limited": 0}])``
    """

    def __init__(self, quotas: Sequence[Quota], *, fleet: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.fleet = max(1, fleet)
        self.clock = clock
        self.started = clock()
        self.groups = [_Group(rpm=rpm, tpm=tpm) for rpm, tpm in quotas]

    def lease(self, holder: int, reports: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Renew ``holder``'s lease from its reports (one per group); its grants, one per group.

        A report: ``pause`` (seconds of a pause its limiter took, 0 for none), ``learned_rpm`` (what its
        adaptive limiter found, or None), ``rate_limited`` (its 429s so far). A grant: ``rpm``/``tpm``
        (its share to pace at, None to leave the limiter as it is), ``hold`` (send nothing this slice),
        ``pause`` (seconds the endpoint is paused for the fleet).
        """
        now = self.clock()
        return [self._grant(g, holder, r, now) for g, r in zip(self.groups, reports, strict=False)]

    def release(self, holder: int) -> None:
        """``holder`` is done (its shard finished): its share returns at once. Usage: ``budget.release(0)``"""
        now = self.clock()
        for group in self.groups:
            if (lease := group.leases.get(holder)) is not None:
                lease.until, lease.ended = min(lease.until, now), True
            if group.prober == holder:
                group.prober = None

    def _grant(self, group: _Group, holder: int, report: dict[str, Any], now: float) -> dict[str, Any]:
        for who in [w for w, lease in group.leases.items() if lease.until + WINDOW_S < now]:
            del group.leases[who]  # ended or expired a window ago: a dead actor's share returns
        live = {w for w, lease in group.leases.items() if not lease.ended and lease.until >= now} | {holder}
        if (pause := float(report.get("pause") or 0.0)) > 0:
            group.paused_until = max(group.paused_until, now + pause)
        self._learn(group, holder, report, now)
        grant: dict[str, Any] = {"rpm": None, "tpm": None, "hold": False,
                                 "pause": max(0.0, group.paused_until - now)}  # fmt: skip
        lease = _Lease(until=now + LEASE_S)
        if group.rpm is None and group.tpm is None:
            if group.prober is None or group.prober not in live:
                group.prober = holder  # the first to ask (or the next, once the prober is gone) probes
            grant["hold"] = group.prober != holder and not group.open
        else:
            for kind, quota in (("rpm", group.rpm), ("tpm", group.tpm)):
                if quota is None:
                    continue
                share = quota / len(live)
                if now - self.started < LEASE_S:
                    share = min(share, quota / self.fleet)  # a restarted budget does not know the leases out there
                # Ended and expired leases count until their window has passed: what they sent still counts.
                others = sum(getattr(lease_, kind) for w, lease_ in group.leases.items() if w != holder)
                granted = max(0.0, min(share, quota - others))
                setattr(lease, kind, granted)
                grant[kind] = granted
                grant["hold"] = grant["hold"] or granted <= 0.0
        group.leases[holder] = lease
        return grant

    def _learn(self, group: _Group, holder: int, report: dict[str, Any], now: float) -> None:
        """An unknown quota: the prober's finding becomes the fleet's; a learned one is cut on 429s, grown when clean."""
        limited = int(report.get("rate_limited") or 0)
        new_429 = limited > group.limited.get(holder, limited)
        group.limited[holder] = limited
        if group.rpm is None and report.get("learned_rpm") and (group.open or holder == group.prober):
            # The rate it met a 429 at, while it sent alone (the probe) or beside the live others (open).
            senders = len({w for w, lease in group.leases.items() if not lease.ended} | {holder}) if group.open else 1
            group.rpm, group.learned, group.last_429 = float(report["learned_rpm"]) * senders, True, now
            return
        if holder == group.prober and report.get("open"):
            group.open = True  # no quota in sight at full concurrency (a server of one's own): all send
        if not group.learned or group.rpm is None:
            return
        if new_429 and now - group.last_429 >= 1.0:  # one cut a second: a burst of 429s is one event
            group.rpm *= CUT
            group.last_429 = now
        elif now - group.last_429 >= CLEAN_S and now - group.last_growth >= SLICE_S:
            group.rpm *= 1 + GROW_PER_S * min(1.0, now - max(group.last_growth, group.last_429 + CLEAN_S))
            group.last_growth = now


class BudgetLink:
    """A shard actor's line to the fleet's budget: renews its lease, applies the grants and pauses.

    ``budget`` is the budget's Ray actor handle (its calls return awaitables); ``holder`` the shard.
    Usage: see the module docstring; runs until cancelled, releasing its lease on the way out.
    """

    def __init__(self, budget: Any, holder: int) -> None:
        self.budget = budget
        self.holder = holder
        # Nothing goes out before the first lease: the run starts sending once this is set, as soon as
        # the budget answered (a pause until a slice had passed cost every actor's start a quarter second).
        self.go = anyio.Event()

    async def run(self, clients: Sequence[ChatClient], counters: Counters, skipped: Skipped) -> None:
        relayed = [0.0] * len(clients)  # pauses from the budget: not to be reported back
        valid_until = anyio.current_time()
        try:
            while True:
                asked = anyio.current_time()
                reports = [self._report(c, relayed[i], asked) for i, c in enumerate(clients)]
                grants = await self._ask(reports)
                now = anyio.current_time()
                if grants is not None:
                    valid_until = asked + LEASE_S  # the budget counts it from later: it never outlives the budget's
                    for i, (client, grant) in enumerate(zip(clients, grants, strict=False)):
                        relayed[i] = max(relayed[i], self._apply(client.limiter, grant, now))
                elif now >= valid_until:
                    for i, client in enumerate(clients):  # no lease: hold until one comes
                        client.limiter.pause(now, SLICE_S)
                        relayed[i] = client.limiter.paused_until
                self.go.set()
                await anyio.sleep(SLICE_S)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await self.budget.release.remote(self.holder)

    async def _ask(self, reports: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        """The budget's grants, or None when it does not answer within a lease (the lease then lapses).

        A budget that died is restarted by Ray and the call retried (``max_task_retries``), so a slow
        answer, not an error, is what a restart looks like here.
        """
        with anyio.move_on_after(LEASE_S):
            return list(await self.budget.lease.remote(self.holder, reports))
        return None

    @staticmethod
    def _report(client: ChatClient, relayed: float, now: float) -> dict[str, Any]:
        limiter = client.limiter
        own = limiter.paused_until > relayed + 1e-6 and limiter.paused_until > now
        return {"pause": limiter.paused_until - now if own else 0.0, "learned_rpm": limiter.learned_rpm,
                "rate_limited": client.stats.rate_limited,
                "open": limiter.adaptive and limiter.window >= limiter.config.concurrency}  # fmt: skip

    @staticmethod
    def _apply(limiter: EndpointLimiter, grant: dict[str, Any], now: float) -> float:
        """Apply one group's grant; returns the pause it set (0 for none)."""
        if grant["rpm"] or grant["tpm"]:
            limiter.set_quota(now, rpm=grant["rpm"] or None, tpm=grant["tpm"] or None)
        wait = max(float(grant["pause"]), SLICE_S if grant["hold"] else 0.0)
        if wait <= 0:
            return 0.0
        limiter.pause(now, wait)
        return float(limiter.paused_until)


def link_of(options: RunOptions) -> FleetLink | BudgetLink | None:
    """The fleet link a run's options ask for: the local hub's, the Ray budget's, or none.

    Usage: ``link = link_of(options)``
    """
    if options.fleet:
        return FleetLink(options.fleet)
    if options.budget is not None and options.shard is not None:
        return BudgetLink(options.budget, options.shard.index)
    return None
