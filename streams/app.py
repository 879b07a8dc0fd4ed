"""The Faust application: the intents agent and the ledger table.

The agent is a thin shell: it turns a batch of Faust events into
:class:`~streams.processor.ConsumedRecord` values and hands them to
:class:`~streams.processor.IntentProcessor`. Agent concurrency stays at 1
because faust-streaming can commit offsets past in-flight messages with
concurrency > 1 (issue 606); throughput comes from batching instead.

Faust never commits the lanes' source topics (they are declared ``acks=False``): it
can commit records no agent processed (see :mod:`streams.offsets`). Each lane reports
the records whose every effect is durable to :class:`~streams.offsets.LaneOffsets`,
which commits per partition up to the first unfinished offset, and a
:class:`~streams.offsets.HoleMender` processes records Faust dropped.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
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
from sendonce.streams.fetcher import KafkaForwardedLookup, KafkaPartitionReader, KafkaRecordFetcher
from sendonce.streams.offsets import HoleMender, Lane, LaneOffsets, Partition
from sendonce.streams.processor import ConsumedRecord, IntentProcessor
from sendonce.streams.restore import STORE_URL, BulkRestoreTableManager, table_options
from sendonce.streams.store import FaustLedgerStore, FaustTableBytes, PartitionNotOwnedError
from sendonce.streams.webhooks import SightingProcessor, WebhookFault

log = logging.getLogger("sendonce.worker")

# How often the hole mender looks, and how long a frontier must be stuck (with its
# lane idle) before records beyond it count as dropped rather than still on their way.
MEND_TICK_S = 2.0
MEND_STALL_S = 10.0
# A rebalance waits this long at most for a lane's batch in flight to finish.
REVOKE_WAIT_S = 120.0

_RAW: dict[str, Any] = {
    "key_type": bytes,
    "value_type": bytes,
    "key_serializer": "raw",
    "value_serializer": "raw",
}
# Source topics of the lanes: offsets are committed by streams.offsets, not by Faust.
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


def build_worker_app(
    settings: Settings,
    provider: EmailProvider | None = None,
    codec: SchemaCodec | None = None,
) -> WorkerApp:
    """Assemble the Faust application for ``settings``."""
    # Registry ids are resolved here, before the loop runs (schemas/registry.py).
    codec = codec or codec_for_settings(settings, fetch_on_decode=False)
    app = faust.App(
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

    offsets = _SourceOffsets(app, settings)

    def owns(partition: int) -> bool:
        return offsets.owns(intents_topic, partition)

    offsets.table("ledger")
    processors: list[IntentProcessor] = []

    async def rebuild_reconcile_index() -> None:
        offsets.recovered("ledger")
        # After every recovery (rebalance) the set of owned partitions changed.
        for processor in processors:
            found = processor.rebuild_reconcile_index(store.ambiguous_entries())
            if found:
                log.info("%d ambiguous sends awaiting reconciliation", found)

    ledger = app.Table(
        "ledger",
        # The store's serializer comes from these two, not from ``schema``.
        key_type=bytes,
        value_type=bytes,
        partitions=settings.partitions,
        schema=faust.Schema(**_RAW),
        options=table_options(settings),
        on_recover=rebuild_reconcile_index,
    )
    producer = DurableProducer(
        settings.bootstrap_servers,
        client_id=f"{settings.app_id}-{settings.worker_id}",
        linger_ms=settings.producer_linger_ms,
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


class _SourceOffsets:
    """Wires :mod:`streams.offsets` into the Faust app: commits, rebalances, mending."""

    def __init__(self, app: faust.App, settings: Settings) -> None:
        self._app = app
        self._settings = settings
        self._reader = KafkaPartitionReader(settings.bootstrap_servers, settings.app_id)
        self.offsets = LaneOffsets(self._reader, self._commit, self.owns)
        self._lanes: list[Lane] = []
        self._tables: dict[str, bool] = {}
        # The assignor builds a new set of new TP tuples per call, and every ledger
        # write asks (twice): cached per assignment, dropped by the rebalance handlers.
        self._actives: frozenset[TP] | None = None

    def lane(self, name: str, topic: str, process: Any) -> Lane:
        """Register a lane (one agent over ``topic``)."""
        lane = Lane(name, topic, process)
        self._lanes.append(lane)
        return lane

    def table(self, name: str) -> None:
        """Register a table whose recovery must finish before records are mended."""
        self._tables[name] = False

    def recovered(self, name: str) -> None:
        """A table finished recovering for the current assignment."""
        self._tables[name] = True

    def ready(self) -> bool:
        """Whether every table is recovered and no rebalance is under way."""
        return not self._app.rebalancing and all(self._tables.values())

    def admit(self, records: list[ConsumedRecord]) -> list[ConsumedRecord]:
        """The records of a batch this worker may process now.

        Faust hands a lane events it buffered before a rebalance. Processing one of
        a partition that moved (or before the ledger is recovered) could race the
        new owner on a key; dropping it is safe, since it is not committed and its
        owner reads it again from the committed offset.
        """
        if not self.ready():
            if records:
                log.info("dropped %d records delivered during a rebalance", len(records))
            return []
        owned = self._assigned()
        return [r for r in records if TP(r.topic, r.partition) in owned]

    async def run(self, stream: Any, lane: Lane, report: Callable[[Any], None]) -> None:
        """Process ``stream`` batch by batch through ``lane``; ``report`` each batch's stats.

        A batch counts as finished (and its offsets may be committed) only after every
        effect is durable. Up to ``batches_in_flight`` batches run at once, so the next
        batch is decided while the previous one waits for the broker's acknowledgements;
        a batch sharing a key with one still running waits for it first, so the intents
        of one key are still decided in order.
        """
        depth = self._settings.batches_in_flight
        running: list[tuple[asyncio.Task[Any], frozenset[bytes | None]]] = []
        try:
            async for events in acked_batches(stream, self._settings):
                records = self.admit([_record(e) for e in events])
                if not records:
                    continue
                keys = frozenset(r.key for r in records)
                earlier = [task for task, held in running if not held.isdisjoint(keys)]
                # No await between the admission check and this: see Lane.enter.
                lane.enter()
                task = asyncio.ensure_future(self._batch(lane, records, earlier, report))
                running.append((task, keys))
                await _reap(running, block=len(running) >= depth)
            while running:
                await _reap(running, block=True)
        finally:
            # Stopping (or a batch failed): nothing of the unfinished batches is
            # committed; the partitions' next owner processes them again.
            for task, _ in running:
                task.cancel()
            if running:
                await asyncio.wait([task for task, _ in running])

    async def _batch(
        self,
        lane: Lane,
        records: list[ConsumedRecord],
        earlier: list[asyncio.Task[Any]],
        report: Callable[[Any], None],
    ) -> None:
        """One admitted batch: process, mark finished, report its stats."""
        try:
            if earlier:
                await asyncio.wait(earlier)
            stats = await lane.process(records)
            metrics.BATCH_RECORDS.labels(lane.name).observe(len(records))
            await self.finished(records)
            report(stats)
        except PartitionNotOwnedError:
            # A rebalance moved a partition of this batch away mid-batch:
            # nothing of it is committed, and its new owner reads it again.
            log.info("%s: batch abandoned, a partition moved to another worker", lane.name)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Bad input never gets here (it is dead-lettered); this is the
            # broker or the disk failing. Stop the worker without committing the
            # batch: its records are redelivered to the next owner and the
            # ledger makes the repeat harmless.
            log.critical("%s: batch failed, stopping worker: %s", lane.name, type(exc).__name__)
            await self._app.crash(exc)
            raise
        finally:
            lane.leave()

    def writable(self, topic: str, partition: int) -> bool:
        """Whether table writes for ``partition`` are allowed: owned and recovered.

        Unlike :meth:`ready` this stays true while a rebalance waits for the batch
        in flight (the partition is still ours until the revocation completes).
        """
        return all(self._tables.values()) and self.owns(topic, partition)

    def owns(self, topic: str, partition: int) -> bool:
        """Whether partition ``partition`` of ``topic`` is assigned to this worker."""
        return TP(topic, partition) in self._assigned()

    def _assigned(self) -> frozenset[TP]:
        actives = self._actives
        if actives is None:
            actives = self._actives = frozenset(self._app.assignor.assigned_actives())
        return actives

    def _owned(self, topic: str) -> list[int]:
        return [tp.partition for tp in self._assigned() if tp.topic == topic]

    async def _commit(self, offsets: Mapping[Partition, int]) -> bool:
        # The group member's own consumer: a commit from a member that lost the
        # partition (an older generation) is refused by the broker.
        consumer: Any = self._app.consumer
        committed: bool = await consumer._commit(
            {TP(topic, partition): offset for (topic, partition), offset in offsets.items()}
        )
        return committed

    async def finished(self, records: Sequence[ConsumedRecord]) -> None:
        """A lane's batch is durable: advance and commit its partitions' frontiers."""
        try:
            await self.offsets.finished(records)
        except Exception as exc:
            # Not committing is always safe: the records come again and the ledger
            # makes the repeat harmless. The next batch commits the frontier.
            log.warning("could not record finished offsets: %s", type(exc).__name__)

    def install(self) -> None:
        """Connect rebalance handlers and the mender's timer."""
        app = self._app
        mender = HoleMender(
            self._lanes,
            self.offsets,
            self._reader,
            self._owned,
            self.ready,
            stall_s=MEND_STALL_S,
            batch_size=self._settings.batch_size,
        )

        async def on_revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
            # Faust waits for acked messages only; ours are not, so wait for each
            # lane's batch in flight here. Otherwise the next owner could process a
            # key while this worker is still between its PENDING write and its send.
            for lane in self._lanes:
                if not await lane.wait_idle(REVOKE_WAIT_S):
                    log.warning("%s: batch still running after %.0fs", lane.name, REVOKE_WAIT_S)
            # From here until the tables are recovered for the next assignment,
            # nothing writes to them (see FaustTableBytes).
            for name in self._tables:
                self._tables[name] = False
            self._actives = None
            self.offsets.forget()
            _shorten_fetch_wait(self._app, self._settings.fetch_max_wait_ms)

        async def on_assigned(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
            # A new generation starts from what the group committed.
            self._actives = None
            self.offsets.forget()

        app.on_partitions_revoked.connect(on_revoked)
        app.on_partitions_assigned.connect(on_assigned)

        async def mend_tick() -> None:
            try:
                await mender.tick()
            except Exception as exc:
                log.warning("mending dropped records failed, retrying: %s", type(exc).__name__)

        app.timer(interval=MEND_TICK_S, name="sendonce.mend")(mend_tick)


def _report_commands(stats: Any) -> None:
    if stats.commands_applied or stats.commands_refused:
        log.info(
            "operator commands: %d applied, %d refused",
            stats.commands_applied,
            stats.commands_refused,
        )


def _shorten_fetch_wait(app: faust.App, max_wait_ms: int) -> None:
    """Cap how long the broker holds the worker's fetch requests open.

    Faust builds its aiokafka consumer with ``fetch_max_wait_ms=1500`` and no setting
    for it. aiokafka leaves a partition whose fetched records are still buffered out of
    the next fetch request, so a record arriving there waits for the open request on
    the other partitions to return: up to 1.5 s of added latency at low rates. The
    value is read each time a fetch request is built, so setting it on the running
    consumer takes effect from the next request.
    """
    try:
        fetcher = app.consumer._thread._consumer._fetcher  # type: ignore[attr-defined]
        fetcher._fetch_max_wait_ms = max_wait_ms
    except AttributeError:
        log.warning("could not shorten the consumer's fetch wait (Faust internals changed)")


def _add_webhook_dedupe(
    app: faust.App,
    settings: Settings,
    codec: SchemaCodec,
    offsets: _SourceOffsets,
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
    sightings = app.Table(
        "webhook_sightings",
        key_type=bytes,
        value_type=bytes,
        partitions=settings.partitions,
        schema=faust.Schema(**_RAW),
        changelog_topic=changelog,
        options=table_options(settings),
        on_recover=lambda: _recovered(offsets, "sightings"),
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
    app: faust.App, settings: Settings, offsets: _SourceOffsets, ledger: Any
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
        topics=lambda: [lane.topic for lane in offsets._lanes],
        owned=offsets._owned,
        frontiers=offsets.offsets.snapshot,
        committed=offsets._reader.start_offset,
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


async def _reap(running: list[tuple[asyncio.Task[Any], Any]], *, block: bool) -> None:
    """Take the finished batches off ``running``; with ``block``, first wait until one
    finishes. A batch that failed raises here, at once, whichever batch started first."""
    if block and not any(task.done() for task, _ in running):
        await asyncio.wait([task for task, _ in running], return_when=asyncio.FIRST_COMPLETED)
    finished = [item for item in running if item[0].done()]
    for item in finished:
        running.remove(item)
    for task, _ in finished:
        task.result()


async def _recovered(offsets: _SourceOffsets, table: str) -> None:
    offsets.recovered(table)


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
