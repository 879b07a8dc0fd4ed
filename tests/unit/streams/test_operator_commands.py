"""Operator resolutions of AMBIGUOUS entries: the pure state machine and the shell."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import pytest

from sendonce.connectors.base import (
    LookupResult,
    LookupStatus,
    OutgoingEmail,
    SendOutcome,
    SendStatus,
)
from sendonce.keys import complete_intent, idempotency_key_for
from sendonce.streams.ledger import (
    CallProvider,
    CommandArrived,
    Emit,
    IntentArrived,
    IntentFacts,
    IntentRef,
    LedgerEntry,
    LedgerStatus,
    OperatorCommand,
    Persist,
    Reconcile,
    Refuse,
    SendFinished,
    decide,
)
from sendonce.streams.processor import ConsumedRecord
from sendonce.streams.testing import InMemoryPipeline

FACTS = IntentFacts("acme:k1", "acme", "evt-1", "receipt", "fp", IntentRef("email.intents", 3, 7))


def command(action: str, command_id: str = "c1") -> OperatorCommand:
    return OperatorCommand(command_id, FACTS.key, action, "dana@ops", "checked with Dana", 5)


def ambiguous_entry() -> LedgerEntry:
    entry = decide(None, IntentArrived(FACTS, 1_000, "w1")).entry
    outcome = SendOutcome(SendStatus.AMBIGUOUS, "graph", error_code="read_timeout")
    assert entry is not None
    settled = decide(entry, SendFinished(FACTS, entry.attempt_id, outcome, 2_000)).entry
    assert settled is not None and settled.status is LedgerStatus.AMBIGUOUS
    return settled


def arrive(entry: LedgerEntry | None, cmd: OperatorCommand, **kw: Any) -> Any:
    return decide(entry, CommandArrived(FACTS, cmd, 9_000, "w2", **kw))


def test_resolve_as_sent_settles_without_a_provider_call_and_is_audited() -> None:
    decision = arrive(ambiguous_entry(), command("sent"))
    entry = decision.entry
    assert entry.status is LedgerStatus.SENT
    assert not any(isinstance(e, CallProvider) for e in decision.effects)
    [persist, emit] = decision.effects
    assert isinstance(persist, Persist) and persist.entry == entry
    assert isinstance(emit, Emit) and emit.result.outcome.value == "SENT"
    assert emit.result.intent == FACTS.ref  # the origin record's result
    [audit] = entry.audit
    assert (audit.command_id, audit.action, audit.operator, audit.outcome) == (
        "c1",
        "sent",
        "dana@ops",
        "applied",
    )
    assert audit.reason == "checked with Dana" and audit.worker == "w2"


def test_resolve_as_resend_makes_exactly_one_new_recorded_attempt() -> None:
    before = ambiguous_entry()
    decision = arrive(before, command("resend"))
    entry = decision.entry
    assert entry.status is LedgerStatus.PENDING
    assert entry.attempt_count == before.attempt_count + 1
    calls = [e for e in decision.effects if isinstance(e, CallProvider)]
    assert [c.attempt_id for c in calls] == [entry.attempt_id]
    # PENDING is persisted before the call, as for any attempt.
    assert isinstance(decision.effects[0], Persist)
    assert entry.audit[0].outcome == "applied" and entry.audit[0].action == "resend"


def test_resolve_as_cancel_fails_the_entry_and_sends_nothing() -> None:
    decision = arrive(ambiguous_entry(), command("cancel"))
    assert decision.entry.status is LedgerStatus.FAILED
    assert decision.entry.error_code == "cancelled_by_operator"
    assert not any(isinstance(e, CallProvider) for e in decision.effects)
    [result] = [e.result for e in decision.effects if isinstance(e, Emit)]
    assert result.outcome.value == "FAILED"


@pytest.mark.parametrize("action", ["sent", "resend", "cancel"])
def test_a_settled_entry_is_not_resolved_and_the_refusal_is_audited(action: str) -> None:
    entry = decide(None, IntentArrived(FACTS, 1_000, "w1")).entry
    assert entry is not None
    accepted = SendOutcome(SendStatus.ACCEPTED, "graph", provider_request_id="r1")
    sent = decide(entry, SendFinished(FACTS, entry.attempt_id, accepted, 2_000)).entry
    assert sent is not None
    decision = arrive(sent, command(action))
    assert decision.entry.status is LedgerStatus.SENT
    assert not any(isinstance(e, CallProvider | Emit) for e in decision.effects)
    [refusal] = [e for e in decision.effects if isinstance(e, Refuse)]
    assert "SENT, not AMBIGUOUS" in refusal.reason
    assert decision.entry.audit[-1].outcome == "refused"


def test_no_entry_is_refused_without_writing_anything() -> None:
    decision = arrive(None, command("resend"))
    assert decision.entry is None
    assert [type(e) for e in decision.effects] == [Refuse]


def test_a_resend_is_refused_when_the_origin_content_is_gone() -> None:
    decision = arrive(ambiguous_entry(), command("resend"), content_available=False)
    assert decision.entry.status is LedgerStatus.AMBIGUOUS
    assert not any(isinstance(e, CallProvider) for e in decision.effects)
    assert "retention" in decision.entry.audit[-1].detail


def test_a_command_delivered_again_is_applied_once() -> None:
    first = arrive(ambiguous_entry(), command("resend"))
    # Crashed after the PENDING write: the repeat looks the attempt up, never resends.
    again = arrive(first.entry, command("resend"))
    assert [type(e) for e in again.effects] == [Reconcile]
    settled = decide(
        first.entry,
        SendFinished(
            FACTS, first.entry.attempt_id, SendOutcome(SendStatus.ACCEPTED, "graph"), 9_500
        ),
    ).entry
    assert arrive(settled, command("resend")).effects == ()


def test_entries_with_and_without_audit_round_trip() -> None:
    entry = arrive(ambiguous_entry(), command("sent")).entry
    assert LedgerEntry.from_bytes(entry.to_bytes()) == entry
    legacy = ambiguous_entry().to_bytes().replace(b',"audit":[]', b"")
    assert b"audit" not in legacy
    assert LedgerEntry.from_bytes(legacy).audit == ()


def test_an_entry_written_by_a_newer_version_is_read_and_its_fields_kept() -> None:
    # Issue 16: a rollback after an upgrade must not crash on fields it does not know.
    entry = arrive(ambiguous_entry(), command("sent")).entry
    newer = json.loads(entry.to_bytes())
    newer["template_version"] = "v7"  # a field of the next version
    newer["attempts"][0]["draft_id"] = "AAMk-draft"  # nested ones too
    newer["audit"][0]["ticket"] = "OPS-1"
    read = LedgerEntry.from_bytes(json.dumps(newer, sort_keys=True).encode())
    assert read == entry  # what this version knows is unchanged
    assert read.unknown_fields == {"template_version": "v7"}
    # Written back, the next version finds its top-level field again.
    again = json.loads(dataclasses.replace(read, lookups=read.lookups + 1).to_bytes())
    assert again["template_version"] == "v7"
    # Entries of this version serialise as before (no extra key).
    assert b"unknown_fields" not in entry.to_bytes()


# --- the shell ------------------------------------------------------------


class AmbiguousOnce:
    """The first send times out (acceptance unknown); later sends are accepted."""

    name = "flaky"

    def __init__(self) -> None:
        self.sends: list[str] = []

    async def send(self, outgoing: OutgoingEmail) -> SendOutcome:
        self.sends.append(outgoing.attempt_id)
        if len(self.sends) == 1:
            return SendOutcome(SendStatus.AMBIGUOUS, self.name, error_code="read_timeout")
        return SendOutcome(SendStatus.ACCEPTED, self.name, provider_request_id="req-2")

    async def lookup(self, idempotency_key: str, message_id: str, sender: str) -> LookupResult:
        return LookupResult(LookupStatus.UNKNOWN, self.name)

    async def close(self) -> None:
        return None


INTENT = {
    "tenant_id": "acme",
    "source_event_id": "evt-1",
    "action_type": "receipt",
    "sender": "orders@acme.example",
    "to": ["user1@example.com"],
    "subject": "Receipt 1",
    "text_body": "Thanks.",
}


def ambiguous_pipeline() -> tuple[InMemoryPipeline, AmbiguousOnce, str, ConsumedRecord]:
    provider = AmbiguousOnce()
    p = InMemoryPipeline(provider)
    record = p.intent_record(INTENT)
    asyncio.run(p.run([record]))
    key = idempotency_key_for(complete_intent(INTENT, now_ms=0)).value
    assert [r["outcome"] for r in p.results()] == ["AMBIGUOUS"]
    return p, provider, key, record


def test_the_worker_resends_once_on_an_operator_command_and_audits_it() -> None:
    p, provider, key, record = ambiguous_pipeline()
    cmd = p.command_record(key, "resend", command_id="c-resend")
    stats = asyncio.run(p.run_commands([cmd]))
    assert (stats.commands_applied, stats.commands_refused) == (1, 0)
    assert len(provider.sends) == 2
    last = p.results()[-1]
    assert last["outcome"] == "SENT" and last["intent_offset"] == record.offset
    entry = p.store.get(key, record.partition)
    assert entry is not None and entry.status is LedgerStatus.SENT
    assert [(a.command_id, a.outcome) for a in entry.audit] == [("c-resend", "applied")]
    # The same command delivered again changes nothing.
    asyncio.run(p.run_commands([cmd]))
    assert len(provider.sends) == 2


def test_the_worker_marks_sent_without_sending_and_refuses_a_settled_key() -> None:
    p, provider, key, record = ambiguous_pipeline()
    asyncio.run(p.run_commands([p.command_record(key, "sent")]))
    assert len(provider.sends) == 1
    assert p.results()[-1]["outcome"] == "SENT"
    stats = asyncio.run(p.run_commands([p.command_record(key, "resend")]))
    assert (stats.commands_applied, stats.commands_refused) == (0, 1)
    assert len(provider.sends) == 1
    entry = p.store.get(key, record.partition)
    assert entry is not None and [a.outcome for a in entry.audit] == ["applied", "refused"]


def test_a_command_for_an_unknown_key_or_on_the_wrong_partition_changes_nothing() -> None:
    p, provider, key, _ = ambiguous_pipeline()
    stats = asyncio.run(p.run_commands([p.command_record("acme:nope", "resend")]))
    assert stats.commands_refused == 1
    good = p.command_record(key, "resend")
    wrong = ConsumedRecord(
        good.topic, (good.partition + 1) % p.settings.partitions, 0, good.key, good.value
    )
    stats = asyncio.run(p.run_commands([wrong, ConsumedRecord(good.topic, 0, 1, b"x", b"junk")]))
    assert stats.dead_lettered == 2
    assert len(provider.sends) == 1
    reasons = [d["error_type"] for d in p.outputs(p.settings.topics.dlq)]
    assert reasons == ["misrouted", "undecodable"]


def test_a_resend_that_is_accepted_reports_sent_without_the_earlier_error() -> None:
    pending = arrive(ambiguous_entry(), command("resend")).entry
    accepted = SendOutcome(SendStatus.ACCEPTED, "graph", provider_request_id="req-2")
    decision = decide(pending, SendFinished(FACTS, pending.attempt_id, accepted, 9_100))
    assert decision.entry is not None and decision.entry.status is LedgerStatus.SENT
    assert (decision.entry.error_code, decision.entry.error_message) == (None, None)
    [emit] = [e for e in decision.effects if isinstance(e, Emit)]
    assert emit.result.error_code is None and emit.result.provider_request_id == "req-2"
    # The timeout is still on record, on the attempt it happened to.
    assert decision.entry.attempts[0].error_code == "read_timeout"


class StuckReads:
    """Reads of intent records that serialise like the Kafka fetcher and hang (a
    backlog of reconciliation reads on a broker under load)."""

    def __init__(self) -> None:
        self.records: dict[IntentRef, ConsumedRecord] = {}
        self.lock = asyncio.Lock()
        self.released = asyncio.Event()

    async def fetch(self, ref: IntentRef) -> ConsumedRecord | None:
        async with self.lock:
            await self.released.wait()
            return self.records.get(ref)


def test_an_operator_command_does_not_wait_for_the_reconcilers_reads() -> None:
    # Torture (seed 1640455787): with 852 open sends after a rebalance, the reconciler's
    # origin reads queued behind one lock for ~20 minutes, and operator commands, which
    # read their key's origin through the same reader, waited behind all of them.
    async def scenario() -> int:
        stuck = StuckReads()
        p = InMemoryPipeline(AmbiguousOnce(), reconcile_reader=stuck)
        stuck.records = p.fetcher.records
        record = p.intent_record(INTENT)
        await p.run([record])
        key = idempotency_key_for(complete_intent(INTENT, now_ms=0)).value
        p.processor.reconcile_index[key] = (record.partition, 0)
        ticking = asyncio.ensure_future(p.reconcile())
        await asyncio.sleep(0)  # the tick is now waiting on its read
        stats = await asyncio.wait_for(p.run_commands([p.command_record(key, "resend")]), timeout=5)
        stuck.released.set()
        await ticking
        return stats.commands_applied

    assert asyncio.run(scenario()) == 1
