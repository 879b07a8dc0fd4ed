"""``sendonce dev``: the developer tools, each registering itself under ``dev``."""

from __future__ import annotations

from sendonce.cli import bench, dev_kafka
from sendonce.dev import chaos, graph_emulator
from sendonce.options import Subparsers

__all__ = ["add_cli"]


def add_cli(subparsers: Subparsers) -> None:
    """Register ``dev`` and its tools on ``subparsers``."""
    dev = subparsers.add_parser("dev", help="developer tools").add_subparsers(
        dest="dev_command", required=True
    )
    # In the order of `sendonce dev --help`.
    for add in (dev_kafka.add_cli, graph_emulator.add_cli, chaos.add_cli, bench.add_cli):
        add(dev)
