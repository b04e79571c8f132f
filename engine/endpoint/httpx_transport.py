"""A transport over an ``httpx.AsyncClient``: proxies, HTTP/2, ``httpx.MockTransport`` in tests.

Usage: ``HttpxTransport(httpx.AsyncClient(transport=httpx.MockTransport(handler)))``
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from engine.endpoint.transport import Response, describe, timed_out
from engine.errors import TransportError


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
            raise timed_out(timeout) from exc
        except httpx.ConnectError as exc:
            raise TransportError("connect", describe(exc)) from exc
        except httpx.TransportError as exc:
            raise TransportError("read", describe(exc)) from exc
        return Response(resp.status_code, resp.headers, resp.content)

    async def aclose(self) -> None:
        if self._owned:
            await self._client.aclose()
