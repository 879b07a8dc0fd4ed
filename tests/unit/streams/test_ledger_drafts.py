"""Property tests of the draft protocol: create, record the draft, send it, settle by it.

The simulator is the shell over the *pure* state machine with ``drafts=True``: it
performs effects in order, can crash before any effect and between a provider's answer
and its recording, redelivers uncommitted intents, and runs the reconciler over every
open entry once its lookup is due. The provider model keeps real drafts: a create may
or may not make one when it answers AMBIGUOUS, a send may or may not deliver, a draft
that was sent is no longer a draft (sending it again is refused, as Graph answers 404),
and lookups tell the truth about drafts, which is what lets the ledger settle every
ambiguous answer without a human.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from sendonce.connectors.base import LookupResult, LookupStatus, SendOutcome, SendStatus
from sendonce.streams.ledger import (
    CallProvider,
    CreateDraft,
    Decision,
    DraftFinished,
    Emit,
    Event,
    IntentArrived,
    IntentFacts,
    IntentRef,
    LedgerEntry,
    LedgerStatus,
    LookupFinished,
    LookupTarget,
    Persist,
    Reconcile,
    ReconcileDue,
    ReconcilePolicy,
    ResultOutcome,
    ResultRecord,
    RetryPolicy,
    SendFinished,
    WaitForRetry,
    decide,
    lookup_due_at_ms,
)

POLICY = RetryPolicy(max_attempts=4, base_delay_s=0.0, max_delay_s=0.0)
RECONCILE = ReconcilePolicy(grace_s=30, draft_resend_grace_s=120)


class Crash(Exception):
    """The worker died."""


@dataclass
class Draft:
    key: str
    id: str
    sent: bool = False
    deleted: bool = False


@dataclass
class DraftingModel:
    """A mailbox with drafts; scripted answers for creates and sends."""

    creates: list[str]
    sends: list[str]
    drafts: list[Draft] = field(default_factory=list)
    delivered: dict[str, int] = field(default_factory=dict)
    calls: int = 0

    def _next(self, script: list[str], default: str) -> str:
        answer = script[self.calls % len(script)] if script else default
        self.calls += 1
        return answer

    def create(self, key: str) -> SendOutcome:
        answer = self._next(self.creates, "ok")
        if answer in ("ok", "ambiguous-created"):
            draft = Draft(key, f"d{len(self.drafts)}")
            self.drafts.append(draft)
            if answer == "ok":
                return SendOutcome(SendStatus.ACCEPTED, "model", provider_message_id=draft.id)
            return SendOutcome(SendStatus.AMBIGUOUS, "model", error_code="timeout")
        if answer == "reject":
            return SendOutcome(SendStatus.REJECTED, "model", error_code="bad_recipient")
        if answer == "retry":
            return SendOutcome(SendStatus.NOT_SENT_RETRYABLE, "model", error_code="refused")
        return SendOutcome(SendStatus.AMBIGUOUS, "model", error_code="timeout")

    def send(self, key: str, draft_id: str) -> SendOutcome:
        draft = next(d for d in self.drafts if d.id == draft_id)
        assert draft.key == key
        answer = self._next(self.sends, "accept")
        if draft.sent or draft.deleted:
            # Graph: sending an item that is no longer a draft answers 404.
            return SendOutcome(SendStatus.AMBIGUOUS, "model", error_code="ErrorItemNotFound")
        if answer in ("accept", "ambiguous-delivered"):
            draft.sent = True
            self.delivered[key] = self.delivered.get(key, 0) + 1
            if answer == "accept":
                return SendOutcome(SendStatus.ACCEPTED, "model")
            return SendOutcome(SendStatus.AMBIGUOUS, "model", error_code="gateway_timeout")
        if answer == "reject":
            return SendOutcome(SendStatus.REJECTED, "model", error_code="bad_recipient")
        if answer == "retry":
            return SendOutcome(SendStatus.NOT_SENT_RETRYABLE, "model", error_code="refused")
        return SendOutcome(SendStatus.AMBIGUOUS, "model", error_code="timeout")

    def find_draft(self, key: str) -> LookupResult:
        mine = [d for d in self.drafts if d.key == key and not d.deleted]
        if any(d.sent for d in mine):
            return LookupResult(LookupStatus.FOUND, "model")
        if mine:
            return LookupResult(LookupStatus.DRAFT, "model", provider_message_id=mine[0].id)
        return LookupResult(LookupStatus.NOT_FOUND_DEFINITIVE, "model")

    def draft_state(self, draft_id: str) -> LookupResult:
        draft = next(d for d in self.drafts if d.id == draft_id)
        if draft.deleted:
            return LookupResult(LookupStatus.GONE, "model")
        if draft.sent:
            return LookupResult(LookupStatus.FOUND, "model", provider_message_id=draft.id)
        return LookupResult(LookupStatus.DRAFT, "model", provider_message_id=draft.id)


@dataclass
class Simulator:
    """Shell + durable store + committed offsets + reconciler, with crash injection."""

    provider: DraftingModel
    crash_at_steps: set[int]
    reconcile: ReconcilePolicy = RECONCILE
    durable: dict[str, LedgerEntry] = field(default_factory=dict)
    results: list[ResultRecord] = field(default_factory=list)
    step: int = 0
    now_ms: int = 0

    def _maybe_crash(self) -> None:
        self.step += 1
        self.now_ms += 1
        if self.step in self.crash_at_steps:
            raise Crash

    def handle(self, intent: IntentFacts, first: Event | None = None) -> None:
        entry = self.durable.get(intent.key)
        event: Event | None = first or IntentArrived(intent, now_ms=self.now_ms, worker="w")
        while event is not None:
            decision: Decision = decide(entry, event, POLICY, self.reconcile, drafts=True)
            entry, event = decision.entry, None
            for effect in decision.effects:
                self._maybe_crash()
                if isinstance(effect, Persist):
                    self.durable[effect.entry.key] = effect.entry
                elif isinstance(effect, Emit):
                    self.results.append(effect.result)
                elif isinstance(effect, CreateDraft):
                    # A create is made only from a durable PENDING entry with no draft.
                    durable = self.durable[intent.key]
                    assert durable.status is LedgerStatus.PENDING and durable.draft_id is None
                    made = self.provider.create(intent.key)
                    self._maybe_crash()
                    event = DraftFinished(intent, effect.attempt_id, made, self.now_ms)
                elif isinstance(effect, CallProvider):
                    # A send is made only of a draft whose DRAFTED entry is durable.
                    durable = self.durable[intent.key]
                    assert durable.status is LedgerStatus.DRAFTED
                    assert durable.draft_id is not None
                    assert durable.attempt_id == effect.attempt_id
                    outcome = self.provider.send(intent.key, durable.draft_id)
                    self._maybe_crash()
                    event = SendFinished(intent, effect.attempt_id, outcome, self.now_ms)
                elif isinstance(effect, Reconcile):
                    assert entry is not None
                    if effect.target is LookupTarget.DRAFT_BY_ID:
                        assert entry.draft_id is not None
                        lookup = self.provider.draft_state(entry.draft_id)
                    else:
                        assert effect.target is LookupTarget.DRAFTS_BY_KEY
                        lookup = self.provider.find_draft(intent.key)
                    event = LookupFinished(intent, effect.attempt_id, lookup, self.now_ms)
                elif isinstance(effect, WaitForRetry):
                    self.now_ms = max(self.now_ms, effect.until_ms)
                    event = IntentArrived(intent, now_ms=self.now_ms, worker="w")

    def run(self, log: list[IntentFacts], advances: list[int]) -> None:
        committed = 0
        while committed < len(log):
            try:
                for i in range(committed, len(log)):
                    self.handle(log[i])
                    committed = i + 1
            except Crash:
                continue
        by_ref = {i.ref: i for i in log}
        for advance in advances:
            due = [e for e in self.durable.values() if lookup_due_at_ms(e, self.reconcile)]
            if not due:
                break
            self.now_ms += advance
            for entry in due:
                origin = by_ref[entry.origin]
                try:
                    self.handle(origin, ReconcileDue(origin, self.now_ms))
                except Crash:
                    continue


@st.composite
def intent_logs(draw: st.DrawFn) -> list[IntentFacts]:
    n_keys = draw(st.integers(1, 3))
    picks = draw(st.lists(st.integers(0, n_keys - 1), min_size=1, max_size=8))
    return [
        IntentFacts(f"t:k{k}", "t", f"e{k}", "reply", f"fp{k}", IntentRef("i", 0, offset))
        for offset, k in enumerate(picks)
    ]


creates = st.sampled_from(["ok", "ok", "ambiguous-created", "ambiguous", "retry", "reject"])
sends = st.sampled_from(["accept", "accept", "ambiguous-delivered", "ambiguous", "retry"])


@settings(max_examples=400, deadline=None)
@given(
    log=intent_logs(),
    create_script=st.lists(creates, min_size=1, max_size=5),
    send_script=st.lists(sends, min_size=1, max_size=5),
    crash_steps=st.sets(st.integers(1, 50), max_size=5),
)
def test_drafts_settle_every_ambiguity_with_one_delivery_and_one_draft(
    log: list[IntentFacts],
    create_script: list[str],
    send_script: list[str],
    crash_steps: set[int],
) -> None:
    provider = DraftingModel(create_script, send_script)
    sim = Simulator(provider, crash_steps)
    sim.run(log, [600_000] * 60)

    # At most one delivery per key, whatever crashed where and however it answered.
    assert all(n <= 1 for n in provider.delivered.values()), provider.delivered
    # Never two drafts for one key: an unclear create is settled by finding its draft.
    keys = [d.key for d in provider.drafts]
    assert len(keys) == len(set(keys)), keys
    # With a mailbox that tells the truth about drafts, nothing is left for a human,
    # and nothing is left open: every key ended SENT or FAILED.
    for entry in sim.durable.values():
        assert entry.status in (LedgerStatus.SENT, LedgerStatus.FAILED), entry
        assert not entry.review_required
        if entry.status is LedgerStatus.SENT:
            assert provider.delivered.get(entry.key) == 1
            assert entry.provider_message_id == entry.draft_id
        else:
            assert not provider.delivered.get(entry.key)
    # Every record got a result; SENT and DUPLICATE only for delivered keys.
    assert {i.ref for i in log} <= {r.intent for r in sim.results}
    for r in sim.results:
        if r.outcome in (ResultOutcome.SENT, ResultOutcome.DUPLICATE):
            assert provider.delivered.get(r.idempotency_key) == 1
        if r.outcome is ResultOutcome.FAILED:
            assert not provider.delivered.get(r.idempotency_key)


def test_a_draft_found_still_a_draft_is_sent_again_only_after_the_resend_grace() -> None:
    provider = DraftingModel(["ok"], ["ambiguous"])
    intent = IntentFacts("t:k", "t", "e", "reply", "fp", IntentRef("i", 0, 0))
    sim = Simulator(provider, set())
    sim.handle(intent)
    entry = sim.durable["t:k"]
    assert entry.status is LedgerStatus.AMBIGUOUS and entry.draft_id == "d0"
    sent_at = next(a for a in entry.attempts if a.kind == "send").started_at_ms
    # Past the lookup grace but inside the resend grace: still a draft, not sent again.
    provider.sends = ["accept"]
    sim.now_ms = sent_at + 31_000
    sim.handle(intent, ReconcileDue(intent, sim.now_ms))
    waiting = sim.durable["t:k"]
    assert waiting.status is LedgerStatus.AMBIGUOUS
    assert waiting.next_lookup_at_ms == sent_at + 120_000
    assert not provider.delivered
    sim.now_ms = sent_at + 120_000
    sim.handle(intent, ReconcileDue(intent, sim.now_ms))
    sent = sim.durable["t:k"]
    assert sent.status is LedgerStatus.SENT and sent.attempt_count == 2
    assert provider.delivered == {"t:k": 1}
    assert [a.kind for a in sent.attempts] == ["create", "send", "lookup", "lookup", "send"]


def test_a_deleted_draft_is_the_one_case_left_for_review() -> None:
    provider = DraftingModel(["ok"], ["ambiguous"])
    intent = IntentFacts("t:k", "t", "e", "reply", "fp", IntentRef("i", 0, 0))
    sim = Simulator(provider, set())
    sim.handle(intent)
    provider.drafts[0].deleted = True
    sim.now_ms += 10**6
    sim.handle(intent, ReconcileDue(intent, sim.now_ms))
    entry = sim.durable["t:k"]
    assert entry.status is LedgerStatus.AMBIGUOUS and entry.review_required
    assert entry.error_code == "draft_gone"


def test_an_unclear_create_is_found_not_repeated() -> None:
    provider = DraftingModel(["ambiguous-created", "ok"], ["accept"])
    intent = IntentFacts("t:k", "t", "e", "reply", "fp", IntentRef("i", 0, 0))
    sim = Simulator(provider, set())
    sim.handle(intent)
    entry = sim.durable["t:k"]
    assert entry.status is LedgerStatus.SENT and entry.draft_id == "d0"
    assert len(provider.drafts) == 1 and provider.delivered == {"t:k": 1}
    # The record waited out the grace period, found the draft, and sent it.
    create, lookup, send = entry.attempts
    assert (create.kind, create.status) == ("create", "ambiguous")
    assert (lookup.kind, lookup.status) == ("lookup", "draft")
    assert send.kind == "send" and send.started_at_ms >= create.finished_at_ms + 30_000  # type: ignore[operator]
    assert [r.outcome for r in sim.results] == [ResultOutcome.SENT]


def test_a_draft_not_readable_right_after_its_send_is_not_yet_gone() -> None:
    # Microsoft: the Sent Items copy of a sent draft may not be readable at once
    # (learn.microsoft.com/graph/outlook-immutable-id). Within the resend grace a
    # "not found" proves nothing; only after it is the draft gone.
    provider = DraftingModel(["ok"], ["ambiguous-delivered"])
    intent = IntentFacts("t:k", "t", "e", "reply", "fp", IntentRef("i", 0, 0))
    sim = Simulator(provider, set())
    sim.handle(intent)
    entry = sim.durable["t:k"]
    sent_at = next(a for a in entry.attempts if a.kind == "send").started_at_ms
    provider.drafts[0].deleted = True  # reads as GONE for now
    sim.now_ms = sent_at + 31_000
    sim.handle(intent, ReconcileDue(intent, sim.now_ms))
    waiting = sim.durable["t:k"]
    assert not waiting.review_required
    assert waiting.next_lookup_at_ms == sent_at + 120_000
    provider.drafts[0].deleted = False  # readable again: it was sent
    sim.now_ms = sent_at + 120_000
    sim.handle(intent, ReconcileDue(intent, sim.now_ms))
    assert sim.durable["t:k"].status is LedgerStatus.SENT
    assert provider.delivered == {"t:k": 1}
