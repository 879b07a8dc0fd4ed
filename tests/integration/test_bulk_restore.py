"""Bulk restore (streams.restore) against the real broker.

What a restored local copy must hold is computed independently of the restore:
the changelog read back in full, last write per key wins, tombstones delete.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from faust.stores.rocksdb import Store as FaustRocksDBStore

from sendonce.bench.memory import fill_ledger, ledger_template
from sendonce.settings import Settings
from sendonce.streams.restore import (
    BULK_RESTORE_OPTION,
    BulkRecovery,
    BulkRestoreStore,
    SharedCacheRocksDBOptions,
    persisted_offset,
    restore_consumer,
    restore_partitions,
)
from tests.integration.harness import Pipeline, WorkerProcess

pytestmark = pytest.mark.integration

OFFSET_KEY = FaustRocksDBStore.offset_key


def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    config = {"cleanup.policy": "compact"}
    admin.create_topics([NewTopic(name, partitions, 1, config=config)])[name].result(30)


def produce(
    bootstrap: str, topic: str, records: list[tuple[bytes, bytes | None, int | None]]
) -> None:
    """``(key, value or None for a tombstone, partition or None for murmur2)``, acked."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "acks": "all", "partitioner": "murmur2_random"}
    )
    errors: list[Any] = []
    for key, value, partition in records:
        extra = {} if partition is None else {"partition": partition}
        producer.produce(
            topic, value, key, on_delivery=lambda e, _m: e and errors.append(e), **extra
        )
        producer.poll(0)
    assert producer.flush(30) == 0
    assert not errors


def read_back(bootstrap: str, topic: str) -> tuple[dict[int, dict[bytes, bytes]], dict[int, int]]:
    """Latest value per key per partition (tombstones delete), and each partition's high - 1."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"read-back-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        last: dict[int, int] = {}
        for p in partitions:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            last[p] = high - 1
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        state: dict[int, dict[bytes, bytes]] = {p: {} for p in partitions}
        pending = {p for p in partitions if last[p] >= 0}
        deadline = time.monotonic() + 60
        while pending and time.monotonic() < deadline:
            for m in consumer.consume(10_000, timeout=1.0):
                if m.error():
                    assert m.error().code() == KafkaError._PARTITION_EOF
                    pending.discard(m.partition())
                    continue
                if m.value() is None:
                    state[m.partition()].pop(m.key(), None)
                else:
                    state[m.partition()][m.key()] = m.value()
        assert not pending
        return state, last
    finally:
        consumer.close()


def contents(db: Any) -> dict[bytes, bytes]:
    return {k: v for k, v in db.items() if k != OFFSET_KEY}


@pytest.fixture
def open_dbs(tmp_path: Path) -> Iterator[dict[int, Any]]:
    dbs: dict[int, Any] = {}
    yield dbs
    for db in dbs.values():
        db.close()


def test_restore_into_empty_store_then_catch_up(
    kafka_bootstrap: str, tmp_path: Path, open_dbs: dict[int, Any]
) -> None:
    topic = f"restore-{uuid.uuid4().hex[:8]}-changelog"
    create_topic(kafka_bootstrap, topic, 3)
    first: list[tuple[bytes, bytes | None, int | None]] = []
    for n in range(3000):
        first.append((b"key-%d" % (n % 1000), b"value-%d" % n, n % 1000 % 3))
    # Tombstones, some for keys written again afterwards.
    first += [(b"key-%d" % n, None, n % 3) for n in range(0, 1000, 10)]
    first += [(b"key-%d" % n, b"revived-%d" % n, n % 3) for n in range(0, 1000, 20)]
    produce(kafka_bootstrap, topic, first)
    options = SharedCacheRocksDBOptions(block_cache_size=8 << 20, use_rocksdict=True)
    for p in range(3):
        open_dbs[p] = options.open(tmp_path / f"ledger-{p}.db")
    targets = {(topic, p): db for p, db in open_dbs.items()}

    consumer = restore_consumer(kafka_bootstrap)
    try:
        stats = restore_partitions(consumer, targets, OFFSET_KEY, chunk_records=500)
    finally:
        consumer.close()

    expected, last = read_back(kafka_bootstrap, topic)
    assert stats.complete
    assert stats.records == len(first)
    for p in range(3):
        assert contents(open_dbs[p]) == expected[p]
        assert persisted_offset(open_dbs[p], OFFSET_KEY) == last[p]
    assert sum(len(v) for v in expected.values()) == 1000 - 100 + 50

    # More records later: only those are read.
    more = [(b"key-%d" % n, b"later-%d" % n, n % 3) for n in range(5)]
    more.append((b"key-7", None, 1))
    produce(kafka_bootstrap, topic, more)
    consumer = restore_consumer(kafka_bootstrap)
    try:
        again = restore_partitions(consumer, targets, OFFSET_KEY)
    finally:
        consumer.close()

    expected, last = read_back(kafka_bootstrap, topic)
    assert again.records == len(more)
    for p in range(3):
        assert contents(open_dbs[p]) == expected[p]
        assert persisted_offset(open_dbs[p], OFFSET_KEY) == last[p]


def wait_ready(worker: WorkerProcess, timeout: float = 180) -> str:
    """The worker's log once it logged readiness (it must stay alive meanwhile)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = worker.log_path.read_text(errors="replace")
        if "sendonce.worker: ready" in text:
            return text
        assert worker.alive(), worker.log()
        time.sleep(0.2)  # polling the log file, not waiting for a guess
    raise AssertionError(f"worker not ready in {timeout}s:\n{worker.log()}")


