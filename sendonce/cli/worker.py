"""``sendonce worker``: run the intents worker (Faust agent + ledger) in the foreground."""

from __future__ import annotations

import argparse

from sendonce.cli.cluster import cluster_from_options
from sendonce.options import Subparsers, add_bootstrap_option
from sendonce.providers import PROVIDERS

__all__ = ["add_cli"]


def add_cli(subparsers: Subparsers) -> None:
    """Register ``worker`` on ``subparsers``; its ``func(args)`` returns the exit code."""
    p = subparsers.add_parser("worker", help="run the intents worker (Faust agent + ledger)")
    add_bootstrap_option(p)
    p.add_argument("--provider", choices=tuple(PROVIDERS), help="provider (SENDONCE_PROVIDER)")
    p.set_defaults(func=_cmd_worker)


def _cmd_worker(args: argparse.Namespace) -> int:
    # Imported here: Faust and RocksDB load only when a worker runs.
    from sendonce.streams.app import run_worker

    return run_worker(cluster_from_options(args, provider=args.provider).settings)
