"""Table state: RocksDB memory settings and bulk restore of changelog partitions.

Faust restores a table partition by reading its changelog through the worker's
own consumer and the table's event machinery: about 130 us of Python per record,
7,000 keys/s. Here, each active changelog partition (kept or newly assigned) and
each newly assigned standby is first caught up in bulk by a group-less confluent
consumer that writes straight into the RocksDB handle Faust opened for that
partition, in
``WriteBatch`` chunks that each carry the partition's persisted offset, so the
local copy and the offset it claims are written atomically and never disagree.
Faust's recovery then starts from that offset and finds (almost) nothing left.

Where it hooks in: :class:`BulkRestoreTableManager` (Faust's ``TableManager``
setting) builds a :class:`BulkRecovery`. Its ``on_rebalance`` runs inside the
consumer's rebalance callback, where aiokafka sends no heartbeats, so it only
notes which partitions to restore. The restore itself runs at the start of
Faust's recovery task (its first ``_wait``), off the event loop, before Faust
builds the offsets it reads from; a rebalance meanwhile cancels it through
Faust's own ``RebalanceAgain`` path.

The tables use :class:`BulkRestoreStore` (the app's ``store=`` :data:`STORE_URL`), Faust's
RocksDB store with one block cache shared by every partition database of the
process (Faust opens a 2 GiB cache per partition database) and index and filter
blocks held in that cache rather than beside it, so memory stays bounded as the
ledger grows.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import rocksdict
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from faust import stores
from faust.stores.rocksdb import RocksDBOptions
from faust.stores.rocksdb import Store as RocksDBStore
from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery

from sendonce.settings import Settings

log = logging.getLogger("sendonce.restore")

#: ``faust.App(store=...)`` for :class:`BulkRestoreStore`. A table's own ``store=``
#: would need a path (yarl finds a bare scheme URL false, and Faust then ignores it).
STORE_SCHEME = "sendonce-rocksdb"
STORE_URL = f"{STORE_SCHEME}://"
#: Table option (ours, not Faust's): whether the table's partitions are bulk restored.
BULK_RESTORE_OPTION = "sendonce_bulk_restore"

MIB = 1024 * 1024
#: Changelog records per ``WriteBatch`` at most: each batch also records its last offset.
CHUNK_RECORDS = 5_000
#: Records taken from the consumer per call; every partition's batch is written after
#: each call, so batches in memory never hold more than this many records in total.
CONSUME_BATCH = 5_000
#: Longest the restore thread goes without checking whether it should stop.
POLL_TIMEOUT_S = 0.5
#: Watermark queries: the broker answers these in milliseconds when healthy.
WATERMARK_TIMEOUT_S = 30.0

#: A changelog partition: ``(topic, partition)``.
ChangelogPartition = tuple[str, int]


def table_options(settings: Settings) -> dict[str, Any]:
    """``options=`` for an ``app.Table`` of an app whose store is :data:`STORE_URL`.

    A fresh dict per call: Faust pops keys from the dict it is given.
    """
    return {
        "driver": "rocksdict",
        "block_cache_size": settings.rocksdb_block_cache_mb * MIB,
        "write_buffer_size": settings.rocksdb_write_buffer_mb * MIB,
        "max_write_buffer_number": settings.rocksdb_max_write_buffers,
        BULK_RESTORE_OPTION: settings.bulk_restore,
    }


_shared_caches: dict[int, Any] = {}
_caches_lock = threading.Lock()


def shared_block_cache(capacity_bytes: int) -> Any:
    """The process's one RocksDB block cache of ``capacity_bytes`` (a ``rocksdict.Cache``)."""
    with _caches_lock:
        cache = _shared_caches.get(capacity_bytes)
        if cache is None:
            cache = _shared_caches[capacity_bytes] = rocksdict.Cache(capacity_bytes)
        return cache


