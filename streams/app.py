"""The Faust application: the intents agent and the ledger table.

The agent is a thin shell: it turns a batch of Faust events into
:class:`~streams.processor.ConsumedRecord` values and hands them to
:class:`~streams.processor.IntentProcessor`. Agent concurrency stays at 1
because faust-streaming can commit offsets past in-flight messages with
concurrency > 1 (issue 606); throughput comes from batching instead. Offsets of
a batch are acknowledged only after every effect of the batch is durable
(:func:`acked_batches`; never Faust's ``take_events``, which acks in a
``finally`` even when the batch was interrupted).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from faust.types import TP

from connectors.base import EmailProvider
from connectors.null import NullProvider
from connectors.outbox import OutboxFault, OutboxProvider
from schemas.codec import SchemaCodec, default_codec
from sendonce.settings import Settings
from streams.fetcher import KafkaForwardedLookup, KafkaRecordFetcher
from streams.processor import ConsumedRecord, IntentProcessor
from streams.store import FaustLedgerStore, FaustTableBytes
from streams.webhooks import SightingProcessor, WebhookFault

log = logging.getLogger("sendonce.worker")

_RAW: dict[str, Any] = {
    "key_type": bytes,
    "value_type": bytes,
    "key_serializer": "raw",
    "value_serializer": "raw",
}


def broker_url(bootstrap_servers: str) -> str:
    """Faust's broker URL for a comma-separated bootstrap list."""
    hosts = [h.strip() for h in bootstrap_servers.split(",") if h.strip()]
    return ";".join(f"kafka://{h}" for h in hosts)


def provider_from_settings(settings: Settings) -> EmailProvider:
    """Build the configured provider."""
    if settings.provider == "null":
        return NullProvider()
    if settings.provider == "graph":
        return graph_provider_from_settings(settings)
    return OutboxProvider(settings.outbox_dir, OutboxFault.parse(settings.outbox_fault))


def graph_provider_from_settings(settings: Settings) -> EmailProvider:
    """The Microsoft Graph provider for ``settings`` (validated by Settings)."""
    from connectors.graph.auth import GraphTokenProvider
    from connectors.graph.provider import GraphProvider, GraphSettings

    ca_bundle = Path(settings.graph_ca_bundle) if settings.graph_ca_bundle else None
    tokens = GraphTokenProvider(
        tenant_id=settings.graph_tenant_id,
        client_id=settings.graph_client_id,
        client_secret=settings.graph_client_secret or None,
        certificate_key_path=settings.graph_certificate_key_path or None,
        certificate_thumbprint=settings.graph_certificate_thumbprint or None,
        authority=settings.graph_authority or None,
        ca_bundle=ca_bundle,
    )
    return GraphProvider(
        tokens,
        GraphSettings(
            graph_url=settings.graph_url,
            mode=settings.graph_mode,
            ca_bundle=ca_bundle,
            connect_timeout_s=settings.graph_connect_timeout_s,
            read_timeout_s=settings.graph_read_timeout_s,
            max_concurrent_per_mailbox=settings.graph_mailbox_concurrency,
            requests_per_window=settings.graph_requests_per_10min or None,
            sends_per_minute=settings.graph_sends_per_minute or None,
        ),
    )


class FaustSink:
    """Produces through the Faust app's producer and awaits the broker's ack."""

    def __init__(self, app: faust.App) -> None:
        self._app = app

    async def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        """Send and wait for acks=all."""
        pending = await self._app.producer.send(
            topic, key, value, partition=None, timestamp=None, headers=list(headers or []) or None
        )
        await pending


@dataclass
class WorkerApp:
    """The assembled worker: Faust app, ledger table and the processor factory."""

    app: faust.App
    ledger: Any
    settings: Settings


