"""A batch whose partition moved mid-batch sends nothing more.

When one key's ledger write is refused (``PartitionNotOwnedError``: a rebalance
moved the partition), the batch is abandoned: its other keys that have not reached
the provider yet must not reach it, and every provider call checks, right before
it starts, that the key's partition is still owned and writable. Otherwise a key
waiting for a mailbox permit or a retry's backoff would send after its partition's
next owner took over.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from sendonce.connectors.base import LookupResult, OutgoingEmail, SendOutcome, SendStatus
from sendonce.keys import complete_intent, idempotency_key_for
from sendonce.settings import Settings
from sendonce.streams.ledger import LedgerEntry
from sendonce.streams.store import MemoryLedgerStore, PartitionNotOwnedError
from sendonce.streams.testing import InMemoryPipeline

FAST, SLOW = "orders@acme.example", "billing@acme.example"


def intent(n: int, sender: str) -> dict[str, Any]:
    return {
        "tenant_id": "acme",
        "source_event_id": f"evt-{n}",
        "action_type": "receipt",
        "sender": sender,
        "to": [f"user{n}@example.com"],
        "subject": f"Receipt {n}",
        "text_body": "Thanks.",
    }


def key_of(data: dict[str, Any]) -> str:
    return idempotency_key_for(complete_intent(data, now_ms=0)).value


class GatedMailbox:
    """Records its sends; the SLOW mailbox's permit opens only when the test says so."""

    name = "gated"

    def __init__(self, *, first: SendStatus = SendStatus.ACCEPTED) -> None:
        self.sent: list[str] = []
        self.opened = asyncio.Event()
        self.waiting = asyncio.Event()
        self._first = first

    @contextlib.asynccontextmanager
    async def permit(self, sender: str) -> AsyncIterator[None]:
        if sender == SLOW:
            self.waiting.set()
            await self.opened.wait()
        yield

    async def send(self, outgoing: OutgoingEmail) -> SendOutcome:
        self.sent.append(outgoing.idempotency_key)
        if len(self.sent) == 1 and self._first is not SendStatus.ACCEPTED:
            return SendOutcome(self._first, self.name, error_code="throttled")
        return SendOutcome(SendStatus.ACCEPTED, self.name, provider_message_id="m")

    async def lookup(self, idempotency_key: str, message_id: str, sender: str) -> LookupResult:
        raise AssertionError("no lookup expected")

    async def close(self) -> None:
        return None


class MovedKey(MemoryLedgerStore):
    """Refuses the writes of one key, as the store does once its partition moved."""

    def __init__(self, moved_key: str, before: asyncio.Event) -> None:
        super().__init__()
        self.moved_key = moved_key
        self.before = before

    async def put(
        self, entry: LedgerEntry, partition: int, *, enqueued: Callable[[], None] | None = None
    ) -> None:
        if entry.key == self.moved_key:
            # Refused only once the other key of the batch waits for its permit.
            await self.before.wait()
            raise PartitionNotOwnedError(f"partition {partition} is not owned")
        await super().put(entry, partition, enqueued=enqueued)


def test_a_key_whose_partition_moved_cancels_the_sends_still_waiting_in_its_batch() -> None:
    provider = GatedMailbox()
    p = InMemoryPipeline(provider, settings=Settings(partitions=1, defer_after_s=0.0))
    moved, waiting = intent(1, FAST), intent(2, SLOW)
    p.store = p.processor.store = MovedKey(key_of(moved), provider.waiting)

    async def scenario() -> None:
        with pytest.raises(PartitionNotOwnedError):
            await p.run([p.intent_record(moved), p.intent_record(waiting)])
        # The waiting key's permit comes after the batch was abandoned: whatever
        # of the batch still runs gets to run now, and must not send.
        provider.opened.set()
        others = asyncio.all_tasks() - {asyncio.current_task()}
        await asyncio.wait_for(asyncio.gather(*others, return_exceptions=True), timeout=5)

    asyncio.run(scenario())
    assert provider.sent == []
    assert p.store.writes == []  # the waiting key never wrote its PENDING entry either


class MovesAfterWrite(MemoryLedgerStore):
    """Loses its partitions right after a given write was acknowledged (a rebalance
    completing while the broker acknowledged it), or on :meth:`move`."""

    def __init__(self, after_write: int | None = None) -> None:
        super().__init__()
        self.after_write = after_write
        self.moved = False

    def move(self) -> None:
        self.moved = True

    def writable(self, partition: int) -> bool:
        return not self.moved

    async def put(
        self, entry: LedgerEntry, partition: int, *, enqueued: Callable[[], None] | None = None
    ) -> None:
        if self.moved:
            raise PartitionNotOwnedError(f"partition {partition} is not owned")
        await super().put(entry, partition, enqueued=enqueued)
        if len(self.writes) == self.after_write:
            self.move()


def test_a_send_checks_that_its_partition_is_still_writable_right_before_it_starts() -> None:
    provider = GatedMailbox()
    provider.opened.set()
    p = InMemoryPipeline(provider, settings=Settings(partitions=1, defer_after_s=0.0))
    store = MovesAfterWrite(after_write=1)  # the PENDING entry is written, then it moves
    p.store = p.processor.store = store
    with pytest.raises(PartitionNotOwnedError):
        asyncio.run(p.run([p.intent_record(intent(1, FAST))]))
    assert provider.sent == []
    [(_, pending)] = store.writes
    assert pending.status.value == "PENDING"  # for the next owner to look up


def test_a_partition_moving_during_a_retry_wait_leaves_the_key_provably_not_sent() -> None:
    provider = GatedMailbox(first=SendStatus.NOT_SENT_RETRYABLE)
    provider.opened.set()
    p = InMemoryPipeline(provider, settings=Settings(partitions=1, defer_after_s=0.0))
    store = MovesAfterWrite()
    p.store = p.processor.store = store

    async def backoff(delay_s: float) -> None:
        store.move()  # the partition moves while the retry waits

    p.processor._sleep = backoff
    with pytest.raises(PartitionNotOwnedError):
        asyncio.run(p.run([p.intent_record(intent(1, FAST))]))
    assert len(provider.sent) == 1  # the first attempt only; the retry never started
    [*_, (_, last)] = store.writes
    # No attempt 2 was written: the next owner resumes the wait, it looks nothing up.
    assert last.attempt_count == 1 and last.retry_at_ms is not None


def test_a_wave_whose_siblings_fail_while_cancelled_leaves_no_unretrieved_error() -> None:
    # Chaos seed 344547155: "Task exception was never retrieved ... FencedError" after
    # a fenced wave: a sibling cancelled by the first failure raised its own error
    # while unwinding, and nobody looked at it.
    import gc

    from sendonce.streams.processor import _all_or_none

    unretrieved: list[str] = []

    async def first() -> None:
        raise RuntimeError("first")

    async def sibling() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            raise ValueError("while unwinding")

    async def run() -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda loop, context: unretrieved.append(str(context.get("message")))
        )
        with pytest.raises(RuntimeError, match="first"):
            await _all_or_none([first(), sibling()])
        gc.collect()

    asyncio.run(run())
    gc.collect()
    assert unretrieved == []
