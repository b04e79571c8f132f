"""The sim in this process: :func:`serve` until cancelled (the child of :class:`engine.sim.process.SimProcess` runs it too).

Usage::

    async with anyio.create_task_group() as tg:        # asyncio backend
        port = await tg.start(serve, cfg)
        ...
        tg.cancel_scope.cancel()
"""

from __future__ import annotations

import asyncio

import anyio
from anyio.abc import TaskStatus

from engine.errors import ConfigError, EndpointError
from engine.sim.config import SimConfig
from engine.sim.server import SimServer

__all__ = ["BANNER", "serve"]

BANNER = "engine-sim (a simulation, not a model) listening on http://{host}:{port}/v1"
"""The child's first line on stdout once its port is bound; :class:`engine.sim.process.SimProcess` reads the URL from it."""


async def serve(
    config: SimConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the sim until cancelled; reports the bound port through ``task_status`` (asyncio only).

    Usage: ``port = await tg.start(serve, cfg)``, then ``tg.cancel_scope.cancel()`` to stop.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError as exc:
        raise ConfigError("the sim needs anyio's asyncio backend") from exc
    sim = SimServer(config, loop)
    try:
        server = await loop.create_server(sim.protocol, host, port, backlog=2048)
    except OSError as exc:
        raise EndpointError(f"sim cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    try:
        task_status.started(server.sockets[0].getsockname()[1])
        await anyio.sleep_forever()
    finally:
        server.close()
        # Cut open connections and their pending delayed replies so closing cannot hang.
        sim.abort_all()
