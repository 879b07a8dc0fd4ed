"""The send ledger: a pure state machine, one entry per idempotency key.

Given the current :class:`LedgerEntry` (or ``None``) and an event, :func:`decide`
returns the new entry and the :data:`Effect` values the shell must perform, in
order. No I/O happens here, which is what lets the property tests explore event
orders and crash points exhaustively.

The shell's obligations (see ``streams/worker.py``):

* :class:`Persist` must be acknowledged by Kafka before any later effect of the
  same decision runs. This is what makes "PENDING before the provider call"
  durable: a crash after the call finds the PENDING entry and reconciles
  instead of sending again.
* A key is driven by one coroutine at a time: an intent for a key is decided
  only after the previous intent's effects for that key have finished.

States: no entry -> PENDING -> SENT | FAILED | AMBIGUOUS; AMBIGUOUS -> SENT
(reconciled) | PENDING (provably not sent, new attempt). Every PENDING entry ends:
its own drive settles it, or, when a crash or a rebalance interrupted that drive,
the reconciler looks it up (:func:`lookup_due_at_ms`) and settles it from the answer.

Drafts (``decide(..., drafts=True)``, a provider that can create a message as a draft
and send it later, :class:`~connectors.base.DraftingProvider`): an attempt's PENDING
entry asks for the draft (:class:`CreateDraft`); the created draft's id is written
as DRAFTED, acknowledged, before the send (:class:`CallProvider` on a DRAFTED entry
sends that draft). The handle is what settles ambiguity without a human: after an
ambiguous send, the draft's state is read (:class:`LookupTarget.DRAFT_BY_ID`); a draft
that is still a draft past ``ReconcilePolicy.draft_resend_grace_s`` was provably not
sent and is sent again (a new attempt, the same draft), one that is no longer a draft
was sent, and only one that is gone is left for an operator. A create of unknown
outcome is settled by finding the key's draft (:class:`LookupTarget.DRAFTS_BY_KEY`)
before any other create: never two drafts for one key, and a create never sends.

A retry that must wait (a backoff, the provider's Retry-After) waits *before* its
attempt is written: the entry stays PENDING with the refused attempt finished and
``retry_at_ms`` set (:func:`retry_waiting`), and :class:`WaitForRetry` tells the shell
to decide again once it is due. Such an entry has no attempt in flight, so nothing
about it is looked up: whoever drives the key next (the same drive after its wait,
a redelivered intent, the deferred lane, the reconciler once it is due) starts the
next attempt when the time comes. A wait cut short by a crash or a rebalance thus
leaves a key provably not sent, not a PENDING attempt that never reached the
provider and could only be looked up.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from sendonce.connectors.base import (
    LookupResult,
    LookupStatus,
    ProviderEvidence,
    SendOutcome,
    SendStatus,
)
from sendonce.streams.entries import (
    OPEN,
    AttemptRecord,
    AuditRecord,
    IntentFacts,
    IntentRef,
    LedgerEntry,
    LedgerStatus,
    ResultOutcome,
    ResultRecord,
    attempt_id_for,
    message_id_for,
    replace,
    result_id_for,
    status_marker,
)

#: The records are defined in :mod:`sendonce.streams.entries` and named from here too.
__all__ = [
    "OPEN",
    "RESOLUTIONS",
    "AttemptRecord",
    "AuditRecord",
    "CallProvider",
    "CommandArrived",
    "CreateDraft",
    "Decision",
    "DraftFinished",
    "Effect",
    "Emit",
    "Event",
    "IntentArrived",
    "IntentFacts",
    "IntentRef",
    "LedgerEntry",
    "LedgerStatus",
    "LookupFinished",
    "LookupTarget",
    "OperatorCommand",
    "Persist",
    "Reconcile",
    "ReconcileDue",
    "ReconcilePolicy",
    "Refuse",
    "ResultOutcome",
    "ResultRecord",
    "RetryPolicy",
    "SendFinished",
    "WaitForRetry",
    "attempt_id_for",
    "decide",
    "lookup_due_at_ms",
    "lookup_target",
    "message_id_for",
    "replace",
    "result_id_for",
    "retry_waiting",
    "status_marker",
]

# --- events ---------------------------------------------------------------


@dataclass(frozen=True)
class IntentArrived:
    """An intent record for this key was consumed."""

    intent: IntentFacts
    now_ms: int
    worker: str


@dataclass(frozen=True)
class SendFinished:
    """The provider answered the attempt ``attempt_id``."""

    intent: IntentFacts
    attempt_id: str
    outcome: SendOutcome
    now_ms: int


@dataclass(frozen=True)
class DraftFinished:
    """The provider answered the draft create of attempt ``attempt_id``.

    ``outcome``: ACCEPTED means the draft exists (its id in ``provider_message_id``);
    AMBIGUOUS that it may exist; the other two that it does not.
    """

    intent: IntentFacts
    attempt_id: str
    outcome: SendOutcome
    now_ms: int


@dataclass(frozen=True)
class LookupFinished:
    """A reconciliation lookup for ``attempt_id`` came back."""

    intent: IntentFacts
    attempt_id: str
    lookup: LookupResult
    now_ms: int
    #: Whether the shell could read the origin intent's content. Without it (the
    #: record is past retention) a lookup proving "never sent" cannot start a new
    #: attempt: the entry is left AMBIGUOUS for an operator.
    content_available: bool = True


@dataclass(frozen=True)
class ReconcileDue:
    """The reconciler's clock: an open entry's next lookup may be due.

    Open means AMBIGUOUS with a lookup scheduled, or PENDING that no coroutine of
    this worker is driving (a crash or a rebalance interrupted its attempt after the
    origin offset was committed, so no redelivery will come back for it).

    ``intent`` is the entry's origin intent (the shell re-reads it from Kafka),
    so results emitted from reconciliation belong to the record that caused
    the send.
    """

    intent: IntentFacts
    now_ms: int
    #: Whether the shell could read the origin intent's content (a retry due needs it).
    content_available: bool = True


#: What an operator may decide about an AMBIGUOUS entry.
RESOLUTIONS = ("sent", "resend", "cancel")


@dataclass(frozen=True)
class OperatorCommand:
    """An operator's resolution of one AMBIGUOUS entry (``sendonce review resolve``)."""

    command_id: str
    key: str
    action: str  # one of RESOLUTIONS
    operator: str
    reason: str
    issued_at_ms: int

    def __post_init__(self) -> None:
        if self.action not in RESOLUTIONS:
            raise ValueError(f"action must be one of {RESOLUTIONS}, not {self.action!r}")


