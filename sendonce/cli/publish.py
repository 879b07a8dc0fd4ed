"""``sendonce publish``: publish JSON-lines intents from a file or stdin.

Exit 0 when every line was published, 2 when some line was not (each said on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO

from sendonce.options import Subparsers, add_bootstrap_option, settings_from_options

__all__ = ["add_cli"]


def add_cli(subparsers: Subparsers) -> None:
    """Register ``publish`` on ``subparsers``; its ``func(args)`` returns the exit code."""
    p = subparsers.add_parser("publish", help="publish JSON-lines intents (file or stdin)")
    add_bootstrap_option(p)
    p.add_argument("file", nargs="?", help="JSON lines file; '-' or omitted reads stdin")
    p.add_argument("--topic", help="intents topic (default from settings)")
    p.add_argument("-v", "--verbose", action="store_true", help="print each idempotency key")
    p.set_defaults(func=_cmd_publish)


def _cmd_publish(args: argparse.Namespace) -> int:
    from sendonce.keys import InvalidIntentError
    from sendonce.ops.publish import IntentPublisher
    from sendonce.schemas.registry import codec_for_settings

    settings = settings_from_options(args)
    source: TextIO = (
        sys.stdin if args.file in (None, "-") else open(args.file, encoding="utf-8")  # noqa: SIM115
    )
    published = invalid = 0
    with (
        source,
        IntentPublisher(
            settings.bootstrap_servers,
            args.topic or settings.topics.intents,
            codec_for_settings(settings),
            max_body_bytes=settings.max_body_bytes,
            max_record_bytes=settings.max_record_bytes,
        ) as publisher,
    ):
        for lineno, line in enumerate(source, 1):
            if not line.strip():
                continue
            try:
                intent = json.loads(line)
                if not isinstance(intent, dict):
                    raise ValueError("a line must be a JSON object")
                key = publisher.publish(intent)
            except (ValueError, InvalidIntentError) as exc:
                invalid += 1
                print(f"line {lineno}: not published: {exc}", file=sys.stderr)
                continue
            published += 1
            if args.verbose:
                print(key.value)
    print(f"published {published} intents, {invalid} invalid", file=sys.stderr)
    return 2 if invalid else 0
