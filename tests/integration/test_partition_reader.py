"""KafkaPartitionReader against the real broker: what the offset frontier starts from and
what the hole mender reads."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from sendonce.streams.fetcher import KafkaPartitionReader

pytestmark = pytest.mark.integration


def _topic(bootstrap: str) -> str:
    name = f"reader-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])[name].result()
    return name


def _produce_plain(bootstrap: str, topic: str, n: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for i in range(n):
        producer.produce(topic, key=f"k{i}".encode(), value=f"plain-{i}".encode(), partition=0)
    assert producer.flush(30) == 0


def test_start_offset_is_the_committed_offset_or_the_log_start(kafka_bootstrap: str) -> None:
    topic = _topic(kafka_bootstrap)
    group = f"g-{uuid.uuid4().hex[:8]}"
    _produce_plain(kafka_bootstrap, topic, 5)
    reader = KafkaPartitionReader(kafka_bootstrap, group)
    try:
        assert asyncio.run(reader.start_offset(topic, 0)) == 0
        assert asyncio.run(reader.end_offset(topic, 0)) == 5
        committer = Consumer(
            {"bootstrap.servers": kafka_bootstrap, "group.id": group, "enable.auto.commit": False}
        )
        committer.commit(offsets=[TopicPartition(topic, 0, 3)], asynchronous=False)
        committer.close()
        assert asyncio.run(reader.start_offset(topic, 0)) == 3
    finally:
        reader.close()


def test_read_returns_a_range_and_where_it_stopped(kafka_bootstrap: str) -> None:
    topic = _topic(kafka_bootstrap)
    _produce_plain(kafka_bootstrap, topic, 6)
    reader = KafkaPartitionReader(kafka_bootstrap, f"g-{uuid.uuid4().hex[:8]}")
    try:
        records, stop = asyncio.run(reader.read(topic, 0, 1, 6, limit=3))
        assert [(r.offset, r.value) for r in records] == [
            (1, b"plain-1"),
            (2, b"plain-2"),
            (3, b"plain-3"),
        ]
        assert stop == 4
        rest, stop_rest = asyncio.run(reader.read(topic, 0, stop, 6, limit=100))
        assert [r.offset for r in rest] == [4, 5] and stop_rest == 6
        beyond, stop_beyond = asyncio.run(reader.read(topic, 0, 6, 10, limit=100))
        assert beyond == [] and stop_beyond == 6, "nothing past the end is claimed"
    finally:
        reader.close()
