"""The HTTP boundary: a small interface, the engine's own HTTP/1.1, an aiohttp and an httpx implementation.

Everything the engine needs from HTTP is "POST these bytes, give me status, headers,
body". Keeping it that small lets the hot path use a keep-alive HTTP/1.1 pool of its own for
``http://`` (:mod:`engine.endpoint.http11`, the default, which hands ``https://`` to aiohttp;
about 0.1 ms of CPU per request or less, against several ms for a pooled ``httpx.AsyncClient``)
while users who need proxies, HTTP/2 or custom transports hand in their own httpx client,
and tests use ``httpx.MockTransport``. Third-party errors become
:class:`engine.errors.TransportError` in these modules and nowhere else.

Redirects are never followed: an OpenAI-compatible endpoint does not redirect, and
following one could carry the Authorization header to another host.

The implementations live in their own modules, so a process that sends nothing (a rerun
with the whole grid done, ``engine plan``) never imports an HTTP library:
:mod:`engine.endpoint.http11`, :mod:`engine.endpoint.aiohttp_transport` and
:mod:`engine.endpoint.httpx_transport`.

Usage::

    transport = Http11Transport(concurrency=64)   # from engine.endpoint.http11
    response = await transport.request("POST", url, body=b"{}", headers={}, timeout=30)
    await transport.aclose()
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import NamedTuple, Protocol

from engine.errors import TransportError


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


def timed_out(timeout: float) -> TransportError:
    """The error for a reply not complete within ``timeout`` seconds, in every transport's words."""
    return TransportError("timeout", f"no complete reply within {timeout:g} s")


def cannot_connect(host: str | None, port: int | None, error: OSError) -> TransportError:
    """The error for a connection refused or unreachable, in every transport's words."""
    reason = error.strerror or type(error).__name__
    return TransportError("connect", f"cannot connect to {host}:{port}: {reason.lower()}")


def describe(exc: BaseException) -> str:
    """A short, key-free description of a low-level failure."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, asyncio.IncompleteReadError) or "payload" in text.lower():
        return "connection dropped mid-response"
    return text.splitlines()[0][:200]
