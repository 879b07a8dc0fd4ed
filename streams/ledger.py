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
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from sendonce.connectors.base import (
    LookupResult,
    LookupStatus,
    ProviderEvidence,
    SendOutcome,
    SendStatus,
)

_COMPACT_SORTED = json.JSONEncoder(separators=(",", ":"), sort_keys=True)

_Record = TypeVar("_Record")
_FIELD_NAMES: dict[type, frozenset[str]] = {}


def replace(record: _Record, **changes: Any) -> _Record:
    """``dataclasses.replace`` for the ledger's frozen records, at a fraction of the cost.

    The records here have no ``__post_init__`` and no ``init=False`` fields, so a copy
    of the instance dictionary with the changes applied is the same value; the
    standard ``replace`` re-runs ``__init__`` through keyword arguments, which was a
    visible share of every decision in the worker's profile.
    """
    kind = type(record)
    names = _FIELD_NAMES.get(kind)
    if names is None:
        names = _FIELD_NAMES[kind] = frozenset(f.name for f in dataclasses.fields(kind))  # type: ignore[arg-type]
    if not names.issuperset(changes):
        raise TypeError(f"{kind.__name__} has no field {sorted(set(changes) - names)}")
    copied = object.__new__(kind)
    copied.__dict__.update(record.__dict__, **changes)
    return copied


class LedgerStatus(enum.Enum):
    """Where a key stands."""

    PENDING = "PENDING"
    SENT = "SENT"
    FAILED = "FAILED"
    AMBIGUOUS = "AMBIGUOUS"


def status_marker(status: LedgerStatus) -> bytes:
    """The bytes every serialised entry in ``status`` contains (see ``to_bytes``).

    Lets a scan over many entries skip the others without decoding them.
    """
    return b'"status":"' + status.value.encode() + b'"'


class ResultOutcome(enum.Enum):
    """The outcome reported on a result topic for one intent record."""

    SENT = "SENT"
    DUPLICATE = "DUPLICATE"
    AMBIGUOUS = "AMBIGUOUS"
    FAILED = "FAILED"
    CONFLICT = "CONFLICT"


@dataclass(frozen=True, order=True)
class IntentRef:
    """Where an intent record sits in Kafka: its lineage."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class IntentFacts:
    """What the ledger needs to know about an arriving intent."""

    key: str
    tenant_id: str
    source_event_id: str
    action_type: str
    content_fingerprint: str
    ref: IntentRef
    #: Normalised sender mailbox: where a reconciliation lookup searches.
    sender: str = ""
    #: Fingerprints the same content had under earlier key algorithm versions
    #: (``sendonce.keys.IntentIdentity``): an entry written before an upgrade holds one.
    earlier_fingerprints: tuple[str, ...] = ()


@dataclass(frozen=True)
class AttemptRecord:
    """Evidence of one provider attempt (or reconciliation lookup)."""

    attempt_id: str
    number: int
    worker: str
    started_at_ms: int
    kind: str = "send"  # "send" or "lookup"
    finished_at_ms: int | None = None
    status: str | None = None
    # A subset of ProviderEvidence plus the call's trail, by the changelog's format
    # (an attempt has no message ids of its own): filled from an answer by finish().
    provider_request_id: str | None = None
    error_code: str | None = None
    evidence: dict[str, str] = field(default_factory=dict)

    def finish(self, now_ms: int, answer: SendOutcome | LookupResult) -> AttemptRecord:
        """This attempt (or lookup) as ``answer`` ended it, with the answer's evidence.

        A lookup's ``detail`` joins its evidence (the record has no field for it).
        """
        evidence = dict(answer.evidence)
        if isinstance(answer, LookupResult) and answer.detail:
            evidence["detail"] = answer.detail
        return replace(
            self,
            finished_at_ms=now_ms,
            status=answer.status.value,
            provider_request_id=answer.provider_request_id,
            error_code=answer.error_code,
            evidence=evidence,
        )


@dataclass(frozen=True)
class AuditRecord:
    """An operator's command on the entry: who, what, why, and whether it was applied."""

    command_id: str
    action: str  # "sent", "resend" or "cancel"
    operator: str
    reason: str
    issued_at_ms: int
    applied_at_ms: int
    outcome: str  # "applied" or "refused"
    detail: str = ""
    worker: str = ""


