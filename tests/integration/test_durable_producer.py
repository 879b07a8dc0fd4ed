"""DurableProducer against the real broker: what a ledger write or a result relies on."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from sendonce.kafka.producer import DeliveryError, DurableProducer
from sendonce.streams.processor import partition_for_key

pytestmark = pytest.mark.integration


def _topic(bootstrap: str, partitions: int) -> str:
    name = f"durable-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[
        name
    ].result()
    return name


def _read_all(bootstrap: str, topic: str, partitions: int, count: int) -> list[object]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"g-{uuid.uuid4().hex[:8]}"})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    messages: list[object] = []
    try:
        while len(messages) < count:
            batch = consumer.consume(count - len(messages), timeout=10)
            assert batch, f"only {len(messages)} of {count} records readable"
            messages += [m for m in batch if m.error() is None]
    finally:
        consumer.close()
    return messages


def test_each_send_returns_the_acknowledged_offset_and_keys_land_on_murmur2(
    kafka_bootstrap: str,
) -> None:
    topic = _topic(kafka_bootstrap, 6)
    producer = DurableProducer(kafka_bootstrap, linger_ms=2)
    keys = [f"tenant:{i:04d}".encode() for i in range(60)]

    async def run() -> list[tuple[int, int]]:
        delivered = await asyncio.gather(
            *(producer.send(topic, k, b"v-" + k, headers=[("h", b"1")]) for k in keys)
        )
        explicit = await producer.write(topic, b"pinned", b"x", 5)
        return [(d.partition, d.offset) for d in delivered] + [(5, explicit)]

    try:
        places = asyncio.run(run())
    finally:
        producer.close()
    for key, (partition, _) in zip(keys, places, strict=False):
        # Kafka's default partitioner, as aiokafka and the Java clients use it.
        assert partition == partition_for_key(key, 6)
    records = _read_all(kafka_bootstrap, topic, 6, len(keys) + 1)
    found = {(m.partition(), m.offset()): m for m in records}  # type: ignore[attr-defined]
    assert set(found) == set(places), "every returned offset holds its record"
    for key, place in zip(keys, places, strict=False):
        message = found[place]
        assert message.key() == key and message.value() == b"v-" + key  # type: ignore[attr-defined]
        assert message.headers() == [("h", b"1")]  # type: ignore[attr-defined]
    assert found[places[-1]].key() == b"pinned"  # type: ignore[attr-defined]


def test_a_write_kafka_refuses_raises_instead_of_returning(kafka_bootstrap: str) -> None:
    topic = _topic(kafka_bootstrap, 1)
    producer = DurableProducer(kafka_bootstrap, linger_ms=0, extra={"message.timeout.ms": 5000})

    async def run() -> None:
        # Partition 3 of a one-partition topic: the record can never be acknowledged.
        await producer.send(topic, b"k", b"v", partition=3)

    try:
        with pytest.raises(DeliveryError, match=topic):
            asyncio.run(run())
    finally:
        producer.close()