@dataclass(frozen=True)
class CommandArrived:
    """An operator command for this key was consumed.

    ``intent`` is the entry's origin intent (the shell re-reads it from Kafka): a
    resend sends that intent's content, and results belong to that record.
    """

    intent: IntentFacts
    command: OperatorCommand
    now_ms: int
    worker: str
    #: Whether the origin intent record could be read back (retention may have
    #: deleted it); a resend needs its content.
    content_available: bool = True


Event = (
    IntentArrived | SendFinished | DraftFinished | LookupFinished | ReconcileDue | CommandArrived
)


# --- effects --------------------------------------------------------------


@dataclass(frozen=True)
class Persist:
    """Write the entry to the table; must be acknowledged before later effects."""

    entry: LedgerEntry


@dataclass(frozen=True)
class CallProvider:
    """Send attempt ``attempt_id`` (number ``number``) now.

    On a DRAFTED entry: send its draft (``draft_id``); otherwise send in one call.
    """

    attempt_id: str
    number: int


@dataclass(frozen=True)
class CreateDraft:
    """Create attempt ``attempt_id``'s message as a draft; answer with DraftFinished."""

    attempt_id: str
    number: int


@dataclass(frozen=True)
class WaitForRetry:
    """The next attempt is due at ``until_ms``: wait, then decide again.

    Nothing is in flight meanwhile; the shell may wait in line, move the intent to
    a lane where waiting is cheap, or leave the key to the reconciler, which starts
    the attempt once it is due.
    """

    until_ms: int


class LookupTarget(enum.Enum):
    """What a reconciliation lookup asks the provider (:func:`lookup_target`)."""

    #: Was a message with the key accepted? (Sent Items; after one-call sends.)
    SENT_BY_KEY = "sent_by_key"
    #: Does the key's draft exist? (After a draft create of unknown outcome.)
    DRAFTS_BY_KEY = "drafts_by_key"
    #: What became of the entry's draft? (After a send of a recorded draft.)
    DRAFT_BY_ID = "draft_by_id"


@dataclass(frozen=True)
class Reconcile:
    """Ask the provider whether attempt ``attempt_id``'s message was accepted."""

    attempt_id: str
    target: LookupTarget = LookupTarget.SENT_BY_KEY


@dataclass(frozen=True)
class Emit:
    """Publish a result record."""

    result: ResultRecord


@dataclass(frozen=True)
class Refuse:
    """An operator command that cannot be applied; the shell reports ``reason``."""

    command: OperatorCommand
    reason: str


Effect = Persist | CallProvider | CreateDraft | Reconcile | Emit | Refuse | WaitForRetry


@dataclass(frozen=True)
class Decision:
    """What :func:`decide` returns: the entry to keep and the effects to perform."""

    entry: LedgerEntry | None
    effects: tuple[Effect, ...] = ()


@dataclass(frozen=True)
class RetryPolicy:
    """Budget for attempts that provably never reached the provider."""

    max_attempts: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0

    def delay_for(self, failed_attempt_number: int, retry_after_s: float | None) -> float:
        """Exponential backoff, never shorter than the provider's Retry-After."""
        backoff = min(self.max_delay_s, self.base_delay_s * 2.0 ** (failed_attempt_number - 1))
        if retry_after_s is not None:
            return max(backoff, float(retry_after_s))
        return backoff


