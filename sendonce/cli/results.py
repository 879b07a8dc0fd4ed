"""``sendonce results``: print the result topics (and the dead letters) as JSON lines.

One line per record: its topic, partition and offset beside the record's fields;
bytes fields become ``{"base64": ...}`` so every line is JSON.
"""

from __future__ import annotations

import argparse
import base64
import json
from typing import Any

from sendonce.cli.cluster import cluster_from_options
from sendonce.options import Subparsers, add_bootstrap_option

__all__ = ["add_cli"]


def add_cli(subparsers: Subparsers) -> None:
    """Register ``results`` on ``subparsers``; its ``func(args)`` returns the exit code."""
    p = subparsers.add_parser("results", help="print result topics as JSON lines")
    add_bootstrap_option(p)
    p.add_argument("--dlq", action="store_true", help="include the dead-letter topic")
    p.add_argument("--follow", action="store_true", help="keep following new results")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds (idle, with --follow)")
    p.set_defaults(func=_cmd_results)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode()}
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _cmd_results(args: argparse.Namespace) -> int:
    from sendonce.ops.results import read_topics
    from sendonce.schemas.registry import codec_for_settings

    cluster = cluster_from_options(args)
    settings = cluster.settings
    topics = list(settings.topics.results())
    if args.dlq:
        topics.append(settings.topics.dlq)
    cluster.require(*topics)
    for rec in read_topics(
        settings.bootstrap_servers,
        topics,
        until_end=not args.follow,
        timeout=args.timeout,
        codec=codec_for_settings(settings),
    ):
        line = {"topic": rec.topic, "partition": rec.partition, "offset": rec.offset}
        line.update(_jsonable(rec.value))
        print(json.dumps(line, sort_keys=True), flush=True)
    return 0
