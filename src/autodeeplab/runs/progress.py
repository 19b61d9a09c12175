"""Progress for long loops: a redrawn bar on a terminal, plain periodic log lines elsewhere, nothing if quiet.

Usage::

    with Progress(len(loader), f"search epoch {epoch + 1}/{epochs}", quiet=args.quiet) as bar:
        for images, labels in loader:
            ...
            bar.update(images=images.shape[0], loss=loss.item(), lr=scheduler.get_last_lr()[0])

On an interactive terminal the line ``search epoch 3/40  37% 37/100 [0:00:37<0:01:02] loss 0.51 lr 0.02
4.1 img/s`` is redrawn in place (at most every ``redraw_s`` seconds); when the stream is not a terminal (a
log file, CI) the same text is written as one line every ``log_every_s`` seconds, after the first step and
at the end. Rates and the ETA are averages since the bar started: a resumed loop passes ``start`` (the
steps already done before this process), which the bar shows but does not count as done in its time.
Metrics show their latest value.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

READ_BAR_DELAY_S = 3.0
"""Reading a split's files once before a run starts shows a bar only when it takes longer than this."""


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (with a ``Nd`` prefix past a day), e.g. ``0:01:02``; ``?`` when unknown."""
    if seconds != seconds or seconds < 0 or seconds == float("inf"):
        return "?"
    total = int(round(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{days}d {text}" if days else text


def format_metric(value: Any) -> str:
    """Four significant digits for floats (``0.5123``, ``0.025``, ``1.2e-05``), ints and text as they are."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Progress:
    """A progress display for ``total`` steps (None when unknown) labelled ``desc``.

    ``start``: steps done before the bar started (a resumed run); the bar begins there, and rates and the
    ETA count only the steps done since. ``delay_s``: nothing is shown before this many seconds (a short
    evaluation stays silent, a long one shows its progress). ``stream`` defaults to ``sys.stderr`` at
    construction time. ``clock`` and ``is_tty`` exist for tests.
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        quiet: bool = False,
        stream: TextIO | None = None,
        log_every_s: float = 10.0,
        redraw_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        is_tty: bool | None = None,
        start: int = 0,
        delay_s: float = 0.0,
    ) -> None:
        self.total = total
        self.desc = desc
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self.log_every_s = log_every_s
        self.redraw_s = redraw_s
        self.delay_s = delay_s
        self._clock = clock
        if is_tty is None:
            isatty = getattr(self.stream, "isatty", None)
            is_tty = bool(isatty and isatty())
        self.is_tty = is_tty
        self.n = start
        self._start_n = start
        self.images = 0
        self.metrics: dict[str, Any] = {}
        self._start = clock()
        self._last_output: float | None = None
        self._shown_n = -1
        self._closed = False

    # -- the text -------------------------------------------------------------------------------------------

    def line(self) -> str:
        """The current status as one line of text."""
        elapsed = self._clock() - self._start
        done = self.n - self._start_n  # steps timed by this bar
        parts = [self.desc]
        if self.total:
            percent = int(100 * self.n / self.total)
            remaining = elapsed / done * (self.total - self.n) if done > 0 else float("nan")
            parts.append(f"{percent:3d}% {self.n}/{self.total}")
            parts.append(f"[{format_duration(elapsed)}<{format_duration(remaining)}]")
        else:
            parts.append(f"{self.n} [{format_duration(elapsed)}]")
        parts.extend(f"{key} {format_metric(value)}" for key, value in self.metrics.items())
        if done > 0 and elapsed > 0:
            if self.images:
                parts.append(f"{self.images / elapsed:.3g} img/s")
            else:
                parts.append(f"{done / elapsed:.3g} it/s")
        return " ".join(parts)

    # -- updates --------------------------------------------------------------------------------------------

    def update(self, n: int = 1, images: int | None = None, **metrics: Any) -> None:
        """Advance by ``n`` steps (``images`` seen in them, for img/s) and record the latest ``metrics``."""
        self.n += n
        if images:
            self.images += images
        self.metrics.update(metrics)
        if self.quiet or self._closed:
            return
        now = self._clock()
        if now - self._start < self.delay_s:
            return
        finished = self.total is not None and self.n >= self.total
        if self.is_tty:
            if finished or self._last_output is None or now - self._last_output >= self.redraw_s:
                self._draw(now)
        elif self._last_output is None or now - self._last_output >= self.log_every_s:
            self._log_line(now)

    def log(self, message: str) -> None:
        """Print a message above the bar without breaking it (nothing when quiet)."""
        if self.quiet:
            return
        if self.is_tty:
            self.stream.write("\r\x1b[K" + message + "\n")
            if self._last_output is not None:
                self._draw(self._clock())
        else:
            self.stream.write(message + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Show the final state (a last redraw and newline, or a last log line); idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.quiet:
            return
        now = self._clock()
        if self._last_output is None and now - self._start < self.delay_s:
            return  # finished before the delay: never shown
        if self.is_tty:
            if self._last_output is not None:
                self._draw(now)
                self.stream.write("\n")
                self.stream.flush()
        elif self._shown_n != self.n:
            self._log_line(now)

    def _draw(self, now: float) -> None:
        width = shutil.get_terminal_size(fallback=(120, 24)).columns
        self.stream.write("\r" + self.line()[: max(width - 1, 10)] + "\x1b[K")
        self.stream.flush()
        self._last_output, self._shown_n = now, self.n

    def _log_line(self, now: float) -> None:
        self.stream.write(self.line() + "\n")
        self.stream.flush()
        self._last_output, self._shown_n = now, self.n

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