@dataclass(frozen=True)
class ReconcilePolicy:
    """How AMBIGUOUS entries are looked up: grace period, backoff, deadline, then policy.

    ``on_deadline``: ``review`` (default) keeps the entry AMBIGUOUS and flags it
    for an operator; ``resend`` (opt-in) makes a new, recorded attempt, which
    may duplicate a message the provider did accept but could not show.
    """

    grace_s: float = 30.0
    interval_s: float = 30.0
    max_interval_s: float = 300.0
    deadline_s: float = 1800.0
    on_deadline: str = "review"
    #: Drafts: a draft found still a draft is sent again only this long after its
    #: last send call started; before that, the provider may still be processing it.
    draft_resend_grace_s: float = 120.0

    def __post_init__(self) -> None:
        if self.on_deadline not in ("review", "resend"):
            raise ValueError(f"on_deadline must be review or resend, not {self.on_deadline!r}")

    def next_interval_s(self, lookups_done: int) -> float:
        """Backoff between lookups: interval doubling up to the maximum."""
        return float(min(self.max_interval_s, self.interval_s * 2.0 ** max(0, lookups_done - 1)))


# --- the state machine ----------------------------------------------------


@dataclass(frozen=True)
class _Rules:
    """The policies one decision applies, passed down as one value."""

    policy: RetryPolicy
    reconcile: ReconcilePolicy
    #: New attempts create a draft first (see the module docstring).
    drafts: bool


def decide(
    entry: LedgerEntry | None,
    event: Event,
    policy: RetryPolicy | None = None,
    reconcile: ReconcilePolicy | None = None,
    *,
    drafts: bool = False,
) -> Decision:
    """Apply one event to one key's entry; pure.

    ``drafts``: new attempts go through a draft (the provider creates drafts first);
    an entry that already holds a draft is settled through it either way.
    """
    rules = _Rules(policy or RetryPolicy(), reconcile or ReconcilePolicy(), drafts)
    if isinstance(event, IntentArrived):
        return _on_intent(entry, event, rules)
    if isinstance(event, ReconcileDue):
        return _on_reconcile_due(entry, event, rules)
    if isinstance(event, CommandArrived):
        return _on_command(entry, event, rules)
    if entry is None or entry.attempt_id != event.attempt_id or retry_waiting(entry):
        # A late answer for an attempt the ledger has moved past (or already
        # recorded as refused): nothing to do.
        return Decision(entry)
    if isinstance(event, SendFinished):
        return _on_send_finished(entry, event, rules)
    if isinstance(event, DraftFinished):
        return _on_draft_finished(entry, event, rules)
    return _on_lookup_finished(entry, event, rules)


def lookup_due_at_ms(entry: LedgerEntry, reconcile: ReconcilePolicy) -> int | None:
    """When the reconciler should next look ``entry`` up at the provider, or ``None``.

    AMBIGUOUS: its scheduled lookup (``None`` once flagged for review). PENDING and
    DRAFTED: a lookup scheduled by an inconclusive one, or else the grace period after
    the attempt was written, since the provider's records lag its acceptance; the
    shell only asks for such entries when it is not driving them itself (left behind
    by a crash or a rebalance), and their attempt may have reached the provider, so
    they are looked up, never resent blind. Final states: never.
    """
    if entry.status is LedgerStatus.AMBIGUOUS:
        return entry.next_lookup_at_ms
    if entry.status in (LedgerStatus.PENDING, LedgerStatus.DRAFTED):
        if entry.retry_at_ms is not None:
            # Not a lookup: the next attempt, once due (see retry_waiting).
            return entry.retry_at_ms
        if entry.next_lookup_at_ms is not None:
            return entry.next_lookup_at_ms
        return entry.updated_at_ms + int(reconcile.grace_s * 1000)
    return None


def lookup_target(entry: LedgerEntry) -> LookupTarget:
    """What a lookup for ``entry``'s current attempt must ask the provider."""
    if entry.draft_id is not None:
        return LookupTarget.DRAFT_BY_ID
    if _creating(entry):
        return LookupTarget.DRAFTS_BY_KEY
    return LookupTarget.SENT_BY_KEY


def retry_waiting(entry: LedgerEntry | None) -> bool:
    """Whether ``entry`` waits for its next attempt: its last one provably never
    reached the provider, and no attempt is in flight (nothing to look up)."""
    return (
        entry is not None and entry.status is LedgerStatus.PENDING and entry.retry_at_ms is not None
    )


def _creating(entry: LedgerEntry) -> bool:
    """Whether ``entry``'s attempt is at its draft create (in flight or of unknown outcome)."""
    if (
        entry.status is not LedgerStatus.PENDING
        or entry.retry_at_ms is not None
        or entry.draft_id is not None
    ):
        return False
    call = _current_call(entry)
    return call is not None and call.kind == "create"


def _current_call(entry: LedgerEntry) -> AttemptRecord | None:
    """The latest provider call ("create" or "send") of the entry's current attempt."""
    for record in reversed(entry.attempts):
        if record.attempt_id == entry.attempt_id and record.kind != "lookup":
            return record
    return None


def _on_reconcile_due(entry: LedgerEntry | None, event: ReconcileDue, rules: _Rules) -> Decision:
    due = None if entry is None else lookup_due_at_ms(entry, rules.reconcile)
    if entry is None or due is None or event.now_ms < due:
        return Decision(entry)
    if retry_waiting(entry):
        if event.content_available:
            return _new_attempt(entry, event.intent, event.now_ms, rules)
        # Past retention before its retry: provably never sent, and never will be.
        failed = replace(
            entry,
            status=LedgerStatus.FAILED,
            updated_at_ms=event.now_ms,
            retry_at_ms=None,
            error_code="retry_impossible",
            error_message="not sent; the intent record was gone before its retry was due",
        )
        return _settled(failed, event.intent, event.now_ms)
    return Decision(entry, (Reconcile(entry.attempt_id, lookup_target(entry)),))


