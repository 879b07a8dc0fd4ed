"""Review: list open AMBIGUOUS sends and resolve them as an operator.

An ambiguous send is never resent automatically. Reconciliation looks each one up
at the provider; what it cannot settle waits here. ``review resolve`` does not
touch the ledger itself: it publishes an :class:`~streams.ledger.OperatorCommand`
to the commands topic, keyed by the idempotency key, and the worker that owns the
key applies it through the ledger state machine (an applied resend is one new,
recorded attempt). The command, applied or refused, is recorded in the entry's
audit history with who and why; :func:`resolve` waits until it is.

This module is the library; the ``sendonce review list|resolve`` command line, with
its text list and exit codes, is :mod:`sendonce.cli.review`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Producer

from sendonce.kafka.clients import producer_config
from sendonce.ops.history import HistoryError, TopicReader, ledger_entries, ledger_entry
from sendonce.schemas.codec import SchemaCodec
from sendonce.settings import Settings
from sendonce.streams.ledger import (
    RESOLUTIONS,
    AuditRecord,
    LedgerEntry,
    LedgerStatus,
    retry_waiting,
)
from sendonce.streams.processor import encode_command, partition_for_key

__all__ = [
    "ResolveOutcome",
    "entry_summary",
    "open_ambiguous",
    "refusal_for",
    "resolve",
    "utc_time",
]


def utc_time(ms: int | None) -> str:
    """Milliseconds since the epoch as ``2024-05-01T12:00:00Z`` (UTC, seconds); ``-`` if none."""
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def open_ambiguous(
    reader: TopicReader, settings: Settings, tenants: Sequence[str] = ()
) -> list[LedgerEntry]:
    """Every AMBIGUOUS ledger entry (oldest first), optionally of some tenants only."""
    entries = ledger_entries(reader, settings, status=LedgerStatus.AMBIGUOUS)
    found = [e for e in entries.values() if not tenants or e.tenant_id in tenants]
    return sorted(found, key=lambda e: (e.updated_at_ms, e.key))


def entry_summary(entry: LedgerEntry) -> dict[str, Any]:
    """The evidence of one open entry, as the JSON form of ``review list`` shows it."""
    sends = [a for a in entry.attempts if a.kind == "send"]
    last = sends[-1] if sends else None
    return {
        "key": entry.key,
        "tenant_id": entry.tenant_id,
        "action_type": entry.action_type,
        "origin": {
            "topic": entry.origin.topic,
            "partition": entry.origin.partition,
            "offset": entry.origin.offset,
        },
        "ambiguous_since": utc_time(entry.updated_at_ms),
        "attempts": entry.attempt_count,
        "lookups": entry.lookups,
        "review_required": entry.review_required,
        "next_lookup_at": utc_time(entry.next_lookup_at_ms) if entry.next_lookup_at_ms else None,
        "error_code": entry.error_code,
        "provider": entry.provider,
        # Drafts: the message's id to quote to the mailbox's owner or support.
        "draft_id": entry.draft_id,
        "last_attempt": None
        if last is None
        else {
            "attempt_id": last.attempt_id,
            "started_at": utc_time(last.started_at_ms),
            "worker": last.worker,
            "status": last.status,
            "request-id": last.provider_request_id or last.evidence.get("request-id"),
            "client-request-id": last.evidence.get("client-request-id"),
            "date": last.evidence.get("Date"),
        },
        "audit": [dict(record.__dict__) for record in entry.audit],
    }


@dataclass(frozen=True)
class ResolveOutcome:
    """What became of one ``review resolve``."""

    command_id: str
    published: bool
    audit: AuditRecord | None = None
    refused_before_publishing: str | None = None


def refusal_for(entry: LedgerEntry | None, key: str) -> str | None:
    """Why ``key`` cannot be resolved now, or ``None`` when it can."""
    if entry is None:
        return f"{key}: the ledger has no entry for this key; nothing to resolve"
    if retry_waiting(entry):
        return (
            f"{key} is PENDING, waiting for a retry: its last attempt provably never "
            "reached the provider; the worker that owns the key sends the next attempt "
            "once it is due"
        )
    if entry.status is LedgerStatus.DRAFTED:
        return (
            f"{key} is DRAFTED: its message exists as a draft and its send is in progress, "
            "or a crash interrupted it and the worker that owns the key reads the draft's "
            "state once the reconcile grace period has passed; resolve it if it then turns "
            "AMBIGUOUS"
        )
    if entry.status is LedgerStatus.PENDING:
        return (
            f"{key} is PENDING: an attempt is in progress, or a crash interrupted it and "
            "the worker that owns the key looks it up at the provider once the reconcile "
            "grace period has passed; resolve it if it then turns AMBIGUOUS"
        )
    if entry.status is not LedgerStatus.AMBIGUOUS:
        return (
            f"{key} is {entry.status.value}, not AMBIGUOUS: only ambiguous sends can be "
            "resolved (see `sendonce trace` for its evidence)"
        )
    return None


def resolve(
    settings: Settings,
    key: str,
    action: str,
    reason: str,
    operator: str,
    *,
    wait_s: float = 60.0,
    codec: SchemaCodec | None = None,
) -> ResolveOutcome:
    """Publish an operator command for ``key`` and wait until the worker recorded it.

    Refuses (publishing nothing) when the ledger's current entry is not AMBIGUOUS.
    The worker checks again when it applies the command, under the key's lock, and
    records a refusal in the audit history if the entry moved on meanwhile.
    """
    if action not in RESOLUTIONS:
        raise ValueError(f"--as must be one of {', '.join(RESOLUTIONS)}")
    if not reason.strip():
        raise ValueError("--reason must say why (it is kept in the audit history)")
    if codec is None:
        from sendonce.schemas.registry import codec_for_settings

        # The registry's wire format when one is configured, as every producer here.
        codec = codec_for_settings(settings)
    command_id = str(uuid.uuid4())
    topic = settings.ledger_changelog_topic
    partition = partition_for_key(key.encode(), settings.partitions)
    with TopicReader(settings.bootstrap_servers) as reader:
        refusal = refusal_for(ledger_entry(reader, settings, key), key)
        if refusal is not None:
            return ResolveOutcome(command_id, False, refused_before_publishing=refusal)
        _, position = reader.watermarks(topic, partition)
        value = encode_command(
            codec,
            command_id=command_id,
            key=key,
            action=action,
            operator=operator,
            reason=reason,
            issued_at_ms=int(time.time() * 1000),
        )
        _publish(settings, key, partition, value)
        if wait_s <= 0:
            return ResolveOutcome(command_id, True)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            for record in reader.scan(topic, partition, position, key=key.encode()):
                position = record.offset + 1
                if record.value is None:
                    continue
                for audit in LedgerEntry.from_bytes(record.value).audit:
                    if audit.command_id == command_id:
                        return ResolveOutcome(command_id, True, audit)
            # The worker applies the command within a batch window; poll gently.
            time.sleep(0.2)
    return ResolveOutcome(command_id, True)


def _publish(settings: Settings, key: str, partition: int, value: bytes) -> None:
    # The command names its partition (the key's ledger partition): no partitioner picks.
    producer = Producer(producer_config(settings.bootstrap_servers, logger="sendonce.kafka.review"))
    errors: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    producer.produce(
        settings.topics.commands,
        key=key.encode(),
        value=value,
        partition=partition,
        on_delivery=delivered,
    )
    left = producer.flush(30)
    if left or errors:
        raise HistoryError(
            f"could not publish the command to {settings.topics.commands}: "
            + (errors[0] if errors else "not acknowledged within 30 s")
        )