def build_worker_app(
    settings: Settings,
    provider: EmailProvider | None = None,
    codec: SchemaCodec | None = None,
) -> WorkerApp:
    """Assemble the Faust application for ``settings``."""
    codec = codec or default_codec()
    app = faust.App(
        settings.app_id,
        broker=broker_url(settings.bootstrap_servers),
        store="rocksdb://",
        datadir=str(settings.data_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        table_standby_replicas=settings.standby_replicas,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 3),
        processing_guarantee="at_least_once",
        web_enabled=False,
        autodiscover=False,
    )
    intents = app.topic(settings.topics.intents, partitions=settings.partitions, **_RAW)
    # The deferred lane: co-partitioned with the intents (same count, same
    # murmur2 partitioner), so Faust assigns partition p of both, and of the
    # ledger, to the same worker.
    deferred = app.topic(settings.topics.intents_deferred, partitions=settings.partitions, **_RAW)
    intents_topic = settings.topics.intents

    def owns(partition: int) -> bool:
        return TP(intents_topic, partition) in app.assignor.assigned_actives()

    processors: list[IntentProcessor] = []

    async def rebuild_reconcile_index() -> None:
        # After every recovery (rebalance) the set of owned partitions changed.
        for processor in processors:
            found = processor.rebuild_reconcile_index(store.ambiguous_entries(settings.partitions))
            if found:
                log.info("%d ambiguous sends awaiting reconciliation", found)

    ledger = app.Table(
        "ledger",
        # The store's serializer comes from these two, not from ``schema``.
        key_type=bytes,
        value_type=bytes,
        partitions=settings.partitions,
        schema=faust.Schema(**_RAW),
        options={"driver": "rocksdict"},
        on_recover=rebuild_reconcile_index,
    )
    store = FaustLedgerStore(ledger)
    provider_ = provider or provider_from_settings(settings)
    fetcher = KafkaRecordFetcher(settings.bootstrap_servers)
    processor = IntentProcessor(
        settings, store, provider_, FaustSink(app), codec, fetcher=fetcher, owns=owns
    )
    processors.append(processor)

    async def reconcile_tick() -> None:
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

    async def process_intents(stream: Any) -> None:
        await _run_lane(stream)

    async def process_deferred(stream: Any) -> None:
        await _run_lane(stream)

    async def _run_lane(stream: Any) -> None:
        try:
            async for events in acked_batches(stream, settings):
                records = [_record(e) for e in events]
                try:
                    stats = await processor.process_batch(records)
                except Exception as exc:
                    # Bad input never gets here (it is dead-lettered); this is the
                    # broker or the disk failing. Stop the worker without acking
                    # the batch: its records are redelivered to the next owner and
                    # the ledger makes the repeat harmless.
                    log.critical("batch failed, stopping worker: %s", type(exc).__name__)
                    await app.crash(exc)
                    raise
                log.debug("batch done: %s", stats)
        finally:
            await provider_.close()
            fetcher.close()

    app.agent(intents, name="sendonce.intents", concurrency=1)(process_intents)
    app.agent(deferred, name="sendonce.deferred", concurrency=1)(process_deferred)
    _add_webhook_dedupe(app, settings, codec)
    return WorkerApp(app, ledger, settings)


def _add_webhook_dedupe(app: faust.App, settings: Settings, codec: SchemaCodec) -> None:
    """The inbound dedupe stream: its own agent and sighting table."""
    raw = app.topic(settings.topics.webhooks_raw, partitions=settings.partitions, **_RAW)
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
    sightings = app.Table(
        "webhook_sightings",
        key_type=bytes,
        value_type=bytes,
        partitions=settings.partitions,
        schema=faust.Schema(**_RAW),
        changelog_topic=changelog,
        options={"driver": "rocksdict"},
    )
    lookup = KafkaForwardedLookup(settings.bootstrap_servers, settings.topics.webhooks_deduped)
    processor = SightingProcessor(
        settings,
        FaustTableBytes(sightings),
        FaustSink(app),
        lookup,
        codec,
        fault=WebhookFault(settings.webhook_fault),
    )

    async def dedupe_webhooks(stream: Any) -> None:
        try:
            async for events in acked_batches(stream, settings):
                try:
                    stats = await processor.process_batch([_record(e) for e in events])
                except Exception as exc:
                    log.critical("webhook batch failed, stopping worker: %s", type(exc).__name__)
                    await app.crash(exc)
                    raise
                if stats.replays:
                    log.info(
                        "webhooks: %d forwarded, %d replays dropped (%d in total)",
                        stats.forwarded,
                        stats.replays,
                        processor.replays_total,
                    )
        finally:
            lookup.close()

    app.agent(raw, name="sendonce.webhooks", concurrency=1)(dedupe_webhooks)


async def acked_batches(stream: Any, settings: Settings) -> AsyncIterator[list[Any]]:
    """Batches of events, each acked only after the loop body finished with it.

    Faust's ``take_events`` acks a batch in a ``finally``, so a batch cancelled
    by a shutdown or failed halfway would be acked and then committed: its
    intents lost without a result (the torture harness found exactly that).
    Here a batch whose body raised or was cancelled is never acked; the next
    owner gets it again and the ledger makes the repeat harmless.
    """
    async for events in stream.noack_take(settings.batch_size, within=settings.batch_within_s):
        yield events
        # Reached only when the consumer asks for the next batch, i.e. after
        # the body finished without raising.
        for event in events:
            await stream.ack(event)


def _record(event: Any) -> ConsumedRecord:
    message = event.message
    headers = tuple((k, v) for k, v in (message.headers or ()))
    return ConsumedRecord(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        timestamp_ms=int(message.timestamp * 1000) if message.timestamp else None,
        headers=headers,
    )


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


def run_worker(settings: Settings) -> int:
    """Run a worker until it is stopped (SIGTERM/SIGINT); returns the exit code."""
    try:
        check_topics(settings)
    except WorkerStartupError as exc:
        log.error("%s", exc)
        print(f"sendonce worker: {exc}", file=sys.stderr)
        return 2
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    worker_app = build_worker_app(settings)
    worker = faust.Worker(
        worker_app.app,
        loglevel=settings.log_level.upper(),
        quiet=True,
        redirect_stdouts=False,
    )
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0) if isinstance(exc.code, int | None) else 1
    return 0
