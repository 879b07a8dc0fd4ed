"""The ledger's records: one entry per idempotency key, the results it reports, their ids.

What :mod:`sendonce.streams.ledger`'s state machine reads and writes, and what reaches
Kafka: a :class:`LedgerEntry` serialises to the compact JSON of the ledger's changelog
(:meth:`LedgerEntry.to_bytes`, read back by every later version and, for the fields it
knows, every earlier one), a :class:`ResultRecord` to an ``EmailResult``. Kept apart
from the transitions so that the wire format has one home, and the state machine reads
as transitions only. Ids are deterministic (:func:`attempt_id_for`,
:func:`result_id_for`, :func:`message_id_for`): a repeat after a crash repeats them.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from sendonce.connectors.base import LookupResult, ProviderEvidence, SendOutcome

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
    #: The message exists at the provider as a draft (``draft_id``), not sent by us
    #: unless the send call in flight was; like PENDING, it is open.
    DRAFTED = "DRAFTED"
    SENT = "SENT"
    FAILED = "FAILED"
    AMBIGUOUS = "AMBIGUOUS"


#: The states whose key is not settled: a lookup or an attempt is still to come.
OPEN = (LedgerStatus.PENDING, LedgerStatus.DRAFTED, LedgerStatus.AMBIGUOUS)


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
    """Evidence of one provider call of an attempt, or of a reconciliation lookup."""

    attempt_id: str
    number: int
    worker: str
    started_at_ms: int
    #: "send", "create" (the attempt's draft create, before its "send") or "lookup".
    kind: str = "send"
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
    #: PENDING entries whose last attempt provably never reached the provider: when
    #: the next attempt is due (see :func:`retry_waiting`); no attempt is in flight.
    retry_at_ms: int | None = None
    #: Operator commands applied to (or refused for) this entry, oldest first.
    audit: tuple[AuditRecord, ...] = ()
    #: Drafts: the provider's (immutable) id of the key's draft, once it was created.
    draft_id: str | None = None
    #: Fields a newer version wrote that this one does not know (a rollback after an
    #: upgrade): kept as they were, written back with the entry, otherwise ignored.
    unknown_fields: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def to_bytes(self) -> bytes:
        """Serialise for the table and its changelog (compact JSON).

        The same bytes as ``json.dumps(asdict(entry), sort_keys=True)`` with the status
        as its value and an unset ``retry_at_ms`` left out, built without ``asdict``:
        its recursive deep copy was the largest single cost of a ledger write in the
        worker's profile.
        """
        data = dict(self.__dict__)
        data.update(data.pop("unknown_fields"))
        for optional in ("retry_at_ms", "draft_id"):
            if data[optional] is None:
                # Only an entry waiting for its retry (or holding a draft) carries it:
                # every other entry keeps the bytes it had before the field existed.
                del data[optional]
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