class SharedCacheRocksDBOptions(RocksDBOptions):  # type: ignore[misc]
    """Faust's rocksdict options with one process-wide block cache.

    ``block_cache_size`` is then the budget of the whole process, not of each
    partition database; index and filter blocks are charged to it too (Faust
    keeps them outside the cache, where they grow with the number of keys).
    """

    def as_options(self) -> Any:
        """The ``rocksdict.Options`` a partition database is opened with."""
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        if self.max_open_files is not None:
            options.set_max_open_files(self.max_open_files)
        options.set_write_buffer_size(self.write_buffer_size)
        options.set_target_file_size_base(self.target_file_size_base)
        options.set_max_write_buffer_number(self.max_write_buffer_number)
        table = rocksdict.BlockBasedOptions()
        table.set_bloom_filter(self.bloom_filter_size, True)
        table.set_block_cache(shared_block_cache(self.block_cache_size))
        table.set_cache_index_and_filter_blocks(True)
        # Level-0 files are few and read on every miss: keep their index and filter.
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        table.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
        options.set_block_based_table_factory(table)
        return options


class BulkRestoreStore(RocksDBStore):  # type: ignore[misc]
    """Faust's RocksDB store with a shared block cache; its partitions may be bulk restored."""

    def __init__(
        self,
        url: Any,
        app: Any,
        table: Any,
        *,
        options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        # A copy: Faust pops from the dict it gets, which is the table's own.
        opts = dict(options or {})
        self.bulk_restore = bool(opts.pop(BULK_RESTORE_OPTION, True))
        opts.setdefault("driver", "rocksdict")
        super().__init__(url, app, table, options=opts, **kwargs)
        if not self.use_rocksdict:
            raise ValueError("BulkRestoreStore needs the rocksdict driver")
        # Faust has taken its own keys (driver, read_only) out of ``opts``.
        self.rocksdb_options = SharedCacheRocksDBOptions(**opts, use_rocksdict=True)

    def db_for_restore(self, partition: int) -> Any:
        """The RocksDB handle Faust uses for ``partition`` (opened if need be)."""
        return self._db_for_partition(partition)


# Faust resolves store URLs by scheme through this registry.
stores.STORES.aliases.setdefault(STORE_SCHEME, f"{__name__}:BulkRestoreStore")


@dataclass
class RestoreStats:
    """What one bulk restore did."""

    #: Changelog records applied (values written and tombstones deleted).
    records: int = 0
    #: Partitions that had records to read.
    partitions: int = 0
    seconds: float = 0.0
    #: Every partition reached the high watermark it had at the start.
    complete: bool = True

    @property
    def records_per_s(self) -> float:
        """Records applied per second."""
        return self.records / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Partition:
    db: Any
    #: High watermark at the start: records from here on are left to Faust.
    high: int
    batch: Any
    #: Offset of the last record applied, to be recorded with the batch.
    last: int | None = None
    pending: int = 0
    done: bool = False


def persisted_offset(db: Any, offset_key: bytes) -> int | None:
    """The changelog offset ``db`` claims to hold, as Faust's store records it."""
    raw = db.get(offset_key)
    return int(raw) if raw is not None else None


def restore_partitions(
    consumer: Any,
    dbs: Mapping[ChangelogPartition, Any],
    offset_key: bytes,
    *,
    keep_going: Callable[[], bool] = lambda: True,
    chunk_records: int = CHUNK_RECORDS,
    consume_batch: int = CONSUME_BATCH,
    poll_timeout_s: float = POLL_TIMEOUT_S,
    watermark_timeout_s: float = WATERMARK_TIMEOUT_S,
) -> RestoreStats:
    """Catch each changelog partition's database up to its current high watermark.

    ``consumer`` is a group-less confluent consumer created with
    ``enable.partition.eof``; ``dbs`` maps each changelog partition to the raw
    rocksdict database holding it. Blocking: run it in a thread. Every write is a
    ``WriteBatch`` of records in offset order plus ``offset_key`` set to the offset
    of the last of them, so whenever this stops (done, ``keep_going`` false, an
    error) each database claims exactly the records it holds.
    """
    started = time.perf_counter()
    stats = RestoreStats()
    work: dict[ChangelogPartition, _Partition] = {}
    assignment: list[Any] = []
    for (topic, partition), db in sorted(dbs.items()):
        persisted = persisted_offset(db, offset_key)
        low, high = consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=watermark_timeout_s, cached=False
        )
        if persisted is not None and persisted >= high:
            if persisted > high - 1:
                # The changelog lost records the local copy holds (recreated topic?):
                # Faust's own recovery and its consistency check deal with that.
                log.warning(
                    "%s[%d]: local copy claims offset %d, changelog ends at %d; not restoring",
                    topic,
                    partition,
                    persisted,
                    high - 1,
                )
            continue
        start = low if persisted is None else max(persisted + 1, low)
        if start >= high:
            continue
        work[(topic, partition)] = _Partition(db, high, _new_batch())
        assignment.append(TopicPartition(topic, partition, start))
    stats.partitions = len(work)
    if not work:
        stats.seconds = time.perf_counter() - started
        return stats

    def flush(part: _Partition) -> None:
        if part.last is None:
            return
        part.batch.put(offset_key, str(part.last).encode())
        part.db.write(part.batch)
        part.batch = _new_batch()
        part.pending = 0

    def finish(key: ChangelogPartition, part: _Partition) -> None:
        # Every record below ``high`` was delivered (in order) and applied: the
        # offsets without a record (compacted away, control records) hold nothing
        # to apply, so the copy holds everything up to high - 1 and may say so.
        part.last = part.high - 1
        flush(part)
        part.done = True
        consumer.pause([TopicPartition(key[0], key[1])])

    consumer.assign(assignment)
    remaining = len(work)
    while remaining and keep_going():
        touched: list[_Partition] = []
        for message in consumer.consume(num_messages=consume_batch, timeout=poll_timeout_s):
            key = (message.topic(), message.partition())
            part = work.get(key)
            if part is None or part.done:
                continue
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    raise KafkaException(error)
                if message.offset() >= part.high:
                    finish(key, part)
                    remaining -= 1
                continue
            offset = message.offset()
            if offset >= part.high:
                finish(key, part)
                remaining -= 1
                continue
            record_key = message.key()
            if record_key is not None:
                value = message.value()
                if value is None:
                    part.batch.delete(record_key)
                else:
                    part.batch.put(record_key, value)
                stats.records += 1
            part.last = offset
            part.pending += 1
            if part.pending == 1:
                touched.append(part)
            if offset >= part.high - 1:
                finish(key, part)
                remaining -= 1
            elif part.pending >= chunk_records:
                flush(part)
        for part in touched:
            if part.pending:
                flush(part)
    for part in work.values():
        if not part.done:
            flush(part)
    stats.complete = remaining == 0
    stats.seconds = time.perf_counter() - started
    return stats


