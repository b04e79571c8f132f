"""Live progress: done / total, requests/s, in flight, retries, 429s, failures, ETA, per endpoint.

On a terminal it is a rich live table redrawn a few times a second; otherwise (a
pipe, CI, ``--quiet`` off but no TTY) a plain line every few seconds; with
``quiet`` nothing until the summary.

Usage::

    progress = Progress(total=3600, skipped=Skipped(), counters=counters, clients=clients, console=Console())
    async with anyio.create_task_group() as tg:
        tg.start_soon(progress.run)
        ...
        tg.cancel_scope.cancel()
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import anyio
from rich.console import Console
from rich.live import Live
from rich.table import Table

from engine.endpoint.client import ChatClient
from engine.experiment.grid import Skipped
from engine.run.scheduler import Counters


class Progress:
    """Draws the run's progress from live counters; never touches the log. Usage: see module docstring."""

    def __init__(
        self, *, total: int, skipped: Skipped, counters: Counters, clients: Sequence[ChatClient], console: Console,
        quiet: bool = False, plain_every_s: float = 10.0,
    ) -> None:
        self.total = total
        self.skipped = skipped  # done in an earlier run: counted as the grid is walked
        self.counters = counters
        self.clients = clients
        self.console = console
        self.quiet = quiet
        self.plain_every_s = plain_every_s
        self.started = time.monotonic()

    def line(self) -> str:
        """One plain line of the current state."""
        c = self.counters
        elapsed = max(1e-9, time.monotonic() - self.started)
        rate = c.done / elapsed
        done = self.skipped.count + c.done
        left = max(0, self.total - done)
        eta = f"{left / rate:,.0f}s" if rate > 0 else "?"
        requests = sum(cl.stats.requests for cl in self.clients)
        retries = sum(cl.stats.retries for cl in self.clients)
        limited = sum(cl.stats.rate_limited for cl in self.clients)
        in_flight = sum(cl.limiter.in_flight for cl in self.clients)
        return (
            f"{done:,}/{self.total:,} done · {rate:,.1f} tasks/s · {in_flight} in flight · {requests:,} requests · "
            f"{retries:,} retries · {limited:,} 429s · {c.failed:,} failed · ETA {eta}"
        )

    def table(self) -> Table:
        """The live view: the summary line, then each endpoint's limiter state."""
        now = anyio.current_time()
        table = Table(title=self.line(), title_justify="left", expand=False)
        for column in ("endpoint", "rate", "window", "in flight", "requests", "429s (1 min)", "paused"):
            table.add_column(column, justify="right" if column != "endpoint" else "left")
        for client in self.clients:
            limiter = client.limiter
            rate = "unpaced" if limiter.rate is None else f"{limiter.rate * 60:,.0f}/min"
            recent = sum(1 for t in limiter.recent_429 if t > now - 60)
            pause = limiter.paused_until - now
            table.add_row(
                client.label, rate, str(limiter.window), str(limiter.in_flight), f"{client.stats.requests:,}",
                str(recent), f"{pause:.1f}s" if pause > 0 else "",
            )
        return table

    async def run(self) -> None:
        """Redraw until cancelled."""
        if self.quiet:
            return
        if self.console.is_terminal:
            with Live(self.table(), console=self.console, refresh_per_second=4, transient=True) as live:
                while True:
                    await anyio.sleep(0.25)
                    live.update(self.table())
        else:
            while True:
                await anyio.sleep(self.plain_every_s)
                self.console.print(self.line(), highlight=False)
