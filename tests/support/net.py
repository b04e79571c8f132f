"""A loopback port that refuses connections, for tests of what a client does when nothing answers."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A loopback port bound but not listening: a connection to it is refused, and while the block
    runs no other process can take it. Usage: ``with refusing_port() as port: ...``"""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])
