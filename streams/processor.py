"""The shell around the ledger: decode, validate, drive each key's effects.

:class:`IntentProcessor` knows nothing about Faust: it takes consumed records,
a :class:`~streams.store.LedgerStore`, an email provider and a :class:`Sink`
for produced records. The Faust agent (``streams/app.py``) feeds it batches;
unit tests feed it directly (``streams/testing.py``).

Per batch, records are split into *waves* so that each key appears at most once
per wave: a key's second intent is decided only after its first one settled.
Within a wave, keys are driven concurrently (provider calls bounded by a
semaphore); every Persist is awaited before the next effect of that key.

A batch is all or nothing for its sends once a key fails: the first failure (a
partition that moved, :class:`~streams.store.PartitionNotOwnedError`, or the broker
failing) cancels the wave's other keys, so none that still waits (for a mailbox
permit, a retry's backoff) reaches the provider afterwards; and every provider call
checks, right before it starts, that its partition is still owned and writable.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka.partitioner import murmur2

from sendonce.connectors.base import (
    EmailProvider,
    LookupResult,
    LookupStatus,
    OutgoingEmail,
    SendOutcome,
    SendStatus,
    drafting,
    estimated_wait_s,
    send_permit,
)
from sendonce.faults import (
    AFTER_ACCEPT,
    AFTER_PENDING,
    AFTER_SENT,
    PENDING_PRODUCED,
    CrashPoints,
    PausePoints,
)
from sendonce.keys import (
    InvalidIntentError,
    identify_intent,
)
from sendonce.schemas.codec import SchemaCodec
from sendonce.schemas.errors import CodecError, WrongSchemaError
from sendonce.settings import Settings, TopicNames
from sendonce.streams import metrics
from sendonce.streams.dead_letters import (
    DEAD_LETTER_OVERHEAD_BYTES,
    TopicRecord,
    dead_letter,
    record_bytes,
)
from sendonce.streams.ledger import (
    CallProvider,
    CommandArrived,
    CreateDraft,
    Decision,
    DraftFinished,
    Emit,
    Event,
    IntentArrived,
    IntentFacts,
    IntentRef,
    LedgerEntry,
    LedgerStatus,
    LookupFinished,
    LookupTarget,
    OperatorCommand,
    Persist,
    Reconcile,
    ReconcileDue,
    ReconcilePolicy,
    Refuse,
    ResultOutcome,
    ResultRecord,
    RetryPolicy,
    SendFinished,
    WaitForRetry,
    decide,
    lookup_due_at_ms,
    message_id_for,
)
from sendonce.streams.store import OPEN_STATUSES, LedgerStore, PartitionNotOwnedError

log = logging.getLogger("sendonce.worker")

#: The most keys one reconciler tick looks up, those due longest first: a tick holds
#: the reconciler's reader and the mailboxes' slots until its last lookup ends, so a
#: backlog (hundreds of open sends after a rebalance) is worked off tick by tick.
RECONCILE_TICK_KEYS = 64

#: States in which a Persist with a provider call after it writes an attempt.
_ATTEMPTING = (LedgerStatus.PENDING, LedgerStatus.DRAFTED)


@dataclass(frozen=True)
class ConsumedRecord:
    """One record as consumed from the intents topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None
    headers: tuple[tuple[str, bytes | None], ...] = ()

    @property
    def ref(self) -> IntentRef:
        """The record's coordinates."""
        return IntentRef(self.topic, self.partition, self.offset)


class Sink(Protocol):
    """Produces records and returns once the broker acknowledged them."""

    async def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        """Produce one record durably."""
        ...


#: Header on a deferred intent naming the intent record it was moved from.
ORIGIN_HEADER = "sendonce-origin"


def origin_header(ref: IntentRef) -> tuple[str, bytes]:
    """The lineage header of a record moved to the deferred lane."""
    return (ORIGIN_HEADER, f"{ref.topic}:{ref.partition}:{ref.offset}".encode())


