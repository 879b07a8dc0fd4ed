"""No stranded PENDING: every attempt a crash interrupted is driven to a final state.

An attempt started by the reconciler (deadline policy ``resend``) or by an operator
(``review resolve --as resend``) runs after its origin offset was committed: no
redelivery of the intent will ever come back for it. A crash after its PENDING write
must still end in a lookup at the provider (never a blind resend) once a worker
recovers the partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

from sendonce.connectors.base import (
    LookupResult,
    LookupStatus,
    OutgoingEmail,
    SendOutcome,
    SendStatus,
)
from sendonce.faults import AFTER_PENDING, CrashPoints
from sendonce.keys import complete_intent, idempotency_key_for
from sendonce.settings import Settings
from sendonce.streams.ledger import (
    IntentArrived,
    IntentFacts,
    IntentRef,
    LedgerStatus,
    Reconcile,
    ReconcileDue,
    ReconcilePolicy,
    decide,
    lookup_due_at_ms,
)
from sendonce.streams.processor import ConsumedRecord, IntentProcessor
from sendonce.streams.testing import InMemoryPipeline

FACTS = IntentFacts("acme:k1", "acme", "evt-1", "receipt", "fp", IntentRef("email.intents", 3, 7))
GRACE = ReconcilePolicy(grace_s=30.0)


class Crash(Exception):
    """Stands in for the SIGKILL of a crash point."""


def crash() -> None:
    raise Crash


# --- the pure ledger --------------------------------------------------------


def test_a_pending_entry_found_after_recovery_is_looked_up_once_its_grace_passed() -> None:
    pending = decide(None, IntentArrived(FACTS, 1_000, "w1")).entry
    assert pending is not None and pending.status is LedgerStatus.PENDING
    due = lookup_due_at_ms(pending, GRACE)
    assert due == 1_000 + 30_000
    early = decide(pending, ReconcileDue(FACTS, due - 1), reconcile=GRACE)
    assert early.effects == () and early.entry == pending
    decision = decide(pending, ReconcileDue(FACTS, due), reconcile=GRACE)
    assert decision.effects == (Reconcile(pending.attempt_id),)
    assert decision.entry == pending


def test_settled_entries_are_never_due() -> None:
    pending = decide(None, IntentArrived(FACTS, 1_000, "w1")).entry
    assert pending is not None
    sent = dataclasses.replace(pending, status=LedgerStatus.SENT)
    assert lookup_due_at_ms(sent, GRACE) is None
    assert decide(sent, ReconcileDue(FACTS, 10**12), reconcile=GRACE).effects == ()


# --- the shell --------------------------------------------------------------

INTENT = {
    "tenant_id": "acme",
    "source_event_id": "evt-1",
    "action_type": "receipt",
    "sender": "orders@acme.example",
    "to": ["user1@example.com"],
    "subject": "Receipt 1",
    "text_body": "Thanks.",
}


class Mailbox:
    """First send ambiguous, later sends accepted; lookups find what was accepted."""

    name = "mailbox"

    def __init__(self) -> None:
        self.sends: list[str] = []
        self.lookups: list[str] = []
        self.accepted: set[str] = set()

    async def send(self, outgoing: OutgoingEmail) -> SendOutcome:
        self.sends.append(outgoing.attempt_id)
        if len(self.sends) == 1:
            return SendOutcome(SendStatus.AMBIGUOUS, self.name, error_code="read_timeout")
        self.accepted.add(outgoing.idempotency_key)
        return SendOutcome(SendStatus.ACCEPTED, self.name, provider_request_id="req")

    async def lookup(self, idempotency_key: str, message_id: str, sender: str) -> LookupResult:
        self.lookups.append(idempotency_key)
        if idempotency_key in self.accepted:
            return LookupResult(LookupStatus.FOUND, self.name, provider_request_id="found")
        return LookupResult(LookupStatus.UNKNOWN, self.name)

    async def close(self) -> None:
        return None


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


def crashing_pipeline(
    settings: Settings | None = None,
) -> tuple[InMemoryPipeline, Mailbox, Clock, str, ConsumedRecord]:
    provider = Mailbox()
    clock = Clock()
    p = InMemoryPipeline(provider, settings=settings, clock=clock)
    record = p.intent_record(INTENT)
    asyncio.run(p.run([record]))
    assert [r["outcome"] for r in p.results()] == ["AMBIGUOUS"]
    key = idempotency_key_for(complete_intent(INTENT, now_ms=0)).value
    # The worker dies right after its next PENDING write (the next attempt).
    p.processor._crash = CrashPoints(f"{AFTER_PENDING}:1", kill=crash)
    return p, provider, clock, key, record


def restart(p: InMemoryPipeline, clock: Clock) -> IntentProcessor:
    """A new worker over the same ledger, as after a crash: it recovers the partitions."""
    processor = IntentProcessor(
        p.settings, p.store, p.provider, p.sink, p.codec, clock=clock, fetcher=p.fetcher
    )
    processor.rebuild_reconcile_index(p.store.open_entries())
    p.processor = processor
    return processor


def settle(p: InMemoryPipeline, clock: Clock, key: str, partition: int) -> LedgerStatus:
    """Run reconciler ticks, advancing the clock, until the entry stops moving."""
    status = None
    for _ in range(10):
        clock.now += 60_000
        asyncio.run(p.reconcile())
        entry = p.store.get(key, partition)
        assert entry is not None
        status = entry.status
        if status is not LedgerStatus.PENDING and key not in p.processor.reconcile_index:
            break
    assert status is not None
    return status


def test_an_operator_resend_interrupted_after_pending_is_looked_up_after_recovery() -> None:
    p, provider, clock, key, record = crashing_pipeline()
    try:
        asyncio.run(p.run_commands([p.command_record(key, "resend", command_id="c1")]))
    except Crash:
        pass
    else:
        raise AssertionError("the crash point did not fire")
    entry = p.store.get(key, record.partition)
    assert entry is not None and entry.status is LedgerStatus.PENDING
    assert len(provider.sends) == 1  # the resend never reached the provider

    restart(p, clock)
    status = settle(p, clock, key, record.partition)
    # Looked up, not resent blind: the provider has no record, so it is AMBIGUOUS
    # again and listed for review, never PENDING forever.
    assert status is LedgerStatus.AMBIGUOUS
    assert len(provider.sends) == 1
    assert provider.lookups
    assert p.results()[-1]["outcome"] == "AMBIGUOUS"


def test_a_deadline_resend_interrupted_after_pending_ends_final_after_recovery() -> None:
    settings = Settings(
        partitions=12,
        retry_base_delay_s=0.0,
        reconcile_grace_s=1.0,
        reconcile_interval_s=1.0,
        reconcile_deadline_s=2.0,
        reconcile_on_deadline="resend",
    )
    p, provider, clock, key, record = crashing_pipeline(settings)
    crashed = False
    for _ in range(10):
        clock.now += 5_000
        try:
            asyncio.run(p.reconcile())
        except Crash:
            crashed = True
            break
    assert crashed, "the deadline resend never started"
    entry = p.store.get(key, record.partition)
    assert entry is not None and entry.status is LedgerStatus.PENDING
    sends_before = len(provider.sends)

    restart(p, clock)
    status = settle(p, clock, key, record.partition)
    # The interrupted attempt never reached the provider; the lookup cannot prove
    # that (UNKNOWN), so the ledger goes AMBIGUOUS, whose deadline policy then
    # decides again: never a send without a lookup first.
    assert status in (LedgerStatus.AMBIGUOUS, LedgerStatus.SENT)
    assert provider.lookups
    assert len(provider.sends) <= sends_before + 1
    if status is LedgerStatus.SENT:
        assert len(provider.sends) == sends_before + 1


def test_recovery_counts_pending_entries_as_open() -> None:
    p, _, clock, key, _record = crashing_pipeline()
    with contextlib.suppress(Crash):
        asyncio.run(p.run_commands([p.command_record(key, "resend", command_id="c1")]))
    processor = restart(p, clock)
    assert key in processor.reconcile_index
    assert processor.oldest_open_age_s(clock.now) >= 0
    assert processor.open_keys() == {key}
