"""``sendonce review``: list open AMBIGUOUS sends and resolve them as an operator.

An ambiguous send is never resent automatically. Reconciliation looks each one up
at the provider; what it cannot settle waits here. ``review resolve`` does not
touch the ledger itself: it publishes an :class:`~streams.ledger.OperatorCommand`
to the commands topic, keyed by the idempotency key, and the worker that owns the
key applies it through the ledger state machine (an applied resend is one new,
recorded attempt). The command, applied or refused, is recorded in the entry's
audit history with who and why; this command waits until it is.
"""

from __future__ import annotations

import argparse
import getpass
import json
import socket
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaException, Producer

from sendonce.kafka.clients import producer_config
from sendonce.ops.history import HistoryError, TopicReader, ledger_entries, ledger_entry
from sendonce.options import Subparsers, add_bootstrap_option, settings_from_options
from sendonce.schemas.codec import SchemaCodec
from sendonce.settings import Settings
from sendonce.streams.ledger import RESOLUTIONS, AuditRecord, LedgerEntry, LedgerStatus
from sendonce.streams.processor import encode_command, partition_for_key


def _when(ms: int | None) -> str:
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
        "ambiguous_since": _when(entry.updated_at_ms),
        "attempts": entry.attempt_count,
        "lookups": entry.lookups,
        "review_required": entry.review_required,
        "next_lookup_at": _when(entry.next_lookup_at_ms) if entry.next_lookup_at_ms else None,
        "error_code": entry.error_code,
        "provider": entry.provider,
        "last_attempt": None
        if last is None
        else {
            "attempt_id": last.attempt_id,
            "started_at": _when(last.started_at_ms),
            "worker": last.worker,
            "status": last.status,
            "request-id": last.provider_request_id or last.evidence.get("request-id"),
            "client-request-id": last.evidence.get("client-request-id"),
            "date": last.evidence.get("Date"),
        },
        "audit": [dict(record.__dict__) for record in entry.audit],
    }


def render_list(entries: Sequence[LedgerEntry]) -> str:
    """The text form of ``review list``."""
    if not entries:
        return "no open ambiguous sends\n"
    lines = [
        f"{len(entries)} open ambiguous send(s); resolve with "
        "`sendonce review resolve KEY --as sent|resend|cancel --reason ...`",
        "",
    ]
    header = (
        f"{'key':44} {'since (UTC)':20} {'att':>3} {'look':>4} {'state':27} "
        f"{'error':20} client-request-id / request-id"
    )
    lines += [header, "-" * len(header)]
    for entry in entries:
        summary = entry_summary(entry)
        last = summary["last_attempt"] or {}
        state = "REVIEW" if entry.review_required else f"lookup {_when(entry.next_lookup_at_ms)}"
        if not entry.review_required and entry.next_lookup_at_ms is None:
            state = "waiting"
        ids = f"{last.get('client-request-id') or '-'} / {last.get('request-id') or '-'}"
        lines.append(
            f"{entry.key:44} {summary['ambiguous_since']:20} {entry.attempt_count:>3} "
            f"{entry.lookups:>4} {state:27} {(entry.error_code or '-')[:20]:20} {ids}"
        )
    return "\n".join(lines) + "\n"


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
    producer = Producer(producer_config(settings.bootstrap_servers))
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


def default_operator() -> str:
    """``user@host`` of whoever runs the command."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _cmd_list(args: argparse.Namespace) -> int:
    settings = settings_from_options(args)
    try:
        with TopicReader(settings.bootstrap_servers) as reader:
            entries = open_ambiguous(reader, settings, args.tenant or ())
    except HistoryError as exc:
        print(f"sendonce review: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([entry_summary(e) for e in entries], indent=2, sort_keys=True))
    else:
        sys.stdout.write(render_list(entries))
    return 0


def _cmd_resolve(args: argparse.Namespace) -> int:
    settings = settings_from_options(args)
    try:
        outcome = resolve(
            settings,
            args.key,
            args.action,
            args.reason,
            args.operator or default_operator(),
            wait_s=0.0 if args.no_wait else args.wait,
        )
    except ValueError as exc:
        print(f"sendonce review: {exc}", file=sys.stderr)
        return 2
    except (HistoryError, KafkaException) as exc:
        print(f"sendonce review: {exc}", file=sys.stderr)
        return 2
    if outcome.refused_before_publishing:
        print(f"sendonce review: refused: {outcome.refused_before_publishing}", file=sys.stderr)
        return 1
    if outcome.audit is None:
        if args.no_wait:
            print(f"command {outcome.command_id} published")
            return 0
        print(
            f"sendonce review: command {outcome.command_id} published, but no worker "
            f"recorded it within {args.wait:.0f}s (is a worker running?)",
            file=sys.stderr,
        )
        return 1
    audit = outcome.audit
    if audit.outcome != "applied":
        print(f"sendonce review: refused by worker {audit.worker}: {audit.detail}", file=sys.stderr)
        return 1
    print(f"{args.key}: {audit.detail} (command {audit.command_id}, by {audit.operator})")
    return 0


def add_cli(sub: Subparsers) -> None:
    """Register ``sendonce review list|resolve``."""
    review = sub.add_parser("review", help="list and resolve ambiguous sends").add_subparsers(
        dest="review_command", required=True
    )
    p = review.add_parser("list", help="open AMBIGUOUS entries with their evidence")
    add_bootstrap_option(p)
    p.add_argument("--tenant", action="append", help="only this tenant (repeatable)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_list)

    p = review.add_parser(
        "resolve",
        help="resolve an AMBIGUOUS entry: sent (it went out), resend (one new attempt), "
        "cancel (give up); applied by the worker through the ledger",
    )
    add_bootstrap_option(p)
    p.add_argument("key", help="the idempotency key (as `review list` shows it)")
    p.add_argument("--as", dest="action", required=True, choices=RESOLUTIONS)
    p.add_argument("--reason", required=True, help="why; kept in the audit history")
    p.add_argument("--operator", help="who (default: user@host)")
    p.add_argument(
        "--wait", type=float, default=60.0, help="seconds to wait for the worker (default 60)"
    )
    p.add_argument("--no-wait", action="store_true", help="publish and return")
    p.set_defaults(func=_cmd_resolve)
