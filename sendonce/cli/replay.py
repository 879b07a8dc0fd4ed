"""``sendonce replay``: the command line of :mod:`sendonce.ops.replay`.

Parses ``--from``/``--to`` and the other options, runs :func:`run_replay` with
progress on stderr, and prints its report: the table (or ``--json``) on stdout,
failed deliveries and missing results on stderr. Exit codes: 0 done, 1 a delivery
failed, results are missing or Kafka stopped answering, 2 a bad range, no broker
answering or a missing topic (checked before anything is read). The replay
itself (range, selection, the dry run's prediction, publishing) is the library's.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from typing import TextIO

from sendonce.cli.cluster import cluster_from_options
from sendonce.ops.replay import (
    OUTCOMES,
    RangeError,
    ReplayError,
    ReplayOptions,
    ReplayReport,
    parse_bound,
    run_replay,
)
from sendonce.options import Subparsers, add_bootstrap_option
from sendonce.settings import Settings
from sendonce.streams.ledger import ResultOutcome

__all__ = ["add_cli", "render_table", "replay_main"]


def add_cli(subparsers: Subparsers) -> None:
    """Register ``replay`` on ``subparsers``; its ``func(args)`` returns the exit code."""
    p = subparsers.add_parser(
        "replay",
        help="re-drive historical intents through the ledger (zero emails for handled keys)",
        description=(
            "Re-publish the intent records of a time or offset range of the intents topic "
            "(original key, value and headers, same partition, plus sendonce-replay and "
            "sendonce-replayed-from headers) and wait for their results. Every replayed "
            "intent resolves against the ledger: keys already handled cost no email. "
            "--dry-run publishes nothing and predicts the outcomes from the ledger's "
            "changelog. Bad records (dead-lettered once already) are skipped."
        ),
        epilog=(
            "TIME|OFFSETS: an ISO-8601 time (2026-11-23T10:00:00Z, 2026-11-23; UTC when "
            "no zone), a relative time (-7d, -2h, -30m), earliest, latest, or offsets "
            "P:O[,P:O...] (partitions not named start at the earliest record for --from "
            "and end at the end for --to). Exit codes: 0 done, 1 a delivery failed or "
            "results are missing, 2 a bad range, no broker answering or a missing topic."
        ),
    )
    # ``--from -7d``: argparse takes an argument that starts with "-" for an option
    # unless it looks like a negative number; relative times are made to look like one.
    p._negative_number_matcher = re.compile(r"^-\d+[smhdw]?$|^-\d*\.\d+$")
    add_bootstrap_option(p)
    p.add_argument(
        "--from",
        dest="start",
        required=True,
        metavar="TIME|OFFSETS",
        help="first record to replay",
    )
    p.add_argument(
        "--to",
        dest="end",
        metavar="TIME|OFFSETS",
        help="end of the range, exclusive (default: the end of each partition when the "
        "command starts, so the replay never replays its own records)",
    )
    p.add_argument(
        "--tenant",
        action="append",
        default=[],
        metavar="T",
        help="replay only this tenant's intents (repeatable)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="publish nothing; predict per outcome what the replay would report",
    )
    waiting = p.add_mutually_exclusive_group()
    waiting.add_argument(
        "--wait",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="how long to wait for the results of the replayed records (default 300)",
    )
    waiting.add_argument(
        "--no-wait", action="store_true", help="publish and exit without awaiting results"
    )
    p.add_argument("--json", action="store_true", help="print the counts as one JSON object")
    p.set_defaults(func=_cmd_replay)


def _cmd_replay(args: argparse.Namespace) -> int:
    cluster = cluster_from_options(args)
    settings = cluster.settings
    cluster.require(settings.topics.intents, settings.ledger_changelog_topic)
    return replay_main(
        settings,
        start=args.start,
        end=args.end,
        tenants=args.tenant,
        dry_run=args.dry_run,
        wait_s=None if args.no_wait else args.wait,
        as_json=args.json,
    )


def replay_main(
    settings: Settings,
    *,
    start: str,
    end: str | None = None,
    tenants: Sequence[str] = (),
    dry_run: bool = False,
    wait_s: float | None = 300.0,
    as_json: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """The command: parse, run, print; returns the exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    now_ms = int(time.time() * 1000)
    try:
        if wait_s is not None and wait_s <= 0:
            raise RangeError("--wait must be positive (use --no-wait not to wait)")
        options = ReplayOptions(
            start=parse_bound(start, now_ms),
            end=parse_bound(end, now_ms) if end is not None else None,
            tenants=frozenset(tenants),
            dry_run=dry_run,
            wait_s=wait_s,
        )
        report = run_replay(settings, options, progress=err, now_ms=now_ms)
    except RangeError as exc:
        print(f"sendonce replay: bad range: {exc}", file=err)
        return 2
    except ReplayError as exc:
        print(f"sendonce replay: {exc}", file=err)
        return 1
    if as_json:
        print(json.dumps(report.to_json(), sort_keys=True), file=out)
    else:
        print(render_table(report), file=out)
    if report.delivery_failures:
        print(
            f"sendonce replay: {report.delivery_failures} deliveries failed; "
            f"{report.published} records were published (replay {report.replay_id})",
            file=err,
        )
    if report.results_missing:
        print(
            f"sendonce replay: {report.results_missing} of {report.published} results "
            f"missing after {wait_s:g} s (is a worker running?)",
            file=err,
        )
    return report.exit_code()


def render_table(report: ReplayReport) -> str:
    """The summary table, one line per outcome, then the selection counts."""
    width = 28
    lines: list[str] = []
    if report.dry_run:
        lines.append(
            f"replay dry run of {report.topic}: nothing published; "
            "outcomes predicted from the ledger"
        )
    else:
        lines.append(f"replay {report.replay_id} of {report.topic}")
    lines.append(
        f"  {'range':<{width}}{report.records_in_range:>8}  records on "
        f"{sum(1 for f, s in report.ranges.values() if s > f)} partition(s)"
    )
    if report.outcomes is not None:
        title = "would be" if report.dry_run else "results"
        lines.append(f"  {'outcome':<{width}}{title:>8}")
        for outcome in OUTCOMES:
            label = "SENT (new send)" if outcome is ResultOutcome.SENT else outcome.value
            lines.append(f"  {label:<{width}}{report.outcomes[outcome.value]:>8}")
    lines.append("  " + "-" * (width + 8))
    lines.append(f"  {'selected':<{width}}{report.selected:>8}")
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(report.skipped_by_reason.items()))
    lines.append(
        f"  {'skipped (bad input)':<{width}}{report.skipped_bad_input:>8}"
        + (f"  ({reasons})" if reasons else "")
    )
    lines.append(f"  {'filtered (other tenant)':<{width}}{report.filtered_other_tenant:>8}")
    if not report.dry_run:
        lines.append(f"  {'published':<{width}}{report.published:>8}")
        if report.delivery_failures:
            lines.append(f"  {'delivery failed':<{width}}{report.delivery_failures:>8}")
        if not report.waited:
            lines.append("  results not awaited (--no-wait)")
        elif report.results_missing:
            lines.append(f"  {'results missing':<{width}}{report.results_missing:>8}")
    return "\n".join(lines)