@dataclass(frozen=True)
class LedgerEntry(ProviderEvidence):
    """The ledger's durable record for one idempotency key.

    The provider's evidence for the key (ids, acceptance, error) is inherited from
    :class:`ProviderEvidence`; it serialises under the same names as ever.
    """

    key: str
    status: LedgerStatus
    content_fingerprint: str
    tenant_id: str
    source_event_id: str
    action_type: str
    origin: IntentRef
    attempt_id: str
    attempt_count: int
    worker: str
    created_at_ms: int
    updated_at_ms: int
    provider: str | None = None
    reconciled: bool = False
    attempts: tuple[AttemptRecord, ...] = ()
    sender: str = ""
    #: AMBIGUOUS entries: when the next reconciliation lookup is due, and when
    #: the reconciliation policy's deadline passes.
    next_lookup_at_ms: int | None = None
    lookup_deadline_ms: int | None = None
    lookups: int = 0
    #: Reconciliation gave up under the ``review`` policy: an operator decides.
    review_required: bool = False
    #: Operator commands applied to (or refused for) this entry, oldest first.
    audit: tuple[AuditRecord, ...] = ()
    #: Fields a newer version wrote that this one does not know (a rollback after an
    #: upgrade): kept as they were, written back with the entry, otherwise ignored.
    unknown_fields: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def to_bytes(self) -> bytes:
        """Serialise for the table and its changelog (compact JSON).

        The same bytes as ``json.dumps(asdict(entry), sort_keys=True)`` with the status
        as its value, built without ``asdict``: its recursive deep copy was the largest
        single cost of a ledger write in the worker's profile.
        """
        data = dict(self.__dict__)
        data.update(data.pop("unknown_fields"))
        data["status"] = self.status.value
        data["origin"] = dict(self.origin.__dict__)
        data["attempts"] = [
            {**attempt.__dict__, "evidence": dict(attempt.evidence)} for attempt in self.attempts
        ]
        data["audit"] = [dict(record.__dict__) for record in self.audit]
        return _COMPACT_SORTED.encode(data).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> LedgerEntry:
        """Inverse of :meth:`to_bytes`."""
        data: dict[str, Any] = json.loads(raw)
        unknown = data.keys() - _ENTRY_FIELDS
        if unknown:
            data["unknown_fields"] = {name: data.pop(name) for name in sorted(unknown)}
        data["status"] = LedgerStatus(data["status"])
        data["origin"] = IntentRef(**data["origin"])
        data["attempts"] = tuple(_known(AttemptRecord, a) for a in data["attempts"])
        # Entries written before operator commands existed have no audit trail.
        data["audit"] = tuple(_known(AuditRecord, a) for a in data.get("audit", ()))
        return cls(**data)


_ENTRY_FIELDS = frozenset(f.name for f in fields(LedgerEntry)) - {"unknown_fields"}
_T = TypeVar("_T")


def _known(cls: type[_T], data: Mapping[str, Any]) -> _T:
    """``cls(**data)``, ignoring the keys a newer version added to a nested record."""
    try:
        return cls(**data)
    except TypeError:
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class ResultRecord(ProviderEvidence):
    """An EmailResult to publish; field names follow ``schemas/EmailResult.avsc``.

    The provider's evidence is inherited from :class:`ProviderEvidence`.
    """

    result_id: str
    outcome: ResultOutcome
    idempotency_key: str
    tenant_id: str
    source_event_id: str
    action_type: str
    intent: IntentRef
    decided_at_ms: int
    provider: str | None = None
    attempt_id: str | None = None
    attempt_count: int = 0
    original_result_id: str | None = None
    original_intent: IntentRef | None = None
    reconciled: bool = False
    worker: str | None = None

    def to_avro(self) -> dict[str, Any]:
        """The record as ``EmailResult`` Avro fields."""
        return {
            "result_id": self.result_id,
            "outcome": self.outcome.value,
            "idempotency_key": self.idempotency_key,
            "tenant_id": self.tenant_id,
            "source_event_id": self.source_event_id,
            "action_type": self.action_type,
            "provider": self.provider,
            "provider_request_id": self.provider_request_id,
            "provider_message_id": self.provider_message_id,
            "internet_message_id": self.internet_message_id,
            "attempt_id": self.attempt_id,
            "attempt_count": self.attempt_count,
            "intent_topic": self.intent.topic,
            "intent_partition": self.intent.partition,
            "intent_offset": self.intent.offset,
            "original_result_id": self.original_result_id,
            "original_intent_partition": (
                self.original_intent.partition if self.original_intent else None
            ),
            "original_intent_offset": self.original_intent.offset if self.original_intent else None,
            "accepted_at": self.accepted_at_ms,
            "decided_at": self.decided_at_ms,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "reconciled": self.reconciled,
            "worker": self.worker,
        }


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


