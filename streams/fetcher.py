"""Reading one intent record back by offset, for the reconciler."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from sendonce.streams.ledger import IntentRef
from sendonce.streams.processor import ConsumedRecord

log = logging.getLogger("sendonce.worker")


class KafkaRecordFetcher:
    """Fetches single records by topic/partition/offset with a group-less consumer.

    One consumer reassigned per fetch, serialised by a lock and run off the event
    loop: the reconciler has one, and operator commands their own, so a backlog of
    reconciliation reads never holds up an operator. A partition whose leader is
    moving (a broker restart, a leader election) answers "unknown partition" or
    "not leader" for a while: such errors are retried for ``retry_s`` before they
    count, since a failed read fails its batch and stops the worker.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        timeout_s: float = 10.0,
        *,
        retry_s: float = 30.0,
        backoff_s: float = 0.5,
    ) -> None:
        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            # Required by librdkafka even though nothing joins or commits.
            "group.id": f"sendonce-fetcher-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "logger": logging.getLogger("sendonce.kafka.fetcher"),
        }
        self._consumer = Consumer(config)
        self._timeout_s = timeout_s
        self._retry_s = retry_s
        self._backoff_s = backoff_s
        self._lock = asyncio.Lock()
        self._closed = False

    async def fetch(self, ref: IntentRef) -> ConsumedRecord | None:
        """The record at ``ref``; ``None`` when it no longer exists."""
        deadline = time.monotonic() + self._retry_s
        while True:
            try:
                async with self._lock:
                    return await asyncio.to_thread(self._fetch, ref)
            except KafkaException as exc:
                if not _transient(exc) or time.monotonic() >= deadline:
                    raise
                log.debug("reading %s: %s; retrying", ref, exc)
            await asyncio.sleep(self._backoff_s)

    def _fetch(self, ref: IntentRef) -> ConsumedRecord | None:
        tp = TopicPartition(ref.topic, ref.partition, ref.offset)
        low, high = self._consumer.get_watermark_offsets(tp, timeout=self._timeout_s)
        if not low <= ref.offset < high:
            return None
        self._consumer.assign([tp])
        msg = self._consumer.poll(self._timeout_s)
        if msg is None or msg.error() or msg.offset() != ref.offset:
            raise RuntimeError(f"could not read intent record {ref.topic}[{ref.partition}]")
        _, timestamp_ms = msg.timestamp()
        return ConsumedRecord(
            topic=ref.topic,
            partition=ref.partition,
            offset=ref.offset,
            key=msg.key(),
            value=msg.value(),
            timestamp_ms=timestamp_ms,
            headers=_headers(msg.headers()),
        )

    def close(self) -> None:
        """Leave (once; every lane that used the fetcher closes it)."""
        if not self._closed:
            self._closed = True
            self._consumer.close()


#: Errors of a partition whose leader is moving or a broker that is briefly away.
_TRANSIENT = frozenset(
    {
        KafkaError._UNKNOWN_PARTITION,
        KafkaError._TRANSPORT,
        KafkaError._TIMED_OUT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError.REQUEST_TIMED_OUT,
    }
)


def _transient(exc: KafkaException) -> bool:
    error = exc.args[0] if exc.args else None
    if not isinstance(error, KafkaError):
        return False
    return bool(error.retriable()) or error.code() in _TRANSIENT


def _headers(raw: Any) -> tuple[tuple[str, bytes | None], ...]:
    pairs = raw.items() if isinstance(raw, dict) else (raw or [])
    return tuple((str(k), v.encode() if isinstance(v, str) else v) for k, v in pairs)


class KafkaForwardedLookup:
    """Finds whether a dedupe id was already forwarded, reading one partition's tail.

    Only runs after a crash between marking and forwarding, so reading from the
    marking time (via offsets-for-times) to the end of one partition is cheap.
    """

    def __init__(self, bootstrap_servers: str, topic: str, timeout_s: float = 10.0) -> None:
        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            "group.id": f"sendonce-forwarded-lookup-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "logger": logging.getLogger("sendonce.kafka.lookup"),
        }
        self._consumer = Consumer(config)
        self._topic = topic
        self._timeout_s = timeout_s
        self._lock = asyncio.Lock()

    async def contains(self, dedupe_id: str, partition: int, since_ms: int) -> bool:
        """Whether a record keyed ``dedupe_id`` is on ``partition`` at or after ``since_ms``."""
        async with self._lock:
            return await asyncio.to_thread(self._contains, dedupe_id.encode(), partition, since_ms)

    def _contains(self, key: bytes, partition: int, since_ms: int) -> bool:
        # A little slack: the forward's timestamp is taken after the marking time,
        # but clocks of producer and broker may differ slightly.
        start = TopicPartition(self._topic, partition, max(0, since_ms - 60_000))
        [found] = self._consumer.offsets_for_times([start], timeout=self._timeout_s)
        _, high = self._consumer.get_watermark_offsets(
            TopicPartition(self._topic, partition), timeout=self._timeout_s
        )
        offset = found.offset if found.offset >= 0 else high
        if offset >= high:
            return False
        self._consumer.assign([TopicPartition(self._topic, partition, offset)])
        while offset < high:
            msg = self._consumer.poll(self._timeout_s)
            if msg is None:
                raise RuntimeError(f"could not read {self._topic}[{partition}] to its end")
            if msg.error():
                continue
            if msg.key() == key:
                return True
            offset = (msg.offset() or 0) + 1
        return False

    def close(self) -> None:
        """Leave."""
        self._consumer.close()