def _on_intent(entry: LedgerEntry | None, event: IntentArrived, rules: _Rules) -> Decision:
    intent = event.intent
    if entry is None:
        blank = LedgerEntry(
            key=intent.key,
            status=LedgerStatus.PENDING,
            content_fingerprint=intent.content_fingerprint,
            tenant_id=intent.tenant_id,
            source_event_id=intent.source_event_id,
            action_type=intent.action_type,
            origin=intent.ref,
            attempt_id="",
            attempt_count=0,
            worker=event.worker,
            created_at_ms=event.now_ms,
            updated_at_ms=event.now_ms,
            sender=intent.sender,
        )
        return _new_attempt(blank, intent, event.now_ms, rules)

    if (
        entry.content_fingerprint != intent.content_fingerprint
        and entry.content_fingerprint not in intent.earlier_fingerprints
    ):
        return Decision(entry, (Emit(_conflict(entry, intent, event.now_ms, event.worker)),))

    if retry_waiting(entry):
        assert entry.retry_at_ms is not None
        if event.now_ms >= entry.retry_at_ms:
            return _new_attempt(entry, intent, event.now_ms, rules)
        return Decision(entry, (WaitForRetry(entry.retry_at_ms),))

    if entry.status in (LedgerStatus.PENDING, LedgerStatus.DRAFTED):
        # Only an interrupted attempt leaves these behind (the shell finishes each
        # key before its next intent): it may have reached the provider, so ask.
        due = lookup_due_at_ms(entry, rules.reconcile)
        if _creating(entry) and due is not None and event.now_ms < due:
            # A create of unknown outcome may still be completing: finding no draft
            # now would not prove there will be none. Ask once it is due.
            return Decision(entry, (WaitForRetry(due),))
        return Decision(entry, (Reconcile(entry.attempt_id, lookup_target(entry)),))

    return Decision(entry, (Emit(_result_for_settled(entry, intent, event.now_ms, event.worker)),))


def _on_send_finished(entry: LedgerEntry, event: SendFinished, rules: _Rules) -> Decision:
    if _creating(entry):
        # A send answer while the attempt is at its create: not ours to apply.
        return Decision(entry)
    outcome = event.outcome
    attempts = _finish_attempt(entry.attempts, entry.attempt_id, event.now_ms, outcome)
    base = replace(
        entry,
        attempts=attempts,
        updated_at_ms=event.now_ms,
        provider=outcome.provider,
        # This attempt's own id, or none: an earlier attempt's id on an ambiguous
        # result would send the provider's support after the wrong request.
        provider_request_id=outcome.provider_request_id,
    )
    if outcome.status is SendStatus.ACCEPTED:
        evidence = _accepted_evidence(outcome, entry, event.now_ms)
        sent = replace(
            base,
            status=LedgerStatus.SENT,
            next_lookup_at_ms=None,
            lookup_deadline_ms=None,
            **evidence,
        )
        return _settled(sent, event.intent, event.now_ms)
    if outcome.status is SendStatus.REJECTED:
        return _rejected(base, outcome, event.intent, event.now_ms)
    if outcome.status is SendStatus.NOT_SENT_RETRYABLE:
        return _retry_or_fail(base, event.intent, event.now_ms, outcome, rules)
    # AMBIGUOUS: record it durably with its lookup schedule and report it; the
    # reconciler looks it up after the grace period (a provider's Sent Items
    # lag behind its acceptance) and never resends blind.
    ambiguous = _schedule_reconciliation(
        replace(
            base,
            status=LedgerStatus.AMBIGUOUS,
            error_code=outcome.error_code or "ambiguous",
            error_message=outcome.error_message,
        ),
        event.now_ms,
        rules.reconcile,
    )
    return _settled(ambiguous, event.intent, event.now_ms)


def _accepted_evidence(
    answer: ProviderEvidence, entry: LedgerEntry, now_ms: int, request_id: str | None = None
) -> dict[str, Any]:
    """The evidence a SENT entry keeps from ``answer`` (a send's or a lookup's); a sent
    draft keeps the ids its create gave where the answer has none."""
    evidence = answer.as_accepted(now_ms, request_id).provider_evidence()
    if entry.draft_id is not None:
        evidence["provider_message_id"] = evidence["provider_message_id"] or entry.draft_id
        evidence["internet_message_id"] = (
            evidence["internet_message_id"] or entry.internet_message_id
        )
    return evidence


def _rejected(
    base: LedgerEntry, outcome: SendOutcome, intent: IntentFacts, now_ms: int
) -> Decision:
    """The provider refused for good (the send, or the draft's create): FAILED."""
    failed = replace(
        base,
        status=LedgerStatus.FAILED,
        error_code=outcome.error_code or "rejected",
        error_message=outcome.error_message,
    )
    return _settled(failed, intent, now_ms)


