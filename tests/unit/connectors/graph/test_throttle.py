"""MailboxThrottle on a fake clock: nothing here really sleeps."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

import pytest

from sendonce.connectors.graph.throttle import SEND_WINDOW_S, MailboxThrottle, share_of

T = TypeVar("T")


class FakeTime:
    """Virtual time: ``sleep`` parks the caller; ``run`` advances the clock.

    ``run`` lets every runnable task go as far as it can, then jumps the clock to
    the earliest pending sleep and wakes it, like an event loop whose clock only
    moves when everything is blocked on it.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self.now + max(0.0, seconds), next(self._seq), fut))
        await fut

    @staticmethod
    async def _settle() -> None:
        # Enough loop turns for wake-up chains (lock -> semaphore -> task) to finish.
        for _ in range(200):
            await asyncio.sleep(0)

    async def _drive(self, main: Awaitable[T]) -> T:
        task = asyncio.ensure_future(main)
        while True:
            await self._settle()
            if task.done():
                return task.result()
            while self._timers and self._timers[0][2].cancelled():
                heapq.heappop(self._timers)
            if not self._timers:
                task.cancel()
                raise RuntimeError("deadlock: every task waits and no sleep is pending")
            deadline, _, fut = heapq.heappop(self._timers)
            self.now = max(self.now, deadline)
            fut.set_result(None)

    def run(self, main: Coroutine[Any, Any, T]) -> T:
        return asyncio.run(self._drive(main))

    def throttle(self, **kw: Any) -> MailboxThrottle:
        return MailboxThrottle(clock=self.clock, sleep=self.sleep, **kw)


async def _request(
    ft: FakeTime,
    throttle: MailboxThrottle,
    mailbox: str,
    *,
    sending: bool = True,
    hold: float = 0.0,
    starts: list[float] | None = None,
) -> float:
    async with throttle.request(mailbox, sending=sending):
        started = ft.now
        if starts is not None:
            starts.append(started)
        if hold:
            await ft.sleep(hold)
    return started


def test_concurrency_never_exceeds_four_with_fifty_tasks() -> None:
    ft = FakeTime()
    throttle = ft.throttle()  # defaults: 4 concurrent
    in_flight = 0
    peak = 0

    async def one() -> None:
        nonlocal in_flight, peak
        async with throttle.request("orders@acme.example", sending=False):
            in_flight += 1
            peak = max(peak, in_flight)
            await ft.sleep(1.0)
            in_flight -= 1

    async def main() -> None:
        await asyncio.gather(*(one() for _ in range(50)))

    ft.run(main())
    assert peak == 4
    assert ft.now == 13.0  # ceil(50 / 4) rounds of one second
    stats = throttle.stats()["orders@acme.example"]
    assert stats.max_in_flight == 4
    assert stats.in_flight == 0
    assert stats.requests == 50
    assert stats.waits == 46


def test_per_minute_cap_spreads_sixty_sends_over_at_least_a_minute() -> None:
    ft = FakeTime()
    throttle = ft.throttle()  # defaults: 30 sends per minute
    starts: list[float] = []

    async def main() -> None:
        await asyncio.gather(
            *(_request(ft, throttle, "a@x", hold=0.1, starts=starts) for _ in range(60))
        )

    ft.run(main())
    assert len(starts) == 60
    assert max(starts) - min(starts) >= 60.0
    for t in starts:
        assert sum(1 for s in starts if t <= s < t + 60.0) <= 30
    assert throttle.stats()["a@x"].sends == 60


def test_lookups_do_not_count_against_the_send_cap() -> None:
    ft = FakeTime()
    throttle = ft.throttle(sends_per_minute=2)
    starts: list[float] = []

    async def main() -> None:
        await asyncio.gather(
            *(_request(ft, throttle, "a@x", sending=False, starts=starts) for _ in range(10))
        )

    ft.run(main())
    assert starts == [0.0] * 10


@pytest.mark.parametrize("unlimited", [0, None])
def test_zero_or_none_per_minute_cap_is_unlimited(unlimited: int | None) -> None:
    ft = FakeTime()
    throttle = ft.throttle(sends_per_minute=unlimited)
    starts: list[float] = []

    async def main() -> None:
        await asyncio.gather(*(_request(ft, throttle, "a@x", starts=starts) for _ in range(100)))

    ft.run(main())
    assert starts == [0.0] * 100


