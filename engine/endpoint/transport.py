"""The HTTP boundary: a small interface with an aiohttp implementation and an httpx one.

Everything the engine needs from HTTP is "POST these bytes, give me status, headers,
body". Keeping it that small lets the hot path use aiohttp (about 0.1 ms of CPU per
request on our machines, against several ms for a pooled ``httpx.AsyncClient``) while
users who need proxies, HTTP/2 or custom transports hand in their own httpx client,
and tests use ``httpx.MockTransport``. Third-party errors become
:class:`engine.errors.TransportError` here and nowhere else.

Redirects are never followed: an OpenAI-compatible endpoint does not redirect, and
following one could carry the Authorization header to another host.

The implementations live in their own modules, so a process that sends nothing (a rerun
with the whole grid done, ``engine plan``) never imports an HTTP library:
:mod:`engine.endpoint.aiohttp_transport` and :mod:`engine.endpoint.httpx_transport`.

Usage::

    transport = AiohttpTransport(concurrency=64)   # from engine.endpoint.aiohttp_transport
    response = await transport.request("POST", url, body=b"{}", headers={}, timeout=30)
    await transport.aclose()
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import NamedTuple, Protocol


class Response(NamedTuple):
    """What came back: status, headers (a case-insensitive mapping), and the raw body."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class Transport(Protocol):
    """Sends one request and returns the whole response, or raises TransportError."""

    async def request(
        self, method: str, url: str, *, body: bytes | None, headers: Mapping[str, str], timeout: float
    ) -> Response: ...

    async def aclose(self) -> None: ...


def describe(exc: BaseException) -> str:
    """A short, key-free description of a low-level failure."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, asyncio.IncompleteReadError) or "payload" in text.lower():
        return "connection dropped mid-response"
    return text.splitlines()[0][:200]