def _retry_or_fail(
    base: LedgerEntry, intent: IntentFacts, now_ms: int, outcome: SendOutcome, rules: _Rules
) -> Decision:
    """After a call that provably did nothing: the next attempt, or FAILED past the budget."""
    if base.attempt_count >= rules.policy.max_attempts:
        failed = replace(
            base,
            status=LedgerStatus.FAILED,
            error_code="retry_budget_exhausted",
            error_message=(
                f"not sent after {base.attempt_count} attempts; last error: "
                f"{outcome.error_code or 'unknown'}"
            ),
        )
        return _settled(failed, intent, now_ms)
    delay = rules.policy.delay_for(base.attempt_count, outcome.retry_after_s)
    return _retry(base, intent, now_ms, delay, rules)


def _on_draft_finished(entry: LedgerEntry, event: DraftFinished, rules: _Rules) -> Decision:
    call = _current_call(entry)
    if not _creating(entry) or call is None or call.finished_at_ms is not None:
        # A late or repeated create answer: the ledger has moved on.
        return Decision(entry)
    outcome = event.outcome
    now = event.now_ms
    base = replace(
        entry,
        attempts=_finish_attempt(entry.attempts, entry.attempt_id, now, outcome, kind="create"),
        updated_at_ms=now,
        provider=outcome.provider,
        provider_request_id=outcome.provider_request_id,
    )
    if outcome.status is SendStatus.ACCEPTED and outcome.provider_message_id:
        return _drafted(base, outcome.provider_message_id, outcome.internet_message_id, now)
    if outcome.status is SendStatus.REJECTED:
        return _rejected(base, outcome, event.intent, now)
    if outcome.status is SendStatus.NOT_SENT_RETRYABLE:
        return _retry_or_fail(base, event.intent, now, outcome, rules)
    # The draft may exist (or exists without an id to hold it by): find it by key
    # after the grace period, before any other create. Nothing can have been sent,
    # so nothing is reported: the entry stays PENDING, and this record is decided
    # again once the lookup is due (the reconciler too would find it then).
    due = now + int(rules.reconcile.grace_s * 1000)
    finding = replace(
        base,
        error_code=outcome.error_code or "create_ambiguous",
        error_message=outcome.error_message,
        next_lookup_at_ms=due,
        lookup_deadline_ms=now + int(rules.reconcile.deadline_s * 1000),
        lookups=0,
    )
    return Decision(finding, (Persist(finding), WaitForRetry(due)))


def _drafted(
    base: LedgerEntry, draft_id: str, internet_message_id: str | None, now_ms: int
) -> Decision:
    """Record the attempt's draft (DRAFTED, acknowledged), then send it."""
    drafted = replace(
        base,
        status=LedgerStatus.DRAFTED,
        draft_id=draft_id,
        internet_message_id=internet_message_id or base.internet_message_id,
        updated_at_ms=now_ms,
        attempts=(
            *base.attempts,
            AttemptRecord(base.attempt_id, base.attempt_count, base.worker, now_ms),
        ),
        error_code=None,
        error_message=None,
        next_lookup_at_ms=None,
        lookup_deadline_ms=None,
    )
    return Decision(drafted, (Persist(drafted), CallProvider(base.attempt_id, base.attempt_count)))


def _settled(entry: LedgerEntry, intent: IntentFacts, now_ms: int) -> Decision:
    """Persist a settled entry, then report it for ``intent``."""
    return Decision(entry, (Persist(entry), Emit(_result_for_settled(entry, intent, now_ms))))


def _schedule_reconciliation(
    entry: LedgerEntry, now_ms: int, reconcile: ReconcilePolicy
) -> LedgerEntry:
    return replace(
        entry,
        next_lookup_at_ms=now_ms + int(reconcile.grace_s * 1000),
        lookup_deadline_ms=now_ms + int(reconcile.deadline_s * 1000),
        lookups=0,
        review_required=False,
    )


