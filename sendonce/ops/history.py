"""What Kafka holds about the past: intent records, ledger entries, results.

The operator commands (``replay --dry-run``, ``trace``, ``review list``) answer from
the source of truth, the topics, never from a guess: the ledger's latest entry per
key is the last record for that key in the ledger's compacted changelog, an intent
record is where it sits in the intents topic. :class:`TopicReader` reads partition
ranges with a group-less consumer (it joins no group and commits nothing, so it
never disturbs the workers), and :func:`ledger_entries` folds the changelog into
the latest entry per key.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from sendonce.kafka.clients import consumer_config
from sendonce.settings import Settings
from sendonce.streams.ledger import IntentRef, LedgerEntry, LedgerStatus, status_marker
from sendonce.streams.processor import partition_for_key

log = logging.getLogger("sendonce.history")

#: Records fetched per ``consume`` call while scanning.
_CHUNK = 2000

_T = TypeVar("_T")

#: Errors of an offset query that go away once the partition has a leader again.
_TRANSIENT = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.FENCED_LEADER_EPOCH,
        KafkaError.UNKNOWN_LEADER_EPOCH,
        KafkaError.OFFSET_NOT_AVAILABLE,
    }
)


@dataclass(frozen=True)
class StoredRecord:
    """One record as it sits in a topic."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()

    @property
    def ref(self) -> IntentRef:
        """The record's coordinates."""
        return IntentRef(self.topic, self.partition, self.offset)

    def header(self, name: str) -> bytes | None:
        """The last value of header ``name``, or ``None``."""
        found: bytes | None = None
        for k, v in self.headers:
            if k == name:
                found = v
        return found


class HistoryError(RuntimeError):
    """Kafka could not answer (unreachable broker, missing topic)."""