def origin_of(record: SourceRecord) -> IntentRef | None:
    """The original intent's coordinates carried by a deferred record, if any.

    Raises :class:`BadIntent` for a header that is not ``topic:partition:offset``.
    """
    for name, value in record.headers:
        if name == ORIGIN_HEADER and value:
            try:
                topic, partition, offset = value.decode().rsplit(":", 2)
                return IntentRef(topic, int(partition), int(offset))
            except ValueError:  # UnicodeDecodeError too
                # Poison on an internal topic: dead-lettered, never a failed batch.
                raise BadIntent("misrouted", f"malformed {ORIGIN_HEADER} header") from None
    return None


class RecordFetcher(Protocol):
    """Reads one intent record back by its coordinates (for reconciliation)."""

    async def fetch(self, ref: IntentRef) -> ConsumedRecord | None:
        """The record at ``ref``, or ``None`` if it is gone (retention)."""
        ...


def partition_for_key(key: bytes, partitions: int) -> int:
    """The partition Kafka's default (murmur2) partitioner picks for ``key``."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


class BadIntent(Exception):
    """A record that cannot become a ledger event; goes to the dead-letter topic."""

    def __init__(self, error_type: str, reason: str) -> None:
        super().__init__(reason)
        self.error_type = error_type
        self.reason = reason


def decode_record(value: bytes | None, codec: SchemaCodec, expect: str) -> dict[str, Any]:
    """The record's value decoded as ``expect``; :class:`BadIntent` says why it cannot be."""
    if value is None:
        raise BadIntent("undecodable", "record has no value (tombstone)")
    try:
        return codec.decode(value, expect=expect)
    except WrongSchemaError as exc:
        raise BadIntent("wrong_schema", str(exc)) from exc
    except CodecError as exc:
        raise BadIntent("undecodable", str(exc)) from exc


class SourceRecord(TopicRecord, Protocol):
    """A record read from a lane's topic (consumed, or read back by an operator tool)."""

    @property
    def ref(self) -> IntentRef: ...


def accept_intent(
    record: SourceRecord, codec: SchemaCodec, settings: Settings
) -> tuple[dict[str, Any], IntentFacts]:
    """The decoded intent and its ledger facts, or :class:`BadIntent` saying why not.

    The worker's acceptance rule, in one place: ``sendonce replay`` applies the same
    rule to predict which records the worker dead-letters.
    """
    intent = decode_record(record.value, codec, "EmailIntent")
    try:
        identity = identify_intent(intent, max_body_bytes=settings.max_body_bytes)
    except InvalidIntentError as exc:
        raise BadIntent("invalid_intent", str(exc)) from exc
    key = identity.key
    key_bytes = key.value.encode()
    if record.key != key_bytes:
        raise BadIntent(
            "misrouted",
            "record key is not the intent's idempotency key; publish with "
            "sendonce.publish (or key each record by its idempotency key)",
        )
    expected = partition_for_key(key_bytes, settings.partitions)
    if record.partition != expected:
        raise BadIntent(
            "misrouted",
            f"record is on partition {record.partition} but its key belongs on "
            f"partition {expected} (Kafka's murmur2 partitioner over "
            f"{settings.partitions} partitions); one owner per key needs it there",
        )
    ref = record.ref
    if record.topic == settings.topics.intents_deferred:
        origin = origin_of(record)
        if origin is None:
            raise BadIntent("misrouted", "deferred record without its origin header")
        ref = origin
    facts = IntentFacts(
        key=key.value,
        tenant_id=intent["tenant_id"],
        source_event_id=intent["source_event_id"],
        action_type=intent["action_type"],
        content_fingerprint=identity.fingerprint,
        earlier_fingerprints=identity.earlier_fingerprints,
        ref=ref,
        sender=identity.sender,
    )
    return intent, facts


@dataclass
class _Accepted:
    record: ConsumedRecord
    intent: dict[str, Any]
    facts: IntentFacts


@dataclass
class BatchStats:
    """Counts of what one batch did (for logs and tests)."""

    records: int = 0
    dead_lettered: int = 0
    deferred: int = 0
    provider_calls: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    #: Operator commands applied and refused.
    commands_applied: int = 0
    commands_refused: int = 0


