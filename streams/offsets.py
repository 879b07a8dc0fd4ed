"""Source offsets the worker commits itself: only what a lane finished, never past a hole.

Faust's own offset bookkeeping can commit offsets of records no agent processed. The
torture harness found intents committed without any result after rebalances
(``sendonce dev chaos --seed 5``): Faust's stream acks messages it *skips* because
they arrived while flow was suspended or from an older consumer generation
(``Stream._py_aiter``), its ``_new_offset`` treats the committed offset as the last
processed one (off by one), and its gap filling (meant for compacted topics) marks
offsets as done when a record is delivered after a jump in its read offset, which a
seek during recovery produces. Any of these turns a record that was never processed
into a committed one: an intent lost without a result.

So the source topics of the worker's lanes are declared with ``acks=False``: Faust never
commits them. Each lane reports the records it finished (every effect durable) to
:class:`LaneOffsets`, which keeps a per-partition frontier (every offset below it is
finished) and commits the frontier through the group member's consumer. A record that
Faust drops without delivering leaves a hole the frontier cannot pass; the
:class:`HoleMender` notices a frontier that stopped moving while the partition has
records beyond it and the lane is idle, reads those records itself and runs them
through the lane. Processing a record twice is harmless (the ledger makes the repeat a
DUPLICATE, the sightings table a replay); processing it never is what this prevents.

Pure bookkeeping lives in :class:`OffsetFrontier` and :class:`LaneOffsets`; Kafka access
is behind :class:`PartitionReader`, so the module is unit-tested without a broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sendonce.streams.processor import ConsumedRecord

log = logging.getLogger("sendonce.worker")

Partition = tuple[str, int]
Clock = Callable[[], float]


@dataclass
class OffsetFrontier:
    """One partition's progress: every offset below ``next`` is finished.

    ``done`` holds finished offsets at or above ``next`` (after a hole). ``moved_at``
    is when ``next`` last advanced, which is how a stuck hole is noticed.
    """

    next: int
    moved_at: float
    done: set[int] = field(default_factory=set)

    def finish(self, offsets: Iterable[int], now: float) -> bool:
        """Record finished offsets; return whether the frontier advanced."""
        self.done.update(o for o in offsets if o >= self.next)
        return self._advance(now)

    def finish_range(self, start: int, end: int, now: float) -> bool:
        """Record every offset in ``[start, end)`` as finished (records and non-records)."""
        return self.finish(range(max(start, self.next), end), now)

    def _advance(self, now: float) -> bool:
        start = self.next
        while self.next in self.done:
            self.done.discard(self.next)
            self.next += 1
        if self.next != start:
            self.moved_at = now
            return True
        return False


class PartitionReader(Protocol):
    """Reads what the lane's consumer group needs to know about one partition."""

    async def start_offset(self, topic: str, partition: int) -> int:
        """The group's committed offset, or the earliest offset when none is committed."""
        ...

    async def end_offset(self, topic: str, partition: int) -> int:
        """The partition's high watermark (the offset the next record will get)."""
        ...

    async def read(
        self, topic: str, partition: int, start: int, end: int, limit: int
    ) -> tuple[list[ConsumedRecord], int]:
        """Up to ``limit`` records from ``[start, end)`` and the offset reading stopped at.

        Offsets in ``[start, stop)`` that hold no record (transaction markers) are
        covered by the returned stop offset, so the caller may finish the whole range.
        """
        ...


Commit = Callable[[Mapping[Partition, int]], Awaitable[bool]]


class LaneOffsets:
    """Frontiers of the partitions one worker owns, committed as they advance."""

    def __init__(
        self,
        reader: PartitionReader,
        commit: Commit,
        owns: Callable[[str, int], bool],
        clock: Clock = time.monotonic,
    ) -> None:
        self._reader = reader
        self._commit = commit
        self._owns = owns
        self._clock = clock
        self._frontiers: dict[Partition, OffsetFrontier] = {}

    async def frontier(self, topic: str, partition: int) -> OffsetFrontier:
        """The frontier of a partition, starting from the group's committed offset."""
        tp = (topic, partition)
        found = self._frontiers.get(tp)
        if found is None:
            start = await self._reader.start_offset(topic, partition)
            # A batch may have created it while we awaited the broker.
            found = self._frontiers.setdefault(tp, OffsetFrontier(start, self._clock()))
        return found

    async def finished(self, records: Sequence[ConsumedRecord]) -> None:
        """Mark records whose every effect is durable; commit frontiers that moved."""
        by_tp: dict[Partition, list[int]] = defaultdict(list)
        for record in records:
            by_tp[(record.topic, record.partition)].append(record.offset)
        await self._finish(
            {tp: offsets for tp, offsets in by_tp.items() if self._owns(*tp)},
            ranges={},
        )

    async def finished_range(self, topic: str, partition: int, start: int, end: int) -> None:
        """Mark ``[start, end)`` of one partition finished and commit if it moved."""
        if self._owns(topic, partition):
            await self._finish({}, ranges={(topic, partition): (start, end)})

    async def _finish(
        self, offsets: Mapping[Partition, list[int]], ranges: Mapping[Partition, tuple[int, int]]
    ) -> None:
        moved: dict[Partition, int] = {}
        now = self._clock()
        for tp, found in offsets.items():
            frontier = await self.frontier(*tp)
            if frontier.finish(found, now):
                moved[tp] = frontier.next
        for tp, (start, end) in ranges.items():
            frontier = await self.frontier(*tp)
            if frontier.finish_range(start, end, now):
                moved[tp] = frontier.next
        if moved:
            await self._commit(moved)

    def forget(self, partitions: Iterable[Partition] | None = None) -> None:
        """Drop frontiers (all when ``partitions`` is None): ownership changed.

        The next owner, or this worker in its next generation, starts again from what
        the group committed, which is never past a finished offset.
        """
        if partitions is None:
            self._frontiers.clear()
            return
        for tp in partitions:
            self._frontiers.pop(tp, None)

    def snapshot(self) -> dict[Partition, int]:
        """Current frontiers (for logs and tests)."""
        return {tp: f.next for tp, f in self._frontiers.items()}