class TopicReader:
    """Reads partition ranges of any topic, without joining a consumer group."""

    def __init__(self, bootstrap_servers: str, *, timeout_s: float = 15.0) -> None:
        self.bootstrap_servers = bootstrap_servers
        self._timeout_s = timeout_s
        config = consumer_config(
            bootstrap_servers,
            group="sendonce-history",
            logger="sendonce.kafka.history",
            overrides={
                "enable.partition.eof": True,
                # Records of aborted transactions never happened.
                "isolation.level": "read_committed",
                "fetch.queue.backoff.ms": 0,
                # A fetch the broker holds open (up to 500 ms by default, waiting for new
                # records) delays every request behind it on the connection: the next
                # partition's watermark or offset query waited half a second each.
                "fetch.wait.max.ms": 10,
            },
        )
        self._consumer = Consumer(config)
        self._partitions: dict[str, list[int]] = {}

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release the client."""
        self._consumer.close()

    def partitions(self, topic: str) -> list[int]:
        """The partition numbers of ``topic``; :class:`HistoryError` if it does not exist."""
        known = self._partitions.get(topic)
        if known is not None:
            return known
        try:
            metadata = self._consumer.list_topics(topic, timeout=self._timeout_s)
        except KafkaException as exc:
            raise HistoryError(f"cannot reach Kafka at {self.bootstrap_servers}: {exc}") from exc
        info = metadata.topics.get(topic)
        if info is None or info.error is not None or not info.partitions:
            raise HistoryError(f"topic {topic} does not exist")
        found = sorted(info.partitions)
        self._partitions[topic] = found
        return found

    def watermarks(self, topic: str, partition: int) -> tuple[int, int]:
        """``(low, high)``: the first offset still stored and the next offset to be written."""
        try:
            low, high = self._retrying(
                lambda: self._consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=self._timeout_s
                )
            )
        except KafkaException as exc:
            raise HistoryError(f"cannot read the offsets of {topic}[{partition}]: {exc}") from exc
        return int(low), int(high)

    def _retrying(self, call: Callable[[], _T]) -> _T:
        """``call()``, again while the broker answers with a transient error.

        A partition whose leader is moving (a fresh topic, a broker restart, a
        reassignment) answers NOT_LEADER_FOR_PARTITION or LEADER_NOT_AVAILABLE for a
        moment; librdkafka retries that for fetches and produces but not for offset
        queries.
        """
        deadline = time.monotonic() + self._timeout_s
        while True:
            try:
                return call()
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                transient = isinstance(error, KafkaError) and (
                    error.retriable() or error.code() in _TRANSIENT
                )
                if not transient or time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)  # backoff before asking the broker again

    def offsets_for_time(self, topic: str, timestamp_ms: int) -> dict[int, int]:
        """Per partition, the first offset whose timestamp is at or after ``timestamp_ms``.

        A partition with no such record maps to its high watermark (nothing to read).
        """
        parts = self.partitions(topic)
        query = [TopicPartition(topic, p, timestamp_ms) for p in parts]
        try:
            found = self._retrying(
                lambda: self._consumer.offsets_for_times(query, timeout=self._timeout_s)
            )
        except KafkaException as exc:
            raise HistoryError(f"cannot look up offsets by time in {topic}: {exc}") from exc
        offsets: dict[int, int] = {}
        for tp in found:
            offsets[tp.partition] = (
                int(tp.offset) if tp.offset >= 0 else self.watermarks(topic, tp.partition)[1]
            )
        return offsets

    def scan(
        self,
        topic: str,
        partition: int,
        start: int | None = None,
        end: int | None = None,
        *,
        key: bytes | None = None,
        on_record: Callable[[int], None] | None = None,
    ) -> Iterator[StoredRecord]:
        """The records of ``topic[partition]`` in ``[start, end)``, in offset order.

        ``start`` defaults to the partition's first stored offset, ``end`` to its high
        watermark as of the call. With ``key``, only records with that key are yielded
        (the others are skipped before anything is copied out of librdkafka's buffer
        more than once). ``on_record(offset)`` is called for every record read, kept or
        not, for progress reporting.
        """
        low, high = self.watermarks(topic, partition)
        first = low if start is None else max(start, low)
        stop = high if end is None else min(end, high)
        if first >= stop:
            return
        self._consumer.assign([TopicPartition(topic, partition, first)])
        try:
            position = first
            idle_deadline = time.monotonic() + self._timeout_s
            while position < stop:
                # ``consume(n, timeout)`` waits for n records or the whole timeout, so
                # a partition holding fewer than n cost the full timeout: wait for the
                # first record only, then take whatever else is already fetched.
                head = self._consumer.poll(0.5)
                batch = [head, *self._consumer.consume(_CHUNK, timeout=0)] if head else []
                if not batch:
                    if time.monotonic() > idle_deadline:
                        raise HistoryError(
                            f"no progress reading {topic}[{partition}] at offset {position}"
                        )
                    continue
                idle_deadline = time.monotonic() + self._timeout_s
                for msg in batch:
                    error = msg.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            # Compaction or transaction markers can leave the last
                            # offsets below the watermark without a record.
                            position = max(position, int(msg.offset() or 0))
                            if position >= stop or _at_end(self._consumer, topic, partition, stop):
                                position = stop
                            continue
                        raise HistoryError(f"error reading {topic}[{partition}]: {error}")
                    offset = int(msg.offset() or 0)
                    if offset >= stop:
                        position = stop
                        break
                    position = offset + 1
                    if on_record is not None:
                        on_record(offset)
                    if key is not None and msg.key() != key:
                        continue
                    _, timestamp_ms = msg.timestamp()
                    yield StoredRecord(
                        topic=topic,
                        partition=partition,
                        offset=offset,
                        timestamp_ms=timestamp_ms if timestamp_ms >= 0 else None,
                        key=msg.key(),
                        value=msg.value(),
                        headers=_headers(msg.headers()),
                    )
        finally:
            self._consumer.unassign()


def _at_end(consumer: Consumer, topic: str, partition: int, stop: int) -> bool:
    [position] = consumer.position([TopicPartition(topic, partition)])
    return bool(position.offset >= stop)


def _headers(raw: Any) -> tuple[tuple[str, bytes | None], ...]:
    pairs = raw.items() if isinstance(raw, dict) else (raw or [])
    return tuple((str(k), v.encode() if isinstance(v, str) else v) for k, v in pairs)


def ledger_entries(
    reader: TopicReader,
    settings: Settings,
    *,
    keys: Collection[str] | None = None,
    partitions: Iterable[int] | None = None,
    status: LedgerStatus | Collection[LedgerStatus] | None = None,
    on_record: Callable[[int], None] | None = None,
) -> dict[str, LedgerEntry]:
    """The ledger's latest entry per key, folded from its changelog.

    ``keys`` limits the answer (and the partitions read) to those keys; without it
    every entry of ``partitions`` (default: all) is returned. ``status`` keeps only
    entries in that state, or in one of those states (filtered as bytes, before
    decoding). A tombstone removes a
    key. Entries are the state as of the changelog's end at the time of the call.
    """
    topic = settings.ledger_changelog_topic
    wanted: set[bytes] | None = None
    if keys is not None:
        wanted = {k.encode() for k in keys}
        by_key = {partition_for_key(k, settings.partitions) for k in wanted}
        parts = sorted(by_key if partitions is None else by_key & set(partitions))
    else:
        parts = sorted(reader.partitions(topic) if partitions is None else partitions)
    # One key: let the scan skip the others before copying them out.
    only = next(iter(wanted)) if wanted is not None and len(wanted) == 1 else None
    latest: dict[bytes, bytes | None] = {}
    for partition in parts:
        for record in reader.scan(topic, partition, key=only, on_record=on_record):
            if record.key is None or (wanted is not None and record.key not in wanted):
                continue
            latest[record.key] = record.value
    states = () if status is None else (status,) if isinstance(status, LedgerStatus) else status
    markers = [status_marker(s) for s in states]
    entries: dict[str, LedgerEntry] = {}
    for raw_key, value in latest.items():
        if value is None or (markers and not any(m in value for m in markers)):
            continue
        try:
            entries[raw_key.decode()] = LedgerEntry.from_bytes(value)
        except (ValueError, TypeError, KeyError) as exc:
            # Not ours to repair here; the worker's own copy has the same bytes.
            log.warning("unreadable ledger entry skipped: %s", type(exc).__name__)
    return entries


def ledger_entry(reader: TopicReader, settings: Settings, key: str) -> LedgerEntry | None:
    """The ledger's latest entry for ``key``, or ``None`` when it has none."""
    return ledger_entries(reader, settings, keys=(key,)).get(key)
