"""Reading result and dead-letter topics back as plain dicts.

:func:`read_topics` reads topics once, to their ends; :class:`ResultWatcher` follows
them (a :class:`sendonce.kafka.follower.TopicFollower`, the reader replay and the
benchmarks follow results with too) until the records a test or demo waits for arrived.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from sendonce.kafka.clients import consumer_config
from sendonce.kafka.follower import TopicFollower
from sendonce.schemas.codec import SchemaCodec, default_codec
from sendonce.schemas.errors import CodecError


@dataclass(frozen=True)
class ReadRecord:
    """A decoded record with its coordinates."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: dict[str, Any]


def read_topics(
    bootstrap_servers: str,
    topics: Sequence[str],
    *,
    until_end: bool = True,
    timeout: float = 30.0,
    codec: SchemaCodec | None = None,
) -> Iterator[ReadRecord]:
    """Yield every record of ``topics`` from the beginning.

    With ``until_end`` it stops once every partition's end (as of the call) is
    reached; otherwise it follows new records until ``timeout`` passes idle.
    """
    codec = codec or default_codec()
    consumer = Consumer(
        consumer_config(
            bootstrap_servers,
            group="sendonce-reader",
            logger="sendonce.kafka.results",
            overrides={"enable.partition.eof": True},
        )
    )
    try:
        metadata = consumer.list_topics(timeout=timeout)
        partitions = [
            TopicPartition(t, p)
            for t in topics
            if t in metadata.topics
            for p in metadata.topics[t].partitions
        ]
        ends: dict[tuple[str, int], int] = {}
        for tp in partitions:
            low, high = consumer.get_watermark_offsets(tp, timeout=timeout)
            ends[(tp.topic, tp.partition)] = high
            tp.offset = low
        consumer.assign(partitions)
        pending = {tp for tp, end in ends.items() if end > 0} if until_end else set(ends)
        deadline = time.monotonic() + timeout
        while (pending or not until_end) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            topic, partition, offset = _coordinates(msg)
            where = (topic, partition)
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    if until_end and offset >= ends.get(where, 0):
                        pending.discard(where)
                    continue
                raise RuntimeError(f"consume error: {error}")
            if not until_end:
                deadline = time.monotonic() + timeout
            raw = msg.value()
            try:
                value = codec.decode(raw) if raw is not None else {}
            except CodecError as exc:
                value = {"_undecodable": str(exc)}
            yield ReadRecord(topic, partition, offset, msg.key(), value)
            if until_end and offset + 1 >= ends.get(where, 0):
                pending.discard(where)
    finally:
        consumer.close()


def record_identity(record: ReadRecord) -> str:
    """What makes a result or dead letter the same one when it is repeated."""
    value = record.value
    if "result_id" in value:
        return str(value["result_id"])
    return f"dlq:{value.get('source_topic')}:{value.get('source_partition')}:" + str(
        value.get("source_offset")
    )


def _distinct(records: Sequence[ReadRecord]) -> list[ReadRecord]:
    seen: dict[str, ReadRecord] = {}
    for r in records:
        seen.setdefault(record_identity(r), r)
    return list(seen.values())


def _coordinates(msg: Message) -> tuple[str, int, int]:
    return (msg.topic() or "", msg.partition() or 0, msg.offset() or 0)


class ResultWatcher:
    """Follows result and dead-letter topics from the beginning, for tests and the demo.

    ``wait_for(n)`` returns as soon as ``n`` records have arrived (an event, not
    a sleep), or raises ``TimeoutError`` with what did arrive.
    """

    def __init__(
        self, bootstrap_servers: str, topics: Sequence[str], codec: SchemaCodec | None = None
    ) -> None:
        self.codec = codec or default_codec()
        self.records: list[ReadRecord] = []
        # Raises MissingTopicsError (a RuntimeError) when a topic does not exist.
        self._follower = TopicFollower(bootstrap_servers, topics, group="sendonce-watcher")

    def poll(self, timeout: float = 0.5) -> int:
        """Consume what is available; returns how many records arrived."""
        got = 0
        for msg in self._follower.consume(1000, timeout):
            if msg.error():
                raise RuntimeError(f"consume error: {msg.error()}")
            raw = msg.value()
            value = self.codec.decode(raw) if raw is not None else {}
            self.records.append(ReadRecord(*_coordinates(msg), msg.key(), value))
            got += 1
        return got

    def wait_for(self, count: int, timeout: float = 120.0) -> list[ReadRecord]:
        """Block until at least ``count`` records arrived in total."""
        deadline = time.monotonic() + timeout
        while len(self.records) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.records)} of {count} records after {timeout}s")
            self.poll()
        return self.records

    def wait_for_distinct(
        self,
        count: int,
        timeout: float = 120.0,
        alive: Callable[[], bool] | None = None,
    ) -> list[ReadRecord]:
        """Block until ``count`` distinct records arrived, then return one of each.

        Results are told apart by their deterministic ``result_id`` (a repeat
        after a crash has the same id), dead letters by source coordinates.
        ``alive`` lets the caller fail fast when the process producing them died.
        """
        deadline = time.monotonic() + timeout
        while True:
            distinct = _distinct(self.records)
            if len(distinct) >= count:
                return distinct
            if alive is not None and not alive():
                raise RuntimeError(f"producer of results died after {len(distinct)} of {count}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(distinct)} of {count} records after {timeout}s")
            self.poll()

    def close(self) -> None:
        """Leave."""
        self._follower.close()
