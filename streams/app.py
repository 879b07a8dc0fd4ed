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

What a worker says is its own (``sendonce.worker``): started, partitions assigned and
revoked, ready, stopping, stopped, and errors; the libraries' lines are DEBUG lines
(:func:`sendonce.logs.worker_logging_config`). SIGTERM stops a worker within
:data:`STOP_BOUND_S` of the batches in flight finishing, even when the broker is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import logging.config
import os
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
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
from sendonce.streams.fencing import LedgerFence
from sendonce.streams.fetcher import KafkaForwardedLookup, KafkaRecordFetcher
from sendonce.streams.lanes import SourceOffsets
from sendonce.streams.offsets import Lane
from sendonce.streams.processor import IntentProcessor
from sendonce.streams.restore import STORE_URL, BulkRestoreTableManager, table_options
from sendonce.streams.store import FaustLedgerStore, FaustTableBytes
from sendonce.streams.transport import CommittedReadsTransport
from sendonce.streams.webhooks import SightingProcessor, WebhookFault

log = logging.getLogger("sendonce.worker")

#: Seconds a worker takes at most to stop once its batches in flight are done (those
#: get up to :data:`~sendonce.streams.lanes.REVOKE_WAIT_S`), broker gone or not: the
#: durable producer's flush (:data:`PRODUCER_CLOSE_S`) and a few seconds for Faust to
#: close its consumer, producer and tables.
PRODUCER_CLOSE_S = 10.0
STOP_BOUND_S = PRODUCER_CLOSE_S + 10.0

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
    #: Broker-enforced ownership of the ledger's partitions (streams.fencing); the
    #: recovery (streams.restore) takes partitions over through it before restoring.
    ledger_fence: LedgerFence | None = None
    #: The topics whose partitions the worker's assignment lines name (the lanes').
    reported_topics: Callable[[], Iterable[str]] = tuple
    #: Set by :func:`run_worker`: the process exits this many seconds after the
    #: batches in flight finished, whatever the rest of the stop still waits for.
    stop_bound_s: float | None = None

    def _new_transport(self) -> Any:
        # Committed records only, standbys included (streams.transport).
        return CommittedReadsTransport(self.conf.broker_consumer, self)

    async def on_stop(self) -> None:
        log.info("stopping")
        if self.drain is not None:
            await self.drain()
        if self.stop_bound_s is not None:
            _exit_after(self.stop_bound_s)
        await super().on_stop()

    def on_rebalance_end(self) -> None:
        super().on_rebalance_end()
        # Faust calls this once the tables are recovered and the streams resumed.
        log.info("ready: %s", _partitions(self.assignor.assigned_actives(), self.reported_topics()))


def _exit_after(seconds: float) -> None:
    """End the process in ``seconds`` unless it has ended by then (exit code 1).

    The last resort behind :data:`STOP_BOUND_S`: each part of the stop that waits on
    the broker has a bound of its own, but a client library may still wait for one
    that is gone (as aiokafka's consumer did, 60 s). Everything durable was written
    before this point; the partitions' next owner reads what was not committed.
    """

    def give_up() -> None:
        log.error("stop not finished %.0f s after the batches in flight; exiting now", seconds)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(1)

    timer = threading.Timer(seconds, give_up)
    timer.daemon = True  # a process that stopped in time exits without waiting for it
    timer.start()


