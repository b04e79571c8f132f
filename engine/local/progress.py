"""Training progress: a live line on a terminal, flushed lines every few seconds otherwise.

On a terminal one line per epoch updates in place (step, loss, steps/s, ETA)
and is left standing when the epoch ends. When the output is a file or a pipe
(``engine train ... > log``, a CI job, ``replicate`` with a label in front),
a line is written after the first step, then at least every ``every`` seconds,
and at the end of every epoch, each flushed at once: a block-buffered ``print``
is what left a 20-minute run silent before.

Usage::

    progress = TrainProgress.to_stream(sys.stdout)          # live if stdout is a terminal
    progress.start(epochs=3, steps_per_epoch=32)
    progress.step(epoch=0, step=0, loss=2.31)                # after every optimiser step
    progress.end_epoch(epoch=0, loss=1.92)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

__all__ = ["TrainProgress", "format_duration"]


def format_duration(seconds: float) -> str:
    """``75`` -> ``1:15``, ``3725`` -> ``1:02:05``; ``?`` when unknown.

    Usage: ``format_duration(75.0) == "1:15"``
    """
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass(kw_only=True, slots=True)
class TrainProgress:
    """Reports training progress through ``write`` (a line, no newline) and ``finish_live``.

    ``live``: redraw one line in place (a terminal); otherwise whole lines, at most every
    ``every`` seconds between epoch ends. ``clock`` is injectable for tests.
    Usage: ``TrainProgress(write=lines.append, live=False)``
    """

    write: Callable[[str], None]
    live: bool = False
    every: float = 10.0
    redraw: float = 0.2
    clock: Callable[[], float] = time.monotonic
    stream: TextIO | None = None  # set by to_stream: live lines go to it with a carriage return
    _epochs: int = field(default=0, init=False)
    _steps_per_epoch: int = field(default=0, init=False)
    _started: float = field(default=0.0, init=False)
    _epoch_started: float = field(default=0.0, init=False)
    _last_line: float = field(default=-math.inf, init=False)
    _done_steps: int = field(default=0, init=False)
    _epoch_sum: float = field(default=0.0, init=False)
    _epoch_steps: int = field(default=0, init=False)

    @classmethod
    def to_stream(cls, stream: TextIO, *, every: float = 10.0) -> TrainProgress:
        """Progress on ``stream``: live when it is a terminal, flushed lines otherwise.

        Usage: ``TrainProgress.to_stream(sys.stdout)``
        """
        def line(text: str) -> None:
            stream.write(text + "\n")
            stream.flush()

        live = bool(getattr(stream, "isatty", lambda: False)())
        return cls(write=line, live=live, every=every, stream=stream)

    def start(self, *, epochs: int, steps_per_epoch: int) -> None:
        """Training begins: ``epochs`` epochs of ``steps_per_epoch`` optimiser steps."""
        self._epochs, self._steps_per_epoch = epochs, steps_per_epoch
        self._started = self._epoch_started = self.clock()
        self._done_steps = 0

    def step(self, *, epoch: int, step: int, loss: float) -> None:
        """Step ``step`` (0-based) of ``epoch`` (0-based) finished with ``loss``."""
        now = self.clock()
        if step == 0:
            self._epoch_sum, self._epoch_steps = 0.0, 0
        self._done_steps += 1
        self._epoch_sum += loss
        self._epoch_steps += 1
        first = self._done_steps == 1
        due = now - self._last_line >= (self.redraw if self.live else self.every)
        if first or due:
            self._last_line = now
            self._emit(self._status(epoch, step, loss, now), final=False)

    def end_epoch(self, *, epoch: int, loss: float) -> None:
        """``epoch`` (0-based) finished; ``loss`` is its mean loss per example."""
        now = self.clock()
        took = now - self._epoch_started
        self._last_line = self._epoch_started = now
        self._emit(
            f"epoch {epoch + 1}/{self._epochs}: loss {loss:.4f}, {self._steps_per_epoch} steps in"
            f" {format_duration(took)} ({self._rate(now):.2f} steps/s, {now - self._started:.0f} s in total)",
            final=True,
        )

    def note(self, text: str) -> None:
        """A one-off line (the precision chosen, tokenising, ...)."""
        self._emit(text, final=True)

    def _rate(self, now: float) -> float:
        elapsed = now - self._started
        return self._done_steps / elapsed if elapsed > 0 else 0.0

    def _status(self, epoch: int, step: int, loss: float, now: float) -> str:
        rate = self._rate(now)
        left = self._epochs * self._steps_per_epoch - self._done_steps
        eta = left / rate if rate > 0 else math.inf
        mean = self._epoch_sum / max(1, self._epoch_steps)
        return (
            f"epoch {epoch + 1}/{self._epochs} step {step + 1}/{self._steps_per_epoch}:"
            f" loss {loss:.4f} (epoch mean {mean:.4f}), {rate:.2f} steps/s, ETA {format_duration(eta)}"
        )

    def _emit(self, text: str, *, final: bool) -> None:
        if self.live and self.stream is not None:
            # Redraw in place; a final line keeps its newline and the next status starts below it.
            self.stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
            self.stream.flush()
        else:
            self.write(text)
