"""The default transport (own HTTP/1.1) and the aiohttp one against real loopback sockets: responses, and
errors mapped to TransportError alike."""

from __future__ import annotations

import anyio
import pytest

from engine.endpoint.aiohttp_transport import AiohttpTransport
from engine.endpoint.http11 import Http11Transport
from engine.errors import TransportError
from engine.sim.config import SimConfig, SimFact
from engine.sim.serve import serve
from tests.support.net import refusing_port

TRANSPORTS = pytest.mark.parametrize("make", [Http11Transport, AiohttpTransport], ids=["http11", "aiohttp"])
Make = type[Http11Transport] | type[AiohttpTransport]


@TRANSPORTS
def test_a_transport_reads_status_headers_and_body(make: Make) -> None:
    config = SimConfig(facts=(SimFact(question="What is the number for Apple?", answer="65451"),))

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            port = await tg.start(serve, config)
            transport = make(concurrency=4)
            try:
                response = await transport.request(
                    "POST", f"http://127.0.0.1:{port}/v1/chat/completions",
                    body=b'{"model":"m","messages":[{"role":"user","content":"What is the number for Apple?"}]}',
                    headers={"Content-Type": "application/json"}, timeout=5,
                )
            finally:
                await transport.aclose()
            tg.cancel_scope.cancel()
        assert response.status == 200
        assert response.headers["x-engine-sim"] == response.headers["X-Engine-Sim"] == "1"  # names in any case
        assert b"65451" in response.body

    anyio.run(main)


@TRANSPORTS
def test_refused_connection_is_a_connect_error(make: Make) -> None:
    async def main(port: int) -> None:
        transport = make(concurrency=1)
        try:
            with pytest.raises(TransportError) as info:
                await transport.request("GET", f"http://127.0.0.1:{port}/v1/models", body=None, headers={}, timeout=5)
            assert info.value.kind == "connect"
        finally:
            await transport.aclose()

    with refusing_port() as port:
        anyio.run(main, port)


@TRANSPORTS
def test_no_reply_in_time_is_a_timeout(make: Make) -> None:
    async def main() -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(anyio.abc.SocketAttribute.local_port)

        async def silent(stream: anyio.abc.SocketStream) -> None:
            await anyio.sleep(10)

        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, silent)
            transport = make(concurrency=1)
            try:
                with pytest.raises(TransportError) as info:
                    await transport.request("GET", f"http://127.0.0.1:{port}/", body=None, headers={}, timeout=0.2)
                assert info.value.kind == "timeout"
            finally:
                await transport.aclose()
            tg.cancel_scope.cancel()

    anyio.run(main)
