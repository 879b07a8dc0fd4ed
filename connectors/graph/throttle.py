"""Throttling discipline per sender mailbox for Microsoft Graph.

Graph limits mail requests per app *and mailbox*: 4 concurrent requests and 10,000
requests per 10 minutes; Exchange Online caps a mailbox at 30 messages per minute.
Exceeding them earns a 429, and a 429 on a send is AMBIGUOUS (Graph has delivered
throttled sends), so staying under the limits is part of sending once, not only
politeness. :class:`MailboxThrottle` keeps every mailbox under its limits and honours
``Retry-After`` for all tasks of that mailbox, while other mailboxes keep going.

Order of waiting, per request: first the rate permissions (Retry-After "not before"
time, sliding request budget, per-minute send cap) *without* holding a concurrency
slot, then a slot; once the slot is held, the rate permissions are checked again
(another task may have used the budget, or a 429 may have set a new "not before"
time, while this one queued for the slot). If they no longer hold, the slot is
given back before sleeping, so a sleeping task never blocks a runnable one.

A send can also take its permit *before* its requests (:meth:`MailboxThrottle.hold`):
the worker writes a key's PENDING entry only once the mailbox lets the send start, so a
saturated mailbox's backlog waits without being PENDING (a crash then leaves at most
the mailbox's concurrency of attempts to look up, not the whole backlog). Requests made
inside a hold, in the same task, use its slot and its send permit.

The limits are the mailbox's, shared by every worker of the consumer group: the
worker tells the throttle how many members the group has after each rebalance
(:meth:`MailboxThrottle.share_with`), and the throttle keeps to its share, each limit
divided by the members (floor, at least 1): with 3 workers, 1 request in flight (4 // 3)
and 10 sends a minute each. A worker alone keeps the full limits. The share changes
live: a smaller one holds new requests until enough in flight have finished (the slots
are a counter whose limit can move, not a fixed semaphore); a larger one wakes waiters
at once. Since each share is at least 1, at most 4 workers can send from one mailbox at
once within Graph's 4 concurrent requests; a fifth would exceed it.

The per-minute window is a minute and two seconds here: the throttle counts a send when
it starts, Exchange when the request arrives, a varying delay later (the ledger write,
the connection, the network), so two sends a minute apart here could arrive less than a
minute apart there.

Time is injected (``clock`` for monotonic seconds, ``sleep`` to wait), so tests run
on a fake clock and never really sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar
from dataclasses import dataclass, field

#: Graph's concurrency limit per app and mailbox.
DEFAULT_MAX_CONCURRENT = 4
#: Under Graph's 10,000 requests per 10 minutes per app and mailbox, with headroom
#: for requests other workers or tools make with the same app registration.
DEFAULT_REQUESTS_PER_WINDOW = 9_000
DEFAULT_WINDOW_S = 600.0
#: Exchange Online's messages-per-minute limit for one mailbox.
DEFAULT_SENDS_PER_MINUTE = 30
#: The window of the per-minute cap: a minute plus slack for the delay until Exchange
#: counts the send (see the module docstring).
SEND_WINDOW_S = 62.0


def share_of(limit: int, members: int) -> int:
    """One member's share of a group-wide ``limit``: floor(limit / members), at least 1."""
    return max(1, limit // max(1, members))


@dataclass(frozen=True)
class ThrottleStats:
    """Metrics for one mailbox."""

    #: Requests that had to wait before they could start.
    waits: int
    #: Total seconds (on the injected clock) requests spent waiting to start.
    wait_seconds: float
    #: Requests currently holding a concurrency slot.
    in_flight: int
    #: The most requests ever in flight at once.
    max_in_flight: int
    #: Requests started so far, and how many of them were sends.
    requests: int
    sends: int


class _Slots:
    """Concurrency slots whose limit may change while tasks hold and wait for them.

    A counter and a FIFO of waiters instead of an ``asyncio.Semaphore``, whose size is
    fixed: the limit is read on every acquire and release, so a shrunk share lets
    holders finish and holds new requests back, and a grown one wakes waiters
    (:meth:`wake`). A waiter is granted its slot before it is woken, so a release
    cannot be lost between the two.
    """

    def __init__(self, limit: Callable[[], int]) -> None:
        self._limit = limit
        self.used = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def full(self) -> bool:
        return self.used >= self._limit()

    async def acquire(self) -> None:
        if not self._waiters and not self.full():
            self.used += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # granted, then cancelled before it could use the slot
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
            raise

    def release(self) -> None:
        self.used -= 1
        self.wake()

    def wake(self) -> None:
        """Grant slots to waiters, oldest first, while the limit allows."""
        while self._waiters and not self.full():
            fut = self._waiters.popleft()
            if not fut.done():
                self.used += 1
                fut.set_result(None)


@dataclass
class _Mailbox:
    slots: _Slots
    #: Start times of requests in the sliding budget window, oldest first.
    requests: deque[float] = field(default_factory=deque)
    #: Start times of sends in the last minute, oldest first.
    sends: deque[float] = field(default_factory=deque)
    #: No request may start before this clock value (Retry-After).
    not_before: float = -math.inf
    #: Serialise the tasks waiting on rate limits, one queue for sends and one for
    #: other requests, so waiters queue in order instead of all waking at once, and a
    #: send waiting on the per-minute cap never holds up a lookup.
    gates: dict[bool, asyncio.Lock] = field(default_factory=dict)
    waits: int = 0
    wait_seconds: float = 0.0
    #: Tasks waiting to start a request, sends and others apart.
    queued: dict[bool, int] = field(default_factory=lambda: {True: 0, False: 0})
    in_flight: int = 0
    max_in_flight: int = 0
    total_requests: int = 0
    total_sends: int = 0


#: The (throttle, mailbox) pairs whose permit the current task holds (see ``hold``).
_HELD: ContextVar[frozenset[tuple[int, str]]] = ContextVar(
    "sendonce_mailbox_permits", default=frozenset()
)


def _sliding_delay(stamps: deque[float], limit: int, window: float, now: float) -> float:
    """Seconds until one more event fits: at most ``limit`` in any ``window``."""
    while stamps and stamps[0] + window <= now:
        stamps.popleft()
    if len(stamps) < limit:
        return 0.0
    # The event that must leave the window before another may enter it.
    return stamps[len(stamps) - limit] + window - now


class MailboxThrottle:
    """Per-mailbox concurrency, request budget, send rate and Retry-After.

    Usage::

        async with throttle.request(sender, sending=True):
            ...  # one HTTP request to Graph for this mailbox

    ``max_concurrent``, ``requests_per_window`` and ``sends_per_minute`` are the
    mailbox's limits; the throttle keeps to its share of them (:meth:`share_with`).

    ``sending=True`` marks a request that sends a message (``sendMail`` or a draft's
    ``send``); it counts against the per-minute cap. Draft creation and Sent Items
    lookups pass ``sending=False``. Every request counts against the budget and
    takes a concurrency slot. Mailbox names are compared case-insensitively.
    Do not nest ``request`` blocks for one mailbox: with one slot left, the inner
    block would wait for the outer one forever. Use one instance per event loop
    (its locks belong to the loop that first uses them).
    """

    def __init__(
        self,
        *,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        requests_per_window: int | None = DEFAULT_REQUESTS_PER_WINDOW,
        window_s: float = DEFAULT_WINDOW_S,
        sends_per_minute: int | None = DEFAULT_SENDS_PER_MINUTE,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self.max_concurrent = max_concurrent
        # 0 or None means unlimited for both rate limits.
        self.requests_per_window = requests_per_window or None
        self.window_s = float(window_s)
        self.sends_per_minute = sends_per_minute or None
        self._clock = clock
        self._sleep = sleep
        self._mailboxes: dict[str, _Mailbox] = {}
        self._members = 1
        #: Told ``(reason, seconds)`` of each wait: ``mailbox_retry_after``,
        #: ``mailbox_rate`` (budget or per-minute cap) or ``mailbox_concurrency``.
        self.on_wait: Callable[[str, float], None] | None = None

    @property
    def members(self) -> int:
        """How many workers share the mailboxes' limits (1 until told otherwise)."""
        return self._members

    def share_with(self, members: int) -> None:
        """Keep to one share of each limit, the group having ``members`` members.

        Each limit is divided by ``members`` (floor, at least 1; see :func:`share_of`).
        Takes effect at once: requests in flight finish; waiters are woken if the
        concurrency share grew, and the rate limits are re-checked on every wait.
        """
        self._members = max(1, members)
        for state in self._mailboxes.values():
            state.slots.wake()

    @property
    def concurrency_share(self) -> int:
        """Requests this worker may have in flight per mailbox."""
        return share_of(self.max_concurrent, self._members)

    @property
    def requests_share(self) -> int | None:
        """This worker's request budget per window and mailbox (None: unlimited)."""
        if self.requests_per_window is None:
            return None
        return share_of(self.requests_per_window, self._members)

    @property
    def sends_share(self) -> int | None:
        """This worker's sends per minute and mailbox (None: no cap)."""
        if self.sends_per_minute is None:
            return None
        return share_of(self.sends_per_minute, self._members)

    def _state(self, mailbox: str) -> _Mailbox:
        key = mailbox.lower()
        state = self._mailboxes.get(key)
        if state is None:
            state = _Mailbox(_Slots(lambda: self.concurrency_share))
            state.gates = {True: asyncio.Lock(), False: asyncio.Lock()}
            self._mailboxes[key] = state
        return state

    def _rate_delay(self, state: _Mailbox, sending: bool, now: float) -> float:
        delay = state.not_before - now
        budget, sends = self.requests_share, self.sends_share
        if budget is not None:
            delay = max(delay, _sliding_delay(state.requests, budget, self.window_s, now))
        if sending and sends is not None:
            delay = max(delay, _sliding_delay(state.sends, sends, SEND_WINDOW_S, now))
        return delay

    def retry_after(self, mailbox: str, seconds: float) -> None:
        """Hold every new request of ``mailbox`` for ``seconds`` from now.

        Requests already in flight are not affected; waiting ones re-check before
        they start. A shorter Retry-After never shortens an earlier, longer one.
        """
        if not seconds > 0 or math.isinf(seconds):
            # NaN, negative, zero: nothing to honour; inf would block forever.
            return
        state = self._state(mailbox)
        state.not_before = max(state.not_before, self._clock() + seconds)

    def not_before(self, mailbox: str) -> float:
        """The clock value before which no request of ``mailbox`` starts."""
        return self._state(mailbox).not_before

    def request(self, mailbox: str, *, sending: bool = True) -> AbstractAsyncContextManager[None]:
        """Wait until a request for ``mailbox`` may start; hold a slot while inside."""
        return self._request(mailbox, sending)

    def hold(self, mailbox: str) -> AbstractAsyncContextManager[None]:
        """Wait until a send from ``mailbox`` may start; keep its slot and permit while inside.

        Counts the send against the per-minute cap when granted. ``request`` blocks
        for ``mailbox`` made inside, in the same task (the send's own requests), start
        at once on the held slot; they still count against the request budget.
        """
        return self._hold(mailbox)

    @contextlib.asynccontextmanager
    async def _hold(self, mailbox: str) -> AsyncIterator[None]:
        state = self._state(mailbox)
        await self._acquire(state, True, counts_request=False)
        token = _HELD.set(_HELD.get() | {(id(self), mailbox.lower())})
        try:
            yield
        finally:
            _HELD.reset(token)
            state.in_flight -= 1
            state.slots.release()

    @contextlib.asynccontextmanager
    async def _request(self, mailbox: str, sending: bool) -> AsyncIterator[None]:
        state = self._state(mailbox)
        if (id(self), mailbox.lower()) in _HELD.get():
            # Inside this task's hold: its slot and send permit are this request's.
            if self.requests_per_window is not None:
                state.requests.append(self._clock())
            state.total_requests += 1
            yield
            return
        await self._acquire(state, sending)
        try:
            yield
        finally:
            state.in_flight -= 1
            state.slots.release()

    def estimated_wait(self, mailbox: str, *, sending: bool = True, ahead: int = 0) -> float:
        """Seconds a request for ``mailbox`` arriving now would wait, roughly.

        Counts Retry-After, the request budget, the per-minute send cap and the
        sends already queued ahead (or ``ahead``, the caller's own count of
        sends it has admitted and not finished, if larger); not the time
        requests in flight take. The worker uses it to move a saturated
        mailbox's sends out of its batch.
        """
        state = self._state(mailbox)
        now = self._clock()
        delay = max(0.0, self._rate_delay(state, sending, now))
        sends = self.sends_share
        if sending and sends is not None:
            over = len(state.sends) + max(state.queued[True], ahead) + 1 - sends
            if over > 0:
                delay = max(delay, over * SEND_WINDOW_S / sends)
        return delay

    async def _acquire(
        self, state: _Mailbox, sending: bool, *, counts_request: bool = True
    ) -> None:
        state.queued[sending] += 1
        try:
            await self._acquire_queued(state, sending, counts_request)
        finally:
            state.queued[sending] -= 1

    async def _acquire_queued(self, state: _Mailbox, sending: bool, counts_request: bool) -> None:
        arrived = self._clock()
        gate = state.gates[sending]
        # Queued behind another waiter of this mailbox counts as a wait too.
        waited = gate.locked()
        reason = "mailbox_concurrency"
        async with gate:
            while True:
                tick = self._clock()
                delay = self._rate_delay(state, sending, tick)
                if delay > 0:
                    # Sleep on the rate limits holding no concurrency slot.
                    waited = True
                    if reason == "mailbox_concurrency":
                        retry_after = state.not_before - tick >= delay
                        reason = "mailbox_retry_after" if retry_after else "mailbox_rate"
                    await self._sleep(delay)
                    continue
                if state.slots.full():
                    waited = True
                await state.slots.acquire()
                now = self._clock()
                if self._rate_delay(state, sending, now) > 0:
                    # A Retry-After arrived, the budget was used or the share shrank
                    # while we queued for the slot: give it back before sleeping again.
                    state.slots.release()
                    continue
                # Record at the moment the request starts, with no await since the
                # check, so no other task can slip in between.
                if counts_request and self.requests_per_window is not None:
                    state.requests.append(now)
                if sending and self.sends_per_minute is not None:
                    state.sends.append(now)
                break
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        state.total_requests += int(counts_request)
        state.total_sends += int(sending)
        if waited or now > arrived:
            state.waits += 1
            state.wait_seconds += now - arrived
            if self.on_wait is not None:
                self.on_wait(reason, now - arrived)

    def stats(self) -> dict[str, ThrottleStats]:
        """Per-mailbox metrics (mailbox names lower-cased)."""
        return {
            name: ThrottleStats(
                waits=s.waits,
                wait_seconds=s.wait_seconds,
                in_flight=s.in_flight,
                max_in_flight=s.max_in_flight,
                requests=s.total_requests,
                sends=s.total_sends,
            )
            for name, s in self._mailboxes.items()
        }


__all__ = [
    "DEFAULT_MAX_CONCURRENT",
    "DEFAULT_REQUESTS_PER_WINDOW",
    "DEFAULT_SENDS_PER_MINUTE",
    "DEFAULT_WINDOW_S",
    "SEND_WINDOW_S",
    "MailboxThrottle",
    "ThrottleStats",
    "share_of",
]
