"""The default transport: HTTP/1.1 on asyncio's own sockets for ``http://``, aiohttp for ``https://``.

Every endpoint on this machine or a local network (the built-in target, vLLM, llama.cpp, Ollama)
speaks plain HTTP/1.1, and for those a keep-alive connection pool on :class:`asyncio.Protocol`
is all the engine needs from HTTP (see :mod:`engine.endpoint.transport`): it imports in a few
milliseconds, where aiohttp takes about 0.2 s (half of it building TLS contexts a plain socket
never uses), which was a third of a fresh run's fixed cost. ``https://`` goes through
:class:`engine.endpoint.aiohttp_transport.AiohttpTransport`, loaded on the first such request.

What it reads, as RFC 9112 frames a response: a status line and headers, then a body framed by
``Transfer-Encoding: chunked``, ``Content-Length``, or the connection's close; interim 1xx
responses are skipped; a gzip or deflate ``Content-Encoding`` is undone. A connection goes back
to the pool only when its response said nothing against keep-alive and was read whole. A request
on a pooled connection that the server had already closed (it gets no byte back) is sent once
more on a new connection, as browsers and aiohttp do; nothing else is retried here.

Usage::

    transport = Http11Transport(concurrency=64)
    response = await transport.request("POST", url, body=b"{}", headers={}, timeout=30)
    await transport.aclose()
"""

from __future__ import annotations

import asyncio
import functools
import zlib
from collections import deque
from collections.abc import Mapping
from typing import Any, cast
from urllib.parse import urlsplit

from engine.endpoint.transport import Response, Transport, cannot_connect, timed_out
from engine.errors import TransportError

__all__ = ["Headers", "Http11Transport"]

_MAX_HEAD = 64 * 1024  # a response head larger than this is not an API's


class Headers(dict[str, str]):
    """Response headers: names lower-cased, looked up in any case; a repeated header's values joined by ", ".

    Usage: ``Headers({"retry-after": "2"})["Retry-After"]  # '2'``
    """

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())


class _Stale(Exception):
    """A pooled connection closed before any byte of the response: safe to send again on a new one."""


@functools.lru_cache(maxsize=256)
def _split(url: str) -> tuple[str, int, str, bytes]:
    """(host, port, host header, request target) of an ``http://`` URL."""
    parts = urlsplit(url)
    if parts.hostname is None:
        raise TransportError("connect", f"no host in {url!r}")
    port = parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = parts.netloc.rpartition("@")[2]  # never credentials in a Host header
    return parts.hostname, port, host_header, target.encode("ascii")


