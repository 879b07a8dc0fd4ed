"""``sendonce dev kafka {fetch,start,stop,status}``: the local broker from the command line.

The contract scripts rely on: ``start`` prints only ``bootstrap=...`` and ``pid=...``
(with ``--brokers 3`` both comma lists, one entry per node) on stdout (so
``eval "$(sendonce dev kafka start)"`` works) and prose on stderr; it is idempotent (an
already running broker is exit code 0); ``status`` exits 1 when no broker runs; an
expected failure (:class:`~sendonce.dev.kafka.LocalKafkaError`) is a one-line
``error: ...`` and exit code 2, never a traceback.  The runner itself is
:mod:`sendonce.dev.kafka` (and the jars :mod:`sendonce.dev.kafka_jars`); keeping argparse
here lets the CLI floor import the dev floor, never the reverse.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from sendonce.dev.kafka import BrokerAlreadyRunning, LocalKafka, LocalKafkaError, log_tail
from sendonce.dev.kafka_jars import KAFKA_VERSION, ensure_jars
from sendonce.ops.progress import Progress
from sendonce.options import Subparsers

__all__ = ["add_cli"]


def _home_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--home",
        type=Path,
        default=None,
        help="broker state directory (default: $SENDONCE_KAFKA_HOME or <repo>/.sendonce/kafka)",
    )


class _Fetching:
    """Progress of a first resolve on stderr: what is fetched, then files downloaded."""

    def __init__(self) -> None:
        self._progress: Progress | None = None

    def __call__(self, downloaded: int) -> None:
        if self._progress is None:
            print(
                f"fetching the Kafka {KAFKA_VERSION} broker jars from Maven Central "
                "(once; a minute or two) ...",
                file=sys.stderr,
            )
            self._progress = Progress("downloaded", None, sys.stderr, unit="files")
        self._progress.update(downloaded)

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.finish()


def _ensure_jars(lib: Path | None) -> Path:
    fetching = _Fetching()
    try:
        return ensure_jars(lib, fetching)
    finally:
        fetching.finish()


def _cmd_fetch(args: argparse.Namespace) -> int:
    print(_ensure_jars(args.lib))
    return 0


def _print_started(bootstrap: str, pids: Sequence[int], home: Path, how: str) -> None:
    # stdout carries only key=value lines (so `eval "$(... start)"` works); prose on stderr.
    # A cluster's pids are one comma list, like its bootstrap.
    pid = ",".join(str(p) for p in pids) or "None"
    print(f"bootstrap={bootstrap}")
    print(f"pid={pid}")
    what = "pid" if len(pids) <= 1 else f"{len(pids)} nodes, pids"
    print(
        f"Kafka {KAFKA_VERSION} at {bootstrap} ({what} {pid}, home {home}): {how}", file=sys.stderr
    )


def _brokers(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("at least 1")
    return value


class _Terminated(Exception):
    pass


def _cmd_start(args: argparse.Namespace) -> int:
    _ensure_jars(None)  # start would resolve them too, without a word for minutes
    broker = LocalKafka(args.home, heap=args.heap, brokers=args.brokers)
    try:
        bootstrap = broker.start(detach=not args.foreground, timeout=args.timeout)
    except BrokerAlreadyRunning as exc:
        _print_started(exc.bootstrap, exc.pids, broker.home, "already running")
        return 0
    if not args.foreground:
        _print_started(bootstrap, broker.pids, broker.home, "started (detached)")
        return 0
    _print_started(
        bootstrap, broker.pids, broker.home, "running in the foreground, Ctrl-C stops it"
    )

    def on_sigterm(signum: int, frame: object) -> None:
        raise _Terminated

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        code = broker.wait()
    except (KeyboardInterrupt, _Terminated):
        print("stopping Kafka...", file=sys.stderr)
        broker.stop()
        return 0
    print(
        f"Kafka broker exited with code {code}; tail of {broker.log_path}:\n"
        f"{log_tail(broker.log_path)}",
        file=sys.stderr,
    )
    broker.stop()
    return 1


def _cmd_stop(args: argparse.Namespace) -> int:
    broker = LocalKafka(args.home)
    if not broker.is_running():
        print(f"no Kafka broker running from {broker.home}", file=sys.stderr)
        return 0
    broker.stop(timeout=args.timeout)
    print(f"Kafka broker from {broker.home} stopped", file=sys.stderr)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    broker = LocalKafka(args.home)
    state = broker.status()
    if state is None:
        print(f"no Kafka broker running from {broker.home}", file=sys.stderr)
        return 1
    print(f"bootstrap={state['bootstrap']}")
    print(f"pid={','.join(str(p) for p in state['pids'])}")
    if state["down"]:
        down = ", ".join(str(n) for n in state["down"])
        print(f"node(s) {down} of the cluster in {broker.home} not running", file=sys.stderr)
    return 0


def _run(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    # Turn our expected failures into a one-line message and exit code 2, no traceback.
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except LocalKafkaError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return wrapper


def add_cli(subparsers: Subparsers) -> None:
    """Register ``kafka {fetch,start,stop,status}`` on ``subparsers``.

    Every leaf parser sets ``func(args) -> int`` (the process exit code).
    """
    kafka = subparsers.add_parser(
        "kafka",
        help="run a local Kafka broker (or a three-node cluster)",
        description=(
            "Run a local Apache Kafka broker (KRaft) from Maven jars: one node, or with "
            "`start --brokers 3` a cluster of three on loopback."
        ),
    )
    sub = kafka.add_subparsers(dest="kafka_command", metavar="COMMAND", required=True)

    fetch = sub.add_parser("fetch", help="resolve the broker jars with Maven; print the folder")
    fetch.add_argument(
        "--lib",
        type=Path,
        default=None,
        help="jar folder (default: $SENDONCE_KAFKA_LIB or deploy/local-kafka/lib)",
    )
    fetch.set_defaults(func=_run(_cmd_fetch))

    start = sub.add_parser("start", help="start the broker (detached unless --foreground)")
    _home_arg(start)
    start.add_argument(
        "--foreground",
        action="store_true",
        help="stay attached; Ctrl-C or SIGTERM stops the broker",
    )
    start.add_argument("--heap", default="512m", help="JVM max heap per node (default: 512m)")
    start.add_argument(
        "--brokers",
        type=_brokers,
        default=1,
        help="nodes (default 1); 3 runs a KRaft cluster whose internal topics have "
        "replication factor 3 and min ISR 2",
    )
    start.add_argument(
        "--timeout", type=float, default=60, help="seconds to wait for readiness (default: 60)"
    )
    start.set_defaults(func=_run(_cmd_start))

    stop = sub.add_parser("stop", help="stop the broker (clean shutdown, SIGKILL on timeout)")
    _home_arg(stop)
    stop.add_argument(
        "--timeout", type=float, default=30, help="seconds before SIGKILL (default: 30)"
    )
    stop.set_defaults(func=_run(_cmd_stop))

    status = sub.add_parser("status", help="print bootstrap and pid; exit 1 if not running")
    _home_arg(status)
    status.set_defaults(func=_run(_cmd_status))