def _on_lookup_finished(entry: LedgerEntry, event: LookupFinished, rules: _Rules) -> Decision:
    if entry.status not in OPEN:
        return Decision(entry)
    target = lookup_target(entry)
    lookup = event.lookup
    now = event.now_ms
    record = AttemptRecord(
        entry.attempt_id, entry.attempt_count, entry.worker, now, kind="lookup"
    ).finish(now, lookup)
    base = replace(
        entry,
        attempts=(*entry.attempts, record),
        updated_at_ms=now,
        lookups=entry.lookups + 1,
    )
    if lookup.status is LookupStatus.FOUND:
        evidence = _accepted_evidence(lookup, entry, now, entry.provider_request_id)
        sent = replace(
            base,
            status=LedgerStatus.SENT,
            provider=lookup.provider,
            **evidence,
            reconciled=True,
            next_lookup_at_ms=None,
            lookup_deadline_ms=None,
            review_required=False,
        )
        return _settled(sent, event.intent, now)
    if target is LookupTarget.DRAFTS_BY_KEY:
        return _on_draft_search(base, event, rules)
    if target is LookupTarget.DRAFT_BY_ID:
        resend_at = _draft_resend_at(base, rules)
        if lookup.status in (LookupStatus.DRAFT, LookupStatus.GONE) and now < resend_at:
            # The send may still be in the provider's hands (the item then reads as a
            # draft), and a sent item may not be readable at once (it then reads as
            # gone): neither answer proves anything yet. Ask once it does.
            return _look_again_at(base, event, resend_at, rules)
        if lookup.status is LookupStatus.DRAFT:
            return _on_still_draft(base, event, rules)
        if lookup.status is LookupStatus.GONE:
            review = replace(
                base,
                status=LedgerStatus.AMBIGUOUS,
                error_code="draft_gone",
                error_message=(
                    "the draft was deleted after a send of unknown outcome; "
                    "whether it went out cannot be told"
                ),
                next_lookup_at_ms=None,
                review_required=True,
            )
            if entry.status is LedgerStatus.AMBIGUOUS:
                return Decision(review, (Persist(review),))
            return _settled(review, event.intent, now)
    elif lookup.status is LookupStatus.NOT_FOUND_DEFINITIVE and event.content_available:
        # The provider proves the attempt never landed: a new attempt cannot
        # duplicate it. It still counts against the budget, or a provider that
        # keeps timing out would be retried forever.
        if entry.attempt_count >= rules.policy.max_attempts:
            return _fail(
                base,
                event,
                "retry_budget_exhausted",
                f"not sent after {entry.attempt_count} attempts, each proven undelivered",
            )
        delay = rules.policy.delay_for(entry.attempt_count, None)
        return _retry(base, event.intent, now, delay, rules)
    if entry.status is not LedgerStatus.AMBIGUOUS:
        # An interrupted attempt the provider cannot vouch for (yet): ambiguous,
        # and reported as such, with lookups scheduled.
        ambiguous = _schedule_reconciliation(
            replace(
                base,
                status=LedgerStatus.AMBIGUOUS,
                error_code=entry.error_code or "outcome_unknown",
                error_message=entry.error_message
                or "attempt did not complete; lookup inconclusive",
            ),
            now,
            rules.reconcile,
        )
        return _settled(ambiguous, event.intent, now)
    return _look_again(base, event, rules)


def _look_again(base: LedgerEntry, event: LookupFinished, rules: _Rules) -> Decision:
    """An inconclusive lookup of an AMBIGUOUS entry: the next one, or past the deadline
    the reconciliation policy (an operator's review, or an opted-in resend)."""
    deadline = base.lookup_deadline_ms
    if deadline is not None and event.now_ms >= deadline:
        if (
            rules.reconcile.on_deadline == "resend"
            and base.attempt_count < rules.policy.max_attempts
        ):
            return _new_attempt(base, event.intent, event.now_ms, rules)
        review = replace(base, next_lookup_at_ms=None, review_required=True)
        return Decision(review, (Persist(review),))
    later = replace(
        base,
        next_lookup_at_ms=event.now_ms + int(rules.reconcile.next_interval_s(base.lookups) * 1000),
    )
    return Decision(later, (Persist(later),))


def _on_draft_search(base: LedgerEntry, event: LookupFinished, rules: _Rules) -> Decision:
    """The key's draft was looked for after a create of unknown outcome (PENDING)."""
    lookup = event.lookup
    now = event.now_ms
    if lookup.status is LookupStatus.DRAFT and lookup.provider_message_id:
        return _drafted(base, lookup.provider_message_id, lookup.internet_message_id, now)
    if lookup.status is LookupStatus.NOT_FOUND_DEFINITIVE:
        # No draft and nothing sent: the create did nothing, another is safe.
        if not event.content_available:
            return _fail(
                base,
                event,
                "retry_impossible",
                "not sent; the intent record was gone before its draft could be made",
            )
        not_sent = SendOutcome(
            SendStatus.NOT_SENT_RETRYABLE, lookup.provider, error_code="no_draft_created"
        )
        return _retry_or_fail(base, event.intent, now, not_sent, rules)
    deadline = base.lookup_deadline_ms or now + int(rules.reconcile.deadline_s * 1000)
    if now >= deadline:
        # Nothing was sent by a create; but whether a draft exists cannot be told,
        # and a second create could leave two. An operator decides.
        review = replace(
            base,
            status=LedgerStatus.AMBIGUOUS,
            error_code="draft_unknown",
            error_message="whether the draft was created could not be found out; nothing sent",
            next_lookup_at_ms=None,
            lookup_deadline_ms=None,
            review_required=True,
        )
        return _settled(review, event.intent, now)
    later = replace(
        base,
        next_lookup_at_ms=now + int(rules.reconcile.next_interval_s(base.lookups) * 1000),
        lookup_deadline_ms=deadline,
    )
    return Decision(later, (Persist(later),))


def _draft_resend_at(entry: LedgerEntry, rules: _Rules) -> int:
    """When a draft read back as a draft proves that its last send did nothing."""
    call = _current_call(entry)
    started = call.started_at_ms if call is not None else entry.updated_at_ms
    return started + int(rules.reconcile.draft_resend_grace_s * 1000)


def _look_again_at(base: LedgerEntry, event: LookupFinished, at_ms: int, rules: _Rules) -> Decision:
    """Read the draft again at ``at_ms``; an interrupted send (DRAFTED) is ambiguous
    until then, and reported as such."""
    if base.status is LedgerStatus.AMBIGUOUS:
        later = replace(base, next_lookup_at_ms=at_ms)
        return Decision(later, (Persist(later),))
    ambiguous = replace(
        _schedule_reconciliation(base, event.now_ms, rules.reconcile),
        status=LedgerStatus.AMBIGUOUS,
        error_code=base.error_code or "outcome_unknown",
        error_message=base.error_message or "the draft's send did not complete",
        next_lookup_at_ms=at_ms,
    )
    return _settled(ambiguous, event.intent, event.now_ms)