def _new_batch() -> Any:
    return rocksdict.WriteBatch(raw_mode=True)


def restore_consumer(
    bootstrap_servers: str,
    client_id: str = "sendonce-restore",
    overrides: Mapping[str, Any] | None = None,
) -> Any:
    """A group-less consumer for :func:`restore_partitions` (no commits, reports EOF).

    ``overrides``: librdkafka properties replacing the defaults.
    """
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers,
        # Never joins or commits: required by the client, unused otherwise.
        "group.id": f"{client_id}-{uuid.uuid4()}",
        "client.id": client_id,
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        # Committed records only: ledger writes are transactional (streams.fencing),
        # and a fenced worker's aborted write must never reach a restored copy.
        "isolation.level": "read_committed",
        # Bounds what is prefetched (the consumer's queue, all partitions) ...
        "queued.max.messages.kbytes": 32 * 1024,
        "fetch.max.bytes": 16 * MIB,
        "max.partition.fetch.bytes": 4 * MIB,
        # ... and fetches again as soon as the queue has room: librdkafka's default
        # waits a second, which capped the restore at ~20,000 records/s (115,000
        # without it, 1 KB ledger entries, 12 partitions, 2 CPUs).
        "fetch.queue.backoff.ms": 0,
        "logger": logging.getLogger("sendonce.kafka.restore"),
    }
    config.update(overrides or {})
    return Consumer(config)


