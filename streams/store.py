"""Ledger stores: where :class:`~streams.ledger.LedgerEntry` values live.

The contract every store keeps: :meth:`LedgerStore.put` returns only once the
entry is durable (for the Faust store: acknowledged by Kafka with acks=all on
the compacted changelog), and the local copy is never ahead of the changelog.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
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


class FaustTableBytes:
    """Durable per-partition bytes in a Faust table (raw key and value serializers).

    ``put`` writes the changelog record and awaits the broker's acknowledgement
    (acks=all) before updating the local RocksDB copy, so the local copy is
    never ahead of the changelog.
    """

    def __init__(self, table: Any) -> None:
        self._table = table

    def get(self, key: bytes, partition: int) -> bytes | None:
        """The local copy of ``key`` in ``partition``."""
        with _partition_context(partition):
            raw: bytes | None = self._table.data.get(key)
        return raw

    async def put(self, key: bytes, value: bytes, partition: int) -> None:
        """Durable write: changelog acked first, then the local copy."""
        # Table assignment would only queue the changelog record (send_soon);
        # the future resolves when the broker acknowledged it (acks=all).
        await self._table.send_changelog(partition, key, value)
        with _partition_context(partition):
            self._table.data[key] = value

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every key and value of the active partitions (a RocksDB scan)."""
        for key, value in self._table.data._iteritems():
            if value is not None:
                yield key, value


class FaustLedgerStore:
    """The ledger in a Faust table: RocksDB locally, a compacted changelog in Kafka."""

    def __init__(self, table: Any) -> None:
        self._bytes = FaustTableBytes(table)

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