def _on_still_draft(base: LedgerEntry, event: LookupFinished, rules: _Rules) -> Decision:
    """The entry's draft is still a draft past the resend grace: provably not sent."""
    now = event.now_ms
    if not event.content_available:
        # Sending the draft needs no content, but the attempt's record does.
        review = replace(
            base,
            status=LedgerStatus.AMBIGUOUS,
            next_lookup_at_ms=None,
            review_required=True,
            error_code="draft_unsent",
            error_message="the draft was not sent; the intent record is gone (retention)",
        )
        if base.status is LedgerStatus.AMBIGUOUS:
            return Decision(review, (Persist(review),))
        return _settled(review, event.intent, now)
    if base.attempt_count >= rules.policy.max_attempts:
        return _fail(
            base,
            event,
            "retry_budget_exhausted",
            f"not sent after {base.attempt_count} attempts; the draft is still a draft",
        )
    return _new_attempt(base, event.intent, now, rules)


def _on_command(entry: LedgerEntry | None, event: CommandArrived, rules: _Rules) -> Decision:
    """Apply an operator's resolution; only an AMBIGUOUS entry can be resolved."""
    command = event.command
    if entry is None:
        return Decision(None, (Refuse(command, "the ledger has no entry for this key"),))
    if any(record.command_id == command.command_id for record in entry.audit):
        # Delivered again (a crash before its offset was committed). Applied once;
        # a resend that crashed after its PENDING write is a crashed attempt like
        # any other: look it up, never send blind.
        if entry.status in (LedgerStatus.PENDING, LedgerStatus.DRAFTED) and not retry_waiting(
            entry
        ):
            return Decision(entry, (Reconcile(entry.attempt_id, lookup_target(entry)),))
        return Decision(entry)

    def audit(outcome: str, detail: str) -> tuple[AuditRecord, ...]:
        record = AuditRecord(
            command_id=command.command_id,
            action=command.action,
            operator=command.operator,
            reason=command.reason,
            issued_at_ms=command.issued_at_ms,
            applied_at_ms=event.now_ms,
            outcome=outcome,
            detail=detail,
            worker=event.worker,
        )
        return (*entry.audit, record)

    if entry.status is not LedgerStatus.AMBIGUOUS:
        why = f"the entry is {entry.status.value}, not AMBIGUOUS; only ambiguous sends are resolved"
        refused = replace(entry, audit=audit("refused", why), updated_at_ms=event.now_ms)
        return Decision(refused, (Persist(refused), Refuse(command, why)))
    if command.action == "resend" and not event.content_available:
        why = "the origin intent record is gone (retention); its content cannot be resent"
        refused = replace(entry, audit=audit("refused", why), updated_at_ms=event.now_ms)
        return Decision(refused, (Persist(refused), Refuse(command, why)))
    resolved = replace(
        entry,
        updated_at_ms=event.now_ms,
        next_lookup_at_ms=None,
        lookup_deadline_ms=None,
        review_required=False,
    )
    if command.action == "sent":
        sent = replace(
            resolved,
            status=LedgerStatus.SENT,
            error_code=None,
            error_message=None,
            audit=audit("applied", "marked SENT by an operator; nothing sent"),
        )
        return _settled(sent, event.intent, event.now_ms)
    if command.action == "cancel":
        cancelled = replace(
            resolved,
            status=LedgerStatus.FAILED,
            error_code="cancelled_by_operator",
            error_message="ambiguous send cancelled by an operator; nothing sent",
            audit=audit("applied", "cancelled by an operator; nothing sent"),
        )
        return _settled(cancelled, event.intent, event.now_ms)
    # An operator-approved resend: one new attempt, recorded, outside the retry
    # budget (the operator decided the earlier attempt did not reach anyone). It
    # sends the same draft, if the entry holds one: should the operator be wrong, the
    # provider refuses to send a message that is no longer a draft. Only a draft
    # that is gone is replaced by a new one.
    number = resolved.attempt_count + 1
    draft_id = None if entry.error_code == "draft_gone" else entry.draft_id
    return _new_attempt(
        replace(
            resolved,
            audit=audit("applied", f"resend approved: attempt {number}"),
            draft_id=draft_id,
        ),
        event.intent,
        event.now_ms,
        rules,
    )


def _fail(base: LedgerEntry, event: LookupFinished, code: str, message: str) -> Decision:
    failed = replace(
        base,
        status=LedgerStatus.FAILED,
        error_code=code,
        error_message=message,
        next_lookup_at_ms=None,
        lookup_deadline_ms=None,
    )
    return _settled(failed, event.intent, event.now_ms)


