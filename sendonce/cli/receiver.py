"""``sendonce receiver``: run the inbound webhook receiver in the foreground."""

from __future__ import annotations

import argparse
import logging

from sendonce.cli.cluster import cluster_from_options
from sendonce.options import Subparsers, add_bootstrap_option

__all__ = ["add_cli"]


def add_cli(subparsers: Subparsers) -> None:
    """Register ``receiver`` on ``subparsers``; its ``func(args)`` returns the exit code."""
    p = subparsers.add_parser(
        "receiver",
        help="run the inbound webhook receiver (Graph notifications, signed webhooks)",
        description=(
            "Serve POST /graph/notifications, /graph/lifecycle and /webhooks/{source}; "
            "write each verified event to the raw webhooks topic (acks=all) and answer "
            "202 only once Kafka acknowledged it, 503 when it cannot. Runs until "
            "SIGTERM/SIGINT. Secrets come from SENDONCE_RECEIVER_* variables."
        ),
    )
    add_bootstrap_option(p)
    p.add_argument("--host", help="listen address (SENDONCE_RECEIVER_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (SENDONCE_RECEIVER_PORT, default 8080)")
    p.set_defaults(func=_cmd_receiver)


def _cmd_receiver(args: argparse.Namespace) -> int:
    from sendonce.connectors.webhooks.receiver import run_receiver

    # --port 0 is given (a free port); an empty --host is not.
    settings = cluster_from_options(
        args, receiver_host=args.host or None, receiver_port=args.port
    ).settings
    # main() configures logging at WARNING; the receiver's own records (its listen
    # address, rejections, 503s) follow SENDONCE_LOG_LEVEL.
    logging.getLogger("sendonce").setLevel(settings.log_level.upper())
    from sendonce.schemas.registry import codec_for_settings

    return run_receiver(settings, codec_for_settings(settings))
