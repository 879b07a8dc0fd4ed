"""LedgerFence's group commits and its reaction to fencing, over a scripted producer.

The broker's side (a newer owner really fences an older one) is proven in
``tests/integration/test_ledger_fence.py``; here the shell's bookkeeping.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from sendonce.streams import fencing
from sendonce.streams.fencing import FencedError, LedgerFence, transactional_id
from sendonce.streams.store import PartitionNotOwnedError


class _Message:
    def __init__(self, offset: int) -> None:
        self._offset = offset

    def offset(self) -> int:
        return self._offset


class ScriptedProducer:
    """Records transactions; commits can be held (to queue writes) or fenced."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.transactions: list[list[bytes]] = []
        self.current: list[tuple[bytes, Any]] = []
        self.next_offset = 0
        self.fence_next_commit = False
        self.hold = threading.Event()
        self.hold.set()
        self.committing = threading.Event()
        #: Errors the next commits raise, one each; the transaction stays committing.
        self.commit_errors: list[KafkaError] = []
        self.in_commit = False
        self.commit_calls = 0

    def init_transactions(self, timeout: float) -> None:
        return None

    def begin_transaction(self) -> None:
        if self.in_commit:
            # librdkafka: a commit that returned an error without an outcome goes on in
            # the background; only commit_transaction (resume) or abort may follow.
            raise KafkaException(
                KafkaError(
                    KafkaError._CONFLICT,
                    "Conflicting commit_transaction API call is already in progress",
                )
            )
        self.current = []

    def produce(
        self, topic: str, *, key: bytes, value: bytes, partition: int, on_delivery: Any
    ) -> None:
        self.current.append((key, on_delivery))

    def commit_transaction(self, timeout: float) -> None:
        self.commit_calls += 1
        self.committing.set()
        self.hold.wait(5)
        if self.commit_errors:
            self.in_commit = True
            raise KafkaException(self.commit_errors.pop(0))
        self.in_commit = False
        if self.fence_next_commit:
            raise KafkaException(KafkaError(KafkaError._FENCED, "fenced", fatal=True))
        for _key, report in self.current:
            report(None, _Message(self.next_offset))
            self.next_offset += 1
        self.transactions.append([key for key, _ in self.current])

    def abort_transaction(self, timeout: float) -> None:
        self.current = []


@pytest.fixture
def producers(monkeypatch: pytest.MonkeyPatch) -> list[ScriptedProducer]:
    made: list[ScriptedProducer] = []

    def factory(config: dict[str, Any]) -> ScriptedProducer:
        producer = ScriptedProducer(config)
        made.append(producer)
        return producer

    monkeypatch.setattr(fencing, "Producer", factory)
    return made


def _fence() -> LedgerFence:
    return LedgerFence("127.0.0.1:1", "app", topic="app-ledger-changelog", client_id="w1")


def test_each_partition_has_one_transactional_id_shared_by_every_worker(
    producers: list[ScriptedProducer],
) -> None:
    async def run() -> None:
        fence = _fence()
        await fence.acquire([3, 1])
        await fence.close()

    asyncio.run(run())
    ids = sorted(p.config["transactional.id"] for p in producers)
    assert (
        ids
        == [transactional_id("app", 1), transactional_id("app", 3)]
        == [
            "app-ledger-1",
            "app-ledger-3",
        ]
    )


def test_writes_arriving_during_a_commit_share_the_next_transaction(
    producers: list[ScriptedProducer],
) -> None:
    async def run() -> list[int]:
        fence = _fence()
        await fence.acquire([0])
        [producer] = producers
        producer.hold.clear()
        first = asyncio.create_task(fence.write("t", b"a", b"1", 0))
        while not producer.committing.is_set():
            await asyncio.sleep(0)
        rest = [asyncio.create_task(fence.write("t", k, b"1", 0)) for k in (b"b", b"c", b"d")]
        producer.hold.set()
        offsets = [await first, *[await r for r in rest]]
        await fence.close()
        return offsets

    offsets = asyncio.run(run())
    assert offsets == [0, 1, 2, 3]
    assert producers[0].transactions == [[b"a"], [b"b", b"c", b"d"]]


