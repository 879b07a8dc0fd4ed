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
:class:`HoleMender` notices a frontier that stopped moving, reads the missing records
itself and runs them through the lane: per partition, the offsets below the highest
finished one that are neither finished nor in a running batch, even while the lane is
busy (a steady stream never leaves it idle, and each record after the hole would grow
the frontier's set of finished offsets); and, once the lane is idle too, everything up
to the partition's end. Processing a record twice is harmless (the ledger makes the repeat a
DUPLICATE, the sightings table a replay); processing it never is what this prevents.

Pure bookkeeping lives in :class:`OffsetFrontier` and :class:`LaneOffsets`; Kafka access
is behind :class:`PartitionReader`, so the module is unit-tested without a broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, defaultdict
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Mapping,
    Sequence,
)
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

    def finish_range(self, start: int, end: int, now: float, skip: Collection[int] = ()) -> bool:
        """Record every offset in ``[start, end)`` but ``skip`` as finished (records
        and non-records)."""
        return self.finish((o for o in range(max(start, self.next), end) if o not in skip), now)

    def missing(self, running: Collection[int] = ()) -> tuple[int, int] | None:
        """The range ``[first, top)`` holding this partition's holes, or None without one.

        A hole is an offset below the highest finished one that is neither finished
        nor in ``running`` (the offsets of batches still running): a partition's
        records reach the lane in order, so an offset passed over that way was
        skipped, not late. ``first`` is the lowest hole; ``top`` the highest finished
        offset. Offsets holding no record (transaction markers) look like holes too:
        reading them back finds nothing to process and lets the frontier pass them.
        """
        if not self.done:
            return None
        top = max(self.done)
        first = next(
            (o for o in range(self.next, top) if o not in self.done and o not in running),
            None,
        )
        return None if first is None else (first, top)

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

    async def finished_range(
        self, topic: str, partition: int, start: int, end: int, skip: Collection[int] = ()
    ) -> None:
        """Mark ``[start, end)`` but ``skip`` of one partition finished and commit if
        it moved."""
        if self._owns(topic, partition):
            await self._finish({}, ranges={(topic, partition): (start, end, skip)})

    async def _finish(
        self,
        offsets: Mapping[Partition, list[int]],
        ranges: Mapping[Partition, tuple[int, int, Collection[int]]],
    ) -> None:
        moved: dict[Partition, int] = {}
        now = self._clock()
        for tp, found in offsets.items():
            frontier = await self.frontier(*tp)
            if frontier.finish(found, now):
                moved[tp] = frontier.next
        for tp, (start, end, skip) in ranges.items():
            frontier = await self.frontier(*tp)
            if frontier.finish_range(start, end, now, skip):
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
    #: Offsets of the running batches' records per partition: in flight, not holes.
    #: Counted, since the mender may run a record a late batch also holds.
    _running: dict[int, Counter[int]] = field(default_factory=dict)
    #: Keys of the running batches' records (see :meth:`mending`).
    _keys: Counter[bytes | None] = field(default_factory=Counter)
    #: Batches of mended records running now: their keys, and set when they end.
    _mending: list[tuple[frozenset[bytes | None], asyncio.Event]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.idle_since = self.clock()
        self._idle.set()

    def enter(self, records: Iterable[ConsumedRecord] = ()) -> None:
        """A batch of ``records`` starts. Synchronous on purpose: called right after
        the batch was admitted (owned partitions, no rebalance), with no await in
        between, so a rebalance either sees the batch running and waits for it, or
        came first and the batch was not admitted."""
        self.in_flight += 1
        self.idle_since = None
        self._idle.clear()
        for record in records:
            self._running.setdefault(record.partition, Counter())[record.offset] += 1
            self._keys[record.key] += 1

    def leave(self, records: Iterable[ConsumedRecord] = ()) -> None:
        """The batch of ``records`` finished (or failed)."""
        for record in records:
            self._keys[record.key] -= 1
            if self._keys[record.key] <= 0:
                del self._keys[record.key]
            running = self._running.get(record.partition)
            if running is not None:
                running[record.offset] -= 1
                if running[record.offset] <= 0:
                    del running[record.offset]
                if not running:
                    del self._running[record.partition]
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle_since = self.clock()
            self._idle.set()

    @contextlib.asynccontextmanager
    async def running(self, records: Sequence[ConsumedRecord] = ()) -> AsyncIterator[None]:
        """Count one batch of ``records`` as running for its duration."""
        self.enter(records)
        try:
            yield
        finally:
            self.leave(records)

    def running_offsets(self, partition: int) -> frozenset[int]:
        """Offsets of ``partition`` in batches running now."""
        return frozenset(self._running.get(partition, ()))

    def holds(self, key: bytes | None) -> bool:
        """Whether a batch running now holds a record of ``key``."""
        return key in self._keys

    @contextlib.asynccontextmanager
    async def mending(self, records: Sequence[ConsumedRecord]) -> AsyncIterator[None]:
        """Run mended ``records`` as a batch of their own, for its duration.

        The lane's batches run one key at a time (a key's records are decided in
        order, and the webhook lane has no lock per dedupe id besides), but the
        mender's batch is not one of them: the mender leaves out the records whose
        key a running batch holds (:meth:`holds`, checked with no await before this),
        and a batch starting meanwhile waits for this one on a shared key
        (:meth:`after_mending`).
        """
        done = asyncio.Event()
        held = (frozenset(r.key for r in records), done)
        self._mending.append(held)
        try:
            async with self.running(records):
                yield
        finally:
            self._mending.remove(held)
            done.set()

    async def after_mending(self, records: Sequence[ConsumedRecord]) -> None:
        """Wait until no batch of mended records shares a key with ``records``."""
        keys = frozenset(r.key for r in records)
        for held, done in list(self._mending):
            if not held.isdisjoint(keys):
                await done.wait()

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

    A partition's frontier that has not moved for ``stall_s`` is looked at:

    * whatever the lane is doing, offsets below the highest finished one that are
      neither finished nor in a running batch were skipped (a partition's records
      reach the lane in order). Under steady traffic the lane is never idle, so this
      is what keeps such a partition committing; at most ``batch_size`` records are
      read per partition and tick, so mending never crowds out the stream for long;
    * once the lane has also been idle for ``stall_s``, records at or beyond the
      frontier up to the partition's end were dropped too (a delivered record would
      have reached the idle lane long ago): all of them are read.

    The records read are run through the lane like a batch of its own.
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
        # Frontiers whose holes take more than one tick (more than a read, or a key
        # held by a running batch): mending them moved the frontier, which must not
        # restart their wait. Keyed to the frontier object,
        # so a frontier forgotten at a rebalance starts its wait afresh.
        self._resume: dict[Partition, OffsetFrontier] = {}

    async def tick(self) -> int:
        """One pass over every lane and owned partition; returns records mended."""
        mended = 0
        try:
            for lane in self._lanes:
                idle = lane.idle_for() >= self._stall_s
                for partition in sorted(self._owned(lane.topic)):
                    if not self._ready():
                        return mended
                    mended += await self._mend(lane, partition, idle=idle)
        finally:
            self.mended_records += mended
        return mended

    async def _mend(self, lane: Lane, partition: int, *, idle: bool) -> int:
        tp = (lane.topic, partition)
        frontier = await self._offsets.frontier(*tp)
        resumed = self._resume.pop(tp, None) is frontier
        if not resumed and self._clock() - frontier.moved_at < self._stall_s:
            return 0
        if not idle:
            holes = frontier.missing(lane.running_offsets(partition))
            if holes is None:
                return 0
            start, top = holes
            mended, stop = await self._mend_range(lane, partition, start, top)
            if stop > start and frontier.missing(lane.running_offsets(partition)):
                self._resume[tp] = frontier
            return mended
        end = await self._reader.end_offset(lane.topic, partition)
        mended = 0
        start = frontier.next
        while start < end:
            count, stop = await self._mend_range(lane, partition, start, end)
            if stop <= start:
                break
            mended += count
            # Finishing the range may have joined offsets finished after the hole.
            start = max(stop, frontier.next)
        return mended

    async def _mend_range(
        self, lane: Lane, partition: int, start: int, end: int
    ) -> tuple[int, int]:
        """Read up to ``batch_size`` records from ``[start, end)`` and process those
        neither finished nor running; returns how many and the offset reading stopped at.
        """
        frontier = await self._offsets.frontier(lane.topic, partition)
        records, stop = await self._reader.read(lane.topic, partition, start, end, self._batch_size)
        if stop <= start:
            return 0, stop
        # Taken with no await before the lane counts the mended records as running.
        running = lane.running_offsets(partition)
        skip = frontier.done | running
        records = [r for r in records if r.offset not in skip]
        # A running batch holding one of their keys goes first; they wait a tick.
        later = {r.offset for r in records if lane.holds(r.key)}
        records = [r for r in records if r.offset not in later]
        async with lane.mending(records):
            # Ownership or readiness may have changed while the broker was read.
            if not self._ready() or partition not in set(self._owned(lane.topic)):
                return 0, start
            if records:
                log.warning(
                    "%s: %d records of %s[%d] from offset %d were never delivered to "
                    "the lane; processing them directly",
                    lane.name,
                    len(records),
                    lane.topic,
                    partition,
                    records[0].offset,
                )
                await lane.process(records)
            # Offsets of [start, stop) holding no record (transaction markers) are
            # finished with the mended ones; a running batch's records are not: their
            # batch finishes them once its effects are durable.
            await self._offsets.finished_range(lane.topic, partition, start, stop, running | later)
        return len(records), stop
