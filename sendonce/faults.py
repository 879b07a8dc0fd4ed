"""Test hooks: a worker that SIGKILLs or SIGSTOPs itself at an exact point of the send protocol.

Random kills from outside rarely land in the narrow windows the at-most-once
argument depends on. ``SENDONCE_CRASH_AT=POINT:N`` makes the worker kill itself
the N-th time it reaches POINT, so the torture harness can hit each window on
purpose. ``SENDONCE_PAUSE_AT=POINT:N`` stops it there instead (SIGSTOP: every
thread, librdkafka's included, freezes with whatever it holds), so a test can let
the worker's group session expire, let another worker take its partitions over,
and then resume it (SIGCONT) as the zombie a long GC pause or a frozen VM makes.

=====================  ===================================================================
POINT                  what is true when the worker dies or stops there
=====================  ===================================================================
``pending-produced``   the attempt's PENDING entry was handed to the producer and is not
                       acknowledged yet (it may still sit in librdkafka's linger queue);
                       pause only
``after-pending``      the attempt's PENDING entry is durable; provider not called
``after-accept``       the provider accepted the message; nothing recorded yet
``after-sent``         the SENT entry is durable; no result emitted, no commit
=====================  ===================================================================

A crash at ``pending-produced`` would only show that an unacknowledged record can be
lost, which nothing relies on; the torture harness cycles :data:`CRASH_POINTS`.

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

PENDING_PRODUCED = "pending-produced"
AFTER_PENDING = "after-pending"
AFTER_ACCEPT = "after-accept"
AFTER_SENT = "after-sent"
#: Every point the worker reports reaching, in protocol order.
FAULT_POINTS: tuple[str, ...] = (PENDING_PRODUCED, AFTER_PENDING, AFTER_ACCEPT, AFTER_SENT)
#: Every point a crash can be armed at, in protocol order.
CRASH_POINTS: tuple[str, ...] = (AFTER_PENDING, AFTER_ACCEPT, AFTER_SENT)
#: Every point a pause can be armed at, in protocol order.
PAUSE_POINTS: tuple[str, ...] = FAULT_POINTS

log = logging.getLogger("sendonce.faults")


def _parse_spec(spec: str, points: tuple[str, ...], kind: str) -> tuple[str, int] | None:
    spec = spec.strip()
    if not spec:
        return None
    point, sep, count = spec.partition(":")
    # isascii: str.isdigit() also accepts digits such as "²" that int() refuses.
    if (
        point not in points
        or not sep
        or not (count.isascii() and count.isdigit())
        or int(count) < 1
    ):
        raise ValueError(
            f"{kind} point {spec!r} is not POINT:N with POINT one of {', '.join(points)} and N >= 1"
        )
    return point, int(count)


def parse_crash_spec(spec: str) -> tuple[str, int] | None:
    """Parse ``POINT:N`` for a crash; empty means none. Raises ``ValueError`` otherwise."""
    return _parse_spec(spec, CRASH_POINTS, "crash")


def parse_pause_spec(spec: str) -> tuple[str, int] | None:
    """Parse ``POINT:N`` for a pause; empty means none. Raises ``ValueError`` otherwise."""
    return _parse_spec(spec, PAUSE_POINTS, "pause")


def kill_self() -> None:
    """SIGKILL this process: no shutdown, no flush, no offset commit."""
    os.kill(os.getpid(), signal.SIGKILL)


def stop_self() -> None:
    """SIGSTOP this process (all its threads); it goes on from here after a SIGCONT."""
    os.kill(os.getpid(), signal.SIGSTOP)


def _flush_logs(logger: logging.Logger) -> None:
    # SIGKILL discards buffered output, a stopped process writes none, and the
    # harness reads the log to see which point fired.
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            handler.flush()
        current = current.parent if current.propagate else None
    for stream in (sys.stdout, sys.stderr):
        stream.flush()


class FaultPoints:
    """Counts the points a process reaches and acts at the armed occurrence of one.

    ``kind`` names the hook in its log line and errors, ``signal_name`` the action
    the log line announces, ``act`` performs it.
    """

    def __init__(
        self,
        spec: str,
        *,
        points: tuple[str, ...],
        kind: str,
        signal_name: str,
        act: Callable[[], None],
    ) -> None:
        parsed = _parse_spec(spec, points, kind)
        self.point: str | None = parsed[0] if parsed else None
        self.nth: int = parsed[1] if parsed else 0
        #: How often each point was reached so far.
        self.counts: Counter[str] = Counter()
        self._kind = kind
        self._signal_name = signal_name
        self._act = act

    @property
    def armed(self) -> bool:
        """Whether a fault is configured at all."""
        return self.point is not None

    def reached(self, point: str) -> None:
        """Record that ``point`` was reached; act at the armed occurrence."""
        if point not in FAULT_POINTS:
            raise ValueError(f"unknown {self._kind} point {point!r}")
        self.counts[point] += 1
        if point == self.point and self.counts[point] == self.nth:
            log.warning(
                "%s point %s reached (occurrence %d): %s",
                self._kind,
                point,
                self.nth,
                self._signal_name,
            )
            _flush_logs(log)
            self._act()


class CrashPoints(FaultPoints):
    """``SENDONCE_CRASH_AT``: kills the process at the armed occurrence."""

    def __init__(self, spec: str = "", *, kill: Callable[[], None] = kill_self) -> None:
        super().__init__(spec, points=CRASH_POINTS, kind="crash", signal_name="SIGKILL", act=kill)


class PausePoints(FaultPoints):
    """``SENDONCE_PAUSE_AT``: stops the process at the armed occurrence (resumed by SIGCONT)."""

    def __init__(self, spec: str = "", *, stop: Callable[[], None] = stop_self) -> None:
        super().__init__(spec, points=PAUSE_POINTS, kind="pause", signal_name="SIGSTOP", act=stop)
