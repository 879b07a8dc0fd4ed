"""Intents benchmark: sendonce beside Kafka's ceiling and a naive baseline, in one run.

Run:  .venv/bin/python -m bench [--intents 10000] [--rounds 3] [--keys 1000000,10000000]
      (or ``sendonce dev bench``, or ``make bench``)

It starts its own local broker and, interleaved in rounds (each round runs every
configuration once, in a rotated order, so machine noise hits all of them alike):

* ``ceiling``: consume -> produce passthrough of the intent records on the worker's
  client stack (aiokafka consumer in a group, aiokafka producer, acks=all);
* ``sendonce-null``: the real worker (``sendonce worker``, null provider), the full
  ledger protocol;
* ``naive``: the simplest correct design, one message at a time (``bench/naive.py``);
* ``sendonce-graph-0ms`` / ``-150ms``: the worker on the Microsoft Graph emulator
  (HTTPS, real MSAL), 64 sender mailboxes at 4 concurrent sends each, caps lifted;
  ``sendonce-graph-drafts-0ms`` / ``-150ms`` the same in ``draft-send`` mode (a draft
  create, its DRAFTED write and the send per email).

Every run gets fresh topics and a fresh process, is warmed up, then measured twice:
a *burst* (throughput: intents produced as fast as the client takes them, from the
first intent produced to the last result visible) and a *paced* phase (latency:
``--rate`` intents/s, capped at half of what the burst reached, intent produced ->
result visible, from record timestamps). Then, once, *memory*: worker RSS with 1M
and 10M keys in the ledger, and the restore rate from the changelog into an empty
RocksDB.

Prints a table and the command that reproduces it; writes ``bench.json`` and
``bench.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from sendonce.bench import profile, report
from sendonce.bench.memory import RestoreFigures, fill_ledger, measure_restore
from sendonce.bench.options import BASELINE, build_parser, selected, with_baseline
from sendonce.bench.procs import Emulator, Proc, cpu_seconds, start, start_emulator, start_worker
from sendonce.bench.workload import (
    IntentProducer,
    Phase,
    Record,
    ResultCollector,
    bench_settings,
    create_bench_topics,
    make_records,
    phase_timings,
)
from sendonce.dev.kafka import LocalKafka
from sendonce.dev.kafka_jars import ensure_jars
from sendonce.kafka.clients import consumer_config
from sendonce.kafka.topics import create_topics
from sendonce.schemas.codec import default_codec
from sendonce.settings import Settings

#: Per-mailbox concurrency of the Graph runs (Graph's MailboxConcurrency limit).
GRAPH_MAILBOX_CONCURRENCY = 4
#: The paced phase runs at most at this share of what the burst reached, so that it
#: measures latency, not a queue building up.
PACED_SHARE = 0.5

Progress = Callable[[str], None]


@dataclass
class Workload:
    """The intent records every configuration gets (the same ones)."""

    warmup: list[Record]
    burst: list[Record]
    paced: list[Record]


@dataclass
class RunResult:
    """One configuration in one round."""

    config: str
    round: int
    burst: Phase | None = None
    paced: Phase | None = None
    paced_rate: float | None = None
    #: sendonce-null only: intent produced -> provider called, and the worker's
    #: own part of it (intent decided -> provider called), per paced intent.
    provider_called_ms: list[float] = field(default_factory=list)
    decided_to_called_ms: list[float] = field(default_factory=list)
    rss_mb: float | None = None
    #: Cores each process used during the burst (CPU seconds / wall seconds).
    burst_cores: dict[str, float] = field(default_factory=dict)
    error: str | None = None


@dataclass
class Context:
    """What every run of one benchmark invocation shares."""

    args: argparse.Namespace
    bootstrap: str
    work: Path
    logs: Path
    workload: Workload
    progress: Progress
    kafka: LocalKafka | None = None


def run_benchmark(args: argparse.Namespace, progress: Progress = print) -> dict[str, Any]:
    """Run the benchmark ``args`` describe; returns the JSON report (also written to --out)."""
    configs, with_memory = selected(args.only)
    if args.baseline is not None:
        if not (args.baseline / "streams" / "app.py").is_file():
            raise SystemExit(f"--baseline {args.baseline}: not a sendonce checkout")
        configs = with_baseline(configs)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    ensure_jars()
    naive_intents = args.naive_intents or max(1, args.intents // 4)
    args.naive_intents = naive_intents
    total = args.warmup + args.intents + int(args.rate * args.paced_seconds) if configs else 0
    progress(f"encoding {total} intents")
    records = make_records(total, mailboxes=args.mailboxes)
    workload = Workload(
        records[: args.warmup],
        records[args.warmup : args.warmup + args.intents],
        records[args.warmup + args.intents :],
    )
    runs: list[RunResult] = []
    memory: list[RestoreFigures] = []
    memory_error: str | None = None
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="sendonce-bench-") as tmp:
        work = Path(tmp)
        kafka: LocalKafka | None = None
        if args.bootstrap:
            bootstrap = args.bootstrap
        else:
            kafka = LocalKafka(work / "kafka", heap="1g")
            bootstrap = kafka.start(timeout=180)
        try:
            ctx = Context(args, bootstrap, work, out / "logs", workload, progress, kafka)
            for rnd in range(args.rounds if configs else 0):
                # Rotated, so no configuration always runs first (on a cold page cache)
                # or right after the heaviest one.
                order = configs[rnd % len(configs) :] + configs[: rnd % len(configs)]
                for config in order:
                    progress(f"round {rnd + 1}/{args.rounds}: {config}")
                    result = run_config(ctx, config, rnd)
                    progress("  " + report.run_line(result))
                    runs.append(result)
            if with_memory:
                try:
                    memory = run_memory(ctx)
                except Exception as exc:
                    memory_error = f"{type(exc).__name__}: {exc}"
                    progress(f"memory: failed: {memory_error}")
        finally:
            if kafka is not None:
                kafka.stop()
    doc = report.build(
        args=args,
        command=command_line(args),
        configs=configs,
        runs=runs,
        memory=memory,
        memory_error=memory_error,
        seconds=time.time() - started,
    )
    (out / "bench.json").write_text(json.dumps(doc, indent=2) + "\n")
    report.draw(doc, out / "bench.png")
    return doc


# --------------------------------------------------------------------- one run


def run_config(ctx: Context, config: str, rnd: int) -> RunResult:
    """Start ``config``'s processes on fresh topics, warm up, measure a burst and a paced phase."""
    args = ctx.args
    result = RunResult(config, rnd)
    # Topic names may not hold '@'.
    settings = bench_settings(
        ctx.bootstrap, config.replace(BASELINE, "-before"), ctx.work, args.partitions
    )
    run_dir = ctx.work / f"{config}-r{rnd}"
    create_bench_topics(settings)
    collector = ResultCollector(settings)
    procs: list[Proc] = []
    emulator: Emulator | None = None
    try:
        if config.startswith("sendonce-graph-"):
            latency = graph_latency_ms(config.removesuffix(BASELINE))
            emulator = start_emulator(ctx.work, latency, run_dir / "graph-emulator.log")
            procs.append(emulator.proc)
        root = args.baseline if config.endswith(BASELINE) else None
        main = _start(
            config.removesuffix(BASELINE),
            settings,
            run_dir,
            emulator,
            args.mailboxes,
            dict(args.worker_env),
            root,
        )
        procs.insert(0, main)

        def alive() -> bool:
            return all(p.alive() for p in procs)

        burst = IntentProducer(ctx.bootstrap, settings.topics.intents)
        # No linger in the paced phase: a record waiting in the client for company
        # would add up to linger.ms to every latency measured.
        paced = IntentProducer(ctx.bootstrap, settings.topics.intents, linger_ms=0)
        # Warm-up, through both producers: an idempotent producer's first records wait
        # for its producer id, which must not count as latency. Once these have
        # results the group is joined, partitions assigned and the ledger recovered.
        half = len(ctx.workload.warmup) // 2
        burst.burst(ctx.workload.warmup[:half])
        paced.burst(ctx.workload.warmup[half:])
        collector.wait_for([k for k, _ in ctx.workload.warmup], idle_timeout=180, alive=alive)

        burst_records = ctx.workload.burst
        if config == "naive":
            burst_records = burst_records[: args.naive_intents]
        watched = {p.name: p.pid for p in procs}
        if ctx.kafka is not None and ctx.kafka.pid is not None:
            watched["broker"] = ctx.kafka.pid
        watched["bench"] = os.getpid()
        recording = None
        if args.profile and config.startswith("sendonce"):
            recording = profile.record(main.pid, args.out / "profiles" / f"{config}-r{rnd}.txt")
        cpu_before = {name: cpu_seconds(pid) for name, pid in watched.items()}
        wall_before = time.perf_counter()
        burst.burst(burst_records)
        collector.wait_for([k for k, _ in burst_records], alive=alive)
        wall = time.perf_counter() - wall_before
        if recording is not None:
            stacks = recording.stop()
            if stacks is not None:
                ctx.progress(
                    f"  profile {stacks}:\n" + profile.format_summary(profile.summarize(stacks))
                )
        for name, pid in watched.items():
            before, after = cpu_before[name], cpu_seconds(pid)
            if before is not None and after is not None:
                result.burst_cores[name] = (after - before) / wall
        result.burst = phase_timings(
            burst_records, burst.created_ms, collector, settings.topics.results_sent
        )

        rate = min(float(args.rate), PACED_SHARE * result.burst.rate)
        count = max(1, min(len(ctx.workload.paced), int(rate * args.paced_seconds)))
        paced_records = ctx.workload.paced[:count]
        paced.paced(paced_records, rate)
        collector.wait_for([k for k, _ in paced_records], alive=alive)
        result.paced_rate = rate
        result.paced = phase_timings(
            paced_records, paced.created_ms, collector, settings.topics.results_sent
        )
        if config.removesuffix(BASELINE) == "sendonce-null":
            _provider_latencies(result, settings, paced_records, paced.created_ms, collector)
        memory = main.memory_kb()
        if "VmRSS" in memory:
            result.rss_mb = memory["VmRSS"] / 1024
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        for proc in procs:
            proc.stop()
        collector.close()
        _keep_logs(ctx, run_dir, failed=result.error is not None)
        # Each run's RocksDB, SQLite and broker topics are not needed again.
        shutil.rmtree(settings.data_dir.parent, ignore_errors=True)
    return result