def encode_command(
    codec: SchemaCodec,
    *,
    command_id: str,
    key: str,
    action: str,
    operator: str,
    reason: str,
    issued_at_ms: int,
) -> bytes:
    """An ``OperatorCommand`` record value (what ``sendonce review`` publishes)."""
    return codec.encode(
        "OperatorCommand",
        {
            "command_id": command_id,
            "idempotency_key": key,
            "action": action.upper(),
            "reason": reason,
            "operator": operator,
            "issued_at": issued_at_ms,
        },
    )


class IntentProcessor:
    """Turns intent records into ledger decisions, provider calls and results."""

    def __init__(
        self,
        settings: Settings,
        store: LedgerStore,
        provider: EmailProvider,
        sink: Sink,
        codec: SchemaCodec,
        *,
        clock: Callable[[], int] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        fetcher: RecordFetcher | None = None,
        command_fetcher: RecordFetcher | None = None,
        owns: Callable[[int], bool] | None = None,
        confirm_owner: Callable[[int], Awaitable[None]] | None = None,
        crash_points: CrashPoints | None = None,
        pause_points: PausePoints | None = None,
    ) -> None:
        self.settings = settings
        self.topics: TopicNames = settings.topics
        self.store = store
        self.provider = provider
        self.sink = sink
        self.codec = codec
        self.policy = RetryPolicy(
            settings.retry_max_attempts, settings.retry_base_delay_s, settings.retry_max_delay_s
        )
        self.reconcile_policy = ReconcilePolicy(
            grace_s=settings.reconcile_grace_s,
            interval_s=settings.reconcile_interval_s,
            max_interval_s=settings.reconcile_max_interval_s,
            deadline_s=settings.reconcile_deadline_s,
            on_deadline=settings.reconcile_on_deadline,
            draft_resend_grace_s=settings.reconcile_draft_resend_grace_s,
        )
        #: Providers that can hold a message as a draft settle ambiguity through it.
        self._drafting = drafting(provider)
        self._drafts = self._drafting is not None and self._drafting.drafts_first
        self._clock = clock or (lambda: int(time.time() * 1000))
        self._sleep = sleep
        self._send_slots = asyncio.Semaphore(settings.send_concurrency)
        self._fetcher = fetcher
        #: Operator commands read their key's origin through their own reader: a
        #: backlog of reconciliation reads (thousands of open sends after a throttling
        #: episode) must not hold an operator's decision for minutes.
        self._command_fetcher = command_fetcher or fetcher
        self._owns = owns or (lambda _partition: True)
        #: The broker's word on ownership, asked right before each provider call
        #: (``SourceOffsets.confirm_owner``: raises when the group moved the partition).
        self._confirm_owner = confirm_owner
        # Built here when not passed, so the worker gets SENDONCE_CRASH_AT without
        # its wiring having to know about the test hook.
        self._crash = crash_points if crash_points is not None else CrashPoints(settings.crash_at)
        self._pause = pause_points if pause_points is not None else PausePoints(settings.pause_at)
        # One coroutine per key at a time, across the agent and the reconciler.
        self._key_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        #: Open keys awaiting a lookup: key -> (partition, due time in ms). AMBIGUOUS
        #: entries with a lookup scheduled, and PENDING entries found on recovery.
        self.reconcile_index: dict[str, tuple[int, int]] = {}
        #: Every AMBIGUOUS key of owned partitions (also those flagged for review).
        self.ambiguous_keys = metrics.GaugedKeys(metrics.AMBIGUOUS_OPEN)
        #: Every key of owned partitions whose entry is not final (for the age gauge).
        self.open_entries = metrics.OpenEntries()
        #: Inline sends admitted per sender and not finished (for deferral).
        self._admitted: dict[str, int] = {}

    async def process_batch(self, records: Sequence[ConsumedRecord]) -> BatchStats:
        """Process records in order per key; returns when every effect is durable."""
        stats = BatchStats(records=len(records))
        accepted: list[_Accepted] = []
        dead: list[Awaitable[None]] = []
        for record in records:
            try:
                accepted.append(self._accept(record))
            except BadIntent as bad:
                stats.dead_lettered += 1
                dead.append(self._dead_letter(record, bad))
        # Dead letters first: a batch that fails in its sends (a moved partition, the
        # broker failing) must not leave them unwritten; the records come again anyway.
        await asyncio.gather(*dead)
        for wave in _waves(accepted):
            await _all_or_none(self._drive(item, stats) for item in wave)
        return stats

    # -- input ------------------------------------------------------------

    def _accept(self, record: ConsumedRecord) -> _Accepted:
        intent, facts = accept_intent(record, self.codec, self.settings)
        return _Accepted(record, intent, facts)

    async def _dead_letter(self, record: ConsumedRecord, bad: BadIntent) -> None:
        letter = dead_letter(record, bad.reason, bad.error_type, self._clock(), self.settings)
        log.warning(
            "dead-lettered record %s[%d]@%d: %s",
            record.topic,
            record.partition,
            record.offset,
            letter["error_type"],
        )
        metrics.DEAD_LETTERS.labels(letter["error_type"]).inc()
        await self.sink.produce(
            self.topics.dlq, letter["original_key"], self.codec.encode("DeadLetter", letter)
        )

    # -- driving one key --------------------------------------------------

    def _lock_for(self, key: str) -> asyncio.Lock:
        lock = self._key_locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._key_locks[key] = lock
        return lock

    async def _drive(self, item: _Accepted, stats: BatchStats, first: Event | None = None) -> None:
        key = item.facts.key
        lock = self._lock_for(key)
        deferrable = first is None and self._deferrable(item)
        if deferrable and lock.locked():
            # The key is busy (deferred lane or reconciler): queue behind it in
            # the deferred lane instead of stalling this batch on its mailbox.
            await self._defer(item, stats)
            return
        async with lock:
            sender = item.facts.sender
            entry = self.store.get(key, item.record.partition)
            if (
                deferrable
                and entry is None
                and estimated_wait_s(self.provider, sender, self._admitted.get(sender, 0))
                > self.settings.defer_after_s
            ):
                await self._defer(item, stats)
                return
            self._admitted[sender] = self._admitted.get(sender, 0) + 1
            try:
                await self._drive_locked(item, stats, first, entry, capped=deferrable)
            finally:
                left = self._admitted[sender] - 1
                if left:
                    self._admitted[sender] = left
                else:
                    del self._admitted[sender]

    def _deferrable(self, item: _Accepted) -> bool:
        record = item.record
        # A copy that would not fit the topic (its value plus the origin header) is
        # sent in line instead: librdkafka would refuse it and fail the whole batch.
        copy_bytes = record_bytes(record.key, record.value, record.headers) + 64
        return (
            self.settings.defer_after_s > 0
            and record.topic == self.topics.intents
            and copy_bytes + DEAD_LETTER_OVERHEAD_BYTES <= self.settings.max_record_bytes
        )

    async def _defer(self, item: _Accepted, stats: BatchStats) -> None:
        """Move the intent to the deferred lane, keeping its original bytes and lineage."""
        record = item.record
        assert record.value is not None
        headers = [(k, v) for k, v in record.headers if v is not None and k != ORIGIN_HEADER]
        headers.append(origin_header(record.ref))
        await self.sink.produce(self.topics.intents_deferred, record.key, record.value, headers)
        stats.deferred += 1

    async def _drive_locked(
        self,
        item: _Accepted,
        stats: BatchStats,
        first: Event | None,
        entry: LedgerEntry | None,
        *,
        capped: bool = False,
    ) -> None:
        """Drive one key from ``entry`` (read under the key's lock) until no effect is left.

        ``capped``: an intents-lane record that may move to the deferred lane; a retry
        wait longer than ``retry_inline_max_s`` moves it there instead of holding the
        batch (and a rebalance waiting for the batch). Elsewhere (the deferred lane,
        the reconciler, operator commands) the wait happens in line.
        """
        partition = item.record.partition
        event: Event | None = first or IntentArrived(
            item.facts, self._clock(), self.settings.worker_id
        )
        while event is not None:
            decision: Decision = decide(
                entry, event, self.policy, self.reconcile_policy, drafts=self._drafts
            )
            entry = decision.entry
            decided_on, event = event, None
            call = next(
                (e for e in decision.effects if isinstance(e, CallProvider | CreateDraft)), None
            )
            async with contextlib.AsyncExitStack() as permit:
                if call is not None:
                    # The send's permit before its PENDING write: a key waits for a
                    # saturated mailbox without being PENDING, so a crash leaves at
                    # most the sends that could start to look up, not a backlog.
                    await self._take_send_permit(permit, item)
                for effect in decision.effects:
                    if isinstance(effect, Persist):
                        attempt = effect.entry.status in _ATTEMPTING and call is not None
                        await self.store.put(
                            effect.entry,
                            partition,
                            enqueued=self._pending_produced if attempt else None,
                        )
                        if effect.entry.status is LedgerStatus.SENT:
                            self._reached(AFTER_SENT)
                        elif attempt:
                            self._reached(AFTER_PENDING)
                    elif isinstance(effect, Emit):
                        await self._emit(effect.result, stats)
                    elif isinstance(effect, CallProvider | CreateDraft):
                        assert entry is not None
                        self._check_owned(partition)
                        if self._confirm_owner is not None:
                            await self._confirm_owner(partition)
                        stats.provider_calls += 1
                        if isinstance(effect, CreateDraft):
                            made = await self._create_draft(item, entry)
                            event = DraftFinished(
                                item.facts, effect.attempt_id, made, self._clock()
                            )
                            continue
                        outcome = await self._call(item, entry)
                        if outcome.status is SendStatus.ACCEPTED:
                            self._reached(AFTER_ACCEPT)
                        event = SendFinished(item.facts, effect.attempt_id, outcome, self._clock())
                    elif isinstance(effect, WaitForRetry):
                        # The refused attempt is recorded, the next one not written
                        # yet: an interrupted wait leaves a key provably not sent.
                        wait_s = max(0.0, (effect.until_ms - self._clock()) / 1000)
                        if capped and wait_s > self.settings.retry_inline_max_s:
                            await self._defer(item, stats)
                            continue
                        metrics.retry_waited(self.provider.name, decided_on, wait_s)
                        await self._sleep(wait_s)
                        # Decided again as of the due time at least: the wait is over.
                        event = IntentArrived(
                            item.facts,
                            max(self._clock(), effect.until_ms),
                            self.settings.worker_id,
                        )
                    elif isinstance(effect, Refuse):
                        log.warning(
                            "operator command %s refused: %s",
                            effect.command.command_id,
                            effect.reason,
                        )
                        stats.commands_refused += 1
                    elif isinstance(effect, Reconcile):
                        assert entry is not None
                        with metrics.timed(metrics.LOOKUP_LATENCY, self.provider.name) as found:
                            lookup = await self._look_up(item, entry, effect.target)
                            found(lookup.status.value)
                        event = LookupFinished(
                            item.facts,
                            effect.attempt_id,
                            lookup,
                            self._clock(),
                            content_available=item.record.value is not None,
                        )
        # Only a drive that ran to the end takes a key off the reconcile index:
        # one that failed between persisting an outcome and emitting its result
        # leaves the key there, and the next tick emits the result (same id).
        if entry is not None:
            self._index(entry, partition)

    def _reached(self, point: str) -> None:
        """A fault point of the send protocol (test hooks; inert unless armed)."""
        self._crash.reached(point)
        self._pause.reached(point)

    def _pending_produced(self) -> None:
        self._reached(PENDING_PRODUCED)

    # -- operator commands ------------------------------------------------

    async def process_commands(self, records: Sequence[ConsumedRecord]) -> BatchStats:
        """Apply operator commands (``sendonce review resolve``) through the ledger.

        Each command is decided by the state machine under its key's lock, like an
        intent or a reconciliation lookup; a refused command is recorded in the
        entry's audit history (when there is an entry) and logged.
        """
        stats = BatchStats(records=len(records))
        for record in records:
            try:
                command = self._command(record)
            except BadIntent as bad:
                stats.dead_lettered += 1
                await self._dead_letter(record, bad)
                continue
            await self._apply_command(command, record, stats)
        return stats

    def _command(self, record: ConsumedRecord) -> OperatorCommand:
        data = decode_record(record.value, self.codec, "OperatorCommand")
        key = data["idempotency_key"]
        key_bytes = key.encode()
        if record.key != key_bytes:
            raise BadIntent("misrouted", "command record key is not its idempotency key")
        expected = partition_for_key(key_bytes, self.settings.partitions)
        if record.partition != expected:
            raise BadIntent(
                "misrouted",
                f"command is on partition {record.partition}, its key belongs on {expected}",
            )
        return OperatorCommand(
            command_id=data["command_id"],
            key=key,
            action=str(data["action"]).lower(),
            operator=data["operator"],
            reason=data["reason"],
            issued_at_ms=int(data["issued_at"]),
        )

    async def _apply_command(
        self, command: OperatorCommand, record: ConsumedRecord, stats: BatchStats
    ) -> None:
        async with self._lock_for(command.key):
            entry = self.store.get(command.key, record.partition)
            item: _Accepted | None = None
            if entry is not None and self._command_fetcher is not None:
                origin = await self._command_fetcher.fetch(entry.origin)
                if origin is not None:
                    try:
                        item = self._accept(origin)
                    except BadIntent:
                        item = None
            content_available = item is not None
            if item is None:
                item = self._placeholder(command, entry, record.partition)
            event = CommandArrived(
                item.facts,
                command,
                self._clock(),
                self.settings.worker_id,
                content_available=content_available,
            )
            refused = stats.commands_refused
            await self._drive_locked(item, stats, event, entry)
            if stats.commands_refused == refused:
                stats.commands_applied += 1
                log.info("operator command %s applied (%s)", command.command_id, command.action)

    def _placeholder(
        self, command: OperatorCommand, entry: LedgerEntry | None, partition: int
    ) -> _Accepted:
        """The origin's facts from the entry itself, when its record cannot be read."""
        if entry is not None:
            return self._placeholder_for(entry, partition)
        origin = IntentRef(self.topics.intents, partition, -1)
        facts = IntentFacts(command.key, "", "", "", "", origin)
        record = ConsumedRecord(origin.topic, partition, origin.offset, command.key.encode(), None)
        return _Accepted(record, {}, facts)

    def _placeholder_for(self, entry: LedgerEntry, partition: int) -> _Accepted:
        """An item carrying ``entry``'s own facts and no content (its origin is gone)."""
        origin = entry.origin
        facts = IntentFacts(
            key=entry.key,
            tenant_id=entry.tenant_id,
            source_event_id=entry.source_event_id,
            action_type=entry.action_type,
            content_fingerprint=entry.content_fingerprint,
            ref=origin,
            sender=entry.sender,
        )
        record = ConsumedRecord(origin.topic, partition, origin.offset, entry.key.encode(), None)
        return _Accepted(record, {}, facts)

    # -- reconciliation ---------------------------------------------------

    def _index(self, entry: LedgerEntry, partition: int) -> None:
        if entry.status is LedgerStatus.AMBIGUOUS:
            self.ambiguous_keys.add(entry.key)
        else:
            self.ambiguous_keys.discard(entry.key)
        if entry.status in OPEN_STATUSES:
            self.open_entries.add(entry.key, entry.created_at_ms)
        else:
            self.open_entries.discard(entry.key)
        due = lookup_due_at_ms(entry, self.reconcile_policy)
        if due is not None:
            self.reconcile_index[entry.key] = (partition, due)
        else:
            self.reconcile_index.pop(entry.key, None)

    def rebuild_reconcile_index(self, entries: Iterable[tuple[int, LedgerEntry]]) -> int:
        """Replace the index with the open entries of owned partitions (after a rebalance).

        PENDING entries are indexed too: one this worker is driving is skipped by the
        reconciler while its key is locked (its drive re-indexes it when it ends); any
        other was interrupted by a crash or a rebalance, and is looked up once its
        grace period passed. Returns how many keys await a lookup.
        """
        self.reconcile_index.clear()
        self.ambiguous_keys.clear()
        self.open_entries.clear()
        for partition, entry in entries:
            if self._owns(partition):
                self._index(entry, partition)
        return len(self.reconcile_index)

    def open_keys(self) -> set[str]:
        """Keys of owned partitions whose entries are not final (PENDING or AMBIGUOUS)."""
        return self.open_entries.keys()

    def oldest_open_age_s(self, now_ms: int) -> float:
        """Seconds since the first attempt of the oldest open key; 0 when none."""
        return self.open_entries.oldest_age_s(now_ms)

    async def reconcile_due(self) -> BatchStats:
        """Look up every AMBIGUOUS entry whose lookup is due, through the ledger."""
        stats = BatchStats()
        now = self._clock()
        due = [
            (key, partition)
            for _, key, partition in heapq.nsmallest(
                RECONCILE_TICK_KEYS,
                (
                    (at, key, partition)
                    for key, (partition, at) in self.reconcile_index.items()
                    if at <= now and self._owns(partition)
                ),
            )
        ]
        if not due:
            return stats
        if self._fetcher is None:
            raise RuntimeError("reconciliation needs a record fetcher")
        await asyncio.gather(
            *(self._reconcile_one(key, partition, stats) for key, partition in due)
        )
        return stats

    async def _reconcile_one(self, key: str, partition: int, stats: BatchStats) -> None:
        assert self._fetcher is not None
        if self._lock_for(key).locked():
            # Driven by a coroutine of this worker right now (an intent, the deferred
            # lane, a command): that drive re-indexes the key when it ends.
            return
        entry = self.store.get(key, partition)
        if entry is None:
            self.reconcile_index.pop(key, None)
            self.ambiguous_keys.discard(key)
            self.open_entries.discard(key)
            return
        record = await self._fetcher.fetch(entry.origin)
        if not self._owns(partition):
            # The fetch took a while; the partition may have moved meanwhile.
            return
        if record is None:
            if entry.status not in _ATTEMPTING:
                log.warning("origin of an ambiguous key is gone (retention); left for review")
                self.reconcile_index.pop(key, None)
                return
            # An interrupted attempt whose intent is past retention: the lookup needs
            # only the entry's own facts; without content no new attempt can follow.
            item = self._placeholder_for(entry, partition)
        else:
            item = self._accept(record)
        stats.records += 1
        first: Event = ReconcileDue(item.facts, self._clock(), content_available=record is not None)
        if entry.status not in OPEN_STATUSES:
            # Settled by an earlier tick that failed before emitting the result:
            # the origin record's result is emitted again (deterministic id).
            first = IntentArrived(item.facts, self._clock(), self.settings.worker_id)
        await self._drive(item, stats, first)

    def _check_owned(self, partition: int) -> None:
        """Raise :class:`PartitionNotOwnedError` unless ``partition`` is still ours.

        Checked right before a provider call, after every wait: the PENDING entry was
        written while the partition was ours, but a rebalance may have moved it
        since; the entry is left for its next owner to look up, never sent from here.
        """
        if not (self._owns(partition) and self.store.writable(partition)):
            raise PartitionNotOwnedError(f"partition {partition} moved before the send")

    async def _look_up(
        self, item: _Accepted, entry: LedgerEntry, target: LookupTarget
    ) -> LookupResult:
        """Ask the provider what the ledger needs to know (see :class:`LookupTarget`)."""
        key, sender = item.facts.key, item.facts.sender
        if target is LookupTarget.SENT_BY_KEY:
            return await self.provider.lookup(key, self._message_id(item), sender)
        if self._drafting is None:
            # Drafted by a provider configured before this one: nothing here can read
            # the draft, so the lookup is inconclusive (the entry goes to review).
            return LookupResult(
                LookupStatus.UNKNOWN,
                self.provider.name,
                detail=f"provider {self.provider.name} cannot read drafts",
            )
        if target is LookupTarget.DRAFTS_BY_KEY:
            return await self._drafting.find_draft(key, sender)
        assert entry.draft_id is not None
        return await self._drafting.draft_state(entry.draft_id, sender)

    async def _create_draft(self, item: _Accepted, entry: LedgerEntry) -> SendOutcome:
        assert self._drafting is not None
        with metrics.timed(metrics.PROVIDER_LATENCY, self.provider.name) as outcome_class:
            outcome = await self._drafting.create_draft(self._outgoing(item, entry))
            outcome_class(f"draft_{outcome.status.value}")
        return outcome

    async def _call(self, item: _Accepted, entry: LedgerEntry) -> SendOutcome:
        email = self._outgoing(item, entry)
        with metrics.timed(metrics.PROVIDER_LATENCY, self.provider.name) as outcome_class:
            if entry.draft_id is not None:
                # Only a drafting provider's attempts hold a draft (see _new_attempt).
                assert self._drafting is not None
                outcome = await self._drafting.send_draft(email, entry.draft_id)
            else:
                outcome = await self.provider.send(email)
            outcome_class(outcome.status.value)
        return outcome

    def _outgoing(self, item: _Accepted, entry: LedgerEntry) -> OutgoingEmail:
        intent = item.intent
        return OutgoingEmail(
            idempotency_key=entry.key,
            attempt_id=entry.attempt_id,
            tenant_id=intent["tenant_id"],
            sender=item.facts.sender,
            to=tuple(intent["to"]),
            cc=tuple(intent.get("cc") or ()),
            bcc=tuple(intent.get("bcc") or ()),
            subject=intent["subject"],
            text_body=intent.get("text_body"),
            html_body=intent.get("html_body"),
            template_id=intent.get("template_id"),
            template_params=tuple(sorted((intent.get("template_params") or {}).items())),
            headers=tuple(sorted((intent.get("headers") or {}).items())),
            message_id=self._message_id(item),
        )

    async def _take_send_permit(self, permit: contextlib.AsyncExitStack, item: _Accepted) -> None:
        """The mailbox's permit, then one of the worker's send slots, held until ``permit`` ends.

        Mailbox first: a send waiting for a saturated mailbox must not hold a slot
        that sends from other mailboxes could use.
        """
        with metrics.SENDS_WAITING.labels(self.provider.name).track_inprogress():
            await permit.enter_async_context(send_permit(self.provider, item.facts.sender))
        await permit.enter_async_context(self._send_slots)

    def _message_id(self, item: _Accepted) -> str:
        return message_id_for(item.facts.key, item.facts.sender)

    async def _emit(self, result: ResultRecord, stats: BatchStats) -> None:
        stats.outcomes[result.outcome.value] = stats.outcomes.get(result.outcome.value, 0) + 1
        topic = {
            ResultOutcome.SENT: self.topics.results_sent,
            ResultOutcome.DUPLICATE: self.topics.results_sent,
            ResultOutcome.AMBIGUOUS: self.topics.results_ambiguous,
            ResultOutcome.FAILED: self.topics.results_failed,
            ResultOutcome.CONFLICT: self.topics.results_failed,
        }[result.outcome]
        value = self.codec.encode("EmailResult", result.to_avro())
        await self.sink.produce(topic, result.idempotency_key.encode(), value)
        metrics.INTENTS.labels(result.outcome.value).inc()


