"""Batches in flight: the next batch runs while one awaits Kafka, never on the same key."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from faust.types import TP

from sendonce.settings import Settings
from sendonce.streams.app import _SourceOffsets
from sendonce.streams.offsets import Lane
from sendonce.streams.processor import ConsumedRecord

TOPIC = "intents"


@dataclass
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes = b"v"
    timestamp: float | None = None
    headers: Any = None


@dataclass
class Event:
    message: Message


class FakeStream:
    def __init__(self, batches: list[list[Event]]) -> None:
        self.batches = batches

    async def noack_take(self, max_: int, within: float) -> AsyncIterator[list[Event]]:
        for batch in self.batches:
            yield batch

    async def ack(self, event: Any) -> bool:
        return True


class FakeAssignor:
    def assigned_actives(self) -> set[TP]:
        return {TP(TOPIC, 0)}


class FakeApp:
    rebalancing = False
    assignor = FakeAssignor()

    async def crash(self, exc: BaseException) -> None:
        raise AssertionError(f"worker crashed: {exc!r}")


def batch(*keys_and_offsets: tuple[str, int]) -> list[Event]:
    return [Event(Message(TOPIC, 0, offset, key.encode())) for key, offset in keys_and_offsets]


def source_offsets(depth: int) -> _SourceOffsets:
    settings = Settings(bootstrap_servers="127.0.0.1:1", batches_in_flight=depth)
    offsets = _SourceOffsets(FakeApp(), settings)  # type: ignore[arg-type]
    offsets.table("ledger")
    offsets.recovered("ledger")
    return offsets


async def _finished(records: Any) -> None:
    return None


def run_lane(depth: int, batches: list[list[Event]], process: Any) -> list[Any]:
    offsets = source_offsets(depth)
    offsets.finished = _finished  # type: ignore[method-assign]  # no broker to commit to
    lane = Lane("intents", TOPIC, process)

    async def consume() -> list[Any]:
        reported: list[Any] = []
        await offsets.run(FakeStream(batches), lane, reported.append)
        return reported

    return asyncio.run(asyncio.wait_for(consume(), timeout=10))


def test_a_batch_on_other_keys_runs_while_the_previous_one_waits() -> None:
    second_started = asyncio.Event()
    log: list[str] = []

    async def process(records: list[ConsumedRecord]) -> str:
        name = records[0].key.decode() if records[0].key else "?"
        log.append(f"start {name}")
        if name == "a":
            # The first batch only finishes once the second one has begun.
            await second_started.wait()
        else:
            second_started.set()
        log.append(f"end {name}")
        return name

    assert run_lane(2, [batch(("a", 0)), batch(("b", 1))], process) == ["b", "a"]
    assert log == ["start a", "start b", "end b", "end a"]


def test_a_batch_sharing_a_key_waits_for_the_batch_holding_it() -> None:
    log: list[str] = []

    async def process(records: list[ConsumedRecord]) -> int:
        offsets = [r.offset for r in records]
        log.append(f"start {offsets}")
        await asyncio.sleep(0)  # let any concurrently started batch run
        await asyncio.sleep(0)
        log.append(f"end {offsets}")
        return offsets[0]

    batches = [batch(("a", 0), ("b", 1)), batch(("b", 2), ("c", 3))]
    assert run_lane(2, batches, process) == [0, 2]
    assert log == ["start [0, 1]", "end [0, 1]", "start [2, 3]", "end [2, 3]"]


def test_one_batch_in_flight_runs_batches_one_after_the_other() -> None:
    log: list[str] = []

    async def process(records: list[ConsumedRecord]) -> int:
        log.append(f"start {records[0].offset}")
        await asyncio.sleep(0)
        log.append(f"end {records[0].offset}")
        return records[0].offset

    assert run_lane(1, [batch(("a", 0)), batch(("b", 1))], process) == [0, 1]
    assert log == ["start 0", "end 0", "start 1", "end 1"]


def test_a_rebalance_waits_until_every_batch_in_flight_finished() -> None:
    release = asyncio.Event()
    lane = Lane("intents", TOPIC, lambda records: asyncio.sleep(0))

    async def scenario() -> list[str]:
        log: list[str] = []

        async def batch_in_flight(name: str) -> None:
            async with lane.running():
                await release.wait()
                log.append(f"{name} done")

        tasks = [asyncio.ensure_future(batch_in_flight(n)) for n in ("first", "second")]
        await asyncio.sleep(0)
        assert lane.in_flight == 2
        assert not await lane.wait_idle(0.01), "idle while batches run"
        release.set()
        assert await lane.wait_idle(5)
        log.append("rebalance proceeds")
        await asyncio.gather(*tasks)
        return log

    assert asyncio.run(scenario()) == ["first done", "second done", "rebalance proceeds"]


def test_a_failing_batch_stops_the_lane_at_once_and_cancels_the_others() -> None:
    cancelled = []

    async def process(records: list[ConsumedRecord]) -> None:
        if records[0].offset == 1:
            raise OSError("disk gone")
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(records[0].offset)
            raise

    with pytest.raises(AssertionError, match="worker crashed"):
        run_lane(3, [batch(("a", 0)), batch(("b", 1)), batch(("c", 2))], process)
    assert sorted(cancelled) == [0, 2]


class QuietStream(FakeStream):
    """Delivers its batches, then waits for records that never come."""

    async def noack_take(self, max_: int, within: float) -> AsyncIterator[list[Event]]:
        for batch_ in self.batches:
            yield batch_
        await asyncio.Event().wait()
        yield []  # pragma: no cover


def test_a_batch_is_reported_when_it_finishes_not_when_the_next_one_arrives() -> None:
    offsets = source_offsets(2)
    offsets.finished = _finished  # type: ignore[method-assign]

    async def process(records: list[ConsumedRecord]) -> int:
        return records[0].offset

    lane = Lane("intents", TOPIC, process)

    async def scenario() -> list[Any]:
        reported: list[Any] = []
        done = asyncio.Event()

        def report(stats: Any) -> None:
            reported.append(stats)
            done.set()

        runner = asyncio.ensure_future(offsets.run(QuietStream([batch(("a", 7))]), lane, report))
        await asyncio.wait_for(done.wait(), timeout=5)
        runner.cancel()
        await asyncio.wait([runner])
        return reported

    assert asyncio.run(scenario()) == [7]
