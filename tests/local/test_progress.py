"""Training progress: lines at the first step, then every few seconds and per epoch; live on a terminal."""

from __future__ import annotations

import io

from engine.local.progress import TrainProgress, format_duration


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_redirected_output_gets_a_line_at_the_first_step_then_every_ten_seconds() -> None:
    clock, lines = Clock(), list[str]()
    progress = TrainProgress(write=lines.append, clock=clock, every=10.0)
    progress.start(epochs=2, steps_per_epoch=4)
    for epoch in range(2):
        for step in range(4):
            clock.now += 3.0
            progress.step(epoch=epoch, step=step, loss=1.0 / (1 + step))
        progress.end_epoch(epoch=epoch, loss=0.5)
    assert lines[0] == "epoch 1/2 step 1/4: loss 1.0000 (epoch mean 1.0000), 0.33 steps/s, ETA 0:21"
    # A step line at the first step, then only once 10 s passed since the last line (an epoch's
    # line counts: 9 s after it, no line; 12 s after it, one); one line per epoch end.
    assert [line.split(":")[0] for line in lines] == [
        "epoch 1/2 step 1/4", "epoch 1/2", "epoch 2/2 step 4/4", "epoch 2/2",
    ]
    assert lines[1] == "epoch 1/2: loss 0.5000, 4 steps in 0:12 (0.33 steps/s, 12 s in total)"
    assert lines[-1].endswith("(0.33 steps/s, 24 s in total)")


def test_a_terminal_gets_one_line_redrawn_in_place() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream, clock = Tty(), Clock()
    progress = TrainProgress.to_stream(stream)
    progress.clock = clock
    assert progress.live
    progress.note("precision fp32: as requested")
    progress.start(epochs=1, steps_per_epoch=3)
    for step in range(3):
        clock.now += 1.0
        progress.step(epoch=0, step=step, loss=2.0)
    progress.end_epoch(epoch=0, loss=2.0)
    text = stream.getvalue()
    assert text.count("\n") == 2  # the note and the epoch's last line; status lines are redrawn
    assert text.count("\r\x1b[2K") == 5 and "step 3/3" in text and "ETA 0:00" in text


def test_a_file_stream_is_not_live_and_each_line_is_flushed() -> None:
    flushed: list[str] = []

    class File(io.StringIO):
        def flush(self) -> None:
            flushed.append(self.getvalue())

    stream = File()
    progress = TrainProgress.to_stream(stream)
    assert not progress.live
    progress.note("tokenising 3 examples")
    assert flushed == ["tokenising 3 examples\n"]


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0, 59.4, 75, 3725)] == ["0:00", "0:59", "1:15", "1:02:05"]
    assert format_duration(float("inf")) == "?" and format_duration(-1) == "?"
