"""The lanes inside the Faust app: batches in flight, offset commits, rebalances, mending.

A lane is one agent over one source topic (:class:`~sendonce.streams.offsets.Lane`).
:class:`SourceOffsets` runs each lane's Faust stream batch by batch and is the only
thing that commits the lanes' source offsets (the topics are declared ``acks=False``,
see :mod:`sendonce.streams.offsets` for why Faust must not). Its contract:

* a batch is admitted only while no rebalance is under way, every table is recovered
  and its partitions are owned; records of other partitions are dropped (their owner
  reads them again from the committed offset);
* up to ``batches_in_flight`` admitted batches run at once, a batch sharing a key with
  a running one waits for it, and a batch's offsets reach
  :class:`~sendonce.streams.offsets.LaneOffsets` (which commits the frontier through the
  group member's consumer) only after every effect of the batch is durable;
* on revocation it waits for the lanes' batches in flight, up to ``revoke_wait_s``
  (validated below the group's ``rebalance_timeout_s``, which the app hands Faust),
  then abandons the batches still running (cancelled: no send of theirs starts after
  it, nothing of them is committed) before table writes stop and the frontiers are
  forgotten; the next assignment starts from what the group committed. Past the
  rebalance timeout the group would move on without this worker while its batches
  still pass their local ownership checks;
* a :class:`~sendonce.streams.offsets.HoleMender` timer processes records Faust never
  delivered: a partition's holes below its highest finished offset once its frontier
  is stuck for :data:`MEND_STALL_S`, even while the lane is busy, and everything up to
  the partition's end once the lane is idle as long too. The records of admitted
  batches count as running (``Lane.enter``) until their batch ends, so the mender
  never takes them for holes; and the mender's batch shares no key with a running
  batch, while a batch starting meanwhile on one of its keys waits for it
  (``Lane.mending``).

It is apart from :mod:`sendonce.streams.app` (which assembles the app, its tables and
agents) because this is where Faust's consumer, its rebalance callbacks and the pure
frontier bookkeeping of :mod:`sendonce.streams.offsets` meet; it is unit-tested with a
fake app and stream (``tests/unit/streams/test_lanes.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import faust
from confluent_kafka import KafkaException
from faust.types import TP

from sendonce.settings import Settings
from sendonce.streams import metrics
from sendonce.streams.fetcher import KafkaPartitionReader
from sendonce.streams.offsets import HoleMender, Lane, LaneOffsets, Partition, PartitionReader
from sendonce.streams.processor import ConsumedRecord
from sendonce.streams.store import PartitionNotOwnedError

log = logging.getLogger("sendonce.worker")


class FencedMemberError(PartitionNotOwnedError):
    """The group coordinator refused this worker's commit: it lost the partition."""


class OwnershipUnconfirmedError(PartitionNotOwnedError):
    """The group could not be asked (its coordinator moving, the broker away).

    Unconfirmed counts as not owned: no provider call; the batch is abandoned like
    one whose partition moved (nothing committed, its records come again).
    """


class _MembershipCheck:
    """One partition's broker-side ownership checks, each shared by every caller that
    queued while the previous one ran."""

    def __init__(self, check: Callable[[], Awaitable[bool]]) -> None:
        self._check = check
        self._next: asyncio.Future[bool] | None = None
        self._runner: asyncio.Task[None] | None = None

    async def confirm(self) -> bool:
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        waiting = self._next
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run())
        return await asyncio.shield(waiting)

    async def _run(self) -> None:
        while self._next is not None:
            current, self._next = self._next, None
            try:
                current.set_result(await self._check())
            except Exception as exc:
                current.set_exception(exc)