def test_retry_after_blocks_every_task_of_the_mailbox_but_not_others() -> None:
    ft = FakeTime()
    throttle = ft.throttle()
    a_starts: list[float] = []
    b_starts: list[float] = []

    async def main() -> None:
        # Mailbox names are case-insensitive: "A@X" is the same mailbox as "a@x".
        throttle.retry_after("A@X", 30)
        await asyncio.gather(
            *(_request(ft, throttle, "a@x", hold=1.0, starts=a_starts) for _ in range(5)),
            _request(ft, throttle, "b@x", hold=1.0, starts=b_starts),
        )

    ft.run(main())
    assert b_starts == [0.0]
    assert len(a_starts) == 5
    assert min(a_starts) >= 30.0
    stats = throttle.stats()
    assert stats["a@x"].waits == 5
    assert stats["a@x"].wait_seconds >= 5 * 30.0
    assert stats["b@x"].waits == 0
    assert stats["b@x"].wait_seconds == 0.0


def test_retry_after_during_a_request_holds_tasks_already_queued_for_a_slot() -> None:
    """A 429 answered to an in-flight request stops the tasks waiting behind it.

    The waiters passed the rate check at t=0 and queued for the only slot; the
    429 arrives at t=1, so they must re-check the not-before time once they get
    the slot.
    """
    ft = FakeTime()
    throttle = ft.throttle(max_concurrent=1)
    starts: list[float] = []
    b_starts: list[float] = []

    async def answered_429() -> None:
        async with throttle.request("a@x"):
            starts.append(ft.now)
            await ft.sleep(1.0)
            throttle.retry_after("a@x", 10)

    async def main() -> None:
        first = asyncio.ensure_future(answered_429())
        await asyncio.sleep(0)
        others = [_request(ft, throttle, "a@x", hold=1.0, starts=starts) for _ in range(3)]
        await asyncio.gather(
            first, *others, _request(ft, throttle, "b@x", hold=1.0, starts=b_starts)
        )

    ft.run(main())
    # Retry-After at t=1 for 10 s: nobody else starts on a@x before t=11.
    assert starts == [0.0, 11.0, 12.0, 13.0]
    assert b_starts == [0.0]


def test_retry_after_never_shortens_and_ignores_nonsense() -> None:
    ft = FakeTime()
    throttle = ft.throttle()
    throttle.retry_after("a@x", 20)
    throttle.retry_after("a@x", 5)
    for bad in (0.0, -3.0, float("nan"), float("inf")):
        throttle.retry_after("a@x", bad)
    assert throttle.not_before("a@x") == 20.0


def test_a_task_waiting_on_the_send_cap_holds_no_concurrency_slot() -> None:
    ft = FakeTime()
    throttle = ft.throttle(max_concurrent=1, sends_per_minute=1)
    sends: list[float] = []
    lookups: list[float] = []

    async def main() -> None:
        await asyncio.gather(
            _request(ft, throttle, "a@x", hold=1.0, starts=sends),
            _request(ft, throttle, "a@x", hold=1.0, starts=sends),
            _request(ft, throttle, "a@x", sending=False, hold=1.0, starts=lookups),
        )

    ft.run(main())
    assert sends == [0.0, SEND_WINDOW_S]  # a minute, plus the slack for Exchange's count
    # Had the second send kept the only slot while it slept on the cap, the lookup
    # would have started after the second send.
    assert lookups == [1.0]


def test_sliding_window_request_budget() -> None:
    ft = FakeTime()
    throttle = ft.throttle(
        requests_per_window=5, window_s=10, sends_per_minute=None, max_concurrent=100
    )
    starts: list[float] = []

    async def main() -> None:
        await asyncio.gather(*(_request(ft, throttle, "a@x", starts=starts) for _ in range(3)))
        await ft.sleep(4.0)
        await asyncio.gather(*(_request(ft, throttle, "a@x", starts=starts) for _ in range(7)))

    ft.run(main())
    # 3 at t=0 and 2 at t=4 fill the budget; the three t=0 requests leave the
    # window at t=10, the two t=4 ones at t=14. A fixed window would allow all
    # five at t=10.
    assert starts == [0.0, 0.0, 0.0, 4.0, 4.0, 10.0, 10.0, 10.0, 14.0, 14.0]


def test_request_budget_counts_lookups_and_sends_together() -> None:
    ft = FakeTime()
    throttle = ft.throttle(requests_per_window=2, window_s=10, sends_per_minute=None)
    starts: list[float] = []

    async def main() -> None:
        await _request(ft, throttle, "a@x", sending=False, starts=starts)
        await _request(ft, throttle, "a@x", sending=True, starts=starts)
        await _request(ft, throttle, "a@x", sending=True, starts=starts)

    ft.run(main())
    assert starts == [0.0, 0.0, 10.0]


