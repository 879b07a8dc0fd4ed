"""FaustTableBytes: the order of a durable write, and no writes for partitions not owned.

Regression for the torture harness's long run (``make torture SEED=20261123``): a
reconciler wrote to a partition its worker had just lost; Faust's send callback then
recorded that partition's changelog offset in the worker's RocksDB, past hundreds of
records the worker never had, and when the partition came back its recovery skipped
them: 20 keys already sent were sent again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from faust.types import TP
from rocksdict import Options, Rdict

from sendonce.streams.ledger import IntentRef, LedgerEntry, LedgerStatus
from sendonce.streams.store import FaustLedgerStore, FaustTableBytes, PartitionNotOwnedError

OFFSET_KEY = b"__faust\0offset__"


class Meta(NamedTuple):
    topic_partition: tuple[str, int]
    offset: int


class FakeData:
    """Faust's RocksDB store as FaustTableBytes uses it: real rocksdict databases."""

    offset_key = OFFSET_KEY

    def __init__(self, root: Path) -> None:
        self.root = root
        self._dbs: dict[int, Rdict] = {}
        self.app = FakeApp()

    def _db_for_partition(self, partition: int) -> Rdict:
        if partition not in self._dbs:
            self._dbs[partition] = Rdict(
                str(self.root / f"p{partition}"), options=Options(raw_mode=True)
            )
        return self._dbs[partition]

    def local(self, partition: int) -> dict[bytes, bytes]:
        return dict(self._db_for_partition(partition).items())


class FakeAssignor:
    def __init__(self) -> None:
        self.actives: set[TP] = set()

    def assigned_actives(self) -> set[TP]:
        return set(self.actives)


class FakeApp:
    def __init__(self) -> None:
        self.assignor = FakeAssignor()


class FakeWriter:
    """Stands in for the producer: records what was written and acknowledges it."""

    def __init__(self, log: list[str], on_ack: Any = None) -> None:
        self.log = log
        self.on_ack = on_ack
        self.sent: list[tuple[str, bytes, int]] = []

    async def write(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        partition: int,
        *,
        enqueued: Callable[[], None] | None = None,
    ) -> int:
        self.sent.append((topic, key, partition))
        if enqueued is not None:
            enqueued()
        await asyncio.sleep(0)  # the broker's round trip: other coroutines may run
        self.log.append("changelog")
        if self.on_ack:
            self.on_ack(partition)
        return 41 + len(self.sent)


class FakeChangelogTopic:
    def get_topic_name(self) -> str:
        return "ledger-changelog"


class FakeTable:
    def __init__(self, root: Path, on_ack: Any = None) -> None:
        self.log: list[str] = []
        self.data = FakeData(root)
        self.changelog_topic = FakeChangelogTopic()
        self.writer = FakeWriter(self.log, on_ack)

    def bytes_store(self, owns: Any = None) -> FaustTableBytes:
        return FaustTableBytes(self, self.writer, owns)


def test_changelog_then_local_copy_and_offset_together(tmp_path: Path) -> None:
    local_at_ack: list[dict[bytes, bytes]] = []
    table = FakeTable(tmp_path, on_ack=lambda p: local_at_ack.append(table.data.local(p)))
    asyncio.run(table.bytes_store(owns=lambda p: True).put(b"k", b"v", 3))
    assert table.writer.sent == [("ledger-changelog", b"k", 3)]
    assert local_at_ack == [{}], "the local copy was written before the changelog ack"
    assert table.data.local(3) == {b"k": b"v", OFFSET_KEY: b"42"}
    assert table.bytes_store().get(b"k", 3) == b"v"
    assert table.bytes_store().get(b"k", 4) is None


def test_no_write_for_a_partition_not_owned(tmp_path: Path) -> None:
    table = FakeTable(tmp_path)
    store = table.bytes_store(owns=lambda p: p != 0)
    with pytest.raises(PartitionNotOwnedError):
        asyncio.run(store.put(b"k", b"v", 0))
    assert table.writer.sent == [] and table.log == []


def test_partition_lost_while_the_broker_acknowledged(tmp_path: Path) -> None:
    owned = {0}
    table = FakeTable(tmp_path, on_ack=lambda p: owned.discard(0))
    store = table.bytes_store(owns=lambda p: p in owned)
    with pytest.raises(PartitionNotOwnedError):
        asyncio.run(store.put(b"k", b"v", 0))
    assert table.log == ["changelog"]
    assert table.data.local(0) == {}, "neither the local copy nor its offset moved"


def _entry(key: str, status: LedgerStatus) -> LedgerEntry:
    return LedgerEntry(
        key=key,
        status=status,
        content_fingerprint="f",
        tenant_id="t",
        source_event_id="e",
        action_type="a",
        origin=IntentRef("intents", 0, 1),
        attempt_id="x",
        attempt_count=1,
        worker="w",
        created_at_ms=1,
        updated_at_ms=1,
    )


def test_the_open_scan_reads_active_partitions_only_and_names_them(tmp_path: Path) -> None:
    table = FakeTable(tmp_path)
    ledger = FaustLedgerStore(table, table.writer)
    entries = {
        ("t:a", 1): LedgerStatus.AMBIGUOUS,
        ("t:b", 1): LedgerStatus.SENT,
        ("t:c", 2): LedgerStatus.AMBIGUOUS,
        ("t:d", 3): LedgerStatus.AMBIGUOUS,  # a partition no longer assigned
        ("t:e", 2): LedgerStatus.PENDING,  # an attempt a crash interrupted
        ("t:f", 2): LedgerStatus.FAILED,
    }
    for (key, partition), status in entries.items():
        asyncio.run(ledger.put(_entry(key, status), partition))
    table.data.app.assignor.actives = {TP("ledger-changelog", 1), TP("ledger-changelog", 2)}
    found = sorted((p, e.key) for p, e in ledger.open_entries())
    assert found == [(1, "t:a"), (2, "t:c"), (2, "t:e")]
