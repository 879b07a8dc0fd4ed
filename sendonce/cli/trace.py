"""``sendonce trace``: the command line of :mod:`sendonce.ops.trace`, and its text form.

Finds the key(s) (given, or by ``--source-event`` and ``--tenant``), gathers each
bundle and prints it: :func:`render_text` (readable, aligned; pure) by default, the
library's JSON document with ``--json``. Exit 1 when a key is unknown, 2 when Kafka
cannot be read or the arguments do not name a key. Only what the library's bundle
holds is shown: recipients masked and hashed, provider errors scrubbed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from sendonce.cli.cluster import cluster_from_options
from sendonce.ops.history import HistoryError, TopicReader
from sendonce.ops.trace import (
    SUPPORT_EVIDENCE,
    IntentView,
    ResultView,
    StateView,
    TraceBundle,
    attempt_json,
    audit_json,
    find_keys,
    gather,
    iso,
    scrub,
    state_json,
    to_json,
)
from sendonce.options import Subparsers, add_bootstrap_option
from sendonce.streams.ledger import AttemptRecord, IntentRef, LedgerEntry

__all__ = ["add_cli", "render_text"]


def add_cli(subparsers: Subparsers) -> None:
    """Register ``trace`` on ``subparsers``; its ``func(args)`` returns the exit code."""
    p = subparsers.add_parser(
        "trace",
        help="print the evidence bundle of an idempotency key (for provider support)",
        description=(
            "Print what Kafka holds about one idempotency key: the ledger entry with every "
            "provider attempt and reconciliation lookup (request-id, client-request-id, "
            "Date), the operator audit trail, every intent record and every result. "
            "Exit 1 when the key is unknown, 2 when Kafka cannot be read."
        ),
    )
    p.add_argument("key", nargs="?", help="the idempotency key (tenant:...)")
    p.add_argument("--source-event", help="find the key(s) by source event id (needs --tenant)")
    p.add_argument("--tenant", help="tenant id, with --source-event")
    p.add_argument("--json", action="store_true", help="one JSON document instead of text")
    add_bootstrap_option(p)
    p.set_defaults(func=_cmd_trace)


def _cmd_trace(args: argparse.Namespace) -> int:
    if (args.key is None) == (args.source_event is None):
        print("sendonce trace: give either KEY or --source-event ID --tenant T", file=sys.stderr)
        return 2
    if args.source_event is not None and not args.tenant:
        print("sendonce trace: --source-event needs --tenant", file=sys.stderr)
        return 2
    # librdkafka logs every failed connect; one clear error line is said below instead.
    logging.getLogger("sendonce.kafka.history").setLevel(logging.CRITICAL)
    cluster = cluster_from_options(args)
    settings = cluster.settings
    cluster.require(settings.topics.intents, settings.ledger_changelog_topic)
    from sendonce.schemas.registry import codec_for_settings

    # Records in the registry's wire format are decoded by their schema ids.
    codec = codec_for_settings(settings)
    try:
        with TopicReader(settings.bootstrap_servers) as reader:
            if args.key is not None:
                keys = [args.key]
            else:
                keys = find_keys(reader, settings, args.tenant, args.source_event, codec=codec)
                if not keys:
                    print(
                        f"sendonce trace: no intent record for tenant {args.tenant} and "
                        f"source event {args.source_event} in {settings.topics.intents}",
                        file=sys.stderr,
                    )
                    return 1
            bundles = [gather(reader, settings, key, codec=codec) for key in keys]
    except HistoryError as exc:
        print(f"sendonce trace: {exc}", file=sys.stderr)
        return 2
    _print(bundles, args)
    missing = [b.key for b in bundles if not b.found]
    for key in missing:
        print(
            f"sendonce trace: no ledger entry and no intent record for key {key}", file=sys.stderr
        )
    return 1 if missing else 0


def _print(bundles: Iterable[TraceBundle], args: argparse.Namespace) -> None:
    found = list(bundles)
    if args.json:
        document: dict[str, Any]
        if args.key is not None:
            document = to_json(found[0])
        else:
            document = {
                "query": {"tenant_id": args.tenant, "source_event_id": args.source_event},
                "keys": [b.key for b in found],
                "traces": [to_json(b) for b in found],
            }
        print(json.dumps(document, indent=2, sort_keys=False))
        return
    # An unknown key's "bundle" says nothing the error message does not.
    print("\n".join(render_text(b) for b in found if b.found), end="")


# --------------------------------------------------------------------------------------
# The text form (pure)
# --------------------------------------------------------------------------------------


def _ref_text(ref: IntentRef | None) -> str:
    return "-" if ref is None else f"{ref.topic}[{ref.partition}]@{ref.offset}"


def _or_dash(value: object) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _table(rows: Sequence[tuple[str, object]], indent: str = "  ") -> list[str]:
    width = max((len(label) for label, _ in rows), default=0)
    return [f"{indent}{label.ljust(width)}  {_or_dash(value)}" for label, value in rows]


def _section(title: str, count: int | None = None) -> list[str]:
    head = title if count is None else f"{title} ({count})"
    return ["", head]


def _attempt_lines(attempt: AttemptRecord, provider: str | None) -> list[str]:
    data = attempt_json(attempt, provider)
    if attempt.kind == "lookup":
        title = (
            f"  lookup for attempt {attempt.number} (reconciliation)  {_or_dash(data['status'])}"
        )
    else:
        step = "draft create" if attempt.kind == "create" else "send"
        title = f"  attempt {attempt.number} ({step})  {_or_dash(data['status'])}"
    rows: list[tuple[str, object]] = [
        ("time", data["started_at"]),
        ("finished", data["finished_at"]),
        ("worker", data["worker"]),
        ("provider", data["provider"]),
        ("attempt id", data["attempt_id"]),
        ("request-id", data["request_id"]),
        ("client-request-id", data["client_request_id"]),
        ("Date", data["date"]),
        ("x-ms-ags-diagnostic", data["x_ms_ags_diagnostic"]),
        ("error code", data["error_code"]),
    ]
    if attempt.kind == "lookup":
        rows.append(("detail", data["detail"]))
    shown = set(SUPPORT_EVIDENCE) | {"detail"}
    rows.extend(
        (name, value) for name, value in sorted(data["evidence"].items()) if name not in shown
    )
    return [title, *_table(rows, indent="      ")]


def _intent_lines(view: IntentView) -> list[str]:
    rows: list[tuple[str, object]]
    head = f"  {_ref_text(view.ref)}  {view.lane}  {_or_dash(iso(view.timestamp_ms))}"
    if view.problem:
        rows = [("problem", view.problem), *view.headers]
        return [head, *_table(rows, indent="      ")]
    rows = [
        ("tenant", view.tenant_id),
        ("source event", view.source_event_id),
        ("action", view.action_type),
        ("sender", view.sender),
        ("recipients", ", ".join(view.recipients)),
        ("created at", iso(view.created_at_ms)),
    ]
    rows.extend(view.headers)
    return [head, *_table(rows, indent="      ")]


def _result_lines(view: ResultView) -> list[str]:
    flag = "  reconciled" if view.reconciled else ""
    head = f"  {view.outcome}{flag}  {_or_dash(iso(view.timestamp_ms))}"
    if view.problem:
        return [head, *_table([("problem", view.problem)], indent="      ")]
    rows: list[tuple[str, object]] = [
        ("result id", view.result_id),
        ("record", f"{view.topic}[{view.partition}]@{view.offset}"),
        ("intent", _ref_text(view.intent)),
        ("reconciled", view.reconciled),
        ("provider request id", view.provider_request_id),
        ("internet message id", view.internet_message_id),
        ("attempt", f"{view.attempt_count} ({_or_dash(view.attempt_id)})"),
        ("decided at", iso(view.decided_at_ms)),
    ]
    if view.original_result_id:
        rows.append(("original result id", view.original_result_id))
        rows.append(("original intent", _ref_text(view.original_intent)))
    if view.error_code or view.error_message:
        rows.append(("error", f"{_or_dash(view.error_code)}: {_or_dash(view.error_message)}"))
    return [head, *_table(rows, indent="      ")]


def _support_lines(entry: LedgerEntry) -> list[str]:
    """One aligned line per provider call: what to hand to the provider's support."""
    rows: list[tuple[str, str, str, str, str]] = []
    for attempt in entry.attempts:
        data = attempt_json(attempt, entry.provider)
        rows.append(
            (
                "lookup" if attempt.kind == "lookup" else f"send #{attempt.number}",
                _or_dash(data["status"]),
                _or_dash(data["request_id"]),
                _or_dash(data["client_request_id"]),
                _or_dash(data["date"]),
            )
        )
    widths = [max((len(row[i]) for row in rows), default=0) for i in range(4)]
    return [
        f"  {what.ljust(widths[0])}  {status.ljust(widths[1])}"
        f"  request-id {request_id.ljust(widths[2])}"
        f"  client-request-id {crid.ljust(widths[3])}  Date {date}"
        for what, status, request_id, crid, date in rows
    ]


