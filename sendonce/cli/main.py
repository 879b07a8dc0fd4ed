"""The ``sendonce`` command line: assembles the commands and runs one.

Each command registers itself with ``add_cli(subparsers)`` in its own module
(options shared by commands: :mod:`sendonce.options`); this module only lists
them and turns a configuration error or Ctrl-C into an exit code.
"""

from __future__ import annotations

import argparse
import logging
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
    try:
        code = int(args.func(args))
    except SettingsError as exc:
        print(f"sendonce: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
