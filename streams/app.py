"""The Faust application: the intents agent and the ledger table.

The agent is a thin shell: it turns a batch of Faust events into
:class:`~streams.processor.ConsumedRecord` values and hands them to
:class:`~streams.processor.IntentProcessor`. Agent concurrency stays at 1
because faust-streaming can commit offsets past in-flight messages with
concurrency > 1 (issue 606); throughput comes from batching instead.

Faust never commits the lanes' source topics (they are declared ``acks=False``): it
can commit records no agent processed (see :mod:`streams.offsets`). Each agent runs its
lane through :class:`~streams.lanes.SourceOffsets`, which reports the records whose
every effect is durable to :class:`~streams.offsets.LaneOffsets` (committed per
partition up to the first unfinished offset), waits for the batches in flight when
partitions are revoked, and runs a :class:`~streams.offsets.HoleMender` for records
Faust dropped. This module only assembles the app, its tables and agents.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.types import TP

from sendonce.connectors.base import EmailProvider
from sendonce.connectors.graph.throttle import MailboxThrottle
from sendonce.kafka.producer import DurableProducer
from sendonce.logs import worker_logging_config
from sendonce.providers import build_provider
from sendonce.schemas.codec import SchemaCodec
from sendonce.schemas.registry import codec_for_settings, resolving
from sendonce.settings import Settings
from sendonce.streams import metrics
from sendonce.streams.fetcher import KafkaForwardedLookup, KafkaRecordFetcher
from sendonce.streams.lanes import SourceOffsets
from sendonce.streams.offsets import Lane
from sendonce.streams.processor import IntentProcessor
from sendonce.streams.restore import STORE_URL, BulkRestoreTableManager, table_options
from sendonce.streams.store import FaustLedgerStore, FaustTableBytes
from sendonce.streams.webhooks import SightingProcessor, WebhookFault

log = logging.getLogger("sendonce.worker")

_RAW: dict[str, Any] = {
    "key_type": bytes,
    "value_type": bytes,
    "key_serializer": "raw",
    "value_serializer": "raw",
}
# Source topics of the lanes: offsets are committed by streams.lanes, not by Faust.
_SOURCE: dict[str, Any] = {**_RAW, "acks": False}


def broker_url(bootstrap_servers: str) -> str:
    """Faust's broker URL for a comma-separated bootstrap list."""
    hosts = [h.strip() for h in bootstrap_servers.split(",") if h.strip()]
    return ";".join(f"kafka://{h}" for h in hosts)


def provider_from_settings(settings: Settings) -> EmailProvider:
    """Build the configured provider (named in :data:`sendonce.providers.PROVIDERS`).

    A provider with a mailbox throttle (Graph) reports its waits to the worker's
    metrics: the connector knows nothing of Prometheus.
    """
    provider = build_provider(settings)
    throttle = getattr(provider, "throttle", None)
    if isinstance(throttle, MailboxThrottle):
        throttle.on_wait = metrics.throttle_observer(provider.name)
    return provider


@dataclass
class WorkerApp:
    """The assembled worker: Faust app, ledger table and the processor factory."""

    app: faust.App
    ledger: Any
    settings: Settings
    #: Started by the Worker alongside (not after) the app: the metrics endpoint.
    services: list[Any] = field(default_factory=list)


class _DrainingApp(faust.App):  # type: ignore[misc]
    """A Faust app whose stop lets the lanes' batches in flight finish first.

    Faust's own stop closes the consumer and the tables, then cancels the agents;
    ``drain`` (:meth:`streams.lanes.SourceOffsets.drain`) runs before all of that,
    while a batch can still write its results and commit.
    """

    drain: Callable[[], Awaitable[None]] | None = None

    async def on_stop(self) -> None:
        if self.drain is not None:
            await self.drain()
        await super().on_stop()


