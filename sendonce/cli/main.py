"""The ``sendonce`` command line."""

from __future__ import annotations

import argparse
import base64
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from sendonce.settings import Settings, SettingsError


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    overrides: dict[str, Any] = {}
    if getattr(args, "bootstrap", None):
        overrides["bootstrap_servers"] = args.bootstrap
    if getattr(args, "partitions", None):
        overrides["partitions"] = args.partitions
    if getattr(args, "replication_factor", None):
        overrides["replication_factor"] = args.replication_factor
    if getattr(args, "provider", None):
        overrides["provider"] = args.provider
    return settings.with_overrides(**overrides) if overrides else settings


def _cmd_worker(args: argparse.Namespace) -> int:
    from sendonce.streams.app import run_worker

    return run_worker(_settings(args))


def _cmd_topics_create(args: argparse.Namespace) -> int:
    from sendonce.kafka.topics import create_topics

    settings = _settings(args)
    reports = create_topics(settings)
    mismatch = False
    for r in reports:
        print(f"{r.status:16} {r.name}" + (f"  ({r.detail})" if r.detail else ""))
        mismatch = mismatch or r.status == "exists-mismatch"
    return 1 if mismatch else 0


def _cmd_publish(args: argparse.Namespace) -> int:
    from sendonce.keys import InvalidIntentError
    from sendonce.ops.publish import IntentPublisher
    from sendonce.schemas.registry import codec_for_settings

    settings = _settings(args)
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


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode()}
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _cmd_results(args: argparse.Namespace) -> int:
    from sendonce.ops.results import read_topics
    from sendonce.schemas.registry import codec_for_settings

    settings = _settings(args)
    topics = list(settings.topics.results())
    if args.dlq:
        topics.append(settings.topics.dlq)
    for rec in read_topics(
        settings.bootstrap_servers,
        topics,
        until_end=not args.follow,
        timeout=args.timeout,
        codec=codec_for_settings(settings),
    ):
        line = {"topic": rec.topic, "partition": rec.partition, "offset": rec.offset}
        line.update(_jsonable(rec.value))
        print(json.dumps(line, sort_keys=True), flush=True)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from sendonce.dev.demo import run_demo

    return run_demo(keep=args.keep, provider=args.provider)


def _bench_options() -> Any:
    """``sendonce.bench.options`` in a checkout, or None in an installed wheel.

    The benchmarks are run from a checkout (an editable install sees ``bench/``
    through ``sendonce/bench``); the wheel leaves them out.
    """
    try:
        from sendonce.bench import options
    except ImportError:
        return None
    return options


def _cmd_bench(args: argparse.Namespace) -> int:
    from sendonce.bench.intents import run_cli

    return run_cli(args)


def _add_bench_cli(dev: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``dev bench`` when the checkout's ``bench/`` is at hand."""
    options = _bench_options()
    if options is None:
        return  # an installed wheel without the checkout: no benchmark to run
    p = dev.add_parser(
        "bench",
        help="benchmark: throughput, latency, memory and restore beside the ceiling "
        "and a naive baseline (same as python -m bench)",
        description=options.build_parser().description,
    )
    options.add_arguments(p)
    p.set_defaults(func=_cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``sendonce``."""
    parser = argparse.ArgumentParser(
        prog="sendonce",
        description="Kafka stream processor that makes every intended email happen once.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--bootstrap", help="Kafka bootstrap servers (SENDONCE_BOOTSTRAP_SERVERS)")

    p = sub.add_parser("worker", help="run the intents worker (Faust agent + ledger)")
    common(p)
    p.add_argument(
        "--provider", choices=("outbox", "graph", "null"), help="provider (SENDONCE_PROVIDER)"
    )
    p.set_defaults(func=_cmd_worker)

    topics = sub.add_parser("topics", help="manage topics").add_subparsers(
        dest="topics_command", required=True
    )
    p = topics.add_parser("create", help="create every sendonce topic (idempotent)")
    common(p)
    p.add_argument("--partitions", type=int, help="partitions (SENDONCE_PARTITIONS, default 12)")
    p.add_argument("--replication-factor", type=int, help="replication factor (default 1)")
    p.set_defaults(func=_cmd_topics_create)

    p = sub.add_parser("publish", help="publish JSON-lines intents (file or stdin)")
    common(p)
    p.add_argument("file", nargs="?", help="JSON lines file; '-' or omitted reads stdin")
    p.add_argument("--topic", help="intents topic (default from settings)")
    p.add_argument("-v", "--verbose", action="store_true", help="print each idempotency key")
    p.set_defaults(func=_cmd_publish)

    p = sub.add_parser("results", help="print result topics as JSON lines")
    common(p)
    p.add_argument("--dlq", action="store_true", help="include the dead-letter topic")
    p.add_argument("--follow", action="store_true", help="keep following new results")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds (idle, with --follow)")
    p.set_defaults(func=_cmd_results)

    p = sub.add_parser("demo", help="run the end-to-end demo on a local broker and the outbox")
    p.add_argument("--keep", action="store_true", help="keep the broker running afterwards")
    p.add_argument(
        "--provider",
        choices=("outbox", "graph"),
        default="outbox",
        help="outbox (default) or graph (the Graph emulator over HTTPS, real MSAL)",
    )
    p.set_defaults(func=_cmd_demo)

    dev = sub.add_parser("dev", help="developer tools").add_subparsers(
        dest="dev_command", required=True
    )
    from sendonce.cli.receiver import add_cli as add_receiver_cli
    from sendonce.cli.schemas import add_cli as add_schemas_cli
    from sendonce.dev.chaos import add_cli as add_chaos_cli
    from sendonce.dev.graph_emulator import add_cli as add_graph_emulator_cli
    from sendonce.dev.kafka import add_cli as add_kafka_cli
    from sendonce.ops.replay import add_cli as add_replay_cli
    from sendonce.ops.review import add_cli as add_review_cli
    from sendonce.ops.trace import add_cli as add_trace_cli

    add_kafka_cli(dev)
    add_graph_emulator_cli(dev)
    add_chaos_cli(dev)
    _add_bench_cli(dev)
    add_receiver_cli(sub)
    add_replay_cli(sub)
    add_trace_cli(sub)
    add_review_cli(sub)
    add_schemas_cli(sub)
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