class KafkaPartitionReader:
    """Committed offsets, high watermarks and record ranges of the worker's group.

    A group-less confluent consumer configured with the worker's group id can read the
    group's committed offsets without joining it. Used by :mod:`streams.offsets`; its
    calls are rare (a new frontier, an idle lane), so one lock and a thread suffice.
    """

    def __init__(self, bootstrap_servers: str, group_id: str, timeout_s: float = 10.0) -> None:
        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            "group.id": group_id,
            "enable.auto.commit": False,
            # Records of aborted transactions are not intents.
            "isolation.level": "read_committed",
            "logger": logging.getLogger("sendonce.kafka.reader"),
        }
        self._consumer = Consumer(config)
        self._timeout_s = timeout_s
        self._lock = asyncio.Lock()

    async def start_offset(self, topic: str, partition: int) -> int:
        """The group's committed offset, or the earliest offset when none is committed."""
        async with self._lock:
            return await asyncio.to_thread(self._start_offset, topic, partition)

    def _start_offset(self, topic: str, partition: int) -> int:
        deadline = time.monotonic() + self._timeout_s
        while True:
            try:
                [committed] = self._consumer.committed(
                    [TopicPartition(topic, partition)], timeout=self._timeout_s
                )
                break
            except KafkaException as exc:
                # NOT_COORDINATOR and friends while the group coordinator moves or
                # loads (a fresh or restarted broker): retriable, so retry a while.
                error = exc.args[0] if exc.args else None
                if not (isinstance(error, KafkaError) and error.retriable()):
                    raise
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)
        if committed.error:
            raise RuntimeError(f"cannot read committed offset of {topic}[{partition}]")
        if committed.offset >= 0:
            return int(committed.offset)
        low, _ = self._consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=self._timeout_s
        )
        return int(low)

    async def end_offset(self, topic: str, partition: int) -> int:
        """The partition's high watermark."""
        async with self._lock:
            return await asyncio.to_thread(self._end_offset, topic, partition)

    def _end_offset(self, topic: str, partition: int) -> int:
        _, high = self._consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=self._timeout_s
        )
        return int(high)

    async def read(
        self, topic: str, partition: int, start: int, end: int, limit: int
    ) -> tuple[list[ConsumedRecord], int]:
        """Up to ``limit`` records of ``[start, end)`` and the offset reading stopped at."""
        async with self._lock:
            return await asyncio.to_thread(self._read, topic, partition, start, end, limit)

    def _read(
        self, topic: str, partition: int, start: int, end: int, limit: int
    ) -> tuple[list[ConsumedRecord], int]:
        low, high = self._consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=self._timeout_s
        )
        # Offsets below the log start were deleted by retention: nothing to read there.
        start = max(start, low)
        end = min(end, high)
        if start >= end:
            return [], max(start, end)
        self._consumer.assign([TopicPartition(topic, partition, start)])
        records: list[ConsumedRecord] = []
        stop = start
        try:
            while stop < end and len(records) < limit:
                msg = self._consumer.poll(self._timeout_s)
                if msg is None:
                    # Only transaction markers (or aborted records) up to the end.
                    position = self._consumer.position([TopicPartition(topic, partition)])
                    offset = position[0].offset if position else -1
                    if offset > stop:
                        stop = min(offset, end)
                        continue
                    raise RuntimeError(f"could not read {topic}[{partition}] from {stop}")
                if msg.error():
                    continue
                offset = msg.offset() or 0
                if offset >= end:
                    stop = end
                    break
                _, timestamp_ms = msg.timestamp()
                records.append(
                    ConsumedRecord(
                        topic=topic,
                        partition=partition,
                        offset=offset,
                        key=msg.key(),
                        value=msg.value(),
                        timestamp_ms=timestamp_ms,
                        headers=_headers(msg.headers()),
                    )
                )
                stop = offset + 1
        finally:
            self._consumer.unassign()
        return records, stop

    def close(self) -> None:
        """Release the client (it never joined the group)."""
        self._consumer.close()