Event = IntentArrived | SendFinished | LookupFinished | ReconcileDue | CommandArrived


# --- effects --------------------------------------------------------------


@dataclass(frozen=True)
class Persist:
    """Write the entry to the table; must be acknowledged before later effects."""

    entry: LedgerEntry


@dataclass(frozen=True)
class CallProvider:
    """Send attempt ``attempt_id`` (number ``number``) after ``delay_s`` seconds."""

    attempt_id: str
    number: int
    delay_s: float = 0.0


@dataclass(frozen=True)
class Reconcile:
    """Ask the provider whether attempt ``attempt_id``'s message was accepted."""

    attempt_id: str


@dataclass(frozen=True)
class Emit:
    """Publish a result record."""

    result: ResultRecord


@dataclass(frozen=True)
class Refuse:
    """An operator command that cannot be applied; the shell reports ``reason``."""

    command: OperatorCommand
    reason: str


Effect = Persist | CallProvider | Reconcile | Emit | Refuse


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

    def __post_init__(self) -> None:
        if self.on_deadline not in ("review", "resend"):
            raise ValueError(f"on_deadline must be review or resend, not {self.on_deadline!r}")

    def next_interval_s(self, lookups_done: int) -> float:
        """Backoff between lookups: interval doubling up to the maximum."""
        return float(min(self.max_interval_s, self.interval_s * 2.0 ** max(0, lookups_done - 1)))


# --- deterministic ids ----------------------------------------------------


def _digest(*parts: object) -> str:
    text = "\x1f".join(str(p) for p in parts)
    return hashlib.sha256(text.encode()).hexdigest()


def attempt_id_for(key: str, number: int) -> str:
    """Deterministic attempt id: the same key and attempt number give the same id."""
    return _digest("attempt", key, number)[:32]


def result_id_for(key: str, ref: IntentRef, outcome: ResultOutcome) -> str:
    """Deterministic result id: a repeated result for one intent record repeats its id."""
    return _digest("result", key, ref.topic, ref.partition, ref.offset, outcome.value)[:32]


def message_id_for(key: str, sender: str) -> str:
    """Deterministic RFC 5322 Message-ID (no angle brackets) derived from the key."""
    domain = sender.rsplit("@", 1)[-1] if "@" in sender else "sendonce.invalid"
    return f"sendonce.{_digest('message-id', key)[:40]}@{domain}"


# --- the state machine ----------------------------------------------------


def decide(
    entry: LedgerEntry | None,
    event: Event,
    policy: RetryPolicy | None = None,
    reconcile: ReconcilePolicy | None = None,
) -> Decision:
    """Apply one event to one key's entry; pure."""
    policy = policy or RetryPolicy()
    reconcile = reconcile or ReconcilePolicy()
    if isinstance(event, IntentArrived):
        return _on_intent(entry, event)
    if isinstance(event, ReconcileDue):
        return _on_reconcile_due(entry, event, reconcile)
    if isinstance(event, CommandArrived):
        return _on_command(entry, event)
    if entry is None or entry.attempt_id != event.attempt_id:
        # A late answer for an attempt the ledger has moved past: nothing to do.
        return Decision(entry)
    if isinstance(event, SendFinished):
        return _on_send_finished(entry, event, policy, reconcile)
    return _on_lookup_finished(entry, event, policy, reconcile)


