"""The default transport's own HTTP/1.1 against real loopback sockets: each way a response can be
framed, keep-alive and its failures, errors mapped to TransportError, the pool's bound."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import Awaitable, Callable

import pytest

from engine.endpoint.http11 import Http11Transport
from engine.errors import TransportError
from tests.support.net import refusing_port

Reply = Callable[[int, bytes], bytes | None]  # (request number on this server, request) -> bytes to send


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + (await reader.readexactly(length) if length else b"")


class Server:
    """A loopback server that answers each request with ``reply(n, request)``: None closes the connection."""

    def __init__(self, reply: Reply, *, close_after_each: bool = False, delay: float = 0.0) -> None:
        self.reply, self.close_after_each, self.delay = reply, close_after_each, delay
        self.connections = 0
        self.open_now = 0
        self.most_open = 0
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            while (request := await read_request(reader)) is not None:
                self.requests.append(request)
                data = self.reply(len(self.requests), request)
                if data is None:
                    break
                await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()
                if self.close_after_each:
                    break
        finally:
            self.open_now -= 1
            writer.close()


def run(reply: Reply, body: Callable[[Http11Transport, str, Server], Awaitable[None]], *,
        concurrency: int = 4, close_after_each: bool = False, delay: float = 0.0, uvloop: bool = False,
        ) -> Server:  # fmt: skip
    server = Server(reply, close_after_each=close_after_each, delay=delay)

    async def main() -> None:
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        transport = Http11Transport(concurrency=concurrency)
        try:
            await body(transport, f"http://127.0.0.1:{port}", server)
        finally:
            await transport.aclose()
            listener.close()

    if uvloop:  # a Ray actor's loop, and the built-in target's
        pytest.importorskip("uvloop").run(main())
    else:
        asyncio.run(main())
    return server


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def get(transport: Http11Transport, url: str, timeout: float = 5) -> tuple[int, dict[str, str], bytes]:
    response = await transport.request("POST", url + "/v1/x", body=b"{}", headers={"X-A": "1"}, timeout=timeout)
    return response.status, dict(response.headers), response.body


@pytest.mark.parametrize("uvloop", [False, True])
def test_keep_alive_reuses_one_connection_and_sends_a_well_formed_request(uvloop: bool) -> None:
    async def body(t: Http11Transport, url: str, s: Server) -> None:
        for _ in range(5):
            assert await get(t, url) == (200, {"content-length": "2"}, b"ok")

    server = run(lambda n, r: ok(b"ok"), body, uvloop=uvloop)
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /v1/x HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nX-A: 1\r\n" in first and b"\r\nContent-Length: 2\r\n" in first and first.endswith(b"\r\n\r\n{}")


def test_a_chunked_body_with_extensions_and_trailers_is_joined() -> None:
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n")  # fmt: skip

    async def body(t: Http11Transport, url: str, s: Server) -> None:
        assert (await get(t, url))[2] == b"hello world"
        assert (await get(t, url))[2] == b"hello world"  # the connection was left at the right byte

    assert run(lambda n, r: chunked, body).connections == 1


def test_a_chunked_body_arriving_a_few_bytes_at_a_time_is_joined() -> None:
    body_bytes = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in [b"x" * 1000] * 200) + b"0\r\n\r\n"
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        data = head + body_bytes
        for i in range(0, len(data), 997):  # pieces that cut chunk lines and data anywhere
            writer.write(data[i : i + 997])
            await writer.drain()
            await asyncio.sleep(0)
        await read_request(reader)
        writer.close()

    async def main() -> None:
        listener = await asyncio.start_server(handle, "127.0.0.1", 0)
        transport = Http11Transport(concurrency=1)
        try:
            url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
            assert (await get(transport, url))[2] == b"x" * 200_000
        finally:
            await transport.aclose()
            listener.close()

    asyncio.run(main())


def test_a_pooled_connection_with_bytes_nobody_asked_for_is_not_reused() -> None:
    connections = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        while await read_request(reader) is not None:
            writer.write(ok(b"fine"))
            await writer.drain()
            await asyncio.sleep(0.02)
            writer.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")  # unasked, while idle

    async def main() -> None:
        listener = await asyncio.start_server(handle, "127.0.0.1", 0)
        transport = Http11Transport(concurrency=1)
        try:
            url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
            assert await get(transport, url) == (200, {"content-length": "4"}, b"fine")
            await asyncio.sleep(0.1)
            assert await get(transport, url) == (200, {"content-length": "4"}, b"fine")  # not the stray 408
        finally:
            await transport.aclose()
            listener.close()
        assert len(connections) == 2

    asyncio.run(main())


def test_a_body_framed_by_the_close_is_read_to_the_end_and_the_connection_not_reused() -> None:
    async def body(t: Http11Transport, url: str, s: Server) -> None:
        assert await get(t, url) == (200, {}, b"all of it")
        assert await get(t, url) == (200, {}, b"all of it")

    assert run(lambda n, r: b"HTTP/1.1 200 OK\r\n\r\nall of it", body, close_after_each=True).connections == 2


def test_connection_close_http_1_0_and_interim_responses() -> None:
    replies = {
        1: ok(b"a", b"Connection: close\r\n"),
        2: b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"b"),
        3: b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nc",
        4: ok(b"d"),
    }

    async def body(t: Http11Transport, url: str, s: Server) -> None:
        assert [(await get(t, url))[2] for _ in range(4)] == [b"a", b"b", b"c", b"d"]

    # a: closed as asked; b (after the 100) keeps its connection for c; c is HTTP/1.0: closed; d new
    assert run(lambda n, r: replies[n], body).connections == 3


def test_a_pooled_connection_the_server_closed_is_sent_again_on_a_new_one() -> None:
    async def body(t: Http11Transport, url: str, s: Server) -> None:
        assert (await get(t, url))[2] == b"1"
        await asyncio.sleep(0.05)  # the server closes the idle connection (a keep-alive timeout)
        assert (await get(t, url))[2] == b"2"

    server = run(lambda n, r: ok(str(n).encode()), body, close_after_each=True)
    assert (server.connections, len(server.requests)) == (2, 2)


def test_a_pooled_connection_closed_as_the_request_went_out_is_sent_once_more() -> None:
    async def body(t: Http11Transport, url: str, s: Server) -> None:
        assert (await get(t, url))[2] == b"1"
        assert (await get(t, url))[2] == b"3"  # request 2 met the close with no byte back: sent again

    server = run(lambda n, r: None if n == 2 else ok(str(n).encode()), body)
    assert (server.connections, len(server.requests)) == (2, 3)


def test_a_reply_cut_short_is_a_read_error_not_a_resend() -> None:
    async def body(t: Http11Transport, url: str, s: Server) -> None:
        with pytest.raises(TransportError) as info:
            await get(t, url)
        assert info.value.kind == "read" and "mid-response" in str(info.value)

    server = run(lambda n, r: b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", body, close_after_each=True)
    assert len(server.requests) == 1  # a request the server may have acted on is not sent twice


@pytest.mark.parametrize("reply", [b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
                                   b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                                   b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"])  # fmt: skip
def test_what_is_not_http_is_a_read_error(reply: bytes) -> None:
    async def body(t: Http11Transport, url: str, s: Server) -> None:
        with pytest.raises(TransportError) as info:
            await get(t, url)
        assert info.value.kind == "read"

    run(lambda n, r: reply, body)


def test_gzip_and_deflate_bodies_are_decoded() -> None:
    replies = {1: ok(gzip.compress(b"zipped"), b"Content-Encoding: gzip\r\n"),
               2: ok(zlib.compress(b"deflated"), b"Content-Encoding: deflate\r\n")}  # fmt: skip

    async def body(t: Http11Transport, url: str, s: Server) -> None:
        assert (await get(t, url))[2] == b"zipped"
        assert (await get(t, url))[2] == b"deflated"

    run(lambda n, r: replies[n], body)


def test_no_reply_in_time_is_a_timeout_and_that_connection_is_dropped() -> None:
    async def body(t: Http11Transport, url: str, s: Server) -> None:
        with pytest.raises(TransportError) as info:
            await get(t, url, timeout=0.2)
        assert info.value.kind == "timeout"
        assert (await get(t, url))[2] == b"late"  # a new connection: the first's reply would be out of step

    def reply(n: int, r: bytes) -> bytes | None:
        return ok(b"late") if n > 1 else b""

    assert run(reply, body).connections == 2


def test_https_goes_through_aiohttp_and_a_refusal_there_is_a_connect_error_too() -> None:
    # Plain http's refusal: tests/endpoint/test_transport.py, for this transport and aiohttp alike.
    async def main(port: int) -> None:
        transport = Http11Transport(concurrency=1)
        try:
            with pytest.raises(TransportError) as info:
                await transport.request("GET", f"https://127.0.0.1:{port}/v1/models", body=None, headers={}, timeout=5)
            assert info.value.kind == "connect"
            assert transport._tls is not None  # the request went to the aiohttp transport
        finally:
            await transport.aclose()

    with refusing_port() as port:
        asyncio.run(main(port))


def test_at_most_concurrency_connections_are_open() -> None:
    async def body(t: Http11Transport, url: str, s: Server) -> None:
        results = await asyncio.gather(*(get(t, url) for _ in range(12)))
        assert {r[2] for r in results} == {b"x"}

    server = run(lambda n, r: ok(b"x"), body, concurrency=3, delay=0.05)
    assert server.most_open == 3  # the bound is reached (replies are slow) and never passed


@pytest.mark.parametrize("value", ["a\r\nInjected: 1", "sk-€uro-secret"])
def test_a_header_http_cannot_carry_is_refused_before_anything_is_sent_and_never_quoted(value: str) -> None:
    async def body(t: Http11Transport, url: str, s: Server) -> None:
        with pytest.raises(TransportError) as info:
            await t.request("GET", url + "/", body=None, headers={"Authorization": value}, timeout=5)
        assert value not in str(info.value) and "secret" not in str(info.value)

    assert run(lambda n, r: ok(b""), body).requests == []
