"""``sendonce topics create``: create every sendonce topic (idempotent).

Partitions, replication factor and ``min.insync.replicas`` come from the settings (or
the options, which win); an existing topic is left as it is.
"""

from __future__ import annotations

import argparse

from sendonce.cli.cluster import cluster_from_options
from sendonce.options import Subparsers, add_bootstrap_option

__all__ = ["add_cli"]


def add_cli(subparsers: Subparsers) -> None:
    """Register ``topics`` on ``subparsers``; its ``func(args)`` returns the exit code."""
    topics = subparsers.add_parser("topics", help="manage topics").add_subparsers(
        dest="topics_command", required=True
    )
    p = topics.add_parser("create", help="create every sendonce topic (idempotent)")
    add_bootstrap_option(p)
    p.add_argument("--partitions", type=int, help="partitions (SENDONCE_PARTITIONS, default 12)")
    p.add_argument("--replication-factor", type=int, help="replication factor (default 1)")
    p.add_argument(
        "--min-insync-replicas",
        type=int,
        help="min.insync.replicas of every topic (SENDONCE_MIN_INSYNC_REPLICAS, default 1; "
        "2 with replication factor 3)",
    )
    p.set_defaults(func=_cmd_topics_create)


def _cmd_topics_create(args: argparse.Namespace) -> int:
    from sendonce.kafka.topics import create_topics

    cluster = cluster_from_options(
        args,
        # 0 counts as not given, so the variable (or the default) applies.
        partitions=args.partitions or None,
        replication_factor=args.replication_factor or None,
        min_insync_replicas=args.min_insync_replicas or None,
    )
    cluster.require()
    settings = cluster.settings
    reports = create_topics(settings)
    mismatch = False
    for r in reports:
        print(f"{r.status:16} {r.name}" + (f"  ({r.detail})" if r.detail else ""))
        mismatch = mismatch or r.status == "exists-mismatch"
    return 1 if mismatch else 0