def lookup_due_at_ms(entry: LedgerEntry, reconcile: ReconcilePolicy) -> int | None:
    """When the reconciler should next look ``entry`` up at the provider, or ``None``.

    AMBIGUOUS: its scheduled lookup (``None`` once flagged for review). PENDING: the
    grace period after the attempt was written, since the provider's records lag its
    acceptance; the shell only asks for PENDING entries it is not driving itself
    (left behind by a crash or a rebalance), and their attempt may have reached the
    provider, so they are looked up, never resent blind. Final states: never.
    """
    if entry.status is LedgerStatus.AMBIGUOUS:
        return entry.next_lookup_at_ms
    if entry.status is LedgerStatus.PENDING:
        return entry.updated_at_ms + int(reconcile.grace_s * 1000)
    return None


def _on_reconcile_due(
    entry: LedgerEntry | None, event: ReconcileDue, reconcile: ReconcilePolicy
) -> Decision:
    due = None if entry is None else lookup_due_at_ms(entry, reconcile)
    if entry is None or due is None or event.now_ms < due:
        return Decision(entry)
    return Decision(entry, (Reconcile(entry.attempt_id),))


def _on_intent(entry: LedgerEntry | None, event: IntentArrived) -> Decision:
    intent = event.intent
    if entry is None:
        attempt_id = attempt_id_for(intent.key, 1)
        new = LedgerEntry(
            key=intent.key,
            status=LedgerStatus.PENDING,
            content_fingerprint=intent.content_fingerprint,
            tenant_id=intent.tenant_id,
            source_event_id=intent.source_event_id,
            action_type=intent.action_type,
            origin=intent.ref,
            attempt_id=attempt_id,
            attempt_count=1,
            worker=event.worker,
            created_at_ms=event.now_ms,
            updated_at_ms=event.now_ms,
            attempts=(AttemptRecord(attempt_id, 1, event.worker, event.now_ms),),
            sender=intent.sender,
        )
        return Decision(new, (Persist(new), CallProvider(attempt_id, 1)))

    if (
        entry.content_fingerprint != intent.content_fingerprint
        and entry.content_fingerprint not in intent.earlier_fingerprints
    ):
        return Decision(entry, (Emit(_conflict(entry, intent, event.now_ms, event.worker)),))

    if entry.status is LedgerStatus.PENDING:
        # Only a crashed attempt leaves PENDING behind (the shell finishes each
        # key before its next intent): it may have reached the provider, so ask.
        return Decision(entry, (Reconcile(entry.attempt_id),))

    return Decision(entry, (Emit(_result_for_settled(entry, intent, event.now_ms, event.worker)),))


def _on_send_finished(
    entry: LedgerEntry, event: SendFinished, policy: RetryPolicy, reconcile: ReconcilePolicy
) -> Decision:
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
        sent = replace(
            base, status=LedgerStatus.SENT, **outcome.as_accepted(event.now_ms).provider_evidence()
        )
        return _settled(sent, event.intent, event.now_ms)
    if outcome.status is SendStatus.REJECTED:
        failed = replace(
            base,
            status=LedgerStatus.FAILED,
            error_code=outcome.error_code or "rejected",
            error_message=outcome.error_message,
        )
        return _settled(failed, event.intent, event.now_ms)
    if outcome.status is SendStatus.NOT_SENT_RETRYABLE:
        if entry.attempt_count >= policy.max_attempts:
            failed = replace(
                base,
                status=LedgerStatus.FAILED,
                error_code="retry_budget_exhausted",
                error_message=(
                    f"not sent after {entry.attempt_count} attempts; last error: "
                    f"{outcome.error_code or 'unknown'}"
                ),
            )
            return _settled(failed, event.intent, event.now_ms)
        delay = policy.delay_for(entry.attempt_count, outcome.retry_after_s)
        return _new_attempt(base, event.intent, event.now_ms, delay)
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
        reconcile,
    )
    return _settled(ambiguous, event.intent, event.now_ms)


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


