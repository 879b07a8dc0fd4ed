"""A key becomes PENDING only when its provider call can start promptly.

The worker takes the mailbox's permit (rate and concurrency) and a send slot before it
writes PENDING. Otherwise a batch for a saturated mailbox is all PENDING while it
waits for the per-minute cap, and one SIGKILL turns every one of them into AMBIGUOUS
for review although none reached the provider.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from sendonce.connectors.base import (
    LookupResult,
    LookupStatus,
    OutgoingEmail,
    SendOutcome,
    SendStatus,
)
from sendonce.connectors.graph.throttle import MailboxThrottle
from sendonce.settings import Settings
from sendonce.streams.ledger import LedgerEntry, LedgerStatus
from sendonce.streams.store import MemoryLedgerStore
from sendonce.streams.testing import InMemoryPipeline

CONCURRENCY = 2


class VirtualTime:
    """A clock that moves only when someone sleeps on it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


class ThrottledMailbox:
    """A provider whose sends wait on a real per-mailbox throttle (3 sends a minute)."""

    name = "throttled"

    def __init__(self, time: VirtualTime) -> None:
        self.throttle = MailboxThrottle(
            max_concurrent=CONCURRENCY, sends_per_minute=3, clock=time, sleep=time.sleep
        )
        self.sent: list[str] = []

    def permit(self, sender: str) -> AbstractAsyncContextManager[None]:
        return self.throttle.hold(sender)

    def estimated_wait_s(self, sender: str, ahead: int = 0) -> float:
        return self.throttle.estimated_wait(sender, sending=True, ahead=ahead)

    async def send(self, outgoing: OutgoingEmail) -> SendOutcome:
        async with self.throttle.request(outgoing.sender, sending=True):
            self.sent.append(outgoing.idempotency_key)
            return SendOutcome(SendStatus.ACCEPTED, self.name, provider_request_id="r")

    async def lookup(self, idempotency_key: str, message_id: str, sender: str) -> LookupResult:
        return LookupResult(LookupStatus.UNKNOWN, self.name)

    async def close(self) -> None:
        return None


class PendingWatch(MemoryLedgerStore):
    """Counts PENDING entries at every write: the most a crash could have left behind."""

    def __init__(self) -> None:
        super().__init__()
        self.most_pending = 0

    async def put(
        self, entry: LedgerEntry, partition: int, *, enqueued: Callable[[], None] | None = None
    ) -> None:
        await super().put(entry, partition, enqueued=enqueued)
        pending = sum(e.status is LedgerStatus.PENDING for e in self.entries.values())
        self.most_pending = max(self.most_pending, pending)


def intent(n: int) -> dict[str, object]:
    return {
        "tenant_id": "acme",
        "source_event_id": f"evt-{n}",
        "action_type": "receipt",
        "sender": "orders@acme.example",
        "to": [f"user{n}@example.com"],
        "subject": f"Receipt {n}",
        "text_body": "Thanks.",
    }


def test_a_saturated_mailbox_never_has_more_pending_keys_than_its_concurrency() -> None:
    time = VirtualTime()
    provider = ThrottledMailbox(time)
    # Deferral off: the whole batch waits on the mailbox in the lane, as the
    # deferred lane's batches do.
    p = InMemoryPipeline(provider, settings=Settings(partitions=1, defer_after_s=0.0))
    store = PendingWatch()
    p.store = p.processor.store = store
    stats = asyncio.run(p.run([p.intent_record(intent(n)) for n in range(20)]))
    assert stats.outcomes == {"SENT": 20}
    assert len(provider.sent) == 20
    # 20 sends at 3 a minute took minutes of (virtual) time; at any moment at most
    # the mailbox's concurrency of them was PENDING.
    assert time.now >= 5 * 60
    assert store.most_pending <= CONCURRENCY


def test_holding_the_permit_lets_the_send_through_without_taking_a_second_slot() -> None:
    time = VirtualTime()
    throttle = MailboxThrottle(max_concurrent=1, sends_per_minute=1, clock=time, sleep=time.sleep)

    async def one_send() -> None:
        async with throttle.hold("a@x.example"):
            # With one slot, a second acquisition here would wait forever.
            async with throttle.request("A@x.example", sending=False):
                pass
            async with throttle.request("a@x.example", sending=True):
                pass

    async def main() -> None:
        await asyncio.wait_for(one_send(), timeout=5)
        await asyncio.wait_for(one_send(), timeout=5)

    asyncio.run(main())
    stats = throttle.stats()["a@x.example"]
    # Each held send counts once against the per-minute cap and the budget per request.
    assert stats.sends == 2
    assert stats.requests == 4
    assert time.now >= 60
    assert stats.in_flight == 0