# How often the hole mender looks, and how long a frontier must be stuck before the
# offsets it waits for count as dropped rather than still on their way: below the
# highest finished offset whatever the lane does, beyond it once the lane is idle too.
MEND_TICK_S = 2.0
MEND_STALL_S = 10.0
# A stopping worker waits this long at most for a lane's batch in flight to finish
# (a rebalance waits settings.revoke_wait_s, bounded by the group's rebalance timeout).
DRAIN_WAIT_S = 120.0
# How long the ownership check keeps asking a group whose coordinator is moving (a
# broker restart, a leader election), and how long it waits between tries.
CONFIRM_FOR_S = 15.0
CONFIRM_RETRY_S = 0.5
# How long the abandoned batches get to unwind once cancelled (their finally blocks).
ABANDON_WAIT_S = 5.0


class SourceOffsets:
    """Wires :mod:`streams.offsets` into the Faust app: commits, rebalances, mending."""

    def __init__(
        self, app: faust.App, settings: Settings, reader: PartitionReader | None = None
    ) -> None:
        self._app = app
        self._settings = settings
        #: The group's committed offsets and the partitions' records (from the broker
        #: unless a test passes its own ``reader``).
        self.reader: PartitionReader = reader or KafkaPartitionReader(
            settings.bootstrap_servers, settings.app_id
        )
        self.offsets = LaneOffsets(self.reader, self._commit, self.owns)
        self._lanes: list[Lane] = []
        self._tables: dict[str, bool] = {}
        # The assignor builds a new set of new TP tuples per call, and every ledger
        # write asks (twice): cached per assignment, dropped by the rebalance handlers.
        self._actives: frozenset[TP] | None = None
        #: Set when the worker stops: no new batch starts (see :meth:`drain`).
        self._stopping = False
        #: The lanes' admitted batches running now, and those a revocation abandoned.
        self._batches: set[asyncio.Task[Any]] = set()
        self._abandoned: set[asyncio.Task[Any]] = set()
        #: Per partition: the membership check waiters queue for (see confirm_owner).
        self._checks: dict[Partition, _MembershipCheck] = {}

    async def confirm_owner(self, topic: str, partition: int) -> None:
        """Ask the broker whether this worker still owns ``partition``; raise if not.

        The check is an offset commit of the partition's frontier (a value the worker
        would commit anyway) through the group member's own consumer: the group
        coordinator refuses a commit from a member of an older generation, one the
        group evicted while it was paused or cut off. It runs right before a provider
        call, after the attempt's PENDING write committed, so a worker that comes back
        after losing the partition calls no provider for its keys. Callers that arrive
        while a check runs share the next one (a check that started before a caller's
        PENDING committed proves nothing for it).
        """
        tp = (topic, partition)
        check = self._checks.get(tp)
        if check is None:
            check = self._checks[tp] = _MembershipCheck(lambda: self._commit_frontier(tp))
        if not await check.confirm():
            log.warning(
                "partition %d: the group refused this worker's commit: it was fenced "
                "(another worker owns the partition now); no provider call for its keys",
                partition,
            )
            raise FencedMemberError(f"partition {partition}: no longer owned in the group's view")

    async def _commit_frontier(self, tp: Partition) -> bool:
        deadline = time.monotonic() + CONFIRM_FOR_S
        while True:
            if not self.owns(*tp):
                return False
            try:
                frontier = await self.offsets.frontier(*tp)
            except KafkaException as exc:
                # Reading the group's committed offset failed (NOT_COORDINATOR, a
                # timeout): the answer is still to come, not "fenced".
                if time.monotonic() >= deadline:
                    raise OwnershipUnconfirmedError(
                        f"partition {tp[1]}: could not confirm ownership with the group "
                        f"({exc.args[0].name() if exc.args else exc})"
                    ) from exc
                await asyncio.sleep(CONFIRM_RETRY_S)
                continue
            return await self._commit({tp: frontier.next})

    def lane(self, name: str, topic: str, process: Any) -> Lane:
        """Register a lane (one agent over ``topic``)."""
        lane = Lane(name, topic, process)
        self._lanes.append(lane)
        return lane

    def topics(self) -> list[str]:
        """The lanes' source topics."""
        return [lane.topic for lane in self._lanes]

    def table(self, name: str) -> None:
        """Register a table whose recovery must finish before records are mended."""
        self._tables[name] = False

    def recovered(self, name: str) -> None:
        """A table finished recovering for the current assignment."""
        self._tables[name] = True

    def ready(self) -> bool:
        """Whether every table is recovered, no rebalance is under way and the worker
        is not stopping."""
        return not self._stopping and not self._app.rebalancing and all(self._tables.values())

    def admit(self, records: list[ConsumedRecord]) -> list[ConsumedRecord]:
        """The records of a batch this worker may process now.

        Faust hands a lane events it buffered before a rebalance. Processing one of
        a partition that moved (or before the ledger is recovered) could race the
        new owner on a key; dropping it is safe, since it is not committed and its
        owner reads it again from the committed offset.
        """
        if not self.ready():
            if records:
                # While stopping, every batch Faust still hands over is dropped: one
                # "stopping" line says it, not one line per batch.
                log.log(
                    logging.DEBUG if self._stopping else logging.INFO,
                    "dropped %d records delivered during a rebalance or the stop",
                    len(records),
                )
            return []
        owned = self._assigned()
        return [r for r in records if TP(r.topic, r.partition) in owned]

    async def run(self, stream: Any, lane: Lane, report: Callable[[Any], None]) -> None:
        """Process ``stream`` batch by batch through ``lane``; ``report`` each batch's stats.

        A batch counts as finished (and its offsets may be committed) only after every
        effect is durable. Up to ``batches_in_flight`` batches run at once, so the next
        batch is decided while the previous one waits for the broker's acknowledgements;
        a batch sharing a key with one still running waits for it first, so the intents
        of one key are still decided in order.
        """
        depth = self._settings.batches_in_flight
        running: list[tuple[asyncio.Task[Any], frozenset[bytes | None]]] = []
        try:
            async for events in acked_batches(stream, self._settings):
                records = self.admit([_record(e) for e in events])
                if not records:
                    continue
                keys = frozenset(r.key for r in records)
                earlier = [task for task, held in running if not held.isdisjoint(keys)]
                # No await between the admission check and this: see Lane.enter.
                lane.enter(records)
                task = asyncio.ensure_future(self._batch(lane, records, earlier, report))
                self._batches.add(task)
                task.add_done_callback(self._batches.discard)
                running.append((task, keys))
                await _reap(running, block=len(running) >= depth)
            while running:
                await _reap(running, block=True)
        finally:
            # Stopping (or a batch failed): nothing of the unfinished batches is
            # committed; the partitions' next owner processes them again.
            for task, _ in running:
                task.cancel()
            if running:
                await asyncio.wait([task for task, _ in running])

    async def _batch(
        self,
        lane: Lane,
        records: list[ConsumedRecord],
        earlier: list[asyncio.Task[Any]],
        report: Callable[[Any], None],
    ) -> None:
        """One admitted batch: process, mark finished, report its stats."""
        try:
            if earlier:
                await asyncio.wait(earlier)
            await lane.after_mending(records)
            stats = await lane.process(records)
            metrics.BATCH_RECORDS.labels(lane.name).observe(len(records))
            await self.finished(records)
            report(stats)
        except PartitionNotOwnedError:
            # A rebalance moved a partition of this batch away mid-batch:
            # nothing of it is committed, and its new owner reads it again.
            log.info("%s: batch abandoned, a partition moved to another worker", lane.name)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task not in self._abandoned:
                raise
            # Cancelled by a revocation that could not wait longer: like a moved
            # partition, nothing of it is committed and the next owner reads it again.
            self._abandoned.discard(task)
            log.warning("%s: batch abandoned, the rebalance could not wait longer", lane.name)
        except Exception as exc:
            # Bad input never gets here (it is dead-lettered); this is the
            # broker or the disk failing. Stop the worker without committing the
            # batch: its records are redelivered to the next owner and the
            # ledger makes the repeat harmless.
            log.critical("%s: batch failed, stopping worker: %s", lane.name, type(exc).__name__)
            await self._app.crash(exc)
            raise
        finally:
            lane.leave(records)

    def writable(self, topic: str, partition: int) -> bool:
        """Whether table writes for ``partition`` are allowed: owned and recovered.

        Unlike :meth:`ready` this stays true while a rebalance waits for the batch
        in flight (the partition is still ours until the revocation completes).
        """
        return all(self._tables.values()) and self.owns(topic, partition)

    def owns(self, topic: str, partition: int) -> bool:
        """Whether partition ``partition`` of ``topic`` is assigned to this worker."""
        return TP(topic, partition) in self._assigned()

    def _assigned(self) -> frozenset[TP]:
        actives = self._actives
        if actives is None:
            actives = self._actives = frozenset(self._app.assignor.assigned_actives())
        return actives

    def owned(self, topic: str) -> list[int]:
        """The partitions of ``topic`` assigned to this worker."""
        return [tp.partition for tp in self._assigned() if tp.topic == topic]

    async def _commit(self, offsets: Mapping[Partition, int]) -> bool:
        # The group member's own consumer: a commit from a member that lost the
        # partition (an older generation) is refused by the broker.
        consumer: Any = self._app.consumer
        committed: bool = await consumer._commit(
            {TP(topic, partition): offset for (topic, partition), offset in offsets.items()}
        )
        return committed

    async def finished(self, records: Sequence[ConsumedRecord]) -> None:
        """A lane's batch is durable: advance and commit its partitions' frontiers."""
        try:
            await self.offsets.finished(records)
        except Exception as exc:
            # Not committing is always safe: the records come again and the ledger
            # makes the repeat harmless. The next batch commits the frontier.
            log.warning("could not record finished offsets: %s", type(exc).__name__)

    async def revoked(self) -> None:
        """Partitions are being revoked: let the batches in flight finish, then stop.

        Faust waits for acked messages only; ours are not, so wait for the lanes'
        batches in flight here. Otherwise the next owner could process a key while this
        worker is still between its PENDING write and its send. The wait is bounded
        below the group's rebalance timeout: the batches still running then are
        cancelled, so none of their sends starts once the group moved on.
        """
        wait_s = self._settings.revoke_wait_s
        if not await self._all_idle(wait_s):
            await self._abandon(wait_s)
        # From here until the tables are recovered for the next assignment,
        # nothing writes to them (see FaustTableBytes).
        for name in self._tables:
            self._tables[name] = False
        self._actives = None
        self.offsets.forget()
        _shorten_fetch_wait(self._app, self._settings.fetch_max_wait_ms)

    async def drain(self) -> None:
        """The worker is stopping: start no new batch, let the batches in flight finish.

        Called before Faust stops the consumer, the tables and the agents (which it
        does in that order, cancelling whatever batch still runs). A batch cancelled
        between its PENDING write and the provider's answer leaves a key that its
        next owner can only report AMBIGUOUS, for an operator to settle, although a
        few more seconds would have finished it. Records not started are not
        committed; the partitions' next owner reads them again.
        """
        self._stopping = True
        for lane in self._lanes:
            if lane.in_flight:
                log.info(
                    "%s: stopping, waiting for %d batches in flight", lane.name, lane.in_flight
                )
            if not await lane.wait_idle(DRAIN_WAIT_S):
                log.warning("%s: batch still running after %.0fs", lane.name, DRAIN_WAIT_S)

    async def _all_idle(self, timeout: float) -> bool:
        """Wait until no lane runs a batch; False if ``timeout`` seconds passed first.

        One deadline for all lanes: the rebalance timeout bounds the whole revocation.
        """
        waits = [asyncio.ensure_future(lane.wait_idle(timeout)) for lane in self._lanes]
        return all(await asyncio.gather(*waits)) if waits else True

    async def _abandon(self, waited_s: float) -> None:
        """Cancel the admitted batches still running after the revoke wait.

        A batch cancelled between its PENDING write and the provider's answer leaves
        an entry the next owner looks up (it never sends blind); one cancelled before
        its PENDING write leaves nothing. Mended batches are not cancelled here: the
        writes and sends they would make after this fail the ownership checks
        (tables not writable until recovered again).
        """
        running = [task for task in self._batches if not task.done()]
        for lane in self._lanes:
            if lane.in_flight:
                log.warning(
                    "%s: %d batches still running after %.0fs of rebalance, abandoning them",
                    lane.name,
                    lane.in_flight,
                    waited_s,
                )
        for task in running:
            self._abandoned.add(task)
            task.cancel()
        if running:
            await asyncio.wait(running, timeout=ABANDON_WAIT_S)

    def assigned(self) -> None:
        """Partitions were assigned: a new generation starts from what the group committed."""
        self._actives = None
        self.offsets.forget()

    def install(self) -> None:
        """Connect rebalance handlers and the mender's timer."""
        app = self._app
        mender = HoleMender(
            self._lanes,
            self.offsets,
            self.reader,
            self.owned,
            self.ready,
            stall_s=MEND_STALL_S,
            batch_size=self._settings.batch_size,
        )

        async def on_revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
            await self.revoked()

        async def on_assigned(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
            self.assigned()

        app.on_partitions_revoked.connect(on_revoked)
        app.on_partitions_assigned.connect(on_assigned)

        failing = False

        async def mend_tick() -> None:
            nonlocal failing
            try:
                await mender.tick()
            except Exception as exc:
                # Said once per run of failures: a broker that is away fails every tick.
                log.log(
                    logging.DEBUG if failing else logging.WARNING,
                    "mending dropped records failed, retrying every %.0fs: %s",
                    MEND_TICK_S,
                    type(exc).__name__,
                )
                failing = True
                return
            failing = False

        app.timer(interval=MEND_TICK_S, name="sendonce.mend")(mend_tick)


def _shorten_fetch_wait(app: faust.App, max_wait_ms: int) -> None:
    """Cap how long the broker holds the worker's fetch requests open.

    Faust builds its aiokafka consumer with ``fetch_max_wait_ms=1500`` and no setting
    for it. aiokafka leaves a partition whose fetched records are still buffered out of
    the next fetch request, so a record arriving there waits for the open request on
    the other partitions to return: up to 1.5 s of added latency at low rates. The
    value is read each time a fetch request is built, so setting it on the running
    consumer takes effect from the next request.
    """
    try:
        fetcher = app.consumer._thread._consumer._fetcher  # type: ignore[attr-defined]
        fetcher._fetch_max_wait_ms = max_wait_ms
    except AttributeError:
        log.warning("could not shorten the consumer's fetch wait (Faust internals changed)")


async def _reap(running: list[tuple[asyncio.Task[Any], Any]], *, block: bool) -> None:
    """Take the finished batches off ``running``; with ``block``, first wait until one
    finishes. A batch that failed raises here, at once, whichever batch started first."""
    if block and not any(task.done() for task, _ in running):
        await asyncio.wait([task for task, _ in running], return_when=asyncio.FIRST_COMPLETED)
    finished = [item for item in running if item[0].done()]
    for item in finished:
        running.remove(item)
    for task, _ in finished:
        task.result()


async def acked_batches(stream: Any, settings: Settings) -> AsyncIterator[list[Any]]:
    """Batches of events, each acked only after the loop body finished with it.

    Faust's ``take_events`` acks a batch in a ``finally``, so a batch cancelled
    by a shutdown or failed halfway would be acked and then committed: its
    intents lost without a result (the torture harness found exactly that).
    Here a batch whose body raised or was cancelled is never acked; the next
    owner gets it again and the ledger makes the repeat harmless.
    """
    async for events in stream.noack_take(settings.batch_size, within=settings.batch_within_s):
        yield events
        # Reached only when the consumer asks for the next batch, i.e. after
        # the body finished without raising.
        for event in events:
            await stream.ack(event)


def _record(event: Any) -> ConsumedRecord:
    message = event.message
    headers = tuple((k, v) for k, v in (message.headers or ()))
    return ConsumedRecord(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        timestamp_ms=int(message.timestamp * 1000) if message.timestamp else None,
        headers=headers,
    )
