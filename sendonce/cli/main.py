"""The ``sendonce`` command line: assembles the commands and runs one.

Each command registers itself with ``add_cli(subparsers)`` in its own module
(options shared by commands: :mod:`sendonce.options`); this module only lists
them and turns a user's mistake into one line and an exit code: a bad setting
(:class:`~sendonce.settings.SettingsError`), a missing broker or topic
(:class:`~sendonce.cli.cluster.CommandError`, :class:`~sendonce.kafka.probe.
ClusterUnavailable`), Ctrl-C. A real bug still shows its traceback.

librdkafka's own log lines (one per refused connect, retried) stay off the terminal
of the one-shot tools unless ``SENDONCE_LOG_LEVEL=debug``: the tools check the
cluster first and say in one line what is wrong. The services (``worker``,
``receiver``) keep every line of their own logging.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from sendonce.cli import (
    demo,
    dev,
    publish,
    receiver,
    replay,
    results,
    review,
    schemas,
    topics,
    trace,
    worker,
)
from sendonce.cli.cluster import CommandError
from sendonce.kafka.clients import HideLibrdkafka
from sendonce.kafka.probe import ClusterUnavailable
from sendonce.options import Subparsers
from sendonce.settings import SettingsError

COMMANDS: tuple[Callable[[Subparsers], None], ...] = (
    # In the order of `sendonce --help`.
    worker.add_cli,
    topics.add_cli,
    publish.add_cli,
    results.add_cli,
    demo.add_cli,
    dev.add_cli,
    receiver.add_cli,
    replay.add_cli,
    trace.add_cli,
    review.add_cli,
    schemas.add_cli,
)
"""Every command's registrar."""

SERVICES = frozenset({"worker", "receiver"})
"""Commands that run until stopped and keep every line of their logging."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``sendonce``."""
    parser = argparse.ArgumentParser(
        prog="sendonce",
        description="Kafka stream processor that makes every intended email happen once.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sendonce`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from sendonce.logs import configure_logging_from_env

    # Text, or JSON lines with SENDONCE_LOG_FORMAT=json (the worker reconfigures its own).
    configure_logging_from_env(logging.WARNING)
    hide = HideLibrdkafka()
    handlers = [] if args.command in SERVICES or _debug() else logging.getLogger().handlers
    for handler in handlers:
        handler.addFilter(hide)
    try:
        code = int(args.func(args))
    except SettingsError as exc:
        print(f"sendonce: configuration error: {exc}", file=sys.stderr)
        return 2
    except CommandError as exc:
        print(f"sendonce: {exc}", file=sys.stderr)
        return exc.exit_code
    except ClusterUnavailable as exc:
        print(f"sendonce: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        # main() also runs inside other programs (tests): leave their handlers as found.
        for handler in handlers:
            handler.removeFilter(hide)
    return code


def _debug() -> bool:
    # Read as the settings read it, without failing here on another bad variable:
    # the command reports that one itself.
    return os.environ.get("SENDONCE_LOG_LEVEL", "").lower() == "debug"


if __name__ == "__main__":
    sys.exit(main())