def test_a_cancelled_waiter_and_a_failing_body_leak_no_slot() -> None:
    ft = FakeTime()
    throttle = ft.throttle(max_concurrent=1)
    starts: list[float] = []

    async def failing() -> None:
        async with throttle.request("a@x"):
            await ft.sleep(1.0)
            raise RuntimeError("boom")

    async def main() -> None:
        holder = asyncio.ensure_future(failing())
        await asyncio.sleep(0)
        waiter = asyncio.ensure_future(_request(ft, throttle, "a@x"))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(RuntimeError):
            await holder
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await _request(ft, throttle, "a@x", starts=starts)

    ft.run(main())
    assert starts == [1.0]
    assert throttle.stats()["a@x"].in_flight == 0


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        MailboxThrottle(max_concurrent=0)
    with pytest.raises(ValueError):
        MailboxThrottle(window_s=0)


def test_fake_time_detects_a_deadlock() -> None:
    """The driver must fail loudly rather than hang if the throttle ever deadlocks."""
    ft = FakeTime()

    async def stuck() -> None:
        await asyncio.get_running_loop().create_future()

    with pytest.raises(RuntimeError, match="deadlock"):
        ft.run(stuck())


def test_estimated_wait_grows_with_the_send_cap_and_retry_after() -> None:
    ft = FakeTime()
    throttle = ft.throttle(sends_per_minute=10)
    assert throttle.estimated_wait("a@x") == 0.0

    async def main() -> tuple[float, float, float, float]:
        await asyncio.gather(*(_request(ft, throttle, "a@x") for _ in range(10)))
        full = throttle.estimated_wait("a@x")
        lookup = throttle.estimated_wait("a@x", sending=False)
        other = throttle.estimated_wait("b@x")
        throttle.retry_after("b@x", 30)
        return full, lookup, other, throttle.estimated_wait("b@x")

    full, lookup, other, after_retry = ft.run(main())
    assert full >= 6.0  # the cap is used up: the next send waits for the window
    assert lookup == 0.0  # lookups are not capped per minute
    assert other == 0.0
    assert after_retry == 30.0


def test_estimated_wait_counts_sends_queued_ahead() -> None:
    ft = FakeTime()
    throttle = ft.throttle(sends_per_minute=2)
    seen: list[float] = []

    async def main() -> None:
        tasks = [asyncio.ensure_future(_request(ft, throttle, "a@x")) for _ in range(6)]
        await asyncio.sleep(0)
        for _ in range(50):
            await asyncio.sleep(0)
        seen.append(throttle.estimated_wait("a@x"))
        await asyncio.gather(*tasks)

    ft.run(main())
    # 2 sent, 4 queued: a seventh send is at least two minutes out.
    assert seen[0] >= 120.0


# ----------------------------------------------------------------- the group's shares


@pytest.mark.parametrize(
    ("limit", "members", "share"),
    [(4, 1, 4), (4, 2, 2), (4, 3, 1), (4, 4, 1), (4, 5, 1), (30, 3, 10), (30, 4, 7), (30, 31, 1)],
)
def test_a_share_is_the_floor_of_limit_over_members_at_least_one(
    limit: int, members: int, share: int
) -> None:
    assert share_of(limit, members) == share


def test_a_lone_worker_keeps_the_full_limits() -> None:
    throttle = MailboxThrottle()
    assert throttle.members == 1
    assert (throttle.concurrency_share, throttle.sends_share, throttle.requests_share) == (
        4,
        30,
        9_000,
    )
    throttle.share_with(3)
    assert (throttle.concurrency_share, throttle.sends_share, throttle.requests_share) == (
        1,
        10,
        3_000,
    )
    throttle.share_with(0)  # nonsense from a broken lookup: never more than the limits
    assert throttle.concurrency_share == 4
    unlimited = MailboxThrottle(sends_per_minute=None, requests_per_window=None)
    unlimited.share_with(3)
    assert (unlimited.sends_share, unlimited.requests_share) == (None, None)


def test_three_workers_sharing_a_mailbox_stay_within_its_limits_together() -> None:
    # Three workers' throttles against one mailbox, each told the group has three
    # members: together never more than 4 requests in flight nor 30 sends in any minute
    # (Exchange's count), however many sends each one has queued.
    ft = FakeTime()
    workers = [ft.throttle() for _ in range(3)]
    for throttle in workers:
        throttle.share_with(3)
    in_flight = peak = 0
    starts: list[float] = []

    async def send(throttle: MailboxThrottle) -> None:
        nonlocal in_flight, peak
        async with throttle.request("orders@acme.example"):
            starts.append(ft.now)
            in_flight += 1
            peak = max(peak, in_flight)
            await ft.sleep(0.15)
            in_flight -= 1

    async def main() -> None:
        await asyncio.gather(*(send(w) for w in workers for _ in range(40)))

    ft.run(main())
    assert len(starts) == 120
    assert peak == 3  # one each: 4 // 3
    for t in starts:
        assert sum(1 for s in starts if t <= s < t + 60.0) <= 30
    # Each sent at its full share: 10 at once, 10 more each window after.
    assert max(starts) == pytest.approx(3 * SEND_WINDOW_S + 9 * 0.15)