def _on_lookup_finished(
    entry: LedgerEntry, event: LookupFinished, policy: RetryPolicy, reconcile: ReconcilePolicy
) -> Decision:
    if entry.status not in (LedgerStatus.PENDING, LedgerStatus.AMBIGUOUS):
        return Decision(entry)
    lookup = event.lookup
    record = AttemptRecord(
        entry.attempt_id, entry.attempt_count, entry.worker, event.now_ms, kind="lookup"
    ).finish(event.now_ms, lookup)
    base = replace(
        entry,
        attempts=(*entry.attempts, record),
        updated_at_ms=event.now_ms,
        lookups=entry.lookups + 1,
    )
    if lookup.status is LookupStatus.FOUND:
        sent = replace(
            base,
            status=LedgerStatus.SENT,
            provider=lookup.provider,
            **lookup.as_accepted(event.now_ms, entry.provider_request_id).provider_evidence(),
            reconciled=True,
            next_lookup_at_ms=None,
            lookup_deadline_ms=None,
            review_required=False,
        )
        return _settled(sent, event.intent, event.now_ms)
    if lookup.status is LookupStatus.NOT_FOUND_DEFINITIVE and event.content_available:
        # The provider proves the attempt never landed: a new attempt cannot
        # duplicate it. It still counts against the budget, or a provider that
        # keeps timing out would be retried forever.
        if entry.attempt_count >= policy.max_attempts:
            return _fail(
                base,
                event,
                "retry_budget_exhausted",
                f"not sent after {entry.attempt_count} attempts, each proven undelivered",
            )
        return _new_attempt(
            base, event.intent, event.now_ms, policy.delay_for(entry.attempt_count, None)
        )
    if entry.status is LedgerStatus.PENDING:
        # A crashed attempt the provider cannot vouch for (yet): ambiguous, and
        # reported as such, with lookups scheduled.
        ambiguous = _schedule_reconciliation(
            replace(
                base,
                status=LedgerStatus.AMBIGUOUS,
                error_code=entry.error_code or "outcome_unknown",
                error_message=entry.error_message
                or "attempt did not complete; lookup inconclusive",
            ),
            event.now_ms,
            reconcile,
        )
        return _settled(ambiguous, event.intent, event.now_ms)
    deadline = entry.lookup_deadline_ms
    if deadline is not None and event.now_ms >= deadline:
        if reconcile.on_deadline == "resend" and entry.attempt_count < policy.max_attempts:
            return _new_attempt(base, event.intent, event.now_ms, 0.0)
        review = replace(base, next_lookup_at_ms=None, review_required=True)
        return Decision(review, (Persist(review),))
    later = replace(
        base,
        next_lookup_at_ms=event.now_ms + int(reconcile.next_interval_s(base.lookups) * 1000),
    )
    return Decision(later, (Persist(later),))


def _on_command(entry: LedgerEntry | None, event: CommandArrived) -> Decision:
    """Apply an operator's resolution; only an AMBIGUOUS entry can be resolved."""
    command = event.command
    if entry is None:
        return Decision(None, (Refuse(command, "the ledger has no entry for this key"),))
    if any(record.command_id == command.command_id for record in entry.audit):
        # Delivered again (a crash before its offset was committed). Applied once;
        # a resend that crashed after its PENDING write is a crashed attempt like
        # any other: look it up, never send blind.
        if entry.status is LedgerStatus.PENDING:
            return Decision(entry, (Reconcile(entry.attempt_id),))
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
    # budget (the operator decided the earlier attempt did not reach anyone).
    number = resolved.attempt_count + 1
    return _new_attempt(
        replace(resolved, audit=audit("applied", f"resend approved: attempt {number}")),
        event.intent,
        event.now_ms,
        0.0,
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


def _new_attempt(base: LedgerEntry, intent: IntentFacts, now_ms: int, delay_s: float) -> Decision:
    number = base.attempt_count + 1
    attempt_id = attempt_id_for(base.key, number)
    pending = replace(
        base,
        status=LedgerStatus.PENDING,
        attempt_id=attempt_id,
        attempt_count=number,
        updated_at_ms=now_ms,
        attempts=(*base.attempts, AttemptRecord(attempt_id, number, base.worker, now_ms)),
        next_lookup_at_ms=None,
        lookup_deadline_ms=None,
        review_required=False,
    )
    return Decision(pending, (Persist(pending), CallProvider(attempt_id, number, delay_s)))


def _finish_attempt(
    attempts: tuple[AttemptRecord, ...], attempt_id: str, now_ms: int, outcome: SendOutcome
) -> tuple[AttemptRecord, ...]:
    finished = []
    for a in attempts:
        if a.attempt_id == attempt_id and a.kind == "send" and a.finished_at_ms is None:
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