async def _all_or_none(drives: Iterable[Awaitable[None]]) -> None:
    """Run ``drives`` concurrently; the first to fail cancels the others, then raises.

    Unlike ``asyncio.gather``, which leaves the siblings of a failed awaitable
    running, so a key waiting for its permit would still send after the batch
    was abandoned. The failure is raised as itself (not an exception group), so the
    lane still tells a moved partition from a broken broker.
    """
    tasks = [asyncio.ensure_future(drive) for drive in drives]
    if not tasks:
        return
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except asyncio.CancelledError:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
        for task in tasks:
            _error_of(task)
        raise
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    # Every task's error is looked at (a sibling may raise its own while it unwinds
    # from the cancel); the first one finished is raised.
    errors = [_error_of(task) for task in tasks]
    for task, error in zip(tasks, errors, strict=True):
        if task in done and error is not None:
            raise error
    # Only a sibling cancelled by someone else can still hold an error here.
    for task in tasks:
        task.result()


def _error_of(task: asyncio.Future[None]) -> BaseException | None:
    return None if task.cancelled() else task.exception()


def _waves(items: Sequence[_Accepted]) -> list[list[_Accepted]]:
    """Split a batch so each key occurs at most once per wave, order kept per key."""
    waves: list[list[_Accepted]] = []
    seen: dict[str, int] = {}
    for item in items:
        n = seen.get(item.facts.key, 0)
        seen[item.facts.key] = n + 1
        if n == len(waves):
            waves.append([])
        waves[n].append(item)
    return waves