def _start(
    config: str,
    settings: Settings,
    run_dir: Path,
    emulator: Emulator | None,
    mailboxes: int,
    extra_env: dict[str, str],
    root: Path | None = None,
) -> Proc:
    topics = settings.topics
    common = [
        "--bootstrap",
        settings.bootstrap_servers,
        "--source",
        topics.intents,
        "--target",
        topics.results_sent,
        "--group",
        settings.app_id,
    ]
    log = run_dir / f"{config}.log"
    if config == "ceiling":
        return start(config, ["-m", "sendonce.bench.passthrough", *common], {}, log)
    if config == "naive":
        db = settings.data_dir / "ledger.sqlite"
        return start(config, ["-m", "sendonce.bench.naive", *common, "--db", str(db)], {}, log)
    if config == "sendonce-null":
        return start_worker(settings, log, root, **{**extra_env, "SENDONCE_PROVIDER": "null"})
    assert emulator is not None
    env = {
        **emulator.worker_env(GRAPH_MAILBOX_CONCURRENCY),
        "SENDONCE_GRAPH_MODE": graph_mode(config),
        # Every mailbox may have its 4 sends in flight at once; the default (64)
        # would cap a worker at 64 / latency sends per second.
        "SENDONCE_SEND_CONCURRENCY": str(mailboxes * GRAPH_MAILBOX_CONCURRENCY),
    }
    return start_worker(settings, log, root, **{**env, **extra_env})


