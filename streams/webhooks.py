"""The inbound dedupe stream: each webhook event goes through once.

Raw events (``email.webhooks.raw``, keyed by dedupe id) arrive at least once:
providers redeliver, operators replay the topic. Per dedupe id a *sighting
marker* lives in a Faust table (RocksDB + compacted changelog):

* no marker (or one older than the TTL) -> MARKED, acknowledged by Kafka,
  **then** the event is forwarded to ``email.webhooks.deduped``, then FORWARDED;
* FORWARDED -> a replay: counted (and optionally copied to
  ``email.webhooks.replays``), never forwarded again;
* MARKED -> only a crash between marking and forwarding leaves it: the
  deduped topic is searched for the id from the marking time on, and the event
  is forwarded only if it is not there. So a crash can neither let a replay
  through twice nor drop the event.

:func:`decide_sighting` is pure; :class:`SightingProcessor` performs its effects.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

from sendonce.schemas.codec import SchemaCodec
from sendonce.schemas.errors import CodecError
from sendonce.settings import Settings
from sendonce.streams import metrics
from sendonce.streams.dead_letters import dead_letter
from sendonce.streams.ledger import IntentRef
from sendonce.streams.processor import ConsumedRecord, Sink, origin_header, partition_for_key

log = logging.getLogger("sendonce.webhooks")


class SightingStatus(enum.Enum):
    """Where one dedupe id stands."""

    MARKED = "MARKED"
    FORWARDED = "FORWARDED"


@dataclass(frozen=True)
class SightingMarker:
    """The durable record that a dedupe id has been seen."""

    dedupe_id: str
    status: SightingStatus
    origin: IntentRef
    marked_at_ms: int
    forwarded_at_ms: int | None = None
    replays: int = 0

    def to_bytes(self) -> bytes:
        """Compact JSON for the table and its changelog."""
        data = asdict(self)
        data["status"] = self.status.value
        return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> SightingMarker:
        """Inverse of :meth:`to_bytes`."""
        data: dict[str, Any] = json.loads(raw)
        data["status"] = SightingStatus(data["status"])
        data["origin"] = IntentRef(**data["origin"])
        return cls(**data)


# --- effects ---------------------------------------------------------------


@dataclass(frozen=True)
class MarkSighting:
    """Write the marker; acknowledged before any later effect."""

    marker: SightingMarker


@dataclass(frozen=True)
class ForwardEvent:
    """Produce the event to the deduped topic (acknowledged)."""


@dataclass(frozen=True)
class FindForwarded:
    """Search the deduped topic for this id, from ``since_ms`` on."""

    since_ms: int


@dataclass(frozen=True)
class CountReplay:
    """A replay: count it (and copy it to the replays topic if configured)."""


SightingEffect = MarkSighting | ForwardEvent | FindForwarded | CountReplay


def decide_sighting(
    marker: SightingMarker | None,
    dedupe_id: str,
    ref: IntentRef,
    now_ms: int,
    ttl_ms: int,
    forwarded_found: bool | None = None,
) -> tuple[SightingMarker | None, tuple[SightingEffect, ...]]:
    """What to do with one raw record; pure.

    ``forwarded_found`` is the answer to an earlier :class:`FindForwarded`
    (``None`` when no search has been made yet).
    """
    if marker is not None and now_ms - marker.marked_at_ms > ttl_ms:
        marker = None  # expired: a sighting after the TTL counts as new
    if marker is None:
        marked = SightingMarker(dedupe_id, SightingStatus.MARKED, ref, now_ms)
        forwarded = replace(marked, status=SightingStatus.FORWARDED, forwarded_at_ms=now_ms)
        return forwarded, (MarkSighting(marked), ForwardEvent(), MarkSighting(forwarded))
    if marker.status is SightingStatus.FORWARDED:
        counted = replace(marker, replays=marker.replays + 1)
        return counted, (CountReplay(), MarkSighting(counted))
    # MARKED: a crash came between marking and forwarding (or after forwarding
    # but before recording it). Look before forwarding again.
    if forwarded_found is None:
        return marker, (FindForwarded(since_ms=marker.marked_at_ms),)
    forwarded = replace(marker, status=SightingStatus.FORWARDED, forwarded_at_ms=now_ms)
    effects: tuple[SightingEffect, ...] = () if forwarded_found else (ForwardEvent(),)
    if ref != marker.origin:
        forwarded = replace(forwarded, replays=forwarded.replays + 1)
        effects = (*effects, CountReplay())
    return forwarded, (*effects, MarkSighting(forwarded))


# --- the shell ---------------------------------------------------------------


class MarkerStore(Protocol):
    """Bytes per partition, durable on ``put``."""

    def get(self, key: bytes, partition: int) -> bytes | None:
        """The value of ``key`` in ``partition``."""
        ...

    async def put(self, key: bytes, value: bytes, partition: int) -> None:
        """Store durably."""
        ...


class ForwardedLookup(Protocol):
    """Searches the deduped topic for a dedupe id (reconciliation after a crash)."""

    async def contains(self, dedupe_id: str, partition: int, since_ms: int) -> bool:
        """Whether a record keyed ``dedupe_id`` is on ``partition`` at or after ``since_ms``."""
        ...


@dataclass
class SightingStats:
    """What one batch did."""

    records: int = 0
    forwarded: int = 0
    replays: int = 0
    dead_lettered: int = 0
    reconciled: int = 0


class WebhookFault:
    """Test hook: ``kill-after-mark:N`` SIGKILLs the worker after its Nth first marking."""

    def __init__(self, spec: str) -> None:
        self.kill_after_mark: int | None = None
        spec = spec.strip()
        if spec:
            kind, _, arg = spec.partition(":")
            if kind != "kill-after-mark" or not arg.isdigit() or int(arg) < 1:
                raise ValueError(f"unknown webhook fault {spec!r}; expected kill-after-mark:N")
            self.kill_after_mark = int(arg)
        self._marks = 0

    def after_first_mark(self) -> None:
        """Called once a MARKED marker is durable and before the forward."""
        self._marks += 1
        if self.kill_after_mark is not None and self._marks == self.kill_after_mark:
            os.kill(os.getpid(), signal.SIGKILL)


class SightingProcessor:
    """Performs :func:`decide_sighting`'s effects for batches of raw webhook records."""

    def __init__(
        self,
        settings: Settings,
        store: MarkerStore,
        sink: Sink,
        lookup: ForwardedLookup,
        codec: SchemaCodec,
        *,
        clock: Callable[[], int] | None = None,
        fault: WebhookFault | None = None,
    ) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.store = store
        self.sink = sink
        self.lookup = lookup
        self.codec = codec
        self.ttl_ms = int(settings.webhook_dedupe_ttl_s * 1000)
        self._clock = clock or (lambda: int(time.time() * 1000))
        self._fault = fault or WebhookFault("")
        self.replays_total = 0

    async def process_batch(self, records: Sequence[ConsumedRecord]) -> SightingStats:
        """Handle records in order per dedupe id; returns when every effect is durable."""
        stats = SightingStats(records=len(records))
        by_id: dict[bytes, list[ConsumedRecord]] = {}
        for record in records:
            problem = self._problem(record)
            if problem is not None:
                stats.dead_lettered += 1
                await self._dead_letter(record, *problem)
                continue
            assert record.key is not None
            by_id.setdefault(record.key, []).append(record)
        # Distinct ids are independent; one id's records go in order.
        await asyncio.gather(*(self._handle_all(rs, stats) for rs in by_id.values()))
        return stats

    async def _handle_all(self, records: list[ConsumedRecord], stats: SightingStats) -> None:
        for record in records:
            await self._handle(record, stats)

    def _problem(self, record: ConsumedRecord) -> tuple[str, str] | None:
        """Why ``record`` cannot be handled, as (error type, reason), or None."""
        if record.key is None or record.value is None:
            return "invalid_webhook", "raw webhook record without key or value"
        try:
            event = self.codec.decode(record.value, expect="WebhookEvent")
        except CodecError as exc:
            return "invalid_webhook", str(exc)
        if event["dedupe_id"].encode() != record.key:
            return "invalid_webhook", "record key is not the event's dedupe id"
        expected = partition_for_key(record.key, self.settings.partitions)
        if record.partition != expected:
            # Re-produced with another partitioner: its id would have two owners, and
            # each would forward it once (as for intents, streams.processor).
            return (
                "misrouted",
                f"record is on partition {record.partition}, its dedupe id belongs on {expected}",
            )
        return None

    async def _handle(self, record: ConsumedRecord, stats: SightingStats) -> None:
        assert record.key is not None and record.value is not None
        dedupe_id = record.key.decode()
        raw = self.store.get(record.key, record.partition)
        marker = None if raw is None else SightingMarker.from_bytes(raw)
        found: bool | None = None
        while True:
            marker, effects = decide_sighting(
                marker, dedupe_id, record.ref, self._clock(), self.ttl_ms, found
            )
            search: FindForwarded | None = None
            for effect in effects:
                if isinstance(effect, MarkSighting):
                    await self.store.put(record.key, effect.marker.to_bytes(), record.partition)
                    if effect.marker.status is SightingStatus.MARKED:
                        self._fault.after_first_mark()
                elif isinstance(effect, ForwardEvent):
                    await self.sink.produce(
                        self.topics.webhooks_deduped,
                        record.key,
                        record.value,
                        [origin_header(record.ref)],
                    )
                    stats.forwarded += 1
                    metrics.WEBHOOK_EVENTS.labels("forwarded").inc()
                elif isinstance(effect, CountReplay):
                    stats.replays += 1
                    self.replays_total += 1
                    metrics.WEBHOOK_EVENTS.labels("replay").inc()
                    if self.settings.webhook_replays_topic:
                        await self.sink.produce(
                            self.topics.webhooks_replays,
                            record.key,
                            record.value,
                            [origin_header(record.ref)],
                        )
                elif isinstance(effect, FindForwarded):
                    search = effect
            if search is None:
                return
            stats.reconciled += 1
            found = await self.lookup.contains(dedupe_id, record.partition, search.since_ms)

    async def _dead_letter(self, record: ConsumedRecord, error_type: str, reason: str) -> None:
        log.warning(
            "dead-lettered webhook record %s[%d]@%d", record.topic, record.partition, record.offset
        )
        letter = dead_letter(record, reason, error_type, self._clock(), self.settings)
        metrics.DEAD_LETTERS.labels(letter["error_type"]).inc()
        value = self.codec.encode("DeadLetter", letter)
        await self.sink.produce(self.topics.dlq, letter["original_key"], value)
