"""``sendonce demo``: the end-to-end demo on a local broker (see :mod:`sendonce.dev.demo`)."""

from __future__ import annotations

import argparse

from sendonce.options import Subparsers

__all__ = ["add_cli"]


def add_cli(subparsers: Subparsers) -> None:
    """Register ``demo`` on ``subparsers``; its ``func(args)`` returns the exit code."""
    p = subparsers.add_parser(
        "demo", help="run the end-to-end demo on a local broker and the outbox"
    )
    p.add_argument("--keep", action="store_true", help="keep the broker running afterwards")
    p.add_argument(
        "--provider",
        # Not every registered provider: the demo starts what it sends to (no "null").
        choices=("outbox", "graph"),
        default="outbox",
        help="outbox (default) or graph (the Graph emulator over HTTPS, real MSAL)",
    )
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from sendonce.dev.demo import run_demo

    return run_demo(keep=args.keep, provider=args.provider)
