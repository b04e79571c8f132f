"""The HTTP boundary: a small interface with an aiohttp implementation and an httpx one.

Everything the engine needs from HTTP is "POST these bytes, give me status, headers,
body". Keeping it that small lets the hot path use aiohttp (about 0.1 ms of CPU per
request on our machines, against several ms for a pooled ``httpx.AsyncClient``) while
users who need proxies, HTTP/2 or custom transports hand in their own httpx client,
and tests use ``httpx.MockTransport``. Third-party errors become
:class:`engine.errors.TransportError` here and nowhere else.

Redirects are never followed: an OpenAI-compatible endpoint does not redirect, and
following one could carry the Authorization header to another host.

Usage::

    transport = AiohttpTransport(concurrency=64)
    response = await transport.request("POST", url, body=b"{}", headers={}, timeout=30)
    await transport.aclose()
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import NamedTuple, Protocol

import aiohttp
import httpx

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


class AiohttpTransport:
    """The default transport: one aiohttp session with a pool sized to the concurrency.

    Usage: ``AiohttpTransport(concurrency=64)``
    """

    def __init__(self, *, concurrency: int) -> None:
        self._concurrency = concurrency
        self._session: aiohttp.ClientSession | None = None
        self._timeout = aiohttp.ClientTimeout(total=60.0)

    def _open(self) -> aiohttp.ClientSession:
        # Made on first use: a session binds to the running event loop.
        connector = aiohttp.TCPConnector(limit=self._concurrency, limit_per_host=0, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=True, skip_auto_headers=("User-Agent",),
            headers={"User-Agent": "engine"},
        )
        return self._session

    async def request(
        self, method: str, url: str, *, body: bytes | None, headers: Mapping[str, str], timeout: float
    ) -> Response:
        session = self._session or self._open()
        if timeout != self._timeout.total:
            self._timeout = aiohttp.ClientTimeout(total=timeout)
        try:
            async with session.request(
                method, url, data=body, headers=headers, allow_redirects=False, timeout=self._timeout
            ) as resp:
                payload = await resp.read()
                return Response(resp.status, resp.headers, payload)
        except TimeoutError as exc:
            raise TransportError("timeout", f"no complete reply within {timeout:g} s") from exc
        except aiohttp.ClientConnectorError as exc:
            reason = exc.os_error.strerror or type(exc.os_error).__name__
            raise TransportError("connect", f"cannot connect to {exc.host}:{exc.port}: {reason.lower()}") from exc
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise TransportError("read", _describe(exc)) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class HttpxTransport:
    """A transport over an ``httpx.AsyncClient``: yours (proxies, HTTP/2, MockTransport) or a new one.

    A client you hand in is yours to close; one made here is closed by ``aclose``.
    Usage: ``HttpxTransport(httpx.AsyncClient(transport=httpx.MockTransport(handler)))``
    """

    def __init__(self, client: httpx.AsyncClient | None = None, *, concurrency: int = 64) -> None:
        self._owned = client is None
        self._client = client or httpx.AsyncClient(
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        )

    async def request(
        self, method: str, url: str, *, body: bytes | None, headers: Mapping[str, str], timeout: float
    ) -> Response:
        try:
            resp = await self._client.request(
                method, url, content=body, headers=headers, timeout=timeout, follow_redirects=False
            )
        except httpx.TimeoutException as exc:
            raise TransportError("timeout", f"no complete reply within {timeout:g} s") from exc
        except httpx.ConnectError as exc:
            raise TransportError("connect", _describe(exc)) from exc
        except httpx.TransportError as exc:
            raise TransportError("read", _describe(exc)) from exc
        return Response(resp.status_code, resp.headers, resp.content)

    async def aclose(self) -> None:
        if self._owned:
            await self._client.aclose()


def _describe(exc: BaseException) -> str:
    """A short, key-free description of a low-level failure."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, asyncio.IncompleteReadError) or "payload" in text.lower():
        return "connection dropped mid-response"
    return text.splitlines()[0][:200]