def test_without_sharing_three_workers_exceed_the_mailbox_limits() -> None:
    # The same three workers, not told about each other: what issue 17 found.
    ft = FakeTime()
    workers = [ft.throttle() for _ in range(3)]
    starts: list[float] = []

    async def main() -> None:
        await asyncio.gather(
            *(_request(ft, w, "a@x", hold=0.15, starts=starts) for w in workers for _ in range(40))
        )

    ft.run(main())
    assert max(sum(1 for s in starts if t <= s < t + 60.0) for t in starts) == 90


def test_a_shrinking_share_holds_new_requests_until_enough_have_finished() -> None:
    ft = FakeTime()
    throttle = ft.throttle(sends_per_minute=None)
    in_flight = 0
    seen: list[tuple[float, int]] = []

    async def one(hold: float) -> None:
        nonlocal in_flight
        async with throttle.request("a@x"):
            in_flight += 1
            seen.append((ft.now, in_flight))
            await ft.sleep(hold)
            in_flight -= 1

    async def main() -> None:
        first = [asyncio.create_task(one(hold)) for hold in (1.0, 2.0, 3.0, 4.0)]
        await ft.sleep(0.5)
        assert in_flight == 4
        throttle.share_with(3)  # a rebalance: now 1 slot
        later = [asyncio.create_task(one(1.0)) for _ in range(2)]
        await asyncio.gather(*first, *later)

    ft.run(main())
    # The two new requests waited for all four old ones (share 1), then ran one by one.
    assert seen[4:] == [(4.0, 1), (5.0, 1)]


def test_a_growing_share_wakes_waiters_at_once() -> None:
    ft = FakeTime()
    throttle = ft.throttle(sends_per_minute=None)
    throttle.share_with(4)  # 1 slot
    starts: list[float] = []

    async def main() -> None:
        holder = asyncio.create_task(_request(ft, throttle, "a@x", hold=10.0, starts=starts))
        waiters = [
            asyncio.create_task(_request(ft, throttle, "a@x", hold=1.0, starts=starts))
            for _ in range(3)
        ]
        await ft.sleep(2.0)
        assert starts == [0.0]
        throttle.share_with(1)  # the others left: 4 slots, 3 free
        await asyncio.gather(holder, *waiters)

    ft.run(main())
    assert starts == [0.0, 2.0, 2.0, 2.0]
    assert throttle.stats()["a@x"].max_in_flight == 4


def test_a_shrinking_send_share_counts_the_sends_already_made() -> None:
    # Alone, a worker sent its 30; then two more workers joined: its next send waits
    # until fewer than its new share (10) are left in its window.
    ft = FakeTime()
    throttle = ft.throttle()
    starts: list[float] = []

    async def main() -> None:
        await asyncio.gather(*(_request(ft, throttle, "a@x", starts=starts) for _ in range(30)))
        throttle.share_with(3)
        await _request(ft, throttle, "a@x", starts=starts)

    ft.run(main())
    assert starts[:30] == [0.0] * 30
    assert starts[30] == SEND_WINDOW_S
    assert throttle.estimated_wait("a@x") == 0.0


def test_the_request_budget_is_shared_too() -> None:
    ft = FakeTime()
    throttle = ft.throttle(requests_per_window=9, window_s=10, sends_per_minute=None)
    throttle.share_with(3)
    starts: list[float] = []

    async def main() -> None:
        await asyncio.gather(
            *(_request(ft, throttle, "a@x", sending=False, starts=starts) for _ in range(6))
        )

    ft.run(main())
    assert starts == [0.0, 0.0, 0.0, 10.0, 10.0, 10.0]


def test_a_cancelled_waiter_gives_its_place_back() -> None:
    ft = FakeTime()
    throttle = ft.throttle(max_concurrent=1, sends_per_minute=None)
    starts: list[float] = []

    async def main() -> None:
        holder = asyncio.create_task(_request(ft, throttle, "a@x", hold=1.0, starts=starts))
        doomed = asyncio.create_task(_request(ft, throttle, "a@x", hold=1.0, starts=starts))
        await ft.sleep(0.5)
        doomed.cancel()
        last = asyncio.create_task(_request(ft, throttle, "a@x", hold=1.0, starts=starts))
        await holder
        await last
        with pytest.raises(asyncio.CancelledError):
            await doomed

    ft.run(main())
    assert starts == [0.0, 1.0]
    assert throttle.stats()["a@x"].in_flight == 0
