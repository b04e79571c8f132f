"""When to try again: the retry policy (attempts, backoff, caps) and the waits a response asks for.

Usage::

    policy = RetryPolicy(max_attempts=6)
    wait = retry_after(response.headers) or policy.backoff(attempt, rng)
"""

from __future__ import annotations

import datetime
import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass


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


def retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """The wait a response asks for, in seconds: ``retry-after-ms``, or ``Retry-After`` as seconds
    or as an HTTP date (RFC 9110), never negative; None when absent or unreadable.

    ``now`` is the wall clock (Unix seconds) a date is measured from; the current time by default.
    Usage: ``retry_after({"retry-after": "2"})  # 2.0``
    """
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    if (value := headers.get("retry-after")) is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    # Late: email.utils (about 0.015 s to import, on a run's way to its first request) only for a
    # Retry-After given as a date, which few providers send.
    import email.utils

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a date without a zone is read as such
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