def graph_latency_ms(config: str) -> float:
    """The emulator latency of a Graph configuration (``sendonce-graph-[drafts-]Nms``)."""
    return float(config.rsplit("-", 1)[1].removesuffix("ms"))


def graph_mode(config: str) -> str:
    """The worker's ``SENDONCE_GRAPH_MODE`` for a Graph configuration."""
    return "draft-send" if config.startswith("sendonce-graph-drafts-") else "sendmail"


def _keep_logs(ctx: Context, run_dir: Path, *, failed: bool) -> None:
    if not run_dir.is_dir() or not (failed or ctx.args.keep_logs):
        return
    target = ctx.logs / run_dir.name
    target.mkdir(parents=True, exist_ok=True)
    for log in run_dir.glob("*.log"):
        shutil.copy2(log, target / log.name)


def _provider_latencies(
    result: RunResult,
    settings: Settings,
    records: Sequence[Record],
    created_ms: dict[bytes, int],
    collector: ResultCollector,
) -> None:
    """Intent produced -> provider called (the SENT result's accepted_at, null provider).

    The null provider stamps ``accepted_at`` when it is called. The ledger's SENT
    entry also holds when the worker began deciding the intent (its attempt's
    ``started_at_ms``), which splits the time into Kafka delivery plus batching
    (produced -> decided) and the ledger protocol (decided -> called: the PENDING
    write acknowledged by Kafka, then the call).
    """
    codec = default_codec()
    wanted = {k for k, _ in records}
    for key in wanted:
        arrival = collector.arrivals[key]
        if arrival.topic != settings.topics.results_sent or arrival.value is None:
            continue
        accepted = codec.decode(arrival.value).get("accepted_at")
        if accepted is not None:
            result.provider_called_ms.append(float(accepted - created_ms[key]))
    for entry in _sent_entries(settings, wanted):
        started = entry["attempts"][0]["started_at_ms"]
        result.decided_to_called_ms.append(float(entry["accepted_at_ms"] - started))


