"""Signals as a terminal sends them: Ctrl-C (SIGINT), ``timeout``/``kill`` (SIGTERM), a closed terminal (SIGHUP).

A terminal sends Ctrl-C to its whole foreground process group, ``timeout`` signals its child and
then the child's group, and a closed terminal hangs up the session. :class:`Interrupts` catches all
three for the length of a run, so none of them ends the engine in the middle of a write:

- before the grid starts (checks, starting local targets, preflight) nothing has been sent, so a
  signal raises :class:`Interrupted` at once and the run unwinds, writing nothing;
- while the grid runs, the first signal asks it to stop sending and let requests in flight finish,
  the second to stop now (see ``send._watch_signals``); neither leaves a torn log;
- after the grid (closing the log, stopping targets, the report) a first signal is only noted, a
  second raises :class:`Interrupted`.

The exit code is 128 + the first signal's number: 130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP,
as shells report a command killed by that signal. A signal the engine was started with ignored
(``nohup``, a background job) stays ignored.

Usage::

    with Interrupts() as interrupts:
        ...                                # a signal here raises Interrupted
        interrupts.first                   # the first signal caught, or None
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, Protocol


class _Loop(Protocol):
    """What a signal needs of an event loop; asyncio itself (0.04 s to import) loads after the
    built-in target is spawned."""

    def call_soon_threadsafe(self, callback: Callable[[int], None], arg: int, /) -> object: ...

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

# `timeout` sends its signal to the engine and then to the engine's process group, so one event can
# arrive twice. Two signals this close together are that one event, not a user pressing Ctrl-C twice.
SAME_EVENT_S = 0.05


def exit_code_of(signum: int) -> int:
    """The exit code of a run stopped by signal ``signum``, as a shell reports it. Usage: ``exit_code_of(2) == 130``"""
    return 128 + signum


def signal_name(signum: int) -> str:
    """``"SIGINT"`` for 2. Usage: ``signal_name(signal.SIGTERM)``"""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Interrupted(KeyboardInterrupt):
    """A signal stopped the engine before it could stop gracefully; not an error.

    A KeyboardInterrupt, so asyncio lets it through its callbacks (it logs and swallows other
    exceptions raised there) and every ``finally`` on the way out runs, as for Ctrl-C.

    Usage: ``except Interrupted as exc: sys.exit(exc.exit_code)``
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal_name(signum))
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return exit_code_of(self.signum)


def interrupt_behind(exc: BaseException) -> Interrupted | None:
    """The Interrupted that ``exc`` was raised from or while handling, if any.

    Some code wraps whatever it meets in an error of its own (Python 3.11 turns an exception raised
    while a class is being created, i.e. during an import, into a RuntimeError): that is still the
    interrupt, and is reported as one. Usage: ``if (cause := interrupt_behind(exc)) is not None: ...``
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, Interrupted):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


class Interrupts:
    """Catches SIGINT, SIGTERM and SIGHUP while entered (main thread only; elsewhere it does nothing).

    Usage: see the module docstring; ``send._watch_signals`` turns them into a graceful stop.
    """

    def __init__(self) -> None:
        self.first: int | None = None  # the first signal caught: it decides the exit code
        self.count = 0  # signals caught, one event delivered twice counted once
        self._last = -math.inf
        self._graceful = False  # set once the grid has started: a first signal no longer raises
        self._deliver: Callable[[int], None] | None = None
        self._loop: _Loop | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be set from the main thread
        for signum in SIGNALS:
            previous = signal.getsignal(signum)
            if previous is signal.SIG_IGN:
                continue  # started under nohup or as a background job: the user asked for this one to be ignored
            self._previous[signum] = previous
            signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    @property
    def exit_code(self) -> int | None:
        """128 + the first signal's number, or None when no signal came."""
        return None if self.first is None else exit_code_of(self.first)

    @contextlib.contextmanager
    def delivering(self, loop: _Loop, deliver: Callable[[int], None]) -> Iterator[None]:
        """While entered, signals call ``deliver(count)`` on ``loop`` instead of raising; from then on a
        first signal never raises. Usage: ``with interrupts.delivering(loop, on_signal): ...``"""
        self._graceful = True
        self._loop, self._deliver = loop, deliver
        try:
            yield
        finally:
            self._loop = self._deliver = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if now - self._last < SAME_EVENT_S:
            return
        self._last = now
        self.count += 1
        if self.first is None:
            self.first = signum
        if self._deliver is not None and self._loop is not None:
            # A signal handler runs between two bytecodes of the loop's own thread: hand the work to the
            # loop rather than touch its state from here.
            self._loop.call_soon_threadsafe(self._deliver, self.count)
            return
        if not self._graceful or self.count > 1:
            raise Interrupted(self.first)