def render_text(bundle: TraceBundle) -> str:
    """The bundle as readable, aligned text (the default form)."""
    entry = bundle.ledger
    lines = [
        f"sendonce trace {bundle.key}  (as of {iso(bundle.generated_at_ms)})",
        "For provider support, quote per attempt: request-id, client-request-id and Date.",
    ]
    if not bundle.found:
        lines.append(f"no ledger entry and no intent record for key {bundle.key}")
    if entry is not None:
        lines.extend(_support_lines(entry))
        status = entry.status.value + (" (reconciled)" if entry.reconciled else "")
        lines.extend(_section("LEDGER"))
        lines.extend(
            _table(
                [
                    ("status", status),
                    ("review required", entry.review_required),
                    ("provider", entry.provider),
                    ("provider request id", entry.provider_request_id),
                    ("message id", entry.provider_message_id),
                    ("internet message id", entry.internet_message_id),
                    ("accepted at", iso(entry.accepted_at_ms)),
                    ("error", _error_text(entry.error_code, scrub(entry.error_message))),
                    ("attempts", f"{entry.attempt_count} (current {entry.attempt_id})"),
                    ("lookups", entry.lookups),
                    ("draft id", entry.draft_id),
                    ("tenant", entry.tenant_id),
                    ("source event", entry.source_event_id),
                    ("action", entry.action_type),
                    ("sender", entry.sender),
                    ("origin intent", _ref_text(entry.origin)),
                    ("worker", entry.worker),
                    ("created at", iso(entry.created_at_ms)),
                    ("updated at", iso(entry.updated_at_ms)),
                    ("next lookup at", iso(entry.next_lookup_at_ms)),
                    ("lookup deadline", iso(entry.lookup_deadline_ms)),
                ]
            )
        )
        lines.extend(_section("ATTEMPTS", len(entry.attempts)))
        for attempt in entry.attempts:
            lines.extend(_attempt_lines(attempt, entry.provider))
        lines.extend(_section("STATES (ledger changelog, oldest first)", len(bundle.states)))
        for state in bundle.states:
            lines.append(_state_line(state))
        lines.extend(_section("OPERATOR AUDIT", len(entry.audit)))
        for record in entry.audit:
            audit = audit_json(record)
            lines.append(f"  {record.action}  {record.outcome}  {audit['applied_at']}")
            lines.extend(
                _table(
                    [
                        ("command id", audit["command_id"]),
                        ("operator", audit["operator"]),
                        ("reason", audit["reason"]),
                        ("issued at", audit["issued_at"]),
                        ("detail", audit["detail"]),
                        ("worker", audit["worker"]),
                    ],
                    indent="      ",
                )
            )
    elif bundle.found:
        lines.extend(_section("LEDGER"))
        lines.append("  no ledger entry (not processed yet, or the ledger was reset)")
    lines.extend(_section("INTENT RECORDS", len(bundle.intents)))
    for view in bundle.intents:
        lines.extend(_intent_lines(view))
    lines.extend(_section("RESULTS", len(bundle.results)))
    for result in bundle.results:
        lines.extend(_result_lines(result))
    if bundle.notes:
        lines.extend(_section("NOTES"))
        lines.extend(f"  {note}" for note in bundle.notes)
    return "\n".join(lines) + "\n"


def _state_line(state: StateView) -> str:
    data = state_json(state)
    parts = [f"  {state.status:<9}", _or_dash(data["updated_at"] or data["timestamp"])]
    if state.attempt:
        parts.append(f"attempt {state.attempt}")
    if state.draft_id:
        parts.append(f"draft {state.draft_id}")
    if state.error_code:
        parts.append(state.error_code)
    if state.review_required:
        parts.append("review required")
    parts.append(f"(offset {state.offset})")
    return "  ".join(parts)


def _error_text(code: str | None, message: str | None) -> str | None:
    if not code and not message:
        return None
    return f"{_or_dash(code)}: {_or_dash(message)}" if message else _or_dash(code)
