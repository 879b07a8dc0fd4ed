"""``sendonce dev bench``: the benchmarks, when the checkout's ``bench/`` is at hand.

The benchmarks are run from a checkout (an editable install sees ``bench/``
through ``sendonce/bench``); the wheel leaves them out, and then ``dev bench``
is not offered.
"""

from __future__ import annotations

import argparse
from typing import Any

from sendonce.options import Subparsers

__all__ = ["add_cli"]


def _bench_options() -> Any:
    """``sendonce.bench.options`` in a checkout, or None in an installed wheel."""
    try:
        from sendonce.bench import options
    except ImportError:
        return None
    return options


def add_cli(subparsers: Subparsers) -> None:
    """Register ``bench`` (in a checkout); its ``func(args)`` returns the exit code."""
    options = _bench_options()
    if options is None:
        return  # an installed wheel without the checkout: no benchmark to run
    p = subparsers.add_parser(
        "bench",
        help="benchmark: throughput, latency, memory and restore beside the ceiling "
        "and a naive baseline (same as python -m bench)",
        description=options.build_parser().description,
    )
    options.add_arguments(p)
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    from sendonce.bench.intents import run_cli

    return run_cli(args)
