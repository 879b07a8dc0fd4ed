"""Ledger stores: where :class:`~streams.ledger.LedgerEntry` values live.

The contract every store keeps: :meth:`LedgerStore.put` returns only once the
entry is durable (for the Faust store: acknowledged by Kafka with acks=all on
the compacted changelog), and the local copy is never ahead of the changelog.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from streams.ledger import LedgerEntry, LedgerStatus


class LedgerStore(Protocol):
    """Per-partition key -> entry storage with durable writes."""

    def get(self, key: str, partition: int) -> LedgerEntry | None:
        """The entry for ``key`` in ``partition``, or ``None``."""
        ...

    async def put(self, entry: LedgerEntry, partition: int) -> None:
        """Store ``entry``; returns once it is durable."""
        ...

    def ambiguous_entries(self, partitions: int) -> Iterator[tuple[int, LedgerEntry]]:
        """Every AMBIGUOUS entry held for an active partition, with its partition."""
        ...


class MemoryLedgerStore:
    """A dict-backed store for unit tests and the in-process test harness."""

    def __init__(self) -> None:
        self.entries: dict[tuple[int, str], LedgerEntry] = {}
        self.writes: list[tuple[int, LedgerEntry]] = []

    def get(self, key: str, partition: int) -> LedgerEntry | None:
        """The entry for ``key`` in ``partition``, or ``None``."""
        return self.entries.get((partition, key))

    async def put(self, entry: LedgerEntry, partition: int) -> None:
        """Store ``entry`` (immediately durable: it is memory)."""
        self.entries[(partition, entry.key)] = entry
        self.writes.append((partition, entry))

    def ambiguous_entries(self, partitions: int) -> Iterator[tuple[int, LedgerEntry]]:
        """Every AMBIGUOUS entry, with its partition."""
        for (partition, _), entry in self.entries.items():
            if entry.status is LedgerStatus.AMBIGUOUS:
                yield partition, entry


class _Message:
    __slots__ = ("partition",)

    def __init__(self, partition: int) -> None:
        self.partition = partition


class _PartitionEvent:
    """Stands in for a Faust event so the RocksDB store picks ``partition``.

    Faust's RocksDB store chooses the per-partition database from the *current
    event*. Inside a batch taken with ``take_events`` that is the batch's last
    event, not the one being handled, so each access names its partition
    explicitly through this stand-in.
    """

    __slots__ = ("__weakref__", "message")

    def __init__(self, partition: int) -> None:
        self.message = _Message(partition)


@contextlib.contextmanager
def _partition_context(partition: int) -> Iterator[None]:
    from faust.streams import _current_event

    event = _PartitionEvent(partition)
    token = _current_event.set(weakref.ref(event))  # type: ignore[arg-type]
    try:
        yield
    finally:
        _current_event.reset(token)


class PartitionNotOwnedError(RuntimeError):
    """A write for a partition this worker does not own (or not yet, or no longer)."""


class FaustTableBytes:
    """Durable per-partition bytes in a Faust table (raw key and value serializers).

    ``put`` writes the changelog record and awaits the broker's acknowledgement
    (acks=all), then updates the local RocksDB copy, then records the changelog
    offset the local copy holds. Faust's own ``send_changelog`` records that offset
    in its send callback, before the local copy is written, and for any partition:
    the torture harness found a worker whose reconciler wrote to a partition it had
    just lost, which moved that partition's recorded offset past hundreds of records
    the worker never had; when the partition came back, recovery skipped them and
    keys already sent were sent again. So ``owns`` (when given) is checked before
    the write and again before the local copy and offset are touched.
    """

    def __init__(self, table: Any, owns: Callable[[int], bool] | None = None) -> None:
        self._table = table
        self._owns = owns

    def get(self, key: bytes, partition: int) -> bytes | None:
        """The local copy of ``key`` in ``partition``."""
        with _partition_context(partition):
            raw: bytes | None = self._table.data.get(key)
        return raw

    async def put(self, key: bytes, value: bytes, partition: int) -> None:
        """Durable write: changelog acked first, then the local copy."""
        self._check(partition)
        # Table assignment would only queue the changelog record (send_soon);
        # the future resolves when the broker acknowledged it (acks=all). No
        # callback: the offset is recorded below, after the local copy.
        pending = self._table.changelog_topic.send_soon(
            key=key,
            value=value,
            partition=partition,
            key_serializer=self._table.key_serializer,
            value_serializer=self._table.value_serializer,
            eager_partitioning=True,
        )
        metadata = await pending
        # Ownership may have moved while the broker acknowledged: then the record
        # is the next owner's to read, and this worker's copy must not claim it.
        self._check(partition)
        with _partition_context(partition):
            self._table.data[key] = value
        self._table.data.set_persisted_offset(metadata.topic_partition, metadata.offset)

    def _check(self, partition: int) -> None:
        if self._owns is not None and not self._owns(partition):
            raise PartitionNotOwnedError(f"partition {partition} is not owned by this worker")

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every key and value of the active partitions (a RocksDB scan)."""
        for key, value in self._table.data._iteritems():
            if value is not None:
                yield key, value


class FaustLedgerStore:
    """The ledger in a Faust table: RocksDB locally, a compacted changelog in Kafka."""

    def __init__(self, table: Any, owns: Callable[[int], bool] | None = None) -> None:
        self._bytes = FaustTableBytes(table, owns)

    def get(self, key: str, partition: int) -> LedgerEntry | None:
        """Read the local RocksDB copy of ``key`` in ``partition``."""
        raw = self._bytes.get(key.encode(), partition)
        return None if raw is None else LedgerEntry.from_bytes(raw)

    async def put(self, entry: LedgerEntry, partition: int) -> None:
        """Write the changelog record, await the broker's ack, then the local copy."""
        await self._bytes.put(entry.key.encode(), entry.to_bytes(), partition)

    def ambiguous_entries(self, partitions: int) -> Iterator[tuple[int, LedgerEntry]]:
        """Scan the active partitions' RocksDB for AMBIGUOUS entries.

        Runs after each recovery (rebalance). Values are filtered as bytes
        before decoding, so the scan costs a RocksDB iteration, not a JSON
        decode per key.
        """
        from streams.processor import partition_for_key

        marker = b'"status":"AMBIGUOUS"'
        for key, value in self._bytes.items():
            if marker in value:
                yield partition_for_key(key, partitions), LedgerEntry.from_bytes(value)
