"""FaustTableBytes: the order of a durable write, and no writes for partitions not owned.

Regression for the torture harness's long run (``make torture SEED=20261123``): a
reconciler wrote to a partition its worker had just lost; Faust's send callback then
recorded that partition's changelog offset in the worker's RocksDB, past hundreds of
records the worker never had, and when the partition came back its recovery skipped
them: 20 keys already sent were sent again.
"""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

import pytest

from streams.store import FaustTableBytes, PartitionNotOwnedError


class Meta(NamedTuple):
    topic_partition: tuple[str, int]
    offset: int


class FakeData:
    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.values: dict[bytes, bytes] = {}
        self.offsets: dict[tuple[str, int], int] = {}

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.log.append("local")
        self.values[key] = value

    def set_persisted_offset(self, tp: tuple[str, int], offset: int) -> None:
        self.log.append("offset")
        self.offsets[tp] = offset


class FakeChangelog:
    def __init__(self, log: list[str], on_ack: Any = None) -> None:
        self.log = log
        self.on_ack = on_ack
        self.sent: list[tuple[bytes, int]] = []

    def send_soon(self, *, key: bytes, value: bytes, partition: int, **kw: Any) -> Any:
        assert "callback" not in kw, "Faust's callback records the offset too early"
        self.sent.append((key, partition))

        async def ack() -> Meta:
            self.log.append("changelog")
            if self.on_ack:
                self.on_ack()
            return Meta(("ledger-changelog", partition), 41 + len(self.sent))

        return ack()


class FakeTable:
    key_serializer = "raw"
    value_serializer = "raw"

    def __init__(self, on_ack: Any = None) -> None:
        self.log: list[str] = []
        self.data = FakeData(self.log)
        self.changelog_topic = FakeChangelog(self.log, on_ack)


def test_changelog_then_local_copy_then_offset() -> None:
    table = FakeTable()
    asyncio.run(FaustTableBytes(table, owns=lambda p: True).put(b"k", b"v", 3))
    assert table.log == ["changelog", "local", "offset"]
    assert table.data.offsets == {("ledger-changelog", 3): 42}


def test_no_write_for_a_partition_not_owned() -> None:
    table = FakeTable()
    store = FaustTableBytes(table, owns=lambda p: p != 0)
    with pytest.raises(PartitionNotOwnedError):
        asyncio.run(store.put(b"k", b"v", 0))
    assert table.changelog_topic.sent == [] and table.log == []


def test_partition_lost_while_the_broker_acknowledged() -> None:
    owned = {0}
    table = FakeTable(on_ack=lambda: owned.discard(0))
    store = FaustTableBytes(table, owns=lambda p: p in owned)
    with pytest.raises(PartitionNotOwnedError):
        asyncio.run(store.put(b"k", b"v", 0))
    assert table.log == ["changelog"], "neither the local copy nor its offset moved"
    assert table.data.offsets == {}
