"""Command-line options of the intents benchmark (``python -m bench``).

Kept apart from the benchmark itself, and free of heavy imports, so that
``sendonce dev bench`` can register the same options without importing Kafka
clients, Faust or matplotlib just to build its parser.
"""

from __future__ import annotations

import argparse
from pathlib import Path

#: The configurations, in the order a round starts with (later rounds rotate it).
CONFIGS = (
    "ceiling",
    "sendonce-null",
    "naive",
    "sendonce-graph-0ms",
    "sendonce-graph-150ms",
    "sendonce-graph-drafts-0ms",
    "sendonce-graph-drafts-150ms",
)
#: The Graph configurations: ``sendonce-graph-[drafts-]<latency>ms``, ``drafts`` for
#: ``SENDONCE_GRAPH_MODE=draft-send`` (create, record, send), otherwise ``sendmail``.
GRAPH_CONFIGS = tuple(c for c in CONFIGS if c.startswith("sendonce-graph-"))
#: Everything ``--only`` accepts: the configurations, ``graph`` for every Graph
#: run, and ``memory`` for the RSS and restore measurement.
ONLY_CHOICES = (*CONFIGS, "graph", "memory")

DEFAULT_INTENTS = 10_000
DEFAULT_ROUNDS = 3
DEFAULT_KEYS = "1000000,10000000"
DEFAULT_OUT = Path("/tmp/bench-out")


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (underscores allowed: 1_000_000)."""
    value = int(text.replace("_", ""))
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def key_counts(text: str) -> list[int]:
    """An argparse type: comma-separated ledger sizes, ascending (``1000000,10000000``)."""
    try:
        counts = [positive_int(part) for part in text.split(",") if part.strip()]
    except (ValueError, argparse.ArgumentTypeError) as exc:
        raise argparse.ArgumentTypeError(f"--keys: {exc}") from exc
    if not counts:
        raise argparse.ArgumentTypeError("--keys needs at least one count")
    # Each size tops up the previous one's changelog, so they must grow.
    return sorted(set(counts))


def only_list(text: str) -> list[str]:
    """An argparse type: comma-separated names from :data:`ONLY_CHOICES`."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in ONLY_CHOICES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"--only: unknown {unknown or text!r}; choose from {', '.join(ONLY_CHOICES)}"
        )
    return names


def add_pipe_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every consume -> produce loop of the benchmark takes (the ceiling and
    the naive baseline): broker, source and target topics, consumer group."""
    for name in ("--bootstrap", "--source", "--target", "--group"):
        parser.add_argument(name, required=True)


def env_assignment(text: str) -> tuple[str, str]:
    """``SENDONCE_NAME=VALUE`` as a pair (an argparse type)."""
    name, sep, value = text.partition("=")
    if not sep or not name.startswith("SENDONCE_"):
        raise argparse.ArgumentTypeError(f"expected SENDONCE_NAME=VALUE, got {text!r}")
    return name, value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the benchmark's options on ``parser``."""
    parser.add_argument(
        "--intents",
        type=positive_int,
        default=DEFAULT_INTENTS,
        help=f"intents per burst (throughput) per configuration and round ({DEFAULT_INTENTS})",
    )
    parser.add_argument(
        "--naive-intents",
        type=positive_int,
        default=None,
        help="intents per burst for the naive baseline (default: intents / 4; it is slow)",
    )
    parser.add_argument(
        "--rounds", type=positive_int, default=DEFAULT_ROUNDS, help=f"rounds ({DEFAULT_ROUNDS})"
    )
    parser.add_argument(
        "--rate",
        type=positive_int,
        default=1000,
        help="intents/s of the paced (latency) phase; capped at half of what the "
        "configuration reached in its burst (1000)",
    )
    parser.add_argument(
        "--paced-seconds",
        type=float,
        default=5.0,
        help="seconds of the paced (latency) phase (5)",
    )
    parser.add_argument(
        "--warmup", type=positive_int, default=200, help="warm-up intents per run (200)"
    )
    parser.add_argument(
        "--keys",
        type=key_counts,
        default=key_counts(DEFAULT_KEYS),
        help=f"ledger sizes for memory and restore, comma separated ({DEFAULT_KEYS})",
    )
    parser.add_argument(
        "--only",
        type=only_list,
        default=None,
        help="run only these, comma separated: " + ", ".join(ONLY_CHOICES) + " (default: all)",
    )
    parser.add_argument(
        "--partitions", type=positive_int, default=12, help="partitions per topic (12)"
    )
    parser.add_argument(
        "--mailboxes",
        type=positive_int,
        default=64,
        help="sender mailboxes of the workload (64; the Graph runs send 4 at a time each)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"where bench.json, bench.png and the logs go ({DEFAULT_OUT})",
    )
    parser.add_argument(
        "--bootstrap",
        default=None,
        help="use this running broker (host:port) instead of starting a local one",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        metavar="CHECKOUT",
        help="also run each selected sendonce configuration on the code of this checkout "
        "(e.g. `git worktree add /tmp/before <rev>`), interleaved in the same rounds, as "
        "CONFIG@baseline: before/after figures from one run",
    )
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        type=env_assignment,
        metavar="SENDONCE_NAME=VALUE",
        help="extra setting for every sendonce worker (repeatable), e.g. "
        "SENDONCE_PRODUCER_LINGER_MS=0 to see what a setting is worth",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample each sendonce worker with py-spy during its burst; collapsed stacks "
        "and a summary go to OUT/profiles",
    )
    parser.add_argument(
        "--keep-logs",
        action="store_true",
        help="keep every process log under OUT/logs (default: only those of failed runs)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m bench``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=(
            "Intents benchmark: throughput, latency, memory and restore of sendonce beside "
            "the Kafka ceiling and a naive baseline, interleaved in rounds on one local broker."
        ),
    )
    add_arguments(parser)
    return parser


BASELINE = "@baseline"


def with_baseline(configs: list[str]) -> list[str]:
    """``configs`` with ``CONFIG@baseline`` after each sendonce configuration."""
    out: list[str] = []
    for config in configs:
        out.append(config)
        if config.startswith("sendonce"):
            out.append(config + BASELINE)
    return out


def selected(only: list[str] | None) -> tuple[list[str], bool]:
    """The configurations ``--only`` selects (in :data:`CONFIGS` order) and whether memory is."""
    if only is None:
        return list(CONFIGS), True
    wanted = set(only)
    if "graph" in wanted:
        wanted |= set(GRAPH_CONFIGS)
    return [c for c in CONFIGS if c in wanted], "memory" in wanted
