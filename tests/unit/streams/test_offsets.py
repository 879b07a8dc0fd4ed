"""The worker's own source-offset commits: never past an unfinished record.

Regression for the torture harness's finding (``sendonce dev chaos --intents 300
--seed 5 --kills 1 --rebalances 1 --duration 20``): after rebalances Faust committed
offsets of intents no agent had processed (its stream acks the messages it skips
during a rebalance, and its gap filling covers records dropped around a seek), so
intents vanished without a result. Here a record the lane never finished can never
be committed past, and the mender processes records Faust never delivered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

from hypothesis import given, settings
from hypothesis import strategies as st

from sendonce.streams.offsets import HoleMender, Lane, LaneOffsets, OffsetFrontier, Partition
from sendonce.streams.processor import ConsumedRecord

T = TypeVar("T")
TOPIC = "t.email.intents"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeReader:
    """A partition log: offsets holding records, plus offsets that hold none (markers)."""

    def __init__(self, committed: int | None, records: dict[int, list[int]], end: int) -> None:
        self.committed = committed
        self.records = records  # partition -> offsets that hold a record
        self.end = end
        self.start_reads = 0

    async def start_offset(self, topic: str, partition: int) -> int:
        self.start_reads += 1
        return 0 if self.committed is None else self.committed

    async def end_offset(self, topic: str, partition: int) -> int:
        return self.end

    async def read(
        self, topic: str, partition: int, start: int, end: int, limit: int
    ) -> tuple[list[ConsumedRecord], int]:
        found = [o for o in self.records.get(partition, []) if start <= o < end][:limit]
        stop = found[-1] + 1 if len(found) == limit else end
        return [record(o, partition) for o in found], stop


class Commits:
    def __init__(self) -> None:
        self.seen: list[dict[Partition, int]] = []

    async def __call__(self, offsets: Mapping[Partition, int]) -> bool:
        self.seen.append(dict(offsets))
        return True

    def last(self, partition: int = 0) -> int | None:
        found = [c[(TOPIC, partition)] for c in self.seen if (TOPIC, partition) in c]
        return found[-1] if found else None


def record(offset: int, partition: int = 0, key: bytes | None = None) -> ConsumedRecord:
    return ConsumedRecord(TOPIC, partition, offset, key or f"k{partition}-{offset}".encode(), b"v")


def test_frontier_stops_at_the_first_unfinished_offset() -> None:
    f = OffsetFrontier(next=5, moved_at=0.0)
    assert f.finish([5, 6, 8], now=1.0)
    assert (f.next, f.moved_at, f.done) == (7, 1.0, {8})
    assert not f.finish([3, 4, 8], now=2.0), "offsets below the frontier change nothing"
    assert f.moved_at == 1.0
    assert f.finish([7], now=3.0)
    assert f.next == 9 and not f.done


def test_an_offset_skipped_by_faust_is_never_committed_past() -> None:
    reader, commits = FakeReader(committed=3, records={}, end=10), Commits()
    offsets = LaneOffsets(reader, commits, owns=lambda t, p: True)
    # Faust delivered 4 and 5 but never 3 (it acked 3 while skipping it).
    run(offsets.finished([record(4), record(5)]))
    assert commits.seen == []
    run(offsets.finished([record(3)]))
    assert commits.last() == 6


def test_records_of_partitions_not_owned_are_not_tracked() -> None:
    reader, commits = FakeReader(committed=0, records={}, end=10), Commits()
    offsets = LaneOffsets(reader, commits, owns=lambda t, p: p == 0)
    run(offsets.finished([record(0, partition=1), record(0, partition=0)]))
    assert commits.seen == [{(TOPIC, 0): 1}]


def test_forget_starts_again_from_what_the_group_committed() -> None:
    reader, commits = FakeReader(committed=0, records={}, end=10), Commits()
    offsets = LaneOffsets(reader, commits, owns=lambda t, p: True)
    run(offsets.finished([record(0), record(2)]))
    offsets.forget()
    reader.committed = 1
    run(offsets.finished([record(1)]))
    # Offset 2's completion belonged to the old generation; it comes again.
    assert commits.last() == 2
    assert reader.start_reads == 2


@settings(max_examples=200, deadline=None)
@given(
    start=st.integers(0, 5),
    finished=st.lists(st.integers(0, 30), max_size=40),
    batch=st.integers(1, 7),
)
def test_every_commit_covers_finished_offsets_only(
    start: int, finished: list[int], batch: int
) -> None:
    reader, commits = FakeReader(committed=start, records={}, end=40), Commits()
    offsets = LaneOffsets(reader, commits, owns=lambda t, p: True)
    done: set[int] = set()
    for i in range(0, len(finished), batch):
        chunk = finished[i : i + batch]
        run(offsets.finished([record(o) for o in chunk]))
        done.update(chunk)
        last = commits.last()
        if last is not None:
            assert all(o in done for o in range(start, last)), (start, last, done)
    first_unfinished = next(o for o in range(start, 100) if o not in done)
    expected = first_unfinished if first_unfinished > start else None
    assert commits.last() == expected


def mender_setup(
    finished: list[int], log: list[int], end: int, *, ready: bool = True
) -> tuple[HoleMender, Lane, LaneOffsets, Commits, FakeClock, list[list[int]]]:
    clock = FakeClock()
    reader = FakeReader(committed=0, records={0: log}, end=end)
    commits = Commits()
    offsets = LaneOffsets(reader, commits, owns=lambda t, p: p == 0, clock=clock)
    processed: list[list[int]] = []

    async def process(records: list[ConsumedRecord]) -> None:
        processed.append([r.offset for r in records])

    lane = Lane("intents", TOPIC, process, clock=clock)
    mender = HoleMender(
        [lane],
        offsets,
        reader,
        owned=lambda topic: [0],
        ready=lambda: ready,
        stall_s=10.0,
        batch_size=2,
        clock=clock,
    )
    run(offsets.finished([record(o) for o in finished]))
    return mender, lane, offsets, commits, clock, processed


def test_mender_processes_dropped_records_and_the_frontier_passes_them() -> None:
    # 3-5 dropped in the middle, 8-9 dropped at the tail; 10 is a transaction marker.
    mender, _lane, offsets, commits, clock, processed = mender_setup(
        finished=[0, 1, 2, 6, 7], log=list(range(10)), end=11
    )
    assert commits.last() == 3
    clock.now += 11
    assert run(mender.tick()) == 5
    assert processed == [[3, 4], [5], [8, 9]], "finished records are not processed again"
    assert commits.last() == 11
    assert offsets.snapshot() == {(TOPIC, 0): 11}
    clock.now += 11
    assert run(mender.tick()) == 0, "a caught-up partition is left alone"


def test_mender_waits_while_records_may_still_be_on_their_way() -> None:
    mender, lane, _offsets, _commits, clock, processed = mender_setup(
        finished=[0, 1], log=list(range(5)), end=5
    )
    clock.now += 5
    assert run(mender.tick()) == 0, "frontier moved recently"
    clock.now += 6

    async def busy_lane() -> int:
        async with lane.running():
            return await mender.tick()

    assert run(busy_lane()) == 0, "the lane is working; it may be on its way"
    assert processed == []


def test_mender_does_nothing_before_the_tables_are_recovered() -> None:
    mender, _lane, _offsets, commits, clock, processed = mender_setup(
        finished=[0], log=list(range(5)), end=5, ready=False
    )
    clock.now += 20
    assert run(mender.tick()) == 0
    assert processed == [] and commits.last() == 1


def busy_setup(
    finished: dict[int, list[int]], log: dict[int, list[int]], *, batch_size: int = 2
) -> tuple[HoleMender, Lane, LaneOffsets, Commits, FakeClock, list[list[tuple[int, int]]]]:
    """Two owned partitions; the end offset is far beyond every log (traffic keeps coming)."""
    clock = FakeClock()
    reader = FakeReader(committed=0, records=log, end=1000)
    commits = Commits()
    offsets = LaneOffsets(reader, commits, owns=lambda t, p: p in (0, 1), clock=clock)
    processed: list[list[tuple[int, int]]] = []

    async def process(records: list[ConsumedRecord]) -> None:
        processed.append([(r.partition, r.offset) for r in records])

    lane = Lane("intents", TOPIC, process, clock=clock)
    mender = HoleMender(
        [lane],
        offsets,
        reader,
        owned=lambda topic: [0, 1],
        ready=lambda: True,
        stall_s=10.0,
        batch_size=batch_size,
        clock=clock,
    )
    for partition, done in finished.items():
        run(offsets.finished([record(o, partition) for o in done]))
    return mender, lane, offsets, commits, clock, processed


def test_a_hole_is_mended_while_the_lane_stays_busy_with_another_partition() -> None:
    # Issue 16, item 5: under steady traffic the lane is never idle for 10 s, so a
    # record Faust skipped on partition 0 stopped that partition's commits for good.
    mender, lane, offsets, commits, clock, processed = busy_setup(
        finished={0: [0, 1, 2, 4, 5], 1: [0, 1]}, log={0: list(range(12)), 1: list(range(50))}
    )
    assert commits.last(0) == 3
    lane.enter()  # a batch of partition 1 runs for the whole test
    for step in range(2, 13):
        clock.now += 1
        run(offsets.finished([record(step, 1)]))
    assert lane.idle_for() == 0.0
    assert run(mender.tick()) == 1
    assert processed == [[(0, 3)]], "only the hole; records past offset 5 are on their way"
    assert commits.last(0) == 6
    assert commits.last(1) == 13, "partition 1 was left alone"
    clock.now += 11
    assert run(mender.tick()) == 0, "nothing below the highest finished offset is missing"
    lane.leave()


def test_a_record_in_a_running_batch_is_not_a_hole() -> None:
    mender, lane, offsets, commits, clock, processed = busy_setup(
        finished={0: [0, 1, 2, 4, 7]}, log={0: list(range(12))}
    )
    # Offset 5 and 6 are in a batch still running (waiting for the provider); 3 was skipped.
    lane.enter([record(5), record(6)])
    clock.now += 11
    assert run(mender.tick()) == 1
    assert processed == [[(0, 3)]], "the running batch's records are not processed twice"
    assert commits.last(0) == 5, "never past a record still in flight"
    run(offsets.finished([record(5), record(6)]))
    lane.leave([record(5), record(6)])
    assert commits.last(0) == 8


def test_a_busy_lane_hole_waits_for_the_grace_period_and_is_mended_in_bounded_steps() -> None:
    mender, lane, _offsets, commits, clock, processed = busy_setup(
        finished={0: [0, 1, 2, 7, 8]}, log={0: list(range(12))}, batch_size=2
    )
    lane.enter()
    clock.now += 5
    assert run(mender.tick()) == 0, "a young gap may still be a batch about to start"
    clock.now += 6
    assert run(mender.tick()) == 2
    assert commits.last(0) == 5
    assert run(mender.tick()) == 2, "the rest of the holes do not wait another grace period"
    assert processed == [[(0, 3), (0, 4)], [(0, 5), (0, 6)]]
    assert commits.last(0) == 9
    assert run(mender.tick()) == 0
    lane.leave()


def test_a_hole_whose_key_a_running_batch_holds_is_mended_after_that_batch() -> None:
    # Two batches of one key never run at once (the webhook lane has no lock of its
    # own per dedupe id): the hole waits for the running batch holding its key.
    mender, lane, _offsets, commits, clock, processed = busy_setup(
        finished={0: [0, 1, 2, 5]}, log={0: list(range(12))}
    )
    holding = [record(9, partition=1, key=b"k0-3")]
    lane.enter(holding)
    clock.now += 11
    assert run(mender.tick()) == 1
    assert processed == [[(0, 4)]], "offset 3 shares its key with the running batch"
    assert commits.last(0) == 3
    lane.leave(holding)
    assert run(mender.tick()) == 1
    assert processed[-1] == [(0, 3)]
    assert commits.last(0) == 6


def test_a_postponed_hole_does_not_wait_another_grace_period_once_its_key_is_free() -> None:
    mender, lane, _offsets, commits, clock, processed = busy_setup(
        finished={0: [0, 1, 2, 5]}, log={0: list(range(12))}
    )
    holding = [record(9, partition=1, key=b"k0-4")]
    lane.enter(holding)
    clock.now += 11
    assert run(mender.tick()) == 1
    assert processed == [[(0, 3)]] and commits.last(0) == 4
    lane.leave(holding)
    lane.enter()  # the lane stays busy
    assert run(mender.tick()) == 1, "the frontier moved by mending, not by a late record"
    assert processed[-1] == [(0, 4)] and commits.last(0) == 6
    lane.leave()
