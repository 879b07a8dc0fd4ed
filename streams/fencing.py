"""Broker-enforced ownership of ledger partitions: one transactional producer each.

Which worker owns a ledger partition is the consumer group's decision, but a worker
learns that it lost one only when it next talks to the group. A worker that is paused
(a GC pause, a frozen VM, SIGSTOP) or cut off past its session timeout comes back
believing it still owns its partitions, with records still queued in librdkafka. A
local check cannot stop those writes; the broker can.

Every ledger write of partition *p* goes through a transactional producer whose
``transactional.id`` is ``<app id>-ledger-<p>``, the same on every worker. A worker
that is assigned *p* calls ``init_transactions`` for that id *before* it restores the
partition: the transaction coordinator bumps the id's epoch, aborts any transaction
the previous owner left open, and from then on refuses that owner's commits (it is
*fenced*). Each write is committed in a transaction (writes that arrive together are
committed together, a group commit), and a write returns only once its transaction
committed. Readers of the changelog that decide anything (the bulk restore, the
operators' tools, the record fetcher) read ``read_committed``.

Why no interleaving gives two provider calls for one key: the worker calls the
provider only after the attempt's PENDING write *committed*. A commit is refused once
a newer owner initialised the id, so a committed PENDING was committed before the new
owner's ``init_transactions``, which completes before its restore, which therefore
reads that PENDING, and a PENDING entry is only ever looked up at the provider, never
sent again. A PENDING that had not committed when the new owner took over is aborted:
invisible to the restore, and its writer, fenced, never calls the provider. A late
write from a fenced worker is never committed, so it never regresses a key's state.

Blocking librdkafka calls (``init_transactions``, ``commit_transaction``) run in a
small thread pool of this module's own, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from sendonce.kafka.clients import producer_config
from sendonce.streams.store import PartitionNotOwnedError

log = logging.getLogger("sendonce.fencing")

__all__ = ["FencedError", "LedgerFence", "WriterStateUnknownError", "transactional_id"]

#: How long the coordinator keeps a transaction open before aborting it itself.
TRANSACTION_TIMEOUT_S = 60.0
#: Bound on one ``init_transactions`` or ``commit_transaction`` call.
CALL_TIMEOUT_S = 30.0
#: How long a commit keeps being resumed after retriable errors (librdkafka: a
#: timed-out ``commit_transaction`` continues in the background and may be called
#: again) before the writer's state counts as unknown.
COMMIT_RESUME_S = 2 * TRANSACTION_TIMEOUT_S
#: How long a released writer's commit in flight is waited for.
CLOSE_WAIT_S = 5.0
#: Writes committed in one transaction at most.
GROUP_COMMIT_MAX = 500

#: librdkafka's codes for "a newer producer with this transactional.id exists".
_FENCED_CODES = frozenset(
    code
    for code in (
        getattr(KafkaError, "_FENCED", None),
        getattr(KafkaError, "PRODUCER_FENCED", None),
        getattr(KafkaError, "INVALID_PRODUCER_EPOCH", None),
        getattr(KafkaError, "TRANSACTIONAL_ID_AUTHORIZATION_FAILED", None),
    )
    if code is not None
)


class FencedError(PartitionNotOwnedError):
    """The broker refused a ledger write: another worker owns the partition now."""


class WriterStateUnknownError(RuntimeError):
    """A partition's transaction neither committed nor aborted within the bounds.

    The broker failing, not a change of owner: the worker stops (its records come
    again to the next owner, whose ``init_transactions`` settles the transaction).
    """


def transactional_id(app_id: str, partition: int) -> str:
    """The one ``transactional.id`` of a ledger partition, the same on every worker."""
    return f"{app_id}-ledger-{partition}"


@dataclass
class _Write:
    topic: str
    partition: int
    key: bytes
    value: bytes
    future: asyncio.Future[int]
    #: The test hook of ``LedgerStore.put``: called (in the commit's thread) once
    #: librdkafka holds the record, before its transaction commits.
    enqueued: Callable[[], None] | None = None


@dataclass
class _PartitionWriter:
    """The transactional producer of one ledger partition and its group commits."""

    partition: int
    producer: Any
    queue: list[_Write] = field(default_factory=list)
    flushing: asyncio.Task[None] | None = None
    fenced: bool = False
    closed: bool = False
    #: Set once a transaction's outcome could not be learnt: nothing more is written.
    broken: WriterStateUnknownError | None = None


def _is_fenced(error: Any) -> bool:
    code = error.code() if hasattr(error, "code") else None
    return code in _FENCED_CODES or bool(getattr(error, "fatal", lambda: False)())


class LedgerFence:
    """Ledger changelog writes through per-partition transactional producers.

    Implements :class:`~streams.store.ChangelogWriter`. :meth:`acquire` takes
    partitions over (fencing their previous owner) and must complete before they are
    restored; :meth:`release` gives them up. A write for a partition not acquired
    raises :class:`~streams.store.PartitionNotOwnedError`; one the broker refuses
    because a newer owner exists raises :class:`FencedError` (a subclass), logged once
    per partition with the word "fenced".
    """

    def __init__(
        self,
        bootstrap_servers: str,
        app_id: str,
        *,
        topic: str,
        client_id: str,
        linger_ms: float = 5,
        extra: Mapping[str, Any] | None = None,
        threads: int = 4,
    ) -> None:
        #: The ledger changelog topic whose partitions this fences.
        self.topic = topic
        self._bootstrap = bootstrap_servers
        self._app_id = app_id
        self._client_id = client_id
        self._linger_ms = linger_ms
        self._extra = dict(extra or {})
        self._writers: dict[int, _PartitionWriter] = {}
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sendonce-txn")

    # -- ownership ----------------------------------------------------------

    def held(self) -> set[int]:
        """Partitions acquired and not fenced."""
        return {p for p, w in self._writers.items() if not w.fenced}

    async def acquire(self, partitions: Iterable[int]) -> None:
        """Initialise the transactional producer of each partition not held yet.

        Returns once the broker fenced every previous owner of these partitions and
        aborted what they left open, so a ``read_committed`` restore that starts now
        reads the partition's final state.
        """
        wanted = sorted(set(partitions) - self.held())
        if not wanted:
            return
        for partition in wanted:
            stale = self._writers.pop(partition, None)
            if stale is not None:
                await self._close(stale)
        opened = await asyncio.gather(*(self._open(p) for p in wanted))
        for writer in opened:
            self._writers[writer.partition] = writer
        log.info("ledger partitions %s: transactional writers ready", wanted)

    async def take_over(self, partitions: Iterable[int]) -> None:
        """Hold exactly ``partitions`` from now on: after a rebalance, before the restore.

        Every one of them is initialised again, kept ones too: the worker cannot tell a
        partition it kept from one it lost while paused and was given back (another
        owner fenced it meanwhile), and a stale producer would have every write of the
        partition refused until the next rebalance.
        """
        wanted = set(partitions)
        await self.release(set(self._writers))
        await self.acquire(wanted)

    async def release(self, partitions: Iterable[int]) -> None:
        """Give partitions up (revoked): their writes fail from now on."""
        for partition in sorted(set(partitions)):
            writer = self._writers.pop(partition, None)
            if writer is not None:
                await self._close(writer)

    async def close(self) -> None:
        """Release every partition and stop the thread pool."""
        await self.release(list(self._writers))
        self._executor.shutdown(wait=False)

    async def _open(self, partition: int) -> _PartitionWriter:
        config = producer_config(
            self._bootstrap,
            logger="sendonce.kafka.ledger",
            linger_ms=self._linger_ms,
            overrides={
                **self._extra,
                "client.id": f"{self._client_id}-ledger-{partition}",
                "transactional.id": transactional_id(self._app_id, partition),
                "transaction.timeout.ms": int(TRANSACTION_TIMEOUT_S * 1000),
            },
        )
        producer = Producer(config)
        await self._run(producer.init_transactions, CALL_TIMEOUT_S)
        return _PartitionWriter(partition, producer)

    async def _close(self, writer: _PartitionWriter) -> None:
        writer.closed = True
        if writer.flushing is not None:
            # A commit in flight ends with the next owner's init_transactions at the
            # latest (it waits for a commit under way, or fences it), so the wait is
            # bounded for the rebalance's sake, not for safety.
            await asyncio.wait([writer.flushing], timeout=CLOSE_WAIT_S)
        self._fail(writer, PartitionNotOwnedError(f"ledger partition {writer.partition} released"))
        # Dropped, not flushed: an open transaction is aborted by the next owner's
        # init_transactions (or the coordinator's timeout); nothing here is pending.
        writer.producer = None

    # -- writing ------------------------------------------------------------

    async def write(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        partition: int,
        *,
        enqueued: Callable[[], None] | None = None,
    ) -> int:
        """Write one record in a committed transaction; its offset.

        ``enqueued`` (a test hook, see :class:`~streams.store.ChangelogWriter`) is
        called once librdkafka holds the record and before the transaction commits.
        """
        writer = self._writers.get(partition)
        if writer is None or writer.closed:
            raise PartitionNotOwnedError(f"ledger partition {partition} is not held here")
        if writer.fenced:
            raise FencedError(f"ledger partition {partition}: fenced")
        if writer.broken is not None:
            raise writer.broken
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        writer.queue.append(_Write(topic, partition, key, value, future, enqueued))
        if writer.flushing is None or writer.flushing.done():
            writer.flushing = asyncio.create_task(self._flush(writer))
        return await future

    async def _flush(self, writer: _PartitionWriter) -> None:
        # Writes that queue while a transaction commits go into the next one.
        while writer.queue and not writer.fenced and writer.broken is None:
            batch, writer.queue = writer.queue[:GROUP_COMMIT_MAX], writer.queue[GROUP_COMMIT_MAX:]
            try:
                offsets = await self._run(self._commit, writer.producer, batch)
            except FencedError as exc:
                writer.fenced = True
                log.warning(
                    "ledger partition %d: fenced by the broker, another worker owns it now; "
                    "this worker's writes for it are refused and it calls no provider for "
                    "its keys",
                    writer.partition,
                )
                for write in batch:
                    _settle(write.future, exc)
                self._fail(writer, exc)
                return
            except _StateUnknown as exc:
                writer.broken = WriterStateUnknownError(
                    f"ledger partition {writer.partition}: transaction outcome unknown "
                    f"({exc}); no more writes until the partition is taken over again"
                )
                log.error("%s", writer.broken)
                for write in batch:
                    _settle(write.future, writer.broken)
                self._fail(writer, writer.broken)
                return
            except Exception as exc:
                # Aborted cleanly: these writes failed, the producer is ready again.
                for write in batch:
                    _settle(write.future, exc)
                continue
            for write, offset in zip(batch, offsets, strict=True):
                _settle(write.future, offset)

    def _fail(self, writer: _PartitionWriter, exc: Exception) -> None:
        queued, writer.queue = writer.queue, []
        for write in queued:
            _settle(write.future, exc)

    @staticmethod
    def _commit(producer: Any, batch: list[_Write]) -> list[int]:
        """One transaction holding ``batch``; blocking (runs in the pool)."""
        offsets: list[int] = [-1] * len(batch)
        errors: list[Any] = []

        def delivered(index: int) -> Any:
            def report(err: Any, msg: Any) -> None:
                if err is not None:
                    errors.append(err)
                else:
                    offsets[index] = int(msg.offset())

            return report

        try:
            producer.begin_transaction()
            for index, write in enumerate(batch):
                producer.produce(
                    write.topic,
                    key=write.key,
                    value=write.value,
                    partition=write.partition,
                    on_delivery=delivered(index),
                )
                if write.enqueued is not None:
                    write.enqueued()
            _commit_resuming(producer)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if error is not None and _is_fenced(error):
                raise FencedError(str(error)) from exc
            if error is None or not _requires_abort(error):
                raise _StateUnknown(_name(error)) from exc
            try:
                producer.abort_transaction(CALL_TIMEOUT_S)
            except KafkaException as abort:
                raise _StateUnknown(f"abort failed: {_name(abort.args[0])}") from abort
            raise
        if errors:
            raise KafkaException(errors[0])
        return offsets

    async def _run(self, call: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call, *args)


class _StateUnknown(Exception):
    """Internal: the transaction did not end in a known way (see WriterStateUnknownError)."""


def _requires_abort(error: Any) -> bool:
    return bool(getattr(error, "txn_requires_abort", lambda: False)())


def _name(error: Any) -> str:
    return str(error.name()) if hasattr(error, "name") else str(error)


def _commit_resuming(producer: Any) -> None:
    """``commit_transaction``, called again after each retriable error (blocking).

    librdkafka: a commit that timed out goes on in the background, and calling it
    again resumes it; anything else (begin, produce) fails until it has ended.
    """
    deadline = time.monotonic() + COMMIT_RESUME_S
    while True:
        try:
            producer.commit_transaction(CALL_TIMEOUT_S)
            return
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            retriable = (
                error is not None
                and bool(error.retriable())
                and not _requires_abort(error)
                and not _is_fenced(error)
            )
            if not retriable or time.monotonic() >= deadline:
                raise
            log.warning("ledger commit not confirmed yet (%s); resuming it", _name(error))


def _settle(future: asyncio.Future[int], outcome: int | BaseException) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