@dataclass
class Lane:
    """One consuming agent: its source topic and how it processes a batch of records."""

    name: str
    topic: str
    process: Callable[[list[ConsumedRecord]], Awaitable[Any]]
    clock: Clock = time.monotonic
    idle_since: float | None = None
    #: Batches running now (see :meth:`enter`).
    in_flight: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle_since = self.clock()
        self._idle.set()

    def enter(self) -> None:
        """A batch starts. Synchronous on purpose: called right after the batch was
        admitted (owned partitions, no rebalance), with no await in between, so a
        rebalance either sees the batch running and waits for it, or came first and
        the batch was not admitted."""
        self.in_flight += 1
        self.idle_since = None
        self._idle.clear()

    def leave(self) -> None:
        """A batch finished (or failed)."""
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle_since = self.clock()
            self._idle.set()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Count one batch as running for its duration."""
        self.enter()
        try:
            yield
        finally:
            self.leave()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no batch runs; False if ``timeout`` seconds passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def idle_for(self) -> float:
        """Seconds since the lane last finished a batch (0 while one runs)."""
        return 0.0 if self.idle_since is None else self.clock() - self.idle_since


class HoleMender:
    """Processes records Faust never delivered, so a lane's frontier cannot stick.

    A frontier that has not moved for ``stall_s`` while its lane sat idle for as long
    and the partition has records at or beyond it means those records were dropped
    (a delivered record would have reached the idle lane long ago). The mender reads
    them from the broker and runs them through the lane under its lock.
    """

    def __init__(
        self,
        lanes: Sequence[Lane],
        offsets: LaneOffsets,
        reader: PartitionReader,
        owned: Callable[[str], Iterable[int]],
        ready: Callable[[], bool],
        *,
        stall_s: float,
        batch_size: int,
        clock: Clock = time.monotonic,
    ) -> None:
        self._lanes = list(lanes)
        self._offsets = offsets
        self._reader = reader
        self._owned = owned
        self._ready = ready
        self._stall_s = stall_s
        self._batch_size = batch_size
        self._clock = clock
        self.mended_records = 0

    async def tick(self) -> int:
        """One pass over every lane and owned partition; returns records mended."""
        mended = 0
        for lane in self._lanes:
            if lane.idle_for() < self._stall_s:
                continue
            for partition in sorted(self._owned(lane.topic)):
                if not self._ready():
                    return mended
                mended += await self._mend(lane, partition)
        self.mended_records += mended
        return mended

    async def _mend(self, lane: Lane, partition: int) -> int:
        frontier = await self._offsets.frontier(lane.topic, partition)
        if self._clock() - frontier.moved_at < self._stall_s:
            return 0
        end = await self._reader.end_offset(lane.topic, partition)
        mended = 0
        start = frontier.next
        while start < end:
            records, stop = await self._reader.read(
                lane.topic, partition, start, end, self._batch_size
            )
            if stop <= start:
                break
            records = [r for r in records if r.offset not in frontier.done]
            async with lane.running():
                # Ownership or readiness may have changed while the lane was busy.
                if not self._ready() or partition not in set(self._owned(lane.topic)):
                    return mended
                if records:
                    log.warning(
                        "%s: %d records of %s[%d] from offset %d were never delivered to "
                        "the lane; processing them directly",
                        lane.name,
                        len(records),
                        lane.topic,
                        partition,
                        start,
                    )
                    await lane.process(records)
                await self._offsets.finished_range(lane.topic, partition, start, stop)
            mended += len(records)
            # Finishing the range may have joined offsets finished after the hole.
            start = max(stop, frontier.next)
        return mended