class _Connection(asyncio.Protocol):
    """One keep-alive connection: sends a request, parses one response at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self._buffer = bytearray()
        self._chunks = bytearray()  # a chunked body's data so far
        self._waiter: asyncio.Future[Response] | None = None
        self._head: tuple[int, Headers, bool] | None = None  # status, headers, keep-alive
        self._no_body = False
        self.keep_alive = False
        self._got_bytes = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        self._buffer += data
        if self._waiter is not None and not self._waiter.done():
            try:
                self._parse(eof=False)
            except TransportError as exc:
                self._fail(exc)

    def eof_received(self) -> bool:
        self._finish_at_eof()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish_at_eof()

    def _finish_at_eof(self) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if not self._got_bytes and self.reused:
            waiter.set_exception(_Stale())
            return
        try:
            self._parse(eof=True)
        except TransportError as exc:
            self._fail(exc)
            return
        if not waiter.done():
            what = "mid-response" if self._got_bytes else "before any response"
            self._fail(TransportError("read", f"connection dropped {what}"))

    # one exchange
    def send(self, request: bytes, *, no_body: bool) -> asyncio.Future[Response]:
        assert self.transport is not None and self._waiter is None
        self._waiter = asyncio.get_running_loop().create_future()
        self._head, self._no_body, self._got_bytes = None, no_body, False
        self.transport.write(request)
        return self._waiter

    @property
    def unread(self) -> bool:
        """Bytes arrived that no request asked for."""
        return bool(self._buffer)

    def done_with(self) -> None:
        self._waiter = None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _fail(self, exc: BaseException) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        self.close()

    def _parse(self, *, eof: bool) -> None:
        """Read the head (skipping 1xx) and, once whole, the body; resolve the waiter with the response."""
        while self._head is None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > _MAX_HEAD:
                    raise TransportError("read", "response head larger than 64 KiB")
                return
            head = bytes(self._buffer[:end])
            del self._buffer[: end + 4]
            status, headers, keep_alive = _parse_head(head)
            if 100 <= status < 200:
                continue  # an interim response (100 Continue, 103 Early Hints): the real one follows
            self._head = (status, headers, keep_alive)
        status, headers, keep_alive = self._head
        body = self._body(headers, status, eof=eof)
        if body is None:
            return
        # Bytes past the response (none from a server that waits for the next request) end the connection.
        self.keep_alive = keep_alive and not self.closed and not self._buffer
        assert self._waiter is not None
        self._waiter.set_result(Response(status, headers, _decoded(body, headers.get("content-encoding"))))

    def _body(self, headers: Headers, status: int, *, eof: bool) -> bytes | None:
        """The whole body once it is in the buffer, else None (more to come)."""
        if self._no_body or status in (204, 304):
            return b""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return self._chunked()
        if (length := headers.get("content-length")) is not None:
            if not length.isdigit():
                raise TransportError("read", f"bad Content-Length {length[:40]!r}")
            n = int(length)
            if len(self._buffer) < n:
                return None
            body = bytes(self._buffer[:n])
            del self._buffer[:n]
            return body
        if not eof:  # framed by the connection's close
            return None
        self._head = (status, headers, False)
        body = bytes(self._buffer)
        self._buffer.clear()
        return body

    def _chunked(self) -> bytes | None:
        """Move each whole chunk out of the buffer as it arrives (a large body stays linear to read);
        the body once the last chunk and its trailers are in, else None."""
        buf, out = self._buffer, self._chunks
        while True:
            line_end = buf.find(b"\r\n")
            if line_end < 0:
                return None
            size_text = bytes(buf[:line_end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise TransportError("read", f"bad chunk size {size_text[:20]!r}") from None
            if size == 0:  # trailers, if any, end with an empty line
                no_trailers = buf[line_end : line_end + 4] == b"\r\n\r\n"
                trailer_end = line_end if no_trailers else buf.find(b"\r\n\r\n", line_end)
                if trailer_end < 0:
                    return None
                del buf[: trailer_end + 4]
                body, self._chunks = bytes(out), bytearray()
                return body
            start = line_end + 2
            if len(buf) < start + size + 2:
                return None
            out += buf[start : start + size]
            del buf[: start + size + 2]


def _parse_head(head: bytes) -> tuple[int, Headers, bool]:
    """Status, headers and whether the connection may be kept, from a response head."""
    lines = head.split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    code = rest[:3]
    if not version.startswith(b"HTTP/1.") or not code.isdigit():
        raise TransportError("read", f"not an HTTP/1.x response: {lines[0][:60]!r}")
    headers = Headers()
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise TransportError("read", f"malformed response header {line[:60]!r}")
        key, text = name.decode("latin-1").lower(), value.strip().decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    connection = headers.get("connection", "").lower()
    keep_alive = "keep-alive" in connection if version == b"HTTP/1.0" else "close" not in connection
    return int(code), headers, keep_alive


def _decoded(body: bytes, encoding: str | None) -> bytes:
    if not encoding or encoding == "identity" or not body:
        return body
    try:
        if encoding == "gzip":
            return zlib.decompress(body, wbits=31)
        if encoding == "deflate":
            try:
                return zlib.decompress(body)
            except zlib.error:
                return zlib.decompress(body, wbits=-15)  # raw deflate, as some servers send it
    except zlib.error as exc:
        raise TransportError("read", f"bad {encoding} body: {exc}") from exc
    raise TransportError("read", f"unsupported Content-Encoding {encoding!r}")


class Http11Transport:
    """HTTP/1.1 keep-alive pool for ``http://`` (``concurrency`` requests at once), aiohttp for ``https://``.

    Usage: ``Http11Transport(concurrency=64)``
    """

    def __init__(self, *, concurrency: int) -> None:
        self._concurrency = concurrency
        self._slots = asyncio.Semaphore(concurrency)  # binds to an event loop only when a request must wait
        self._idle: dict[tuple[str, int], deque[_Connection]] = {}
        self._busy: set[_Connection] = set()
        self._tls: Transport | None = None

    async def request(
        self, method: str, url: str, *, body: bytes | None, headers: Mapping[str, str], timeout: float
    ) -> Response:
        if not url.startswith("http://"):
            return await self._tls_transport().request(method, url, body=body, headers=headers, timeout=timeout)
        host, port, host_header, target = _split(url)
        message = _request_bytes(method, target, host_header, body, headers)
        try:
            async with asyncio.timeout(timeout):
                async with self._slots:
                    try:
                        return await self._exchange(host, port, message, no_body=method == "HEAD")
                    except _Stale:
                        return await self._exchange(host, port, message, no_body=method == "HEAD", fresh=True)
        except TimeoutError as exc:
            raise timed_out(timeout) from exc

    async def _exchange(self, host: str, port: int, message: bytes, *, no_body: bool, fresh: bool = False) -> Response:
        conn = None if fresh else self._pooled(host, port)
        if conn is None:
            conn = await self._connect(host, port)
        self._busy.add(conn)
        try:
            response = await conn.send(message, no_body=no_body)
        except BaseException:
            conn.close()  # cancelled, timed out or broken mid-exchange: its state is unknown
            raise
        finally:
            self._busy.discard(conn)
            conn.done_with()
        if conn.keep_alive and not conn.closed:
            conn.reused = True
            self._idle.setdefault((host, port), deque()).append(conn)
        else:
            conn.close()
        return response

    def _pooled(self, host: str, port: int) -> _Connection | None:
        idle = self._idle.get((host, port))
        while idle:
            conn = idle.pop()  # the most recently used: least likely to have been closed by the server
            if not conn.closed and not conn.unread:
                return conn
            conn.close()  # closed, or the server sent something unasked (a 408 before closing, say)
        return None

    async def _connect(self, host: str, port: int) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(_Connection, host, port)
        except OSError as exc:
            raise cannot_connect(host, port, exc) from exc
        return conn

    def _tls_transport(self) -> Transport:
        if self._tls is None:
            # Late: aiohttp (about 0.2 s to import) only for a run that talks to an https:// endpoint.
            from engine.endpoint.aiohttp_transport import AiohttpTransport

            self._tls = AiohttpTransport(concurrency=self._concurrency)
        return self._tls

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        for conn in list(self._busy):
            conn.close()
        if self._tls is not None:
            await self._tls.aclose()
            self._tls = None


def _request_bytes(method: str, target: bytes, host: str, body: bytes | None, headers: Mapping[str, str]) -> bytes:
    """The request's head and body, as one write."""
    lines = [b"%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: engine\r\nAccept: */*\r\n" % (
        method.encode("ascii"), target, host.encode("idna"))]  # fmt: skip
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise TransportError("connect", f"header {name!r} holds a line break")
        try:
            lines.append(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1")))
        except UnicodeEncodeError:  # its value is never quoted: it may be a key
            raise TransportError("connect", f"header {name!r} holds characters HTTP cannot carry") from None
    if body is not None or method in ("POST", "PUT", "PATCH"):
        lines.append(b"Content-Length: %d\r\n" % len(body or b""))
    lines.append(b"\r\n")
    if body:
        lines.append(body)
    return b"".join(lines)
