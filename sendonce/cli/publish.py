"""``sendonce publish``: publish JSON-lines intents from a file or stdin.

Exit 0 when every line was published, 2 when some line was not (each said on stderr,
by its line number in the file) or the file cannot be read, 1 when the broker did not
acknowledge the records.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from sendonce.cli.cluster import CommandError, cluster_from_options
from sendonce.options import Subparsers, add_bootstrap_option

__all__ = ["add_cli", "summary"]


def add_cli(subparsers: Subparsers) -> None:
    """Register ``publish`` on ``subparsers``; its ``func(args)`` returns the exit code."""
    p = subparsers.add_parser("publish", help="publish JSON-lines intents (file or stdin)")
    add_bootstrap_option(p)
    p.add_argument("file", nargs="?", help="JSON lines file; '-' or omitted reads stdin")
    p.add_argument("--topic", help="intents topic (default from settings)")
    p.add_argument("-v", "--verbose", action="store_true", help="print each idempotency key")
    p.set_defaults(func=_cmd_publish)


def _open(name: str | None) -> TextIO:
    """The file to read (stdin for ``-`` or none); :class:`CommandError` if it cannot be."""
    if name is None or name == "-":
        return sys.stdin
    try:
        source = open(name, encoding="utf-8")  # noqa: SIM115 - closed by the caller
        # A directory opens on some systems and fails on the first read: read now.
        source.read(0)
    except OSError as exc:
        raise CommandError(f"cannot read {name}: {exc.strerror or exc}") from exc
    return source


def _parse(line: str) -> dict[str, Any]:
    """One line's intent; ValueError worded for a file of lines, not for one document."""
    try:
        intent = json.loads(line)
    except json.JSONDecodeError as exc:
        # The parser counts lines and columns within the one line it was given:
        # "line 1 column 5" would contradict the file's line number said beside it.
        raise ValueError(f"not JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(intent, dict):
        raise ValueError(f"not a JSON object but a JSON {type(intent).__name__}")
    return intent


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def summary(published: int, invalid: int) -> str:
    """The closing line: how many intents went out, how many lines did not."""
    text = f"published {_plural(published, 'intent')}"
    if invalid:
        verb = "was" if invalid == 1 else "were"
        text += f"; {_plural(invalid, 'line')} {verb} not published"
    return text


def _cmd_publish(args: argparse.Namespace) -> int:
    from sendonce.keys import InvalidIntentError
    from sendonce.ops.publish import IntentPublisher, PublishError
    from sendonce.schemas.registry import codec_for_settings

    cluster = cluster_from_options(args)
    settings = cluster.settings
    topic = args.topic or settings.topics.intents
    # The file before the broker: a typo in its name is the first thing to hear about.
    source = _open(args.file)
    published = invalid = 0
    with source:
        cluster.require(topic)
        try:
            with IntentPublisher(
                settings.bootstrap_servers,
                topic,
                codec_for_settings(settings),
                max_body_bytes=settings.max_body_bytes,
                max_record_bytes=settings.max_record_bytes,
            ) as publisher:
                for lineno, line in enumerate(source, 1):
                    if not line.strip():
                        continue
                    try:
                        key = publisher.publish(_parse(line))
                    except (ValueError, InvalidIntentError) as exc:
                        invalid += 1
                        print(f"line {lineno}: not published: {exc}", file=sys.stderr)
                        continue
                    published += 1
                    if args.verbose:
                        print(key.value)
        except UnicodeDecodeError as exc:
            raise CommandError(f"cannot read {args.file or 'stdin'}: not UTF-8 text") from exc
        except PublishError as exc:
            raise CommandError(f"publishing to {topic} failed: {exc}", exit_code=1) from exc
    print(summary(published, invalid), file=sys.stderr)
    return 2 if invalid else 0