def ledger_dbs(settings: Settings) -> dict[int, Path]:
    paths = settings.data_dir.rglob("ledger-*.db")
    return {int(p.name.removesuffix(".db").rsplit("-", 1)[1]): p for p in paths}


def check_worker_restores_every_key(pipeline: Pipeline, bulk: bool) -> str:
    settings = pipeline.settings
    fill_ledger(settings, 0, 3000)
    # Overwrites and tombstones on the partitions the worker's own writes use.
    template = ledger_template(settings)
    extra: list[tuple[bytes, bytes | None, int | None]] = [
        (b"bench:%032x" % n, template % (b"%032x" % n, n + 10**6), None) for n in range(0, 3000, 7)
    ]
    extra += [(b"bench:%032x" % n, None, None) for n in range(0, 3000, 11)]
    produce(settings.bootstrap_servers, settings.ledger_changelog_topic, extra)
    expected, last = read_back(settings.bootstrap_servers, settings.ledger_changelog_topic)
    shutil.rmtree(settings.data_dir, ignore_errors=True)

    worker = pipeline.start_worker(
        SENDONCE_PROVIDER="null", SENDONCE_BULK_RESTORE="true" if bulk else "false"
    )
    log = wait_ready(worker)
    worker.stop()
    assert worker.process.returncode is not None

    import rocksdict

    dbs = ledger_dbs(settings)
    assert sorted(dbs) == list(range(settings.partitions))
    for partition, path in dbs.items():
        db = rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True))
        try:
            assert contents(db) == expected[partition], partition
            assert persisted_offset(db, OFFSET_KEY) == last[partition], partition
        finally:
            db.close()
    return log


@pytest.mark.timeout(400)
def test_worker_with_empty_data_dir_bulk_restores_every_key(pipeline: Pipeline) -> None:
    log = check_worker_restores_every_key(pipeline, bulk=True)

    assert "bulk restore done" in log
    # Faust's own recovery found nothing left to read.
    assert "restoring state from changelog topics" not in log


@pytest.mark.timeout(400)
def test_worker_without_bulk_restore_still_restores_every_key(pipeline: Pipeline) -> None:
    log = check_worker_restores_every_key(pipeline, bulk=False)

    assert "bulk restore" not in log
    assert "restoring state from changelog topics" in log


@pytest.fixture
def quiet_sendonce_logs() -> Iterator[None]:
    """WARNING for this test only: a level left behind silenced later tests' logs."""
    logger = logging.getLogger("sendonce")
    before = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(before)


@pytest.mark.usefixtures("quiet_sendonce_logs")
def test_worker_tables_use_the_bulk_restore_store(kafka_bootstrap: str, tmp_path: Path) -> None:
    from sendonce.streams.app import build_worker_app

    settings = Settings(
        bootstrap_servers=kafka_bootstrap,
        data_dir=tmp_path,
        provider="null",
        rocksdb_block_cache_mb=8,
    )
    tables = build_worker_app(settings).app.tables

    assert isinstance(tables.recovery, BulkRecovery)
    for name in ("ledger", "webhook_sightings"):
        store = tables[name].data
        assert isinstance(store, BulkRestoreStore), name
        assert store.bulk_restore
        assert isinstance(store.rocksdb_options, SharedCacheRocksDBOptions)
        assert store.rocksdb_options.block_cache_size == 8 << 20
        # The table's own options are left as they were (Faust pops from them).
        assert tables[name].options[BULK_RESTORE_OPTION] is True
        assert tables[name].options["driver"] == "rocksdict"