def build_worker_app(
    settings: Settings,
    provider: EmailProvider | None = None,
    codec: SchemaCodec | None = None,
) -> WorkerApp:
    """Assemble the Faust application for ``settings``."""
    # Registry ids are resolved here, before the loop runs (schemas/registry.py).
    codec = codec or codec_for_settings(settings, fetch_on_decode=False)
    app = _DrainingApp(
        settings.app_id,
        broker=broker_url(settings.bootstrap_servers),
        # Faust's RocksDB store with a shared block cache (streams.restore).
        store=STORE_URL,
        datadir=str(settings.data_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # Each intent makes three small writes (PENDING, SENT, result); gathering them
        # for a few milliseconds turns thousands of tiny produce requests into few.
        producer_linger=settings.producer_linger_ms / 1000.0,
        table_standby_replicas=settings.standby_replicas,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 3),
        processing_guarantee="at_least_once",
        web_enabled=False,
        # Its recovery catches new table partitions up in bulk (streams.restore).
        TableManager=BulkRestoreTableManager,
        autodiscover=False,
    )
    intents = app.topic(settings.topics.intents, partitions=settings.partitions, **_SOURCE)
    # The deferred lane: co-partitioned with the intents (same count, same
    # murmur2 partitioner), so Faust assigns partition p of both, and of the
    # ledger, to the same worker.
    deferred = app.topic(
        settings.topics.intents_deferred, partitions=settings.partitions, **_SOURCE
    )
    # Operator commands, co-partitioned too: applied by the owner of the key.
    commands = app.topic(settings.topics.commands, partitions=settings.partitions, **_SOURCE)
    intents_topic = settings.topics.intents

    offsets = SourceOffsets(app, settings)
    app.drain = offsets.drain

    def owns(partition: int) -> bool:
        return offsets.owns(intents_topic, partition)

    offsets.table("ledger")
    processors: list[IntentProcessor] = []

    async def rebuild_reconcile_index() -> None:
        offsets.recovered("ledger")
        # After every recovery (rebalance) the set of owned partitions changed.
        for processor in processors:
            found = processor.rebuild_reconcile_index(store.open_entries())
            if found:
                log.info("%d open sends (ambiguous or interrupted) awaiting a lookup", found)

    ledger = _bytes_table(app, settings, "ledger", on_recover=rebuild_reconcile_index)
    producer = DurableProducer(
        settings.bootstrap_servers,
        client_id=f"{settings.app_id}-{settings.worker_id}",
        linger_ms=settings.producer_linger_ms,
        # The limit every record the worker writes is bounded by (dead letters
        # included): librdkafka must accept what that bound lets through.
        extra={"message.max.bytes": max(settings.max_record_bytes, 1_000_000)},
    )
    store = FaustLedgerStore(ledger, producer, owns=lambda p: offsets.writable(intents_topic, p))
    provider_ = provider or provider_from_settings(settings)
    fetcher = KafkaRecordFetcher(settings.bootstrap_servers)
    processor = IntentProcessor(
        settings, store, provider_, producer, codec, fetcher=fetcher, owns=owns
    )
    processors.append(processor)

    async def reconcile_tick() -> None:
        if not offsets.ready():
            # Mid-rebalance or recovering: the keys may be moving to another worker.
            return
        try:
            stats = await processor.reconcile_due()
        except Exception as exc:
            # Nothing the reconciler does is acked anywhere: keys whose drive
            # failed (a broker restart, say) stay indexed and the next tick
            # retries them. Crashing the worker would gain nothing.
            log.warning("reconciliation tick failed, retrying: %s", type(exc).__name__)
            return
        if stats.records:
            log.info("reconciled %d ambiguous sends: %s", stats.records, stats.outcomes)

    app.timer(interval=settings.reconcile_tick_s, name="sendonce.reconcile")(reconcile_tick)

    intents_lane = offsets.lane(
        "intents", settings.topics.intents, resolving(codec, processor.process_batch)
    )
    deferred_lane = offsets.lane(
        "deferred", settings.topics.intents_deferred, resolving(codec, processor.process_batch)
    )

    commands_lane = offsets.lane(
        "commands", settings.topics.commands, resolving(codec, processor.process_commands)
    )

    async def process_intents(stream: Any) -> None:
        await _run_lane(stream, intents_lane)

    async def process_deferred(stream: Any) -> None:
        await _run_lane(stream, deferred_lane)

    async def process_commands(stream: Any) -> None:
        await offsets.run(stream, commands_lane, _report_commands)

    async def _run_lane(stream: Any, lane: Lane) -> None:
        try:
            await offsets.run(stream, lane, lambda stats: log.debug("batch done: %s", stats))
        finally:
            await provider_.close()
            fetcher.close()

    app.agent(intents, name="sendonce.intents", concurrency=1)(process_intents)
    app.agent(deferred, name="sendonce.deferred", concurrency=1)(process_deferred)
    app.agent(commands, name="sendonce.commands", concurrency=1)(process_commands)
    _add_webhook_dedupe(app, settings, codec, offsets, producer)

    @app.on_before_shutdown.connect
    async def close_producer(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        await asyncio.to_thread(producer.close)

    services = _add_metrics(app, settings, offsets, ledger)
    offsets.install()
    return WorkerApp(app, ledger, settings, services)


def _bytes_table(
    app: faust.App, settings: Settings, name: str, *, on_recover: Any, **options: Any
) -> Any:
    """A table of raw bytes keys and values in the tuned RocksDB store (streams.restore)."""
    return app.Table(
        name,
        # The store's serializer comes from these two, not from ``schema``.
        key_type=bytes,
        value_type=bytes,
        partitions=settings.partitions,
        schema=faust.Schema(**_RAW),
        options=table_options(settings),
        on_recover=on_recover,
        # A changelog the worker declares itself (started before `topics create`)
        # needs the same durability as the one `topics create` makes.
        extra_topic_configs={"min.insync.replicas": str(settings.min_insync_replicas)},
        **options,
    )


def _report_commands(stats: Any) -> None:
    if stats.commands_applied or stats.commands_refused:
        log.info(
            "operator commands: %d applied, %d refused",
            stats.commands_applied,
            stats.commands_refused,
        )


def _add_webhook_dedupe(
    app: faust.App,
    settings: Settings,
    codec: SchemaCodec,
    offsets: SourceOffsets,
    producer: DurableProducer,
) -> None:
    """The inbound dedupe stream: its own agent and sighting table."""
    raw = app.topic(settings.topics.webhooks_raw, partitions=settings.partitions, **_SOURCE)
    ttl_s = settings.webhook_dedupe_ttl_s
    changelog = app.topic(
        settings.webhook_sightings_changelog_topic,
        partitions=settings.partitions,
        compacting=True,
        deleting=True,
        retention=ttl_s,
        internal=True,
        **_RAW,
    )
    sightings = _bytes_table(
        app,
        settings,
        "webhook_sightings",
        on_recover=lambda: _recovered(offsets, "sightings"),
        changelog_topic=changelog,
    )
    offsets.table("sightings")
    lookup = KafkaForwardedLookup(settings.bootstrap_servers, settings.topics.webhooks_deduped)
    processor = SightingProcessor(
        settings,
        FaustTableBytes(
            sightings,
            producer,
            owns=lambda p: offsets.writable(settings.topics.webhooks_raw, p),
        ),
        producer,
        lookup,
        codec,
        fault=WebhookFault(settings.webhook_fault),
    )

    lane = offsets.lane(
        "webhooks", settings.topics.webhooks_raw, resolving(codec, processor.process_batch)
    )

    def report(stats: Any) -> None:
        if stats.replays:
            log.info(
                "webhooks: %d forwarded, %d replays dropped (%d in total)",
                stats.forwarded,
                stats.replays,
                processor.replays_total,
            )

    async def dedupe_webhooks(stream: Any) -> None:
        try:
            await offsets.run(stream, lane, report)
        finally:
            lookup.close()

    app.agent(raw, name="sendonce.webhooks", concurrency=1)(dedupe_webhooks)


def _add_metrics(
    app: faust.App, settings: Settings, offsets: SourceOffsets, ledger: Any
) -> list[Any]:
    """The worker's /metrics, /healthz and /readyz (``SENDONCE_METRICS_PORT``; 0: none).

    Returned as a service for the Worker to start with the app: Faust starts its own
    tasks and services only after table recovery, and liveness must answer during it.
    """
    if not settings.metrics_port:
        return []

    async def highwaters(tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        found = await app.consumer.highwaters(*(TP(t, p) for t, p in tps))
        return {(tp.topic, tp.partition): hw for tp, hw in found.items() if hw is not None}

    gauges = metrics.WorkerGauges(
        topics=offsets.topics,
        owned=offsets.owned,
        frontiers=offsets.offsets.snapshot,
        committed=offsets.reader.start_offset,
        highwaters=highwaters,
        ledger=lambda: metrics.ledger_key_estimates(ledger),
    )

    @app.on_partitions_assigned.connect
    async def forget_committed(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        gauges.forget()

    server = metrics.MetricsServer(
        settings.metrics_host, settings.metrics_port, ready=offsets.ready, refresh=gauges.refresh
    )
    return [metrics.metrics_service(server)]


async def _recovered(offsets: SourceOffsets, table: str) -> None:
    offsets.recovered(table)


class WorkerStartupError(RuntimeError):
    """The cluster is not in a state a worker can safely run against."""


def check_topics(settings: Settings, timeout: float = 30.0) -> None:
    """Fail fast unless the intents topic exists with the configured partition count.

    The worker checks each record sits on the partition its key hashes to over
    ``settings.partitions``; a mismatch would dead-letter every intent.
    """
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    try:
        topics = admin.list_topics(timeout=timeout).topics
    except Exception as exc:
        raise WorkerStartupError(
            f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}"
        ) from exc
    for name in (
        settings.topics.intents,
        settings.topics.intents_deferred,
        settings.topics.commands,
        settings.topics.webhooks_raw,
    ):
        if name not in topics:
            raise WorkerStartupError(f"topic {name} does not exist; run `sendonce topics create`")
        have = len(topics[name].partitions)
        if have != settings.partitions:
            raise WorkerStartupError(
                f"topic {name} has {have} partitions but SENDONCE_PARTITIONS="
                f"{settings.partitions}; they must match (one owner per key)"
            )


def use_event_loop(name: str) -> None:
    """Install the event loop policy ``name`` (``uvloop`` or ``asyncio``) for the worker.

    uvloop runs the same coroutines with a cheaper scheduler and socket layer; the
    worker spends a large share of its time in both.
    """
    if name == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    else:
        asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())


def run_worker(settings: Settings) -> int:
    """Run a worker until it is stopped (SIGTERM/SIGINT); returns the exit code."""
    try:
        check_topics(settings)
    except WorkerStartupError as exc:
        log.error("%s", exc)
        print(f"sendonce worker: {exc}", file=sys.stderr)
        return 2
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    use_event_loop(settings.event_loop)
    worker_app = build_worker_app(settings)
    worker = faust.Worker(
        worker_app.app,
        *worker_app.services,
        loglevel=settings.log_level.upper(),
        quiet=True,
        redirect_stdouts=False,
        logging_config=worker_logging_config(settings),
    )
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0) if isinstance(exc.code, int | None) else 1
    return 0