def bootstrap_from_app(app: Any) -> str:
    """``host:port,...`` of the app's brokers (Faust keeps them as ``kafka://`` URLs)."""
    return ",".join(f"{url.host}:{url.port or 9092}" for url in app.conf.broker)


class PartitionFence(Protocol):
    """Broker-enforced ownership of one table's changelog partitions (streams.fencing)."""

    #: The changelog topic whose partitions it fences.
    topic: str

    def held(self) -> set[int]:
        """Partitions this worker holds."""
        ...

    async def take_over(self, partitions: Iterable[int]) -> None:
        """Hold exactly these partitions, each initialised afresh (fencing any other owner)."""
        ...


@dataclass
class _Job:
    generation_id: int
    partitions: frozenset[Any]
    stop: threading.Event = field(default_factory=threading.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)


class BulkRecovery(Recovery):  # type: ignore[misc]
    """Faust's recovery, preceded by a bulk restore of the assigned changelog partitions.

    Every active partition (a kept one only reads what it lacks, usually its last
    transaction's commit marker) and every newly assigned standby.
    """

    def __init__(self, app: Any, tables: Any, **kwargs: Any) -> None:
        super().__init__(app, tables, **kwargs)
        self._job: _Job | None = None
        self._running: _Job | None = None
        self._reported_generation: int | None = None
        #: (generation, active partitions of the fenced changelog) to take over
        #: before this round restores anything.
        self._fence_plan: tuple[int, frozenset[int]] | None = None

    @property
    def fence(self) -> PartitionFence | None:
        """The app's ledger fence (``app.ledger_fence``), if it has one."""
        return getattr(self.app, "ledger_fence", None)

    async def on_rebalance(
        self,
        assigned: set[Any],
        revoked: set[Any],
        newly_assigned: set[Any],
        generation_id: int = 0,
    ) -> None:
        """Note the partitions to bulk restore, then let Faust set up its recovery."""
        # The previous restore was told to stop at the revocation; its thread must
        # be gone before Faust reads offsets or writes to any partition again.
        await self._stop_running()
        self._job = None
        self._fence_plan = None
        if generation_id == self.app.consumer_generation_id:
            assignor = self.app.assignor
            fence = self.fence
            if fence is not None:
                actives = frozenset(
                    tp.partition for tp in assignor.assigned_actives() if tp.topic == fence.topic
                )
                self._fence_plan = (generation_id, actives)
            # Every active partition, kept ones too: a transactional changelog ends in
            # a commit marker after the last record a worker wrote, and Faust's own
            # recovery, which never sees control records, would wait for it forever.
            # The bulk restore reads past it (for a kept partition, in no time).
            mine = assignor.assigned_actives() | (assignor.assigned_standbys() & newly_assigned)
            partitions = frozenset(
                tp for tp in mine if _bulk_restores(self.tables._changelogs.get(tp.topic))
            )
            if partitions:
                self._job = _Job(generation_id, partitions)
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)

    def need_recovery(self) -> bool:
        """Faust's question whether its recovery must read changelog records.

        Answered by Faust; the first yes of a generation is logged as the worker's own
        line (Faust's "Restoring state" line is a DEBUG line in a worker).
        """
        needed = bool(super().need_recovery())
        if needed and self._reported_generation != self._generation_id:
            self._reported_generation = self._generation_id
            log.info(
                "restoring state from changelog topics: %d records to read",
                sum(self.active_remaining().values()),
            )
        return needed

    def on_partitions_revoked(self, revoked: set[Any]) -> None:
        """A rebalance starts: stop a bulk restore under way (its progress is kept)."""
        if self._running is not None:
            self._running.stop.set()
        super().on_partitions_revoked(revoked)

    async def on_stop(self) -> None:
        """Stop a bulk restore under way before the stores close."""
        await self._stop_running()
        await super().on_stop()

    async def _wait(self, coro: Any, timeout: Any = None) -> None:
        # Faust's recovery task opens each round with ``_wait(sleep(delay))``, before
        # it builds the offsets it reads from: the restore goes first, here, with no
        # timeout (Faust's other steps have one), and a new rebalance or a stop
        # interrupts it like any of Faust's steps.
        plan = self._fence_plan
        fence = self.fence
        if (
            plan is not None
            and fence is not None
            and plan[0] == self._generation_id
            and not self.signal_recovery_start.is_set()
        ):
            # Ownership first: the broker fences the partitions' previous owners and
            # aborts what they left open before the restore reads (streams.fencing).
            self._fence_plan = None
            try:
                await super()._wait(fence.take_over(plan[1]))
            except BaseException:
                if isinstance(coro, Coroutine):
                    coro.close()
                raise
        job = self._job
        if (
            job is not None
            and job.generation_id == self._generation_id
            # Set: a newer rebalance is pending and this round is about to end;
            # the job is left for the round that follows.
            and not self.signal_recovery_start.is_set()
        ):
            self._job = None
            try:
                await super()._wait(self._bulk_restore(job))
            except BaseException:
                if isinstance(coro, Coroutine):
                    coro.close()
                raise
        await super()._wait(coro, timeout)

    async def _build_highwaters(
        self, consumer: Any, tps: Any, destination: Any, title: str
    ) -> None:
        """Faust's highwaters; then bulk-restore what it would still read of our tables.

        A bulk-restored partition can grow after the restore read its high watermark
        (a transaction's marker, most often), and Faust's recovery never sees control
        records: it would wait for that "record" forever (its fix-up for aborted
        transactions fails while the partition has no position). So a bulk-restorable
        active partition behind the highwater Faust just read is restored again here,
        and Faust's recovery has nothing left to read of it.
        """
        await super()._build_highwaters(consumer, tps, destination, title)
        if title != "active":
            return
        behind = frozenset(
            tp
            for tp in tps
            if _bulk_restores(self.tables._changelogs.get(tp.topic))
            and _offset_or_none(self.tp_to_table[tp].persisted_offset(tp)) < destination[tp]
        )
        if not behind:
            return
        log.info(
            "%d changelog partitions grew after the bulk restore; reading them too", len(behind)
        )
        await self._bulk_restore(_Job(self.app.consumer_generation_id, behind))
        for tp in behind:
            # Never below what the copy holds (Faust's consistency check).
            offset = self.tp_to_table[tp].persisted_offset(tp)
            if offset is not None and offset > destination[tp]:
                destination[tp] = offset

    async def _stop_running(self) -> None:
        running = self._running
        if running is not None:
            running.stop.set()
            await running.finished.wait()
            if self._running is running:
                self._running = None

    async def _bulk_restore(self, job: _Job) -> None:
        dbs: dict[ChangelogPartition, Any] = {}
        offset_key = RocksDBStore.offset_key
        for tp in sorted(job.partitions):
            table: Any = self.tp_to_table[tp]
            store = table.data
            offset_key = store.offset_key
            try:
                dbs[(tp.topic, tp.partition)] = store.db_for_restore(tp.partition)
            except Exception as exc:
                # Most likely another worker's lock on a shared data dir: Faust's
                # recovery, which retries, takes this partition over.
                log.warning(
                    "bulk restore skips %s[%d]: %s", tp.topic, tp.partition, type(exc).__name__
                )
        if not dbs:
            return
        tables = sorted({self.tp_to_table[tp].name for tp in job.partitions})
        log.info("bulk restore started: %d changelog partitions of %s", len(dbs), ", ".join(tables))
        generation = job.generation_id

        def keep_going() -> bool:
            return not job.stop.is_set() and self.app.consumer_generation_id == generation

        self._running = job
        started = time.perf_counter()
        try:
            stats = await _in_thread(
                job,
                lambda: _restore_blocking(
                    bootstrap_from_app(self.app), dbs, offset_key, keep_going
                ),
            )
        except asyncio.CancelledError:
            job.stop.set()
            raise
        except Exception as exc:
            log.warning(
                "bulk restore failed after %.1fs, Faust's recovery takes over: %s",
                time.perf_counter() - started,
                type(exc).__name__,
            )
            stats = None
        self._refresh_offsets(job.partitions)
        if stats is not None:
            log.info(
                "bulk restore %s: %d records into %d of %d changelog partitions in %.2fs "
                "(%.0f records/s)",
                "done" if stats.complete else "interrupted",
                stats.records,
                stats.partitions,
                len(dbs),
                stats.seconds,
                stats.records_per_s,
            )

    def _refresh_offsets(self, partitions: Iterable[Any]) -> None:
        # Faust read the persisted offsets in on_rebalance, before the restore.
        for tp in partitions:
            table = self.tp_to_table.get(tp)
            offset = table.persisted_offset(tp) if table is not None else None
            if offset is None:
                continue
            if tp in self.active_tps:
                self.active_offsets[tp] = offset
            if tp in self.standby_tps:
                self.standby_offsets[tp] = offset


