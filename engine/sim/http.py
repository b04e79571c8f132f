"""HTTP/1.1 framing for the sim (part of :mod:`engine.sim`): one ``asyncio.Protocol`` per connection.

Raw protocol with keep-alive and Content-Length bodies, so the sim serves several times
what the engine can send from one core. Delayed replies are loop timers, not tasks:
thousands can be pending at once for the cost of a heap entry each, and closing a
connection or the server cancels them.

Usage::

    await loop.create_server(lambda: HttpProtocol(sim), "127.0.0.1", 0)
"""

from __future__ import annotations

import asyncio
import functools
import re
import types
from typing import Protocol, cast

import orjson

_MAX_HEAD = 64 * 1024
_FRAMING = re.compile(rb"\r\n(content-length|transfer-encoding|connection|expect):([^\r\n]*)")
_MAX_BODY = 260 * 1024 * 1024  # a whole batch file: Anthropic takes up to 256 MB
_REASONS = types.MappingProxyType(
    {
        200: b"OK",
        400: b"Bad Request",
        404: b"Not Found",
        405: b"Method Not Allowed",
        413: b"Payload Too Large",
        429: b"Too Many Requests",
        431: b"Request Header Fields Too Large",
        500: b"Internal Server Error",
        501: b"Not Implemented",
        502: b"Bad Gateway",
        503: b"Service Unavailable",
        529: b"Site Overloaded",  # not in the HTTP registry: Anthropic's "overloaded"
    }
)


class Reply:
    """One response to write: the bytes, when, whether to close after, and what to count."""

    __slots__ = ("close", "completion", "data", "delay", "status")

    def __init__(
        self, status: int, data: bytes, *, delay: float = 0.0, close: bool = False, completion: bool = False
    ):
        self.status = status  # 0: a dropped connection, not a response
        self.data = data
        self.delay = delay
        self.close = close
        self.completion = completion


def http_response(
    status: int,
    body: bytes,
    *,
    keep_alive: bool,
    content_type: bytes = b"application/json",
    extra: bytes = b"",
) -> bytes:
    """A whole HTTP/1.1 response; ``extra`` is pre-encoded header lines, each ending in CRLF."""
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nx-engine-sim: 1\r\n"
            % (status, _REASONS[status], content_type, len(body)),
            extra,
            b"" if keep_alive else b"Connection: close\r\n",
            b"\r\n",
            body,
        )
    )


def error_reply(
    status: int,
    message: str,
    kind: str,
    *,
    keep_alive: bool,
    code: str | None = None,
    extra: bytes = b"",
    delay: float = 0.0,
) -> Reply:
    """An OpenAI-style JSON error (``{"error": {"message", "type", "param", "code"}}``)."""
    body = orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})
    return Reply(
        status,
        http_response(status, body, keep_alive=keep_alive, extra=extra),
        delay=delay,
        close=not keep_alive,
    )


class Handler(Protocol):
    """What a connection needs of the server (:class:`engine.sim.server.SimServer` is one).

    A protocol, so this module stays below the server that imports it.
    """

    loop: asyncio.AbstractEventLoop
    connections: set[HttpProtocol]

    def handle(self, method: bytes, target: bytes, body: bytes, keep_alive: bool) -> Reply: ...

    def sent(self, reply: Reply) -> None: ...


class HttpProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection: parses requests in order and writes replies in order (pipelining-safe)."""

    __slots__ = ("_buffer", "_continued", "_sim", "_timer", "_transport")

    def __init__(self, sim: Handler):
        self._sim = sim
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self._continued = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self._transport = cast(asyncio.Transport, transport)
        self._sim.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._sim.connections.discard(self)
        self._transport = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._timer is None:
            self._serve_buffered()

    def abort(self) -> None:
        """Drop the connection now (server shutdown)."""
        if self._transport is not None:
            self._transport.abort()
        self.connection_lost(None)

    def _serve_buffered(self) -> None:
        while self._buffer and self._transport is not None and self._timer is None:
            request = self._next_request()
            if request is None:
                return
            reply = request if isinstance(request, Reply) else self._sim.handle(*request)
            if reply.delay > 0:
                self._timer = self._sim.loop.call_later(reply.delay, self._deliver, reply)
                return
            self._write(reply)

    def _deliver(self, reply: Reply) -> None:
        self._timer = None
        self._write(reply)
        self._serve_buffered()

    def _write(self, reply: Reply) -> None:
        transport = self._transport
        if transport is None:
            return
        transport.write(reply.data)
        self._sim.sent(reply)
        if reply.close:
            transport.close()
            self._transport = None

    def _next_request(self) -> tuple[bytes, bytes, bytes, bool] | Reply | None:
        buffer = self._buffer
        if not buffer:
            return None
        while buffer.startswith(b"\r\n"):  # stray line breaks between requests are allowed
            del buffer[:2]
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > _MAX_HEAD:
                return error_reply(
                    431, "Request headers too large.", "invalid_request_error", keep_alive=False
                )
            return None
        head = _read_head(bytes(buffer[:end]))
        if isinstance(head, Reply):
            return head
        method, target, length, keep_alive, expect = head
        total = end + 4 + length
        if len(buffer) < total:
            if expect == b"100-continue" and not self._continued and self._transport is not None:
                self._continued = True
                self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return None
        body = bytes(buffer[end + 4 : total])
        del buffer[:total]
        self._continued = False
        return method, target, body, keep_alive


# (method, target, body length, keep-alive?, expect): what framing needs of a request's head
Head = tuple[bytes, bytes, int, bool, bytes]


@functools.lru_cache(maxsize=4096)
def _read_head(head: bytes) -> Head | Reply:
    """The framing of one request head (its bytes up to the blank line), or the error reply it earns.

    Remembered by its bytes (bounded): a client's heads repeat (the same headers, a few body lengths),
    and the same bytes always read the same way; a reply remembered is only ever written, never changed.
    """
    line_end = head.find(b"\r\n")
    parts = (head if line_end < 0 else head[:line_end]).split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return error_reply(400, "Malformed HTTP request line.", "invalid_request_error", keep_alive=False)
    method, target, version = parts
    length: int | None = None
    connection = expect = b""
    # Header names are case-insensitive: the headers framing depends on, found in one C-level pass
    # over a lower-cased copy (not a Python loop over every header: the sim must stay cheap
    # beside the client it serves).
    for name, value in _FRAMING.findall(head.lower()):
        if name == b"content-length":
            # RFC 9112 6.3: a second length (or one not a number) makes the message unreadable.
            length = int(value) if length is None and value.strip().isdigit() else -1
            if not 0 <= length <= _MAX_BODY:
                return error_reply(413 if length > 0 else 400, "Bad or too large Content-Length.",
                                   "invalid_request_error", keep_alive=False)  # fmt: skip
        elif name == b"transfer-encoding":
            return error_reply(501, "engine-sim reads Content-Length bodies only.", "invalid_request_error",
                               keep_alive=False)  # fmt: skip
        elif name == b"connection":
            connection = value.strip()
        else:
            expect = value.strip()
    keep_alive = connection != b"close" if version == b"HTTP/1.1" else connection == b"keep-alive"
    return method, target, length or 0, keep_alive, expect