def _sent_entries(settings: Settings, keys: set[bytes]) -> list[dict[str, Any]]:
    """The SENT ledger entries of ``keys``, read from the ledger's changelog."""
    consumer = Consumer(consumer_config(settings.bootstrap_servers, group="bench-ledger-reader"))
    topic = settings.ledger_changelog_topic
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        ends: dict[int, int] = {}
        for p in partitions:
            ends[p] = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions if ends[p] > 0])
        pending = {p for p, end in ends.items() if end > 0}
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + 120
        while pending and time.monotonic() < deadline:
            for msg in consumer.consume(5000, timeout=0.5):
                if msg.error():
                    continue
                part, offset = msg.partition() or 0, msg.offset() or 0
                if offset + 1 >= ends[part]:
                    pending.discard(part)
                if msg.key() in keys and b'"status":"SENT"' in (msg.value() or b""):
                    found.append(json.loads(msg.value() or b"{}"))
        return found
    finally:
        consumer.close()


# --------------------------------------------------------------------- memory


def run_memory(ctx: Context) -> list[RestoreFigures]:
    """Fill one ledger changelog up to each ``--keys`` size; restore and measure at each."""
    settings = bench_settings(ctx.bootstrap, "memory", ctx.work, ctx.args.partitions)
    create_topics(settings)
    run_dir = ctx.work / "memory"
    figures: list[RestoreFigures] = []
    have = 0
    for keys in ctx.args.keys:
        ctx.progress(f"memory: writing ledger entries {have:,} .. {keys:,} to the changelog")
        fill_s = fill_ledger(settings, have, keys - have)
        have = keys
        ctx.progress(f"memory: restoring {keys:,} keys into an empty RocksDB")
        figure = measure_restore(settings, keys, fill_s, run_dir / f"worker-{keys}.log")
        ctx.progress("  " + report.memory_line(figure))
        figures.append(figure)
    _keep_logs(ctx, run_dir, failed=False)
    shutil.rmtree(settings.data_dir.parent, ignore_errors=True)
    return figures


# --------------------------------------------------------------------- CLI


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces a run with ``args``."""
    parts = [
        "python -m bench",
        f"--intents {args.intents}",
        f"--naive-intents {args.naive_intents}",
        f"--rounds {args.rounds}",
        f"--rate {args.rate}",
        f"--paced-seconds {args.paced_seconds:g}",
        f"--warmup {args.warmup}",
        f"--keys {','.join(str(k) for k in args.keys)}",
        f"--partitions {args.partitions}",
        f"--mailboxes {args.mailboxes}",
        f"--out {args.out}",
    ]
    if args.only:
        parts.append(f"--only {','.join(args.only)}")
    if args.bootstrap:
        parts.append(f"--bootstrap {args.bootstrap}")
    if args.baseline:
        parts.append(f"--baseline {args.baseline}")
    parts += [f"--worker-env {name}={value}" for name, value in args.worker_env]
    if args.profile:
        parts.append("--profile")
    return " ".join(parts)


def run_cli(args: argparse.Namespace) -> int:
    """Run with parsed ``args``, print the table; exit code 1 if any run failed."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    began = time.monotonic()

    def progress(line: str) -> None:
        print(f"[{time.monotonic() - began:6.0f}s] {line}", flush=True)

    doc = run_benchmark(args, progress=progress)
    print()
    print(report.render(doc))
    failed = [r for r in doc["runs"] if r["error"]] or doc["memory"].get("error")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m bench``."""
    return run_cli(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
