"""Trace: the evidence bundle for one idempotency key.

What an operator pastes into a support ticket ("did this email go out, and how many
times?"), read from the source of truth, the topics:

* the ledger entry (latest record of the key in the ledger's changelog), with every
  provider attempt and reconciliation lookup it recorded (``request-id``,
  ``client-request-id``, ``Date``, ``x-ms-ags-diagnostic``) and the operator audit
  trail;
* every intent record for the key (intents topic and deferred lane), with its
  coordinates and lineage headers (``sendonce-origin``, replay headers);
* every result emitted for the key, with its outcome and intent coordinates.

Gathering (:func:`gather`, :func:`find_keys`: Kafka I/O) and the JSON document
(:func:`to_json`: pure) are separate; this module is the library, and the command line
with its readable text form is :mod:`sendonce.cli.trace`. Recipients are shown only
masked with a short hash of the normalised address (an operator holding an address
can check it, nobody can read it off); subjects, bodies, template parameters and
custom headers of intents are never shown; email addresses inside provider error
messages are masked.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sendonce.connectors.base import ProviderEvidence
from sendonce.keys import (
    IdempotencyKey,
    InvalidIntentError,
    identify_intent,
    mask_address,
    normalize_address,
)
from sendonce.ops.history import HistoryError, StoredRecord, TopicReader, ledger_entry
from sendonce.schemas.codec import SchemaCodec, default_codec
from sendonce.schemas.errors import CodecError
from sendonce.settings import Settings
from sendonce.streams.ledger import AttemptRecord, AuditRecord, IntentRef, LedgerEntry
from sendonce.streams.processor import partition_for_key

__all__ = [
    "SUPPORT_EVIDENCE",
    "IntentView",
    "ResultView",
    "StateView",
    "TraceBundle",
    "attempt_json",
    "audit_json",
    "find_keys",
    "gather",
    "intent_view",
    "iso",
    "protect_address",
    "result_view",
    "scrub",
    "state_json",
    "state_view",
    "to_json",
]

#: Lineage headers shown when a record carries them (the deferred lane's origin and
#: the replay tool's markers); any other ``sendonce-*`` header is shown too.
LINEAGE_HEADERS = ("sendonce-origin", "sendonce-replayed-from", "sendonce-replay")

#: Evidence kept per attempt that support asks for, in the order it is shown.
SUPPORT_EVIDENCE = ("request-id", "client-request-id", "Date", "x-ms-ags-diagnostic")

_EMAIL_RE = re.compile(r"[^\s<>\"'(),;:\[\]]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")


# --------------------------------------------------------------------------------------
# The bundle
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IntentView:
    """One intent record for the key, without its content."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    #: ``intents`` or ``deferred``.
    lane: str
    tenant_id: str | None = None
    source_event_id: str | None = None
    action_type: str | None = None
    sender: str | None = None
    #: Masked and hashed (:func:`protect_address`), to, cc and bcc in that order.
    recipients: tuple[str, ...] = ()
    created_at_ms: int | None = None
    #: ``sendonce-*`` headers (lineage), decoded as text.
    headers: tuple[tuple[str, str], ...] = ()
    #: Why the record could not be decoded, if it could not.
    problem: str | None = None

    @property
    def ref(self) -> IntentRef:
        """The record's coordinates."""
        return IntentRef(self.topic, self.partition, self.offset)


@dataclass(frozen=True)
class ResultView(ProviderEvidence):
    """One result record emitted for the key (the provider's evidence is inherited)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    outcome: str
    result_id: str
    intent: IntentRef | None
    reconciled: bool = False
    provider: str | None = None
    attempt_id: str | None = None
    attempt_count: int = 0
    original_result_id: str | None = None
    original_intent: IntentRef | None = None
    decided_at_ms: int | None = None
    worker: str | None = None
    problem: str | None = None


@dataclass(frozen=True)
class StateView:
    """One version of the key's ledger entry, as its changelog holds it."""

    offset: int
    timestamp_ms: int | None
    #: The entry's status, or ``deleted`` for a tombstone.
    status: str
    updated_at_ms: int | None = None
    attempt: int = 0
    draft_id: str | None = None
    error_code: str | None = None
    review_required: bool = False


