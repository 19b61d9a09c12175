"""Progress: exact log lines with a fake clock, terminal redraws, quiet mode."""

from __future__ import annotations

import io

from autodeeplab.runs.progress import Progress, format_duration, format_metric


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_format_helpers():
    assert format_duration(62) == "0:01:02"
    assert format_duration(3600 * 26 + 61) == "1d 2:01:01"
    assert format_duration(float("nan")) == "?" and format_duration(float("inf")) == "?"
    assert [format_metric(v) for v in (0.51234567, 0.025, 1.2e-5, 7, "x")] == [
        "0.5123",
        "0.025",
        "1.2e-05",
        "7",
        "x",
    ]


def test_plain_log_lines_every_interval():
    clock, out = FakeClock(), io.StringIO()
    bar = Progress(10, "search epoch 1/2", stream=out, log_every_s=10.0, clock=clock, is_tty=False)
    for step in range(1, 11):
        clock.now = 100.0 + 2.0 * step  # 2 s per step, 4 images per step
        bar.update(images=4, loss=1.0 / step, lr=0.025)
    bar.close()
    bar.close()  # idempotent
    assert out.getvalue().splitlines() == [
        # the first step, then one line per 10 s, then the end (not repeated when already shown)
        "search epoch 1/2  10% 1/10 [0:00:02<0:00:18] loss 1 lr 0.025 2 img/s",
        "search epoch 1/2  60% 6/10 [0:00:12<0:00:08] loss 0.1667 lr 0.025 2 img/s",
        "search epoch 1/2 100% 10/10 [0:00:20<0:00:00] loss 0.1 lr 0.025 2 img/s",
    ]


def test_close_logs_the_unshown_end():
    clock, out = FakeClock(), io.StringIO()
    with Progress(None, "train", stream=out, clock=clock, is_tty=False) as bar:
        clock.now += 1
        bar.update()
        clock.now += 1
        bar.update(2, loss=0.5)
    assert out.getvalue().splitlines() == ["train 1 [0:00:01] 1 it/s", "train 3 [0:00:02] loss 0.5 1.5 it/s"]


def test_terminal_redraws_in_place_and_throttles():
    clock, out = FakeClock(), io.StringIO()
    bar = Progress(4, "eval", stream=out, clock=clock, is_tty=True, redraw_s=0.5)
    clock.now += 1
    bar.update(loss=2.0)  # first: drawn
    clock.now += 0.1
    bar.update(loss=1.0)  # too soon: not drawn
    bar.log("a message")  # printed above the bar, which is redrawn
    clock.now += 1
    bar.update(loss=0.5)
    bar.update()  # finished: always drawn
    bar.close()
    text = out.getvalue()
    assert text.endswith("\n") and text.count("\n") == 2
    frames = [f for f in text.replace("\x1b[K", "").replace("\n", "\r").split("\r") if f]
    assert frames == [
        "eval  25% 1/4 [0:00:01<0:00:03] loss 2 1 it/s",
        "a message",
        "eval  50% 2/4 [0:00:01<0:00:01] loss 1 1.82 it/s",
        "eval  75% 3/4 [0:00:02<0:00:01] loss 0.5 1.43 it/s",
        "eval 100% 4/4 [0:00:02<0:00:00] loss 0.5 1.9 it/s",
        "eval 100% 4/4 [0:00:02<0:00:00] loss 0.5 1.9 it/s",
    ]


def test_quiet_prints_nothing_but_counts():
    out = io.StringIO()
    with Progress(3, "x", quiet=True, stream=out, is_tty=True) as bar:
        bar.update(images=2, loss=1.0)
        bar.log("hidden")
    assert out.getvalue() == ""
    assert bar.n == 1 and bar.images == 2 and bar.metrics == {"loss": 1.0}


def test_a_resumed_bar_starts_at_its_offset_and_times_only_new_steps():
    clock, out = FakeClock(), io.StringIO()
    bar = Progress(100, "training", stream=out, clock=clock, is_tty=False, start=90)
    assert bar.n == 90
    for _ in range(5):
        clock.now += 2.0  # 2 s per step since the resume
        bar.update()
    bar.close()
    # 5 steps in 10 s: 0.5 it/s and 10 s for the 5 left (a rate over all 95 steps would claim 9.5 it/s)
    assert out.getvalue().splitlines()[-1] == "training  95% 95/100 [0:00:10<0:00:10] 0.5 it/s"
    assert out.getvalue().splitlines()[0] == "training  91% 91/100 [0:00:02<0:00:18] 0.5 it/s"


def test_a_delayed_bar_stays_silent_when_short_and_shows_a_long_run():
    clock, out = FakeClock(), io.StringIO()
    with Progress(4, "validation", stream=out, clock=clock, is_tty=False, delay_s=3.0) as bar:
        for _ in range(4):
            clock.now += 0.5
            bar.update()
    assert out.getvalue() == ""  # 2 s in all: never shown
    with Progress(4, "validation", stream=out, clock=clock, is_tty=False, delay_s=3.0) as bar:
        for _ in range(4):
            clock.now += 2.0
            bar.update()
    assert out.getvalue().splitlines() == [
        "validation  50% 2/4 [0:00:04<0:00:04] 0.5 it/s",  # the first update past the delay
        "validation 100% 4/4 [0:00:08<0:00:00] 0.5 it/s",
    ]
