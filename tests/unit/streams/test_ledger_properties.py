"""Property tests: the ledger keeps design.md's invariants under crashes and replays.

A small simulator plays the shell's role over the *pure* state machine: it
performs effects in order, can crash before any effect (losing everything not
yet persisted), and redelivers every intent after the last commit, as Faust's
at-least-once consumer does. The provider is a model whose AMBIGUOUS answers
may or may not have delivered, and whose lookups answer truthfully,
definitively or not.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sendonce.connectors.base import LookupResult, LookupStatus, SendOutcome, SendStatus
from sendonce.streams import ledger
from sendonce.streams.ledger import (
    CallProvider,
    Decision,
    Emit,
    Event,
    IntentArrived,
    IntentFacts,
    IntentRef,
    LedgerEntry,
    LedgerStatus,
    LookupFinished,
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
    retry_waiting,
)

POLICY = RetryPolicy(max_attempts=3, base_delay_s=0.0, max_delay_s=0.0)
#: Retries that wait (a backoff, a Retry-After): the wait is recorded before the attempt.
WAITING_POLICY = RetryPolicy(max_attempts=3, base_delay_s=1.0, max_delay_s=30.0)


class Crash(Exception):
    """The worker died."""


@dataclass
class ProviderModel:
    """Scripted provider answers; records real deliveries."""

    script: list[str]
    definitive_lookups: bool
    delivered: dict[str, int] = field(default_factory=dict)
    calls: int = 0

    def send(self, key: str) -> SendOutcome:
        answer = self.script[self.calls % len(self.script)] if self.script else "accept"
        self.calls += 1
        if answer == "accept":
            self.delivered[key] = self.delivered.get(key, 0) + 1
            return SendOutcome(SendStatus.ACCEPTED, "model", provider_message_id=f"m-{key}")
        if answer == "reject":
            return SendOutcome(SendStatus.REJECTED, "model", error_code="bad_recipient")
        if answer == "retry":
            return SendOutcome(SendStatus.NOT_SENT_RETRYABLE, "model", error_code="refused")
        if answer == "ambiguous-delivered":
            self.delivered[key] = self.delivered.get(key, 0) + 1
        return SendOutcome(SendStatus.AMBIGUOUS, "model", error_code="timeout")

    def lookup(self, key: str) -> LookupResult:
        if self.delivered.get(key):
            return LookupResult(LookupStatus.FOUND, "model", provider_message_id=f"m-{key}")
        if self.definitive_lookups:
            return LookupResult(LookupStatus.NOT_FOUND_DEFINITIVE, "model")
        return LookupResult(LookupStatus.UNKNOWN, "model")


@dataclass
class Simulator:
    """Shell + durable store + committed offset + reconciler, with crash injection."""

    provider: ProviderModel
    crash_at_steps: set[int]
    reconcile: ReconcilePolicy = field(default_factory=ReconcilePolicy)
    policy: RetryPolicy = POLICY
    durable: dict[str, LedgerEntry] = field(default_factory=dict)
    results: list[ResultRecord] = field(default_factory=list)
    step: int = 0
    now_ms: int = 0
    crashes: int = 0

    def _maybe_crash(self) -> None:
        self.step += 1
        self.now_ms += 1
        if self.step in self.crash_at_steps:
            self.crashes += 1
            raise Crash

    def handle(self, intent: IntentFacts, first: Event | None = None) -> None:
        entry = self.durable.get(intent.key)
        event: Event | None = first or IntentArrived(intent, now_ms=self.now_ms, worker="w")
        while event is not None:
            decision: Decision = decide(entry, event, self.policy, self.reconcile)
            entry, event = decision.entry, None
            for effect in decision.effects:
                self._maybe_crash()
                if isinstance(effect, Persist):
                    self.durable[effect.entry.key] = effect.entry
                elif isinstance(effect, Emit):
                    self.results.append(effect.result)
                elif isinstance(effect, CallProvider):
                    outcome = self.provider.send(intent.key)
                    self._maybe_crash()  # between the provider's answer and recording it
                    event = SendFinished(intent, effect.attempt_id, outcome, self.now_ms)
                elif isinstance(effect, Reconcile):
                    lookup = self.provider.lookup(intent.key)
                    event = LookupFinished(intent, effect.attempt_id, lookup, self.now_ms)
                elif isinstance(effect, WaitForRetry):
                    # The shell waits (a crash may cut it short), then decides again.
                    self.now_ms = max(self.now_ms, effect.until_ms)
                    event = IntentArrived(intent, now_ms=self.now_ms, worker="w")

    def run(self, log: list[IntentFacts], advances: list[int] | None = None) -> None:
        """Process the log (restarting from the last commit after a crash), then reconcile."""
        committed = 0
        while committed < len(log):
            try:
                for i in range(committed, len(log)):
                    self.handle(log[i])
                    committed = i + 1
            except Crash:
                continue  # restart: durable state survives, uncommitted intents replay
        by_ref = {i.ref: i for i in log}
        for advance in advances or [10**9] * 40:
            due = [
                e
                for e in self.durable.values()
                if (e.status is LedgerStatus.AMBIGUOUS and e.next_lookup_at_ms is not None)
                or retry_waiting(e)
            ]
            if not due:
                break
            self.now_ms += advance
            for entry in due:
                origin = by_ref[entry.origin]
                try:
                    self.handle(origin, ReconcileDue(origin, self.now_ms))
                except Crash:
                    continue  # the timer fires again; durable state is what counts


@st.composite
def intent_logs(draw: st.DrawFn) -> list[IntentFacts]:
    n_keys = draw(st.integers(1, 4))
    picks = draw(st.lists(st.integers(0, n_keys - 1), min_size=1, max_size=12))
    conflicting = draw(st.sets(st.integers(0, len(picks) - 1), max_size=2))
    log = []
    for offset, k in enumerate(picks):
        fingerprint = f"fp{k}" + ("-other" if offset in conflicting else "")
        log.append(
            IntentFacts(
                key=f"t1:k{k}",
                tenant_id="t1",
                source_event_id=f"e{k}",
                action_type="reply",
                content_fingerprint=fingerprint,
                ref=IntentRef("email.intents", 0, offset),
            )
        )
    return log


answers = st.sampled_from(["accept", "reject", "retry", "ambiguous", "ambiguous-delivered"])


@settings(max_examples=400, deadline=None)
@given(
    log=intent_logs(),
    script=st.lists(answers, min_size=1, max_size=6),
    definitive=st.booleans(),
    crash_steps=st.sets(st.integers(1, 60), max_size=6),
    advances=st.lists(st.integers(1, 4_000_000), min_size=1, max_size=12),
    on_deadline=st.sampled_from(["review", "resend"]),
)
def test_invariants_hold_under_crashes_and_replays(
    log: list[IntentFacts],
    script: list[str],
    definitive: bool,
    crash_steps: set[int],
    advances: list[int],
    on_deadline: str,
) -> None:
    provider = ProviderModel(script, definitive)
    sim = Simulator(provider, crash_steps, ReconcilePolicy(on_deadline=on_deadline))
    sim.run(log, advances)
    _assert_invariants(sim, provider, log, on_deadline)


@settings(max_examples=300, deadline=None)
@given(
    log=intent_logs(),
    script=st.lists(answers, min_size=1, max_size=6),
    definitive=st.booleans(),
    crash_steps=st.sets(st.integers(1, 60), max_size=6),
    advances=st.lists(st.integers(1, 4_000_000), min_size=1, max_size=12),
    on_deadline=st.sampled_from(["review", "resend"]),
)
def test_invariants_hold_when_retries_wait_and_crashes_cut_the_waits_short(
    log: list[IntentFacts],
    script: list[str],
    definitive: bool,
    crash_steps: set[int],
    advances: list[int],
    on_deadline: str,
) -> None:
    provider = ProviderModel(script, definitive)
    reconcile = ReconcilePolicy(on_deadline=on_deadline)
    sim = Simulator(provider, crash_steps, reconcile, policy=WAITING_POLICY)
    sim.run(log, advances)
    _assert_invariants(sim, provider, log, on_deadline)
    # A key waiting for its retry has no attempt in flight: its refused attempt is
    # finished, and it is never looked up.
    for e in sim.durable.values():
        if retry_waiting(e):
            assert e.attempts[-1].status == SendStatus.NOT_SENT_RETRYABLE.value or (
                e.attempts[-1].kind == "lookup"
            )


def _assert_invariants(
    sim: Simulator, provider: ProviderModel, log: list[IntentFacts], on_deadline: str
) -> None:

    # 1. At most one accepted message per key, whatever crashed where; only the
    #    opt-in resend policy may trade a duplicate for delivery.
    if on_deadline == "review":
        assert all(count <= 1 for count in provider.delivered.values()), provider.delivered

    # 2. Every intent record has at least one result.
    refs_with_results = {r.intent for r in sim.results}
    assert {i.ref for i in log} <= refs_with_results

    # 3. Results are deterministic: one (record, outcome) pair always has one id.
    ids: dict[tuple[IntentRef, ResultOutcome], str] = {}
    for r in sim.results:
        assert ids.setdefault((r.intent, r.outcome), r.result_id) == r.result_id

    # 4. SENT/DUPLICATE only for keys the provider really accepted.
    for r in sim.results:
        if r.outcome in (ResultOutcome.SENT, ResultOutcome.DUPLICATE):
            assert provider.delivered.get(r.idempotency_key, 0) >= 1

    # 6. Ambiguity is never left unscheduled: each AMBIGUOUS entry awaits a
    #    lookup or is flagged for review.
    for e in sim.durable.values():
        if e.status is LedgerStatus.AMBIGUOUS:
            assert (e.next_lookup_at_ms is not None) != e.review_required

    # 5. A delivered key is never reported FAILED (we would tell data teams a lie).
    for r in sim.results:
        if r.outcome is ResultOutcome.FAILED:
            assert not provider.delivered.get(r.idempotency_key)


@settings(max_examples=200, deadline=None)
@given(log=intent_logs(), definitive=st.booleans())
def test_without_crashes_each_key_ends_settled_and_duplicates_carry_original(
    log: list[IntentFacts], definitive: bool
) -> None:
    provider = ProviderModel(["accept"], definitive)
    sim = Simulator(provider, set())
    sim.run(log)
    first_fp: dict[str, str] = {}
    for intent in log:
        first_fp.setdefault(intent.key, intent.content_fingerprint)
    by_ref = {r.intent: r for r in sim.results}
    assert len(sim.results) == len(log)  # exactly one result per record
    for intent in log:
        r = by_ref[intent.ref]
        if intent.content_fingerprint != first_fp[intent.key]:
            assert r.outcome is ResultOutcome.CONFLICT
        elif sim.durable[intent.key].origin == intent.ref:
            assert r.outcome is ResultOutcome.SENT
        else:
            assert r.outcome is ResultOutcome.DUPLICATE
            original = by_ref[sim.durable[intent.key].origin]
            assert r.original_result_id == original.result_id
            assert r.provider_message_id == original.provider_message_id
    assert sum(provider.delivered.values()) == len(first_fp)


def test_conflict_sends_nothing() -> None:
    provider = ProviderModel(["accept"], True)
    sim = Simulator(provider, set())
    a = IntentFacts("t:k", "t", "e", "reply", "fp-a", IntentRef("i", 0, 0))
    b = IntentFacts("t:k", "t", "e", "reply", "fp-b", IntentRef("i", 0, 1))
    sim.run([a, b])
    assert provider.calls == 1
    assert [r.outcome for r in sim.results] == [ResultOutcome.SENT, ResultOutcome.CONFLICT]


def test_crash_after_accept_reconciles_instead_of_resending() -> None:
    provider = ProviderModel(["accept"], definitive_lookups=True)
    # step 1: Persist(PENDING); step 2: CallProvider; step 3: crash right after acceptance.
    sim = Simulator(provider, {3})
    intent = IntentFacts("t:k", "t", "e", "reply", "fp", IntentRef("i", 0, 0))
    sim.run([intent])
    assert sim.crashes == 1
    assert provider.calls == 1
    [result] = sim.results
    assert result.outcome is ResultOutcome.SENT and result.reconciled


def test_ambiguous_with_inconclusive_lookups_goes_to_review_not_resend() -> None:
    provider = ProviderModel(["ambiguous"], definitive_lookups=False)
    sim = Simulator(provider, set())
    intent = IntentFacts("t:k", "t", "e", "reply", "fp", IntentRef("i", 0, 0))
    again = IntentFacts("t:k", "t", "e", "reply", "fp", IntentRef("i", 0, 1))
    sim.run([intent, again], advances=[60_000] * 100)
    assert provider.calls == 1
    assert [r.outcome for r in sim.results] == [ResultOutcome.AMBIGUOUS, ResultOutcome.AMBIGUOUS]
    entry = sim.durable["t:k"]
    assert entry.review_required and entry.next_lookup_at_ms is None
    assert entry.lookups > 3  # looked up with backoff until the deadline


def test_ambiguous_found_later_becomes_sent_for_the_origin_record() -> None:
    provider = ProviderModel(["ambiguous-delivered"], definitive_lookups=False)
    sim = Simulator(provider, set())
    intent = IntentFacts("t:k", "t", "e", "reply", "fp", IntentRef("i", 0, 0))
    sim.run([intent], advances=[60_000])
    assert [r.outcome for r in sim.results] == [ResultOutcome.AMBIGUOUS, ResultOutcome.SENT]
    sent = sim.results[1]
    assert sent.reconciled and sent.intent == intent.ref
    assert sent.result_id != sim.results[0].result_id
    assert provider.calls == 1


def test_lookup_waits_for_the_grace_period() -> None:
    intent = IntentFacts("t:k", "t", "e", "reply", "fp", IntentRef("i", 0, 0))
    policy = ReconcilePolicy(grace_s=30)
    first = decide(None, IntentArrived(intent, 0, "w"))
    ambiguous = decide(
        first.entry,
        SendFinished(intent, first.entry.attempt_id, SendOutcome(SendStatus.AMBIGUOUS, "m"), 1000),  # type: ignore[union-attr]
        reconcile=policy,
    ).entry
    assert decide(ambiguous, ReconcileDue(intent, 30_999), reconcile=policy).effects == ()
    assert decide(ambiguous, ReconcileDue(intent, 31_000), reconcile=policy).effects == (
        Reconcile(ambiguous.attempt_id),  # type: ignore[union-attr]
    )


def test_retry_budget_then_failed() -> None:
    provider = ProviderModel(["retry"], definitive_lookups=True)
    sim = Simulator(provider, set())
    sim.run([IntentFacts("t:k", "t", "e", "reply", "fp", IntentRef("i", 0, 0))])
    assert provider.calls == POLICY.max_attempts
    [result] = sim.results
    assert result.outcome is ResultOutcome.FAILED
    assert result.error_code == "retry_budget_exhausted"


def test_entry_round_trips_through_bytes() -> None:
    provider = ProviderModel(["accept"], True)
    sim = Simulator(provider, set())
    sim.run([IntentFacts("t:k", "t", "e", "reply", "fp", IntentRef("i", 3, 7))])
    entry = sim.durable["t:k"]
    assert LedgerEntry.from_bytes(entry.to_bytes()) == entry


def _reference_bytes(entry: LedgerEntry) -> bytes:
    """The serialisation to_bytes must keep: the dataclass tree as sorted compact JSON
    (fields a newer version wrote, kept in ``unknown_fields``, stand beside the others;
    an unset ``retry_at_ms`` is left out, so entries that never waited keep their bytes)."""
    data = dataclasses.asdict(entry)
    data.update(data.pop("unknown_fields"))
    for optional in ("retry_at_ms", "draft_id"):
        if data[optional] is None:
            del data[optional]
    data["status"] = entry.status.value
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


@settings(max_examples=150, deadline=None)
@given(
    log=intent_logs(),
    script=st.lists(answers, min_size=1, max_size=6),
    definitive=st.booleans(),
)
def test_entry_bytes_are_the_sorted_json_of_the_entry(
    log: list[IntentFacts], script: list[str], definitive: bool
) -> None:
    sim = Simulator(ProviderModel(script, definitive), set())
    sim.run(log)
    for entry in sim.durable.values():
        raw = entry.to_bytes()
        assert raw == _reference_bytes(entry)
        assert LedgerEntry.from_bytes(raw) == entry


def test_late_answer_for_old_attempt_is_ignored() -> None:
    intent = IntentFacts("t:k", "t", "e", "reply", "fp", IntentRef("i", 0, 0))
    first = decide(None, IntentArrived(intent, 1, "w"))
    assert first.entry is not None
    stale = SendFinished(
        intent, "not-the-current-attempt", SendOutcome(SendStatus.ACCEPTED, "m"), 2
    )
    assert decide(first.entry, stale) == Decision(first.entry)


def test_ambiguous_proven_unsent_is_retried_within_budget_only() -> None:
    # Found by the property test: a provider that always times out, with
    # definitive lookups, was re-attempted forever.
    provider = ProviderModel(["ambiguous"], definitive_lookups=True)
    sim = Simulator(provider, set())
    sim.run([IntentFacts("t:k", "t", "e", "reply", "fp", IntentRef("i", 0, 0))], [60_000] * 20)
    assert provider.calls == POLICY.max_attempts
    # Each ambiguous attempt reported AMBIGUOUS (one deterministic id), then FAILED.
    assert len({r.result_id for r in sim.results}) == 2
    assert sim.results[-1].outcome is ResultOutcome.FAILED
    assert {r.outcome for r in sim.results[:-1]} == {ResultOutcome.AMBIGUOUS}
    assert not provider.delivered


def test_fast_replace_equals_dataclasses_replace_and_rejects_unknown_fields() -> None:
    sim = Simulator(ProviderModel(["accept"], True), set())
    sim.run([IntentFacts("t:k", "t", "e", "reply", "fp", IntentRef("i", 3, 7))])
    entry = sim.durable["t:k"]
    changed = ledger.replace(entry, status=LedgerStatus.AMBIGUOUS, lookups=2)
    assert changed == dataclasses.replace(entry, status=LedgerStatus.AMBIGUOUS, lookups=2)
    assert entry.status is LedgerStatus.SENT, "the original is untouched"
    with pytest.raises(TypeError, match="no field"):
        ledger.replace(entry, stauts=LedgerStatus.SENT)


# --- operator commands ------------------------------------------------------

commands = st.lists(
    st.tuples(st.integers(0, 3), st.sampled_from(["sent", "resend", "cancel"])), max_size=6
)


@settings(max_examples=300, deadline=None)
@given(
    log=intent_logs(),
    script=st.lists(answers, min_size=1, max_size=6),
    definitive=st.booleans(),
    orders=commands,
    crash_steps=st.sets(st.integers(1, 80), max_size=6),
)
def test_operator_commands_under_crashes_resend_only_what_was_approved(
    log: list[IntentFacts],
    script: list[str],
    definitive: bool,
    orders: list[tuple[int, str]],
    crash_steps: set[int],
) -> None:
    provider = ProviderModel(script, definitive)
    sim = Simulator(provider, crash_steps)
    sim.run(log)
    by_ref = {i.ref: i for i in log}
    queue = [
        ledger.OperatorCommand(f"c{n}", f"t1:k{k}", action, "ops", "why", n)
        for n, (k, action) in enumerate(orders)
    ]
    # Delivered at least once each: a crash before a command's offset is committed
    # delivers it (and every later one) again.
    committed = 0
    while committed < len(queue):
        try:
            for i in range(committed, len(queue)):
                command = queue[i]
                entry = sim.durable.get(command.key)
                origin = by_ref[entry.origin] if entry is not None else log[0]
                event = ledger.CommandArrived(origin, command, sim.now_ms, "w")
                sim.handle(origin, event)
                committed = i + 1
        except Crash:
            continue

    for key, entry in sim.durable.items():
        ids = [a.command_id for a in entry.audit]
        assert len(ids) == len(set(ids)), "a command was applied twice"
        approved = sum(1 for a in entry.audit if a.action == "resend" and a.outcome == "applied")
        # At most one delivery per key beyond those an operator approved.
        assert provider.delivered.get(key, 0) <= 1 + approved
        for a in entry.audit:
            assert a.outcome in ("applied", "refused")
    for command in queue:
        entry = sim.durable.get(command.key)
        if entry is None:
            continue
        # Every command that reached an entry left its trace there.
        assert command.command_id in {a.command_id for a in entry.audit}


def test_an_attempt_without_a_request_id_does_not_inherit_the_previous_attempts() -> None:
    intent = IntentFacts("t1:k", "t1", "e", "reply", "fp", IntentRef("email.intents", 0, 0))
    first = decide(None, IntentArrived(intent, 0, "w")).entry
    assert first is not None
    refused = SendOutcome(SendStatus.NOT_SENT_RETRYABLE, "m", provider_request_id="req-429")
    retry = decide(first, SendFinished(intent, first.attempt_id, refused, 1), POLICY).entry
    assert retry is not None and retry.provider_request_id == "req-429"
    # The second attempt's connection dropped: no response, so no request id of its own.
    lost = SendOutcome(SendStatus.AMBIGUOUS, "m", error_code="reset")
    decision = decide(retry, SendFinished(intent, retry.attempt_id, lost, 2), POLICY)
    assert decision.entry is not None and decision.entry.provider_request_id is None
    [emit] = [e for e in decision.effects if isinstance(e, Emit)]
    assert emit.result.provider_request_id is None


def test_a_duplicate_names_the_worker_that_decided_it_not_the_one_that_sent() -> None:
    intent = IntentFacts("t1:k", "t1", "e", "reply", "fp", IntentRef("email.intents", 0, 0))
    first = decide(None, IntentArrived(intent, 0, "worker-a")).entry
    assert first is not None
    accepted = SendOutcome(SendStatus.ACCEPTED, "m")
    sent = decide(first, SendFinished(intent, first.attempt_id, accepted, 1), POLICY)
    [original] = [e.result for e in sent.effects if isinstance(e, Emit)]
    assert original.worker == "worker-a"
    repeat = dataclasses.replace(intent, ref=IntentRef("email.intents", 0, 1))
    later = decide(sent.entry, IntentArrived(repeat, 2, "worker-b"))
    [duplicate] = [e.result for e in later.effects if isinstance(e, Emit)]
    assert duplicate.outcome is ResultOutcome.DUPLICATE and duplicate.worker == "worker-b"
    other = dataclasses.replace(repeat, content_fingerprint="fp2")
    [conflict] = [
        e.result
        for e in decide(sent.entry, IntentArrived(other, 3, "worker-c")).effects
        if isinstance(e, Emit)
    ]
    assert conflict.worker == "worker-c"


def test_the_status_marker_finds_exactly_the_entries_in_that_status() -> None:
    intent = IntentFacts("t1:k", "t1", "e", "reply", "fp", IntentRef("email.intents", 0, 0))
    entry = decide(None, IntentArrived(intent, 0, "w")).entry
    assert entry is not None
    for status in LedgerStatus:
        raw = ledger.replace(entry, status=status).to_bytes()
        for other in LedgerStatus:
            assert (ledger.status_marker(other) in raw) == (other is status)
