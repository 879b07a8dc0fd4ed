"""The hole mender against the real broker, under steady traffic (issue 16, item 5).

A lane that Faust hands every record of a two-partition topic but one keeps finishing
records on both partitions, and a batch of partition 1 keeps it busy throughout: the
lane is never idle. The skipped record must still be read back, processed once, and
partition 0's committed offset must move past it, while partition 1 keeps committing.
The frontiers, the reads and the commits are the worker's own
(:class:`~sendonce.streams.offsets.LaneOffsets`, ``KafkaPartitionReader``); only Faust's
delivery is played by a plain consumer that drops one record.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import Mapping

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from sendonce.streams.fetcher import KafkaPartitionReader
from sendonce.streams.offsets import HoleMender, Lane, LaneOffsets, Partition
from sendonce.streams.processor import ConsumedRecord

pytestmark = pytest.mark.integration

SKIPPED = (0, 3)  # partition, offset that "Faust" never delivers
STALL_S = 1.0
DEADLINE_S = 60.0


def _topic(bootstrap: str) -> str:
    name = f"mend-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=2, replication_factor=1)])[name].result()
    return name


def _wait_for_coordinator(consumer: Consumer, topic: str) -> None:
    """A fresh broker answers NOT_COORDINATOR for a new group until its coordinator has
    loaded; the worker only gets there after joining, so wait for it here."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            consumer.committed([TopicPartition(topic, 0)], timeout=10)
            return
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _record(msg: object) -> ConsumedRecord:
    return ConsumedRecord(
        topic=msg.topic(),  # type: ignore[attr-defined]
        partition=msg.partition(),  # type: ignore[attr-defined]
        offset=msg.offset(),  # type: ignore[attr-defined]
        key=msg.key(),  # type: ignore[attr-defined]
        value=msg.value(),  # type: ignore[attr-defined]
    )


def test_a_skipped_record_is_mended_and_committed_past_while_the_lane_stays_busy(
    kafka_bootstrap: str,
) -> None:
    topic = _topic(kafka_bootstrap)
    group = f"g-{uuid.uuid4().hex[:8]}"
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "acks": "all", "linger.ms": 0})
    # Plays Faust: reads both partitions from the start and drops SKIPPED.
    delivery = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"delivery-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    delivery.assign([TopicPartition(topic, p, 0) for p in (0, 1)])
    # Commits for the worker's group, as the group member's consumer would.
    committer = Consumer(
        {"bootstrap.servers": kafka_bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    _wait_for_coordinator(committer, topic)
    reader = KafkaPartitionReader(kafka_bootstrap, group)
    watcher = KafkaPartitionReader(kafka_bootstrap, group)
    processed: Counter[tuple[int, int]] = Counter()

    async def commit(offsets: Mapping[Partition, int]) -> bool:
        tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        await asyncio.to_thread(committer.commit, offsets=tps, asynchronous=False)
        return True

    async def process(records: list[ConsumedRecord]) -> None:
        processed.update((r.partition, r.offset) for r in records)

    async def scenario() -> tuple[int, int]:
        offsets = LaneOffsets(reader, commit, owns=lambda t, p: p in (0, 1))
        lane = Lane("intents", topic, process)
        mender = HoleMender(
            [lane],
            offsets,
            reader,
            owned=lambda t: [0, 1],
            ready=lambda: True,
            stall_s=STALL_S,
            batch_size=50,
        )
        stop = asyncio.Event()

        async def traffic() -> None:
            n = 0
            while not stop.is_set():
                producer.produce(topic, key=f"k{n}".encode(), value=b"v", partition=n % 2)
                producer.poll(0)
                n += 1
                await asyncio.sleep(0.02)

        async def deliver() -> None:
            while not stop.is_set():
                msgs = await asyncio.to_thread(delivery.consume, 100, 0.2)
                records = [
                    _record(m)
                    for m in msgs
                    if not m.error() and (m.partition(), m.offset()) != SKIPPED
                ]
                if records:
                    async with lane.running(records):
                        await lane.after_mending(records)
                        await lane.process(records)
                        await offsets.finished(records)

        async def mend() -> None:
            while not stop.is_set():
                # As the worker's timer does: a failed tick is tried again next time.
                with contextlib.suppress(KafkaException):
                    await mender.tick()
                await asyncio.sleep(0.25)

        # A slow batch of partition 1 runs throughout: the lane is never idle.
        lane.enter()
        tasks = [asyncio.ensure_future(job()) for job in (traffic, deliver, mend)]
        try:
            deadline = time.monotonic() + DEADLINE_S
            committed = (0, 0)
            while time.monotonic() < deadline:
                committed = (
                    await watcher.start_offset(topic, 0),
                    await watcher.start_offset(topic, 1),
                )
                if committed[0] > SKIPPED[1] + 5 and committed[1] > SKIPPED[1] + 5:
                    break
                assert all(t.done() is False for t in tasks), [t.exception() for t in tasks]
                await asyncio.sleep(0.2)
            assert lane.in_flight >= 1 and lane.idle_for() == 0.0
            return committed
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            lane.leave()

    try:
        committed = asyncio.run(scenario())
    finally:
        producer.flush(30)
        for client in (delivery, committer, reader, watcher):
            client.close()
    assert committed[0] > SKIPPED[1] + 5, f"partition 0 stuck at the skipped record: {committed}"
    assert committed[1] > SKIPPED[1] + 5, committed
    assert processed[SKIPPED] == 1, "the skipped record was mended exactly once"
    assert max(processed.values()) == 1, "no delivered record was processed twice"
