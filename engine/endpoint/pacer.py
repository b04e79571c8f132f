"""The pace of one quota: a GCRA schedule that keeps every sliding window of a second or longer within it.

A quota of requests (or tokens) a minute is paced ``margin`` under its rate with a burst no larger
than half that margin (:func:`pace_of`), so neither the start, nor a quiet spell, nor a provider
counting over any one-second window sees more than its share.
:class:`engine.endpoint.limits.EndpointLimiter` keeps one pacer per quota of an endpoint; every
time is the caller's clock (the event loop's).

Usage::

    pacer = Pacer(*pace_of(3500 / 60, 0.02))
    at = pacer.earliest(1, now)        # when one request may go
    booked = pacer.take(1, at)         # its place in the schedule
    pacer.sent(booked)                 # it went (a pause keeps what was sent)
"""

from __future__ import annotations

import math

__all__ = ["Pacer", "pace_of"]


class Pacer:
    """Spaces sends of one quota (requests or tokens) evenly, with a burst no larger than the margin.

    A GCRA schedule: ``free_at`` is when the bucket of ``burst`` units would be full again. Each
    booking takes its place at once, so waiters go out in order, each at its own time, with no
    herd waking together. A request larger than the burst waits until the bucket holds all of it
    (never sent in pieces ahead of its cost), so no window sees more than one request's cost above
    the paced rate. ``sent_free_at`` is the same schedule counting only bookings that were sent:
    what a pause leaves standing when it voids the rest.
    Usage: ``pacer = Pacer(*pace_of(3500 / 60, 0.02))``
    """

    __slots__ = ("burst", "free_at", "per_second", "sent_free_at")

    def __init__(self, per_second: float, burst: float) -> None:
        self.per_second = per_second
        self.burst = burst
        self.free_at = -math.inf  # full: a start lets ``burst`` units through, which the margin leaves room for
        self.sent_free_at = -math.inf

    def earliest(self, cost: float, now: float) -> float:
        """When ``cost`` units may go, after every earlier booking (``now`` or later)."""
        # Past ``free_at`` the bucket goes on filling for a request larger than the burst, up to
        # that request's cost: after a quiet spell (or at the start) it goes at once.
        return max(now, self.free_at - (self.burst - cost) / self.per_second)

    def take(self, cost: float, at: float) -> float:
        """Book ``cost`` units sent at ``at`` (no earlier than :meth:`earliest` said); returns the
        schedule's end after it, for :meth:`sent` once the request really goes."""
        if cost <= self.burst:
            self.free_at = max(self.free_at, at) + cost / self.per_second
        else:
            self.free_at = at + self.burst / self.per_second  # it waited for all of it: the bucket is empty
        return self.free_at

    def sent(self, booked_until: float) -> None:
        """A booking whose :meth:`take` returned ``booked_until`` was sent."""
        self.sent_free_at = max(self.sent_free_at, booked_until)

    def restart(self, at: float, holding: float) -> None:
        """Void the bookings not sent: from ``at`` the bucket holds at most ``holding`` units (one
        request's worth), and no more than what was sent before leaves it."""
        self.free_at = max(self.sent_free_at, at + (self.burst - holding) / self.per_second)

    def set_rate(self, per_second: float, burst: float, now: float) -> None:
        """Change the pace keeping what the bucket holds (in units), cut to the new burst."""
        old_rate, old_burst = self.per_second, self.burst
        self.per_second, self.burst = per_second, burst

        def rescaled(free_at: float) -> float:
            held = min(burst, old_burst - max(0.0, free_at - now) * old_rate)
            return now + (burst - held) / per_second

        self.free_at = rescaled(self.free_at)
        self.sent_free_at = rescaled(self.sent_free_at)


def pace_of(per_second: float, margin: float) -> tuple[float, float]:
    """(rate, burst) that keep every sliding window of one second (or longer) within a quota of
    ``per_second`` units a second: the rate ``margin`` under the quota, the burst half the margin's
    room (at least one unit), the other half left for jitter between our clock and the server's.

    Usage: ``pace_of(1200 / 60, 0.02)  # (19.6, 1.0)``
    """
    burst = max(1.0, float(math.floor(per_second * margin / 2)))
    return per_second * (1 - margin), burst