async def _in_thread(job: _Job, work: Callable[[], RestoreStats]) -> RestoreStats:
    """``work()`` in a thread of its own; ``job.finished`` is set when it has returned.

    Not ``asyncio.to_thread``: cancelling that can drop work not yet started
    without a word, and the caller must know when nothing writes any more.
    """
    loop = asyncio.get_running_loop()
    result: asyncio.Future[RestoreStats] = loop.create_future()

    def settle(value: RestoreStats | None, error: BaseException | None) -> None:
        if result.done():
            return
        if error is not None:
            result.set_exception(error)
        else:
            assert value is not None
            result.set_result(value)

    def run() -> None:
        value: RestoreStats | None = None
        error: BaseException | None = None
        try:
            value = work()
        except BaseException as exc:
            error = exc
        try:
            loop.call_soon_threadsafe(settle, value, error)
            loop.call_soon_threadsafe(job.finished.set)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting any more

    threading.Thread(target=run, name="sendonce-bulk-restore", daemon=True).start()
    return await result


def _restore_blocking(
    bootstrap_servers: str,
    dbs: Mapping[ChangelogPartition, Any],
    offset_key: bytes,
    keep_going: Callable[[], bool],
) -> RestoreStats:
    consumer = restore_consumer(bootstrap_servers)
    try:
        return restore_partitions(consumer, dbs, offset_key, keep_going=keep_going)
    finally:
        consumer.close()
        _release_free_memory()


def _release_free_memory() -> None:
    # The restore's buffers (fetched records, batches) are freed by now, but glibc
    # keeps freed heap mapped; handing it back keeps the worker's RSS at what it
    # actually uses. Elsewhere (musl, macOS) there is nothing to call.
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _offset_or_none(offset: int | None) -> int:
    return -1 if offset is None else offset


def _bulk_restores(table: Any) -> bool:
    if table is None:
        return False
    store = table.data
    return isinstance(store, BulkRestoreStore) and store.bulk_restore


class BulkRestoreTableManager(TableManager):  # type: ignore[misc]
    """Faust's table manager with :class:`BulkRecovery` (``faust.App(TableManager=...)``)."""

    @property
    def recovery(self) -> Recovery:
        """Recovery service used by this table manager."""
        if self._recovery is None:
            self._recovery = BulkRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery
