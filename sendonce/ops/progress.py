"""Progress of a long operator command (``replay``, ``trace``) on stderr.

On a terminal, one line redrawn in place (``\\r``) with records done/total, the
rate and the time left; anywhere else (a pipe, a log file, CI), a plain line every
few seconds, so a log shows the command is alive without a flood of lines. The
clock is injectable so tests drive it without waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["Progress", "format_duration"]


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``: short, for an ETA."""
    total = max(0, round(seconds))
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _rate(per_s: float) -> str:
    if per_s >= 10_000:
        return f"{per_s / 1000:,.0f}k/s"
    if per_s >= 10:
        return f"{per_s:,.0f}/s"
    return f"{per_s:.1f}/s"


class Progress:
    """Reports ``done`` of ``total`` items of one phase of a command.

    ``stream`` ``None`` reports nothing (a quiet caller, such as the demo). ``tty``
    defaults to ``stream.isatty()``. On a TTY the line is redrawn at most every
    ``redraw_s``; otherwise a line is written every ``interval_s`` (and one at
    :meth:`finish`). ``total`` may be unknown (``None``): no percentage, no ETA.
    """

    def __init__(
        self,
        label: str,
        total: int | None,
        stream: TextIO | None,
        *,
        unit: str = "records",
        clock: Callable[[], float] = time.monotonic,
        tty: bool | None = None,
        interval_s: float = 5.0,
        redraw_s: float = 0.2,
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.done = 0
        self._stream = stream
        self._clock = clock
        self._tty = bool(stream is not None and stream.isatty()) if tty is None else tty
        self._interval_s = interval_s if not self._tty else redraw_s
        self._started = clock()
        self._last_write = self._started
        self._width = 0
        self._finished = False

    def advance(self, n: int = 1) -> None:
        """``n`` more items are done."""
        self.update(self.done + n)

    def update(self, done: int) -> None:
        """``done`` items are done so far; writes a line when one is due."""
        self.done = done
        if self._stream is None or self._finished:
            return
        now = self._clock()
        if now - self._last_write >= self._interval_s:
            self._write(self.line(now))
            self._last_write = now

    def finish(self, done: int | None = None) -> None:
        """The phase is over: the final line (and, on a TTY, the end of the line)."""
        if done is not None:
            self.done = done
        if self._stream is None or self._finished:
            return
        self._finished = True
        self._write(self.line(self._clock(), final=True))
        if self._tty:
            self._stream.write("\n")
        self._stream.flush()

    def line(self, now: float | None = None, *, final: bool = False) -> str:
        """The text of the progress line as of ``now``."""
        elapsed = max(0.0, (self._clock() if now is None else now) - self._started)
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if self.total is None:
            text = f"{self.label}: {self.done:,} {self.unit}"
        else:
            pct = 100.0 * self.done / self.total if self.total else 100.0
            text = f"{self.label}: {self.done:,}/{self.total:,} {self.unit} ({pct:.0f}%)"
        if elapsed > 0:
            text += f", {_rate(rate)}"
        if final:
            text += f", done in {format_duration(elapsed)}"
        elif self.total is not None and rate > 0 and self.done < self.total:
            text += f", ETA {format_duration((self.total - self.done) / rate)}"
        return text

    def _write(self, text: str) -> None:
        assert self._stream is not None
        if self._tty:
            # Pad over what is left of a longer previous line.
            pad = " " * max(0, self._width - len(text))
            self._stream.write(f"\r{text}{pad}")
            self._width = len(text)
        else:
            self._stream.write(text + "\n")
        self._stream.flush()