def build_worker_app(
    settings: Settings,
    provider: EmailProvider | None = None,
    codec: SchemaCodec | None = None,
    *,
    stop_bound_s: float | None = None,
) -> WorkerApp:
    """Assemble the Faust application for ``settings``.

    ``stop_bound_s``: once stopping, the process exits this long after its batches in
    flight finished, whatever else still waits (see :func:`_exit_after`); a process
    that runs the app for something else (a test, a tool) leaves it None.
    """
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
        # Explicit, since the revoke wait for batches in flight is validated below it.
        broker_rebalance_timeout=settings.rebalance_timeout_s,
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

    app.stop_bound_s = stop_bound_s
    offsets = SourceOffsets(app, settings)
    app.drain = offsets.drain
    app.reported_topics = offsets.topics
    _log_rebalances(app, offsets)

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
        # librdkafka's own lines reach the worker's log filter, not stderr directly.
        logger="sendonce.kafka.producer",
        linger_ms=settings.producer_linger_ms,
        # The limit every record the worker writes is bounded by (dead letters
        # included): librdkafka must accept what that bound lets through.
        extra={"message.max.bytes": max(settings.max_record_bytes, 1_000_000)},
    )
    # Ledger writes go through per-partition transactional producers: a worker the
    # group evicted (paused, cut off) can never commit one (streams.fencing).
    fence = LedgerFence(
        settings.bootstrap_servers,
        settings.app_id,
        topic=settings.ledger_changelog_topic,
        client_id=f"{settings.app_id}-{settings.worker_id}",
        # The group commit is the batching point: a commit flushes what it holds.
        linger_ms=0,
        extra={"message.max.bytes": max(settings.max_record_bytes, 1_000_000)},
        # One commit in flight per partition, each blocking a thread while it lasts.
        threads=settings.partitions + 4,
    )
    app.ledger_fence = fence
    store = FaustLedgerStore(ledger, fence, owns=lambda p: offsets.writable(intents_topic, p))
    provider_ = provider or provider_from_settings(settings)
    _share_mailbox_limits(app, settings, provider_)
    fetcher = KafkaRecordFetcher(settings.bootstrap_servers)
    # Its own consumer: operator commands never queue behind reconciliation reads.
    command_fetcher = KafkaRecordFetcher(settings.bootstrap_servers)
    processor = IntentProcessor(
        settings,
        store,
        provider_,
        producer,
        codec,
        fetcher=fetcher,
        command_fetcher=command_fetcher,
        owns=owns,
        # The group's word, not a local cache, decides the last step before a send.
        confirm_owner=lambda p: offsets.confirm_owner(intents_topic, p),
    )
    processors.append(processor)

    reconcile_failing = False

    async def reconcile_tick() -> None:
        nonlocal reconcile_failing
        if not offsets.ready():
            # Mid-rebalance or recovering: the keys may be moving to another worker.
            return
        try:
            stats = await processor.reconcile_due()
        except Exception as exc:
            # Nothing the reconciler does is acked anywhere: keys whose drive
            # failed (a broker restart, say) stay indexed and the next tick
            # retries them. Crashing the worker would gain nothing. Said once
            # per run of failures: a broker that is away fails every tick.
            log.log(
                logging.DEBUG if reconcile_failing else logging.WARNING,
                "reconciliation tick failed, retrying each tick: %s",
                type(exc).__name__,
            )
            reconcile_failing = True
            return
        reconcile_failing = False
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
            command_fetcher.close()

    app.agent(intents, name="sendonce.intents", concurrency=1)(process_intents)
    app.agent(deferred, name="sendonce.deferred", concurrency=1)(process_deferred)
    app.agent(commands, name="sendonce.commands", concurrency=1)(process_commands)
    _add_webhook_dedupe(app, settings, codec, offsets, producer)

    @app.on_before_shutdown.connect
    async def close_producer(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        await fence.close()
        unsent = await asyncio.to_thread(producer.close, PRODUCER_CLOSE_S)
        if unsent:
            log.warning("%d records not acknowledged by the broker at stop", unsent)

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


def _log_rebalances(app: faust.App, offsets: SourceOffsets) -> None:
    """The worker's own lines for the partitions it gets and gives up."""

    # Faust sends each signal with the set of partitions as its one argument.
    @app.on_partitions_assigned.connect
    async def assigned(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        log.info("partitions assigned: %s", _partitions(args[0], offsets.topics()))

    @app.on_partitions_revoked.connect
    async def revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        if args[0]:
            log.info("partitions revoked: %s", _partitions(args[0], offsets.topics()))


class GroupMembers:
    """How many members the worker's consumer group has now, as the group coordinator says.

    The source of each worker's share of the mailboxes' limits (issue 17): asked once
    after every rebalance (the group's membership only changes in one), with one
    DescribeGroups request through the admin client. Why not Faust's assignor: only
    the group's leader sees the member list (in ``assign``); what Faust hands every
    member is keyed by each worker's web URL, the same for all workers of one host
    when the web server is off (as here), so it would count them as one. The
    coordinator's answer names every member, the same for all of them.
    """

    def __init__(
        self, bootstrap_servers: str, group_id: str, *, admin: Any = None, timeout_s: float = 10.0
    ) -> None:
        if admin is None:
            from confluent_kafka.admin import AdminClient

            from sendonce.kafka.clients import admin_config

            admin = AdminClient(admin_config(bootstrap_servers, logger="sendonce.kafka.admin"))
        self._admin = admin
        self.group_id = group_id
        self.timeout_s = timeout_s

    def count(self) -> int | None:
        """The members of the group's current generation; None if the broker did not say."""
        try:
            futures = self._admin.describe_consumer_groups(
                [self.group_id], request_timeout=self.timeout_s
            )
            described = futures[self.group_id].result(timeout=self.timeout_s)
        except Exception as exc:
            log.warning("cannot describe consumer group: %s", type(exc).__name__)
            return None
        members = len(described.members)
        return members or None


def _share_mailbox_limits(
    app: faust.App,
    settings: Settings,
    provider: EmailProvider,
    members: GroupMembers | None = None,
) -> None:
    """Give the provider's mailbox throttle its share of each limit, after every rebalance.

    Graph's and Exchange's per-mailbox limits hold across every worker of the group;
    each worker keeps to ``limit // members`` (at least 1; :meth:`MailboxThrottle.share_with`).
    The share is set in the rebalance callback, before the streams resume, so no batch
    of the new assignment sends on the old share. If the group cannot be described,
    the last share stays (a warning says so).
    """
    throttle = getattr(provider, "throttle", None)
    if not isinstance(throttle, MailboxThrottle):
        return
    group = members or GroupMembers(settings.bootstrap_servers, app.conf.id)

    @app.on_partitions_assigned.connect
    async def share_limits(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        count = await asyncio.to_thread(group.count)
        if count is None or count == throttle.members:
            return
        throttle.share_with(count)
        log.info(
            "mailbox limits shared by %d workers: %d requests in flight, %s sends a minute "
            "per mailbox",
            count,
            throttle.concurrency_share,
            throttle.sends_share if throttle.sends_share is not None else "unlimited",
        )


def _partitions(tps: Iterable[TP], topics: Iterable[str]) -> str:
    """``0-3,7 (5) of topic, topic; ...``: the partitions of each of ``topics`` (the
    lanes' sources); co-partitioned topics with the same partitions share a group."""
    by_topic: dict[str, list[int]] = {topic: [] for topic in topics}
    for tp in tps:
        if tp.topic in by_topic:
            by_topic[tp.topic].append(tp.partition)
    groups: dict[tuple[int, ...], list[str]] = {}
    for topic, ps in by_topic.items():
        groups.setdefault(tuple(sorted(ps)), []).append(topic)
    return "; ".join(
        f"{_ranges(list(ps)) or 'none'} ({len(ps)}) of {', '.join(names)}"
        for ps, names in groups.items()
    )


def _ranges(numbers: list[int]) -> str:
    """``[0, 1, 2, 5]`` as ``0-2,5``."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ",".join(f"{a}-{b}" if a != b else f"{a}" for a, b in spans)


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
    # Configured here rather than by mode's Worker (override_logging=False), so the
    # lines before the app starts go through the same filter.
    logging.config.dictConfig(worker_logging_config(settings))
    log.info(
        "started: sendonce %s, worker %s, bootstrap %s, group %s, provider %s, %d partitions",
        _version(),
        settings.worker_id,
        settings.bootstrap_servers,
        settings.app_id,
        settings.provider,
        settings.partitions,
    )
    use_event_loop(settings.event_loop)
    close_fetcher_quietly()
    worker_app = build_worker_app(settings, stop_bound_s=STOP_BOUND_S)
    worker = faust.Worker(
        worker_app.app,
        *worker_app.services,
        loglevel=settings.log_level.upper(),
        quiet=True,
        redirect_stdouts=False,
        override_logging=False,
    )
    # Faust's terminal spinner writes control characters between the log lines.
    worker.spinner = None
    code = 0
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = int(exc.code or 0) if isinstance(exc.code, int | None) else 1
    log.info("stopped (exit code %d)", code)
    return code


def _version() -> str:
    try:
        return version("sendonce")
    except PackageNotFoundError:
        return "(not installed)"


def close_fetcher_quietly() -> None:
    """Let aiokafka's consumer close while a fetch waits out a failed request.

    aiokafka's ``Fetcher.close`` cancels its pending fetch tasks and awaits each: one
    that was sleeping its retry backoff after a failed fetch (the broker is gone)
    re-raises the cancellation out of ``close``. That kills Faust's consumer thread
    before it reports its shutdown ("Exception in thread"), and the stop then waits
    mode's 60 s shutdown timeout and logs a ``TimeoutError`` traceback. Here the
    pending tasks are gathered with their cancellations as results.
    """
    from aiokafka.consumer.fetcher import Fetcher

    if getattr(Fetcher.close, "_sendonce", False):
        return

    async def close(self: Any) -> None:
        self._closed = True
        self._fetch_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._fetch_task
        # Fail all pending fetchone/fetchall calls.
        for waiter in self._fetch_waiters:
            self._notify(waiter)
        for task in self._pending_tasks:
            task.cancel()
        await asyncio.gather(*self._pending_tasks, return_exceptions=True)

    close._sendonce = True  # type: ignore[attr-defined]
    Fetcher.close = close