def _retry(
    base: LedgerEntry, intent: IntentFacts, now_ms: int, delay_s: float, rules: _Rules
) -> Decision:
    """The next attempt after an attempt provably never sent: now, or once ``delay_s``
    passed. A wait is recorded first, the attempt is written only when it is due."""
    if delay_s <= 0:
        return _new_attempt(base, intent, now_ms, rules)
    retry_at_ms = now_ms + int(delay_s * 1000)
    waiting = replace(
        base,
        status=LedgerStatus.PENDING,
        updated_at_ms=now_ms,
        retry_at_ms=retry_at_ms,
        next_lookup_at_ms=None,
        lookup_deadline_ms=None,
        review_required=False,
    )
    return Decision(waiting, (Persist(waiting), WaitForRetry(retry_at_ms)))


def _new_attempt(base: LedgerEntry, intent: IntentFacts, now_ms: int, rules: _Rules) -> Decision:
    """Write the next attempt (acknowledged before its call), then make the call.

    With drafts, an entry holding a draft sends that draft again (DRAFTED: the
    attempt starts at its send) and one without creates it first (PENDING); without
    drafts any draft is left alone and the attempt sends in one call.
    """
    number = base.attempt_count + 1
    attempt_id = attempt_id_for(base.key, number)
    draft_id = base.draft_id if rules.drafts else None
    effect: CallProvider | CreateDraft
    if draft_id is not None:
        status, kind, effect = LedgerStatus.DRAFTED, "send", CallProvider(attempt_id, number)
    elif rules.drafts:
        status, kind, effect = LedgerStatus.PENDING, "create", CreateDraft(attempt_id, number)
    else:
        status, kind, effect = LedgerStatus.PENDING, "send", CallProvider(attempt_id, number)
    pending = replace(
        base,
        status=status,
        attempt_id=attempt_id,
        attempt_count=number,
        updated_at_ms=now_ms,
        attempts=(
            *base.attempts,
            AttemptRecord(attempt_id, number, base.worker, now_ms, kind=kind),
        ),
        draft_id=draft_id,
        next_lookup_at_ms=None,
        lookup_deadline_ms=None,
        review_required=False,
        retry_at_ms=None,
    )
    return Decision(pending, (Persist(pending), effect))


def _finish_attempt(
    attempts: tuple[AttemptRecord, ...],
    attempt_id: str,
    now_ms: int,
    outcome: SendOutcome,
    kind: str = "send",
) -> tuple[AttemptRecord, ...]:
    finished = []
    for a in attempts:
        if a.attempt_id == attempt_id and a.kind == kind and a.finished_at_ms is None:
            a = a.finish(now_ms, outcome)
        finished.append(a)
    return tuple(finished)


_STATUS_OUTCOME = {
    LedgerStatus.SENT: ResultOutcome.SENT,
    LedgerStatus.FAILED: ResultOutcome.FAILED,
    LedgerStatus.AMBIGUOUS: ResultOutcome.AMBIGUOUS,
}


def _result_for_settled(
    entry: LedgerEntry, intent: IntentFacts, now_ms: int, worker: str | None = None
) -> ResultRecord:
    """The result for ``intent`` given a settled (non-PENDING) entry.

    The intent that created the entry gets the entry's own outcome; any other
    intent for a SENT key is a DUPLICATE carrying the original's ids. ``worker``
    is the worker deciding this result (default: the entry's, which made the attempt).
    """
    outcome = _STATUS_OUTCOME[entry.status]
    is_origin = intent.ref == entry.origin
    original_result_id: str | None = None
    original_intent: IntentRef | None = None
    if entry.status is LedgerStatus.SENT and not is_origin:
        outcome = ResultOutcome.DUPLICATE
        original_result_id = result_id_for(entry.key, entry.origin, ResultOutcome.SENT)
        original_intent = entry.origin
    elif not is_origin:
        original_result_id = result_id_for(entry.key, entry.origin, outcome)
        original_intent = entry.origin
    return ResultRecord(
        result_id=result_id_for(entry.key, intent.ref, outcome),
        outcome=outcome,
        idempotency_key=entry.key,
        tenant_id=intent.tenant_id,
        source_event_id=intent.source_event_id,
        action_type=intent.action_type,
        intent=intent.ref,
        decided_at_ms=now_ms,
        provider=entry.provider,
        **entry.provider_evidence(),
        attempt_id=entry.attempt_id,
        attempt_count=entry.attempt_count,
        original_result_id=original_result_id,
        original_intent=original_intent,
        reconciled=entry.reconciled,
        worker=worker or entry.worker,
    )


def _conflict(entry: LedgerEntry, intent: IntentFacts, now_ms: int, worker: str) -> ResultRecord:
    return ResultRecord(
        result_id=result_id_for(entry.key, intent.ref, ResultOutcome.CONFLICT),
        outcome=ResultOutcome.CONFLICT,
        idempotency_key=entry.key,
        tenant_id=intent.tenant_id,
        source_event_id=intent.source_event_id,
        action_type=intent.action_type,
        intent=intent.ref,
        decided_at_ms=now_ms,
        original_result_id=result_id_for(
            entry.key, entry.origin, _STATUS_OUTCOME.get(entry.status, ResultOutcome.AMBIGUOUS)
        ),
        original_intent=entry.origin,
        error_code="key_conflict",
        error_message=(
            "idempotency key reused with different content; nothing sent "
            f"(ledger holds {entry.status.value} from offset {entry.origin.offset})"
        ),
        worker=worker,
    )
