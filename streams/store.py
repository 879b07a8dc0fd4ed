"""Ledger stores: where :class:`~streams.ledger.LedgerEntry` values live.

The contract every store keeps: :meth:`LedgerStore.put` returns only once the
entry is durable (for the Faust store: acknowledged by Kafka with acks=all on
the compacted changelog), and the local copy is never ahead of the changelog.

``put`` takes one optional hook, ``enqueued``: called once the entry was handed to
the write path and before its durability is awaited (for the Faust store: the
record sits in the producer, not yet acknowledged). Nothing in the product passes
it; the worker's pause point ``pending-produced`` (:mod:`sendonce.faults`) does,
to stop a worker with a write in flight and resume it after its partition moved.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

from faust.types import TP
from rocksdict import WriteBatch

from sendonce.streams.ledger import OPEN, LedgerEntry, status_marker

#: The states a key does not end in: the reconciler drives them on.
OPEN_STATUSES = OPEN


class LedgerStore(Protocol):
    """Per-partition key -> entry storage with durable writes."""

    def get(self, key: str, partition: int) -> LedgerEntry | None:
        """The entry for ``key`` in ``partition``, or ``None``."""
        ...

    async def put(
        self, entry: LedgerEntry, partition: int, *, enqueued: Callable[[], None] | None = None
    ) -> None:
        """Store ``entry``; returns once it is durable.

        ``enqueued`` (a test hook) is called after the write was handed on and
        before its durability is awaited.
        """
        ...

    def writable(self, partition: int) -> bool:
        """Whether ``put`` for ``partition`` is allowed now (owned, recovered).

        A provider call checks it right before it starts: a key that waited (for a
        mailbox permit, a retry's backoff) must not send once its partition moved.
        """
        ...

    def open_entries(self) -> Iterator[tuple[int, LedgerEntry]]:
        """Every PENDING or AMBIGUOUS entry held for an active partition, with its partition."""
        ...


class MemoryLedgerStore:
    """A dict-backed store for unit tests and the in-process test harness."""

    def __init__(self) -> None:
        self.entries: dict[tuple[int, str], LedgerEntry] = {}
        self.writes: list[tuple[int, LedgerEntry]] = []

    def get(self, key: str, partition: int) -> LedgerEntry | None:
        """The entry for ``key`` in ``partition``, or ``None``."""
        return self.entries.get((partition, key))

    async def put(
        self, entry: LedgerEntry, partition: int, *, enqueued: Callable[[], None] | None = None
    ) -> None:
        """Store ``entry`` (immediately durable: it is memory)."""
        # Handed on and not yet stored: the nearest this store has to "in flight".
        if enqueued is not None:
            enqueued()
        self.entries[(partition, entry.key)] = entry
        self.writes.append((partition, entry))

    def writable(self, partition: int) -> bool:
        """Always: this store owns every partition."""
        return True

    def open_entries(self) -> Iterator[tuple[int, LedgerEntry]]:
        """Every PENDING or AMBIGUOUS entry, with its partition."""
        for (partition, _), entry in self.entries.items():
            if entry.status in OPEN_STATUSES:
                yield partition, entry


class PartitionNotOwnedError(RuntimeError):
    """A write for a partition this worker does not own (or not yet, or no longer)."""


class ChangelogWriter(Protocol):
    """Writes one record to a partition and returns its offset once acknowledged."""

    async def write(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        partition: int,
        *,
        enqueued: Callable[[], None] | None = None,
    ) -> int:
        """Produce with acks=all; the record's offset.

        ``enqueued`` (a test hook) is called once the record was handed to the
        producer, before its acknowledgement is awaited.
        """
        ...


class FaustTableBytes:
    """Durable per-partition bytes in a Faust table (raw key and value serializers).

    ``put`` writes the changelog record and awaits the broker's acknowledgement
    (acks=all), then updates the local RocksDB copy and the changelog offset it holds,
    in one atomic RocksDB write. Faust's own ``send_changelog`` records that offset
    in its send callback, before the local copy is written, and for any partition:
    the torture harness found a worker whose reconciler wrote to a partition it had
    just lost, which moved that partition's recorded offset past hundreds of records
    the worker never had; when the partition came back, recovery skipped them and
    keys already sent were sent again. So ``owns`` (when given) is checked before
    the write and again before the local copy and offset are touched.
    """

    def __init__(
        self,
        table: Any,
        writer: ChangelogWriter,
        owns: Callable[[int], bool] | None = None,
    ) -> None:
        self._table = table
        self._writer = writer
        self._owns = owns
        self._topic: str = table.changelog_topic.get_topic_name()

    def get(self, key: bytes, partition: int) -> bytes | None:
        """The local copy of ``key`` in ``partition``."""
        # Straight to the partition's database: Faust's store picks it from the
        # *current event*, which inside a batch is the batch's last event.
        raw: bytes | None = self._table.data._db_for_partition(partition).get(key)
        return raw

    async def put(
        self,
        key: bytes,
        value: bytes,
        partition: int,
        *,
        enqueued: Callable[[], None] | None = None,
    ) -> None:
        """Durable write: changelog acked first, then the local copy."""
        self._check(partition)
        offset = await self._writer.write(self._topic, key, value, partition, enqueued=enqueued)
        # Ownership may have moved while the broker acknowledged: then the record
        # is the next owner's to read, and this worker's copy must not claim it.
        self._check(partition)
        # The value and the changelog offset it brings the copy to, in one atomic
        # RocksDB write: the copy never claims an offset whose record it lacks.
        store = self._table.data
        batch = WriteBatch(raw_mode=True)
        batch.put(key, value)
        batch.put(store.offset_key, str(offset).encode())
        store._db_for_partition(partition).write(batch)

    def writable(self, partition: int) -> bool:
        """Whether writes to ``partition`` are allowed now."""
        return self._owns is None or self._owns(partition)

    def _check(self, partition: int) -> None:
        if not self.writable(partition):
            raise PartitionNotOwnedError(f"partition {partition} is not owned by this worker")

    def values_by_partition(self) -> Iterator[tuple[int, bytes]]:
        """Every value held for an active partition, with the partition (a RocksDB scan).

        Straight over each active partition's database: Faust's item iterator costs
        about four times as much per entry, which with a 10M-key ledger was half a
        minute of every recovery. (The changelog offset Faust keeps among the values
        is a bare number; callers filter values by content.)
        """
        store = self._table.data
        actives = store.app.assignor.assigned_actives()
        for partition, db in list(store._dbs.items()):
            if TP(self._topic, partition) in actives:
                for value in db.values():
                    yield partition, value


class FaustLedgerStore:
    """The ledger in a Faust table: RocksDB locally, a compacted changelog in Kafka."""

    def __init__(
        self, table: Any, writer: ChangelogWriter, owns: Callable[[int], bool] | None = None
    ) -> None:
        self._bytes = FaustTableBytes(table, writer, owns)

    def get(self, key: str, partition: int) -> LedgerEntry | None:
        """Read the local RocksDB copy of ``key`` in ``partition``."""
        raw = self._bytes.get(key.encode(), partition)
        return None if raw is None else LedgerEntry.from_bytes(raw)

    async def put(
        self, entry: LedgerEntry, partition: int, *, enqueued: Callable[[], None] | None = None
    ) -> None:
        """Write the changelog record, await the broker's ack, then the local copy."""
        await self._bytes.put(entry.key.encode(), entry.to_bytes(), partition, enqueued=enqueued)

    def writable(self, partition: int) -> bool:
        """Whether writes to ``partition`` are allowed now (owned and recovered)."""
        return self._bytes.writable(partition)

    def open_entries(self) -> Iterator[tuple[int, LedgerEntry]]:
        """Scan the active partitions' RocksDB for PENDING and AMBIGUOUS entries.

        Runs after each recovery (rebalance). Values are filtered as bytes
        before decoding, so the scan costs a RocksDB iteration, not a JSON
        decode per key.
        """
        markers = [status_marker(status) for status in OPEN_STATUSES]
        for partition, value in self._bytes.values_by_partition():
            if any(marker in value for marker in markers):
                yield partition, LedgerEntry.from_bytes(value)