def test_a_fenced_commit_fails_its_writes_and_every_later_one(
    producers: list[ScriptedProducer], caplog: pytest.LogCaptureFixture
) -> None:
    async def run() -> None:
        fence = _fence()
        await fence.acquire([0, 1])
        producers[0].fence_next_commit = True
        with pytest.raises(FencedError):
            await fence.write("t", b"a", b"1", 0)
        with pytest.raises(FencedError):
            await fence.write("t", b"b", b"1", 0)
        assert fence.held() == {1}
        assert await fence.write("t", b"c", b"1", 1) == 0
        await fence.release([1])
        with pytest.raises(PartitionNotOwnedError):
            await fence.write("t", b"d", b"1", 1)
        await fence.close()

    asyncio.run(run())
    assert producers[0].transactions == []
    fenced = [r for r in caplog.records if "fenced" in r.getMessage()]
    assert len(fenced) == 1 and "partition 0" in fenced[0].getMessage()


def test_taking_a_fenced_partition_over_again_makes_a_new_producer(
    producers: list[ScriptedProducer],
) -> None:
    async def run() -> None:
        fence = _fence()
        await fence.acquire([0])
        producers[0].fence_next_commit = True
        with pytest.raises(FencedError):
            await fence.write("t", b"a", b"1", 0)
        await fence.acquire([0])  # the partition came back in a later rebalance
        assert await fence.write("t", b"a", b"2", 0) == 0
        await fence.close()

    asyncio.run(run())
    assert len(producers) == 2 and producers[1].transactions == [[b"a"]]


def _timed_out() -> KafkaError:
    return KafkaError(KafkaError._TIMED_OUT, "commit not confirmed in time", retriable=True)


def test_a_commit_that_timed_out_is_resumed_not_abandoned(
    producers: list[ScriptedProducer],
) -> None:
    # After a pause or a slow coordinator, commit_transaction can time out while the
    # commit goes on; the next begin_transaction then fails with _CONFLICT (chaos seed
    # 533569887 stopped a worker on it). The write waits for the resumed commit.
    async def run() -> list[int]:
        fence = _fence()
        await fence.acquire([0])
        producers[0].commit_errors = [_timed_out(), _timed_out()]
        first = await fence.write("t", b"a", b"1", 0)
        second = await fence.write("t", b"b", b"1", 0)
        await fence.close()
        return [first, second]

    assert asyncio.run(run()) == [0, 1]
    assert producers[0].transactions == [[b"a"], [b"b"]]
    assert producers[0].commit_calls == 4


def test_a_commit_never_resolved_stops_the_partitions_writes_with_a_clear_error(
    producers: list[ScriptedProducer], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The writer's state is unknown: every later write fails the same way (a broker
    # failure, which stops the worker) instead of a confusing _CONFLICT per write.
    monkeypatch.setattr(fencing, "COMMIT_RESUME_S", 0.0)

    async def run() -> None:
        fence = _fence()
        await fence.acquire([0, 1])
        producers[0].commit_errors = [_timed_out()] * 3
        with pytest.raises(fencing.WriterStateUnknownError, match="partition 0"):
            await fence.write("t", b"a", b"1", 0)
        with pytest.raises(fencing.WriterStateUnknownError, match="partition 0"):
            await fence.write("t", b"b", b"1", 0)
        assert await fence.write("t", b"c", b"1", 1) == 0
        # The next rebalance's take-over starts the partition afresh.
        await fence.take_over([0, 1])
        assert await fence.write("t", b"d", b"1", 0) == 0
        await fence.close()

    asyncio.run(run())
    assert producers[0].commit_calls == 1
    assert len(producers) == 4 and producers[2].transactions == [[b"d"]]
