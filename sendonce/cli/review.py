"""``sendonce review list|resolve``: the command line of :mod:`sendonce.ops.review`.

``review list`` prints the open AMBIGUOUS entries (an aligned table, or ``--json``);
exit 2 when Kafka cannot be read. ``review resolve`` publishes an operator command
and waits until a worker recorded it: exit 0 applied (or published, with
``--no-wait``), 1 refused or not recorded in time, 2 bad arguments or Kafka
unreachable.
"""

from __future__ import annotations

import argparse
import getpass
import json
import socket
import sys
from collections.abc import Sequence

from confluent_kafka import KafkaException

from sendonce.cli.cluster import cluster_from_options
from sendonce.ops.history import HistoryError, TopicReader
from sendonce.ops.review import entry_summary, open_ambiguous, resolve, utc_time
from sendonce.options import Subparsers, add_bootstrap_option
from sendonce.streams.ledger import RESOLUTIONS, LedgerEntry

__all__ = ["add_cli", "render_list"]


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


def _cmd_list(args: argparse.Namespace) -> int:
    cluster = cluster_from_options(args)
    settings = cluster.settings
    cluster.require(settings.ledger_changelog_topic)
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
    cluster = cluster_from_options(args)
    settings = cluster.settings
    cluster.require(settings.topics.commands, settings.ledger_changelog_topic)
    try:
        outcome = resolve(
            settings,
            args.key,
            args.action,
            args.reason,
            args.operator or default_operator(),
            wait_s=0.0 if args.no_wait else args.wait,
        )
    except (ValueError, HistoryError, KafkaException) as exc:
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
        state = "REVIEW" if entry.review_required else f"lookup {utc_time(entry.next_lookup_at_ms)}"
        if not entry.review_required and entry.next_lookup_at_ms is None:
            state = "waiting"
        ids = f"{last.get('client-request-id') or '-'} / {last.get('request-id') or '-'}"
        lines.append(
            f"{entry.key:44} {summary['ambiguous_since']:20} {entry.attempt_count:>3} "
            f"{entry.lookups:>4} {state:27} {(entry.error_code or '-')[:20]:20} {ids}"
        )
    return "\n".join(lines) + "\n"


def default_operator() -> str:
    """``user@host`` of whoever runs the command."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"
