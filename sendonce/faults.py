"""Test hook: a worker that SIGKILLs itself at an exact point of the send protocol.

Random kills from outside rarely land in the narrow windows the at-most-once
argument depends on. ``SENDONCE_CRASH_AT=POINT:N`` makes the worker kill itself
the N-th time it reaches POINT, so the torture harness can hit each window on
purpose:

=================  ==========================================================
POINT              what is true when the worker dies there
=================  ==========================================================
``after-pending``  the attempt's PENDING entry is durable; provider not called
``after-accept``   the provider accepted the message; nothing recorded yet
``after-sent``     the SENT entry is durable; no result emitted, no commit
=================  ==========================================================

This module imports only the standard library so that settings validation can
use its parser without pulling in the worker.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections import Counter
from collections.abc import Callable

AFTER_PENDING = "after-pending"
AFTER_ACCEPT = "after-accept"
AFTER_SENT = "after-sent"
#: Every point a crash can be armed at, in protocol order.
CRASH_POINTS: tuple[str, ...] = (AFTER_PENDING, AFTER_ACCEPT, AFTER_SENT)

log = logging.getLogger("sendonce.faults")


def parse_crash_spec(spec: str) -> tuple[str, int] | None:
    """Parse ``POINT:N``; empty means no crash. Raises ``ValueError`` otherwise."""
    spec = spec.strip()
    if not spec:
        return None
    point, sep, count = spec.partition(":")
    # isascii: str.isdigit() also accepts digits such as "²" that int() refuses.
    if (
        point not in CRASH_POINTS
        or not sep
        or not (count.isascii() and count.isdigit())
        or int(count) < 1
    ):
        raise ValueError(
            f"crash point {spec!r} is not POINT:N with POINT one of "
            f"{', '.join(CRASH_POINTS)} and N >= 1"
        )
    return point, int(count)


def kill_self() -> None:
    """SIGKILL this process: no shutdown, no flush, no offset commit."""
    os.kill(os.getpid(), signal.SIGKILL)


def _flush_logs(logger: logging.Logger) -> None:
    # SIGKILL discards buffered output, and the harness reads the log to see
    # which point fired.
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            handler.flush()
        current = current.parent if current.propagate else None
    for stream in (sys.stdout, sys.stderr):
        stream.flush()


class CrashPoints:
    """Counts the crash points a process reaches and kills it at the armed one."""

    def __init__(self, spec: str = "", *, kill: Callable[[], None] = kill_self) -> None:
        parsed = parse_crash_spec(spec)
        self.point: str | None = parsed[0] if parsed else None
        self.nth: int = parsed[1] if parsed else 0
        #: How often each point was reached so far.
        self.counts: Counter[str] = Counter()
        self._kill = kill

    @property
    def armed(self) -> bool:
        """Whether a crash is configured at all."""
        return self.point is not None

    def reached(self, point: str) -> None:
        """Record that ``point`` was reached; kill the process at the armed occurrence."""
        if point not in CRASH_POINTS:
            raise ValueError(f"unknown crash point {point!r}")
        self.counts[point] += 1
        if point == self.point and self.counts[point] == self.nth:
            log.warning("crash point %s reached (occurrence %d): SIGKILL", point, self.nth)
            _flush_logs(log)
            self._kill()
