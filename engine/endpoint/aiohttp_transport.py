"""The default transport: aiohttp, about 0.1 ms of CPU per request (see :mod:`engine.endpoint.transport`).

Usage: ``transport = AiohttpTransport(concurrency=64)``
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp

from engine.endpoint.transport import Response, cannot_connect, describe, timed_out
from engine.errors import TransportError


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
            raise timed_out(timeout) from exc
        except aiohttp.ClientConnectorError as exc:
            raise cannot_connect(exc.host, exc.port, exc.os_error) from exc
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise TransportError("read", describe(exc)) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
