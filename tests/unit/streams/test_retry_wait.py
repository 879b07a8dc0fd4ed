"""A retry's wait happens before its attempt is written, and never long inside a batch.

A send the provider refused without delivering (NOT_SENT_RETRYABLE) is retried after
a backoff, or the provider's Retry-After. The ledger records the refused attempt's
outcome with the time the retry is due and writes the next attempt's PENDING entry
only when the wait is over: an interrupted wait (a crash, a rebalance, an abandoned
batch) leaves a key whose last attempt provably never reached the provider, resumed
by whoever drives the key next, never looked up as if it might have been sent. In
the intents lane a wait longer than ``SENDONCE_RETRY_INLINE_MAX_S`` is not slept in
the batch: the intent moves to the deferred lane, where the wait happens.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sendonce.connectors.base import (
    LookupResult,
    OutgoingEmail,
    SendOutcome,
    SendStatus,
)
from sendonce.settings import Settings
from sendonce.streams.ledger import (
    CallProvider,
    IntentArrived,
    IntentFacts,
    IntentRef,
    LedgerEntry,
    LedgerStatus,
    Persist,
    Reconcile,
    RetryPolicy,
    SendFinished,
    decide,
)
from sendonce.streams.testing import InMemoryPipeline

FACTS = IntentFacts("t:k", "t", "e", "reply", "fp", IntentRef("email.intents", 0, 7))
POLICY = RetryPolicy(max_attempts=5, base_delay_s=0.5, max_delay_s=30.0)
THROTTLED = SendOutcome(
    SendStatus.NOT_SENT_RETRYABLE, "graph", error_code="throttled", retry_after_s=60.0
)


def test_a_refused_send_records_its_outcome_and_writes_the_next_attempt_only_when_due() -> None:
    first = decide(None, IntentArrived(FACTS, 1_000, "w"), POLICY)
    assert first.entry is not None
    refused = decide(first.entry, SendFinished(FACTS, first.entry.attempt_id, THROTTLED, 2_000))
    waiting = refused.entry
    assert waiting is not None
    # No new attempt yet: nothing PENDING that could have reached the provider.
    assert not any(isinstance(e, CallProvider) for e in refused.effects)
    persisted = [e.entry for e in refused.effects if isinstance(e, Persist)]
    assert [e.attempt_count for e in persisted] == [1]
    assert waiting.attempts[-1].status == SendStatus.NOT_SENT_RETRYABLE.value
    assert LedgerEntry.from_bytes(waiting.to_bytes()) == waiting  # survives the changelog

    # The intent again before the retry is due (a redelivery, the deferred lane):
    # the refused attempt is not looked up, and no attempt starts early.
    early = decide(waiting, IntentArrived(FACTS, 30_000, "w"), POLICY)
    assert not any(isinstance(e, Reconcile | CallProvider | Persist) for e in early.effects)
    assert early.entry == waiting

    due = decide(waiting, IntentArrived(FACTS, 62_000, "w"), POLICY)
    assert due.entry is not None and due.entry.status is LedgerStatus.PENDING
    assert due.entry.attempt_count == 2
    [persist, call] = due.effects
    assert isinstance(persist, Persist) and persist.entry.attempt_count == 2
    assert isinstance(call, CallProvider) and call.number == 2


class ThrottledOnce:
    """Refuses the first send with a Retry-After of a minute, then accepts."""

    name = "throttled"

    def __init__(self) -> None:
        self.sends = 0

    async def send(self, outgoing: OutgoingEmail) -> SendOutcome:
        self.sends += 1
        if self.sends == 1:
            return THROTTLED
        return SendOutcome(SendStatus.ACCEPTED, self.name, provider_message_id="m")

    async def lookup(self, idempotency_key: str, message_id: str, sender: str) -> LookupResult:
        raise AssertionError("a refused attempt is never looked up")

    async def close(self) -> None:
        return None


def intent(n: int) -> dict[str, Any]:
    return {
        "tenant_id": "acme",
        "source_event_id": f"evt-{n}",
        "action_type": "receipt",
        "sender": "orders@acme.example",
        "to": [f"user{n}@example.com"],
        "subject": f"Receipt {n}",
        "text_body": "Thanks.",
    }


def test_a_long_retry_wait_moves_to_the_deferred_lane_instead_of_holding_the_batch() -> None:
    now = [1_000_000]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += int(seconds * 1000)

    provider = ThrottledOnce()
    settings = Settings(partitions=1, retry_inline_max_s=5.0)
    p = InMemoryPipeline(provider, settings=settings, clock=lambda: now[0])
    p.processor._sleep = sleep
    origin = p.intent_record(intent(1))

    stats = asyncio.run(p.run([origin]))
    assert provider.sends == 1
    assert all(s <= 5.0 for s in slept), slept  # the intents lane never waited a minute
    assert stats.deferred == 1 and p.results() == []

    asyncio.run(p.run(p.deferred_records()))  # the deferred lane waits, then retries
    assert provider.sends == 2
    assert sum(slept) >= 59.0
    [result] = p.results()
    assert result["outcome"] == "SENT"
    assert result["attempt_count"] == 2
    assert (result["intent_partition"], result["intent_offset"]) == (0, origin.offset)


def test_review_says_a_key_waiting_for_its_retry_needs_no_operator() -> None:
    from sendonce.ops.review import refusal_for

    first = decide(None, IntentArrived(FACTS, 1_000, "w"), POLICY)
    assert first.entry is not None
    waiting = decide(first.entry, SendFinished(FACTS, first.entry.attempt_id, THROTTLED, 2_000))
    assert waiting.entry is not None
    refusal = refusal_for(waiting.entry, FACTS.key)
    assert refusal is not None and "waiting for a retry" in refusal
    assert "looks it up" not in refusal  # nothing about it is looked up