def state_view(record: StoredRecord) -> StateView:
    """``record`` of the ledger changelog as one state the key went through."""
    if record.value is None:
        return StateView(record.offset, record.timestamp_ms, "deleted")
    try:
        entry = LedgerEntry.from_bytes(record.value)
    except (ValueError, TypeError, KeyError) as exc:
        return StateView(record.offset, record.timestamp_ms, f"unreadable ({type(exc).__name__})")
    return StateView(
        record.offset,
        record.timestamp_ms,
        entry.status.value,
        updated_at_ms=entry.updated_at_ms,
        attempt=entry.attempt_count,
        draft_id=entry.draft_id,
        error_code=entry.error_code,
        review_required=entry.review_required,
    )


@dataclass(frozen=True)
class TraceBundle:
    """Everything Kafka holds about one idempotency key."""

    key: str
    generated_at_ms: int
    ledger: LedgerEntry | None
    intents: tuple[IntentView, ...] = ()
    results: tuple[ResultView, ...] = ()
    #: Every version of the ledger entry still in the changelog, oldest first
    #: (compaction keeps only the latest one of a key in the long run).
    states: tuple[StateView, ...] = ()
    #: Sources that could not be read (a missing topic), said rather than hidden.
    notes: tuple[str, ...] = ()

    @property
    def found(self) -> bool:
        """Whether Kafka knows the key at all (a ledger entry or an intent record)."""
        return self.ledger is not None or bool(self.intents)


# --------------------------------------------------------------------------------------
# Privacy helpers (pure)
# --------------------------------------------------------------------------------------


def protect_address(address: str) -> str:
    """``u***@example.com#1a2b3c4d5e6f``: masked, plus a hash of the normalised address."""
    try:
        normalized = normalize_address(address)
    except InvalidIntentError:
        normalized = address.strip().lower()
    digest = hashlib.sha256(normalized.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{mask_address(address)}#{digest}"


def scrub(text: str | None) -> str | None:
    """``text`` with every email address in it masked (provider errors may quote them)."""
    if text is None:
        return None
    return _EMAIL_RE.sub(lambda m: mask_address(m.group(0)), text)


# --------------------------------------------------------------------------------------
# Gathering (Kafka I/O)
# --------------------------------------------------------------------------------------


def _key_partition(reader: TopicReader, topic: str, key: bytes) -> int:
    """The partition Kafka's default partitioner puts ``key`` on in ``topic``."""
    return partition_for_key(key, len(reader.partitions(topic)))


def _lineage(record: StoredRecord) -> tuple[tuple[str, str], ...]:
    shown: list[tuple[str, str]] = []
    for name, value in record.headers:
        if (name in LINEAGE_HEADERS or name.startswith("sendonce-")) and value is not None:
            shown.append((name, value.decode("utf-8", "replace")))
    return tuple(shown)


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def intent_view(record: StoredRecord, lane: str, codec: SchemaCodec) -> IntentView:
    """An intent record as the bundle shows it: coordinates, identity, masked recipients."""
    base = IntentView(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        timestamp_ms=record.timestamp_ms,
        lane=lane,
        headers=_lineage(record),
    )
    if record.value is None:
        return _replace_intent(base, problem="no value (tombstone)")
    try:
        intent = codec.decode(record.value, expect="EmailIntent")
    except CodecError as exc:
        return _replace_intent(base, problem=f"undecodable: {type(exc).__name__}")
    recipients: list[str] = []
    for name in ("to", "cc", "bcc"):
        for address in intent.get(name) or ():
            if isinstance(address, str):
                recipients.append(protect_address(address))
    return _replace_intent(
        base,
        tenant_id=_str_or_none(intent.get("tenant_id")),
        source_event_id=_str_or_none(intent.get("source_event_id")),
        action_type=_str_or_none(intent.get("action_type")),
        sender=_str_or_none(intent.get("sender")),
        recipients=tuple(recipients),
        created_at_ms=_int_or_none(intent.get("created_at")),
    )


def _replace_intent(view: IntentView, **changes: Any) -> IntentView:
    data = {**view.__dict__, **changes}
    return IntentView(**data)


def result_view(record: StoredRecord, codec: SchemaCodec) -> ResultView:
    """A result record as the bundle shows it."""
    try:
        value = codec.decode(record.value or b"", expect="EmailResult")
    except CodecError as exc:
        return ResultView(
            record.topic,
            record.partition,
            record.offset,
            record.timestamp_ms,
            outcome="?",
            result_id="",
            intent=None,
            problem=f"undecodable: {type(exc).__name__}",
        )
    intent_topic = _str_or_none(value.get("intent_topic"))
    intent_partition = _int_or_none(value.get("intent_partition"))
    intent_offset = _int_or_none(value.get("intent_offset"))
    intent = (
        IntentRef(intent_topic, intent_partition, intent_offset)
        if intent_topic is not None and intent_partition is not None and intent_offset is not None
        else None
    )
    original_partition = _int_or_none(value.get("original_intent_partition"))
    original_offset = _int_or_none(value.get("original_intent_offset"))
    original = (
        IntentRef(intent_topic or "", original_partition, original_offset)
        if original_partition is not None and original_offset is not None
        else None
    )
    return ResultView(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        timestamp_ms=record.timestamp_ms,
        outcome=str(value.get("outcome", "?")),
        result_id=str(value.get("result_id", "")),
        intent=intent,
        reconciled=bool(value.get("reconciled")),
        provider=_str_or_none(value.get("provider")),
        provider_request_id=_str_or_none(value.get("provider_request_id")),
        provider_message_id=_str_or_none(value.get("provider_message_id")),
        internet_message_id=_str_or_none(value.get("internet_message_id")),
        attempt_id=_str_or_none(value.get("attempt_id")),
        attempt_count=_int_or_none(value.get("attempt_count")) or 0,
        original_result_id=_str_or_none(value.get("original_result_id")),
        original_intent=original,
        accepted_at_ms=_int_or_none(value.get("accepted_at")),
        decided_at_ms=_int_or_none(value.get("decided_at")),
        error_code=_str_or_none(value.get("error_code")),
        error_message=scrub(_str_or_none(value.get("error_message"))),
        worker=_str_or_none(value.get("worker")),
    )


def gather(
    reader: TopicReader,
    settings: Settings,
    key: str,
    *,
    codec: SchemaCodec | None = None,
    now_ms: int | None = None,
) -> TraceBundle:
    """Read the ledger entry, intent records and results of ``key`` from Kafka.

    The intents topic must be readable (:class:`HistoryError` otherwise: a wrong
    bootstrap or prefix must not look like an unknown key); a missing changelog,
    deferred or result topic is reported in the bundle's notes.
    """
    codec = codec or default_codec()
    raw_key = key.encode()
    topics = settings.topics
    notes: list[str] = []

    intents_topic = topics.intents
    partition = _key_partition(reader, intents_topic, raw_key)
    intents = [
        intent_view(r, "intents", codec) for r in reader.scan(intents_topic, partition, key=raw_key)
    ]
    try:
        deferred_topic = topics.intents_deferred
        partition = _key_partition(reader, deferred_topic, raw_key)
        intents.extend(
            intent_view(r, "deferred", codec)
            for r in reader.scan(deferred_topic, partition, key=raw_key)
        )
    except HistoryError as exc:
        notes.append(f"deferred lane not read: {exc}")

    entry: LedgerEntry | None = None
    states: list[StateView] = []
    try:
        changelog = settings.ledger_changelog_topic
        entry = ledger_entry(reader, settings, key)
        partition = _key_partition(reader, changelog, raw_key)
        states = [state_view(r) for r in reader.scan(changelog, partition, key=raw_key)]
    except HistoryError as exc:
        notes.append(f"ledger not read: {exc}")

    results: list[ResultView] = []
    for topic in topics.results():
        try:
            partition = _key_partition(reader, topic, raw_key)
            results.extend(
                result_view(r, codec) for r in reader.scan(topic, partition, key=raw_key)
            )
        except HistoryError as exc:
            notes.append(f"results not read: {exc}")
    results.sort(key=lambda r: (r.timestamp_ms or 0, r.decided_at_ms or 0, r.topic, r.offset))
    return TraceBundle(
        key=key,
        generated_at_ms=int(time.time() * 1000) if now_ms is None else now_ms,
        ledger=entry,
        intents=tuple(intents),
        results=tuple(results),
        states=tuple(states),
        notes=tuple(notes),
    )


def find_keys(
    reader: TopicReader,
    settings: Settings,
    tenant_id: str,
    source_event_id: str,
    *,
    codec: SchemaCodec | None = None,
) -> list[str]:
    """The idempotency keys of the intent records for ``(tenant_id, source_event_id)``.

    Scans every partition of the intents topic. Records whose Kafka key is not
    namespaced by the tenant are skipped before decoding (the processor never
    accepts them: every key is tenant-prefixed). The key is the intent's own
    (:func:`identify_intent`); for an intent that does not validate, the record
    key when it is a valid key of the tenant. In first-seen order, no repeats.
    """
    codec = codec or default_codec()
    topic = settings.topics.intents
    prefix = f"{tenant_id}:".encode()
    found: dict[str, None] = {}
    for partition in reader.partitions(topic):
        for record in reader.scan(topic, partition):
            if record.value is None or not (record.key or b"").startswith(prefix):
                continue
            try:
                intent = codec.decode(record.value, expect="EmailIntent")
            except CodecError:
                continue
            if intent.get("tenant_id") != tenant_id:
                continue
            if intent.get("source_event_id") != source_event_id:
                continue
            key = _key_of(intent, record, settings)
            if key is not None:
                found.setdefault(key, None)
    return list(found)


def _key_of(intent: Mapping[str, Any], record: StoredRecord, settings: Settings) -> str | None:
    try:
        return identify_intent(intent, max_body_bytes=settings.max_body_bytes).key.value
    except InvalidIntentError:
        pass
    try:
        parsed = IdempotencyKey.parse((record.key or b"").decode())
    except (InvalidIntentError, UnicodeDecodeError):
        return None
    return parsed.value if parsed.tenant_id == intent.get("tenant_id") else None


# --------------------------------------------------------------------------------------
# The JSON document (pure)
# --------------------------------------------------------------------------------------


def iso(ms: int | None) -> str | None:
    """Milliseconds since the epoch as UTC ISO 8601 (``2024-05-01T12:00:00.123Z``)."""
    if ms is None:
        return None
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _ref_json(ref: IntentRef | None) -> dict[str, Any] | None:
    if ref is None:
        return None
    return {"topic": ref.topic, "partition": ref.partition, "offset": ref.offset}


def attempt_json(attempt: AttemptRecord, provider: str | None) -> dict[str, Any]:
    """One provider call of the ledger entry as the JSON form shows it (errors scrubbed)."""
    evidence = dict(attempt.evidence)
    detail = evidence.pop("detail", None) if attempt.kind == "lookup" else None
    return {
        "kind": attempt.kind,
        "reconciliation": attempt.kind == "lookup",
        "number": attempt.number,
        "attempt_id": attempt.attempt_id,
        "worker": attempt.worker,
        "provider": provider,
        "started_at": iso(attempt.started_at_ms),
        "finished_at": iso(attempt.finished_at_ms),
        "status": attempt.status,
        "request_id": evidence.get("request-id") or attempt.provider_request_id,
        "client_request_id": evidence.get("client-request-id"),
        "date": evidence.get("Date"),
        "x_ms_ags_diagnostic": evidence.get("x-ms-ags-diagnostic"),
        "error_code": attempt.error_code,
        "detail": scrub(detail),
        "evidence": evidence,
    }


def audit_json(record: AuditRecord) -> dict[str, Any]:
    """One operator command of the audit trail as the JSON form shows it (scrubbed)."""
    return {
        "command_id": record.command_id,
        "action": record.action,
        "operator": record.operator,
        "reason": scrub(record.reason),
        "issued_at": iso(record.issued_at_ms),
        "applied_at": iso(record.applied_at_ms),
        "outcome": record.outcome,
        "detail": scrub(record.detail),
        "worker": record.worker,
    }


def _ledger_json(entry: LedgerEntry) -> dict[str, Any]:
    return {
        "status": entry.status.value,
        "provider": entry.provider,
        "provider_request_id": entry.provider_request_id,
        "provider_message_id": entry.provider_message_id,
        "internet_message_id": entry.internet_message_id,
        "accepted_at": iso(entry.accepted_at_ms),
        "error_code": entry.error_code,
        "error_message": scrub(entry.error_message),
        "reconciled": entry.reconciled,
        "review_required": entry.review_required,
        "attempt_count": entry.attempt_count,
        "attempt_id": entry.attempt_id,
        "lookups": entry.lookups,
        "draft_id": entry.draft_id,
        "tenant_id": entry.tenant_id,
        "source_event_id": entry.source_event_id,
        "action_type": entry.action_type,
        "sender": entry.sender,
        "origin": _ref_json(entry.origin),
        "worker": entry.worker,
        "created_at": iso(entry.created_at_ms),
        "updated_at": iso(entry.updated_at_ms),
        "next_lookup_at": iso(entry.next_lookup_at_ms),
        "lookup_deadline": iso(entry.lookup_deadline_ms),
    }


def state_json(view: StateView) -> dict[str, Any]:
    """One version of the ledger entry as the JSON form shows it."""
    return {
        "offset": view.offset,
        "timestamp": iso(view.timestamp_ms),
        "status": view.status,
        "updated_at": iso(view.updated_at_ms),
        "attempt": view.attempt,
        "draft_id": view.draft_id,
        "error_code": view.error_code,
        "review_required": view.review_required,
    }


def _intent_json(view: IntentView) -> dict[str, Any]:
    return {
        "lane": view.lane,
        "topic": view.topic,
        "partition": view.partition,
        "offset": view.offset,
        "timestamp": iso(view.timestamp_ms),
        "tenant_id": view.tenant_id,
        "source_event_id": view.source_event_id,
        "action_type": view.action_type,
        "sender": view.sender,
        "recipients": list(view.recipients),
        "created_at": iso(view.created_at_ms),
        "headers": dict(view.headers),
        "problem": view.problem,
    }


def _result_json(view: ResultView) -> dict[str, Any]:
    return {
        "outcome": view.outcome,
        "result_id": view.result_id,
        "topic": view.topic,
        "partition": view.partition,
        "offset": view.offset,
        "timestamp": iso(view.timestamp_ms),
        "intent": _ref_json(view.intent),
        "reconciled": view.reconciled,
        "provider": view.provider,
        "provider_request_id": view.provider_request_id,
        "provider_message_id": view.provider_message_id,
        "internet_message_id": view.internet_message_id,
        "attempt_id": view.attempt_id,
        "attempt_count": view.attempt_count,
        "original_result_id": view.original_result_id,
        "original_intent": _ref_json(view.original_intent),
        "accepted_at": iso(view.accepted_at_ms),
        "decided_at": iso(view.decided_at_ms),
        "error_code": view.error_code,
        "error_message": view.error_message,
        "worker": view.worker,
        "problem": view.problem,
    }


def to_json(bundle: TraceBundle) -> dict[str, Any]:
    """The bundle as one JSON-ready document (the ``--json`` form)."""
    entry = bundle.ledger
    provider = entry.provider if entry is not None else None
    return {
        "key": bundle.key,
        "found": bundle.found,
        "generated_at": iso(bundle.generated_at_ms),
        "ledger": _ledger_json(entry) if entry is not None else None,
        "attempts": [attempt_json(a, provider) for a in (entry.attempts if entry else ())],
        "audit": [audit_json(a) for a in (entry.audit if entry else ())],
        "states": [state_json(s) for s in bundle.states],
        "intents": [_intent_json(v) for v in bundle.intents],
        "results": [_result_json(v) for v in bundle.results],
        "notes": list(bundle.notes),
    }
