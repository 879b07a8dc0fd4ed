"""Run the intent pipeline in memory, without a broker.

For users' own tests and ours: the same :class:`~streams.processor.IntentProcessor`
the worker runs, over a :class:`~streams.store.MemoryLedgerStore` and a
recording sink. Guarantees are proven against the real broker elsewhere; this
is for checking how *your* intents resolve.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sendonce.connectors.base import EmailProvider
from sendonce.keys import complete_intent, idempotency_key_for
from sendonce.schemas.codec import SchemaCodec, default_codec
from sendonce.settings import Settings
from sendonce.streams.ledger import IntentRef
from sendonce.streams.processor import (
    BatchStats,
    ConsumedRecord,
    IntentProcessor,
    RecordFetcher,
    partition_for_key,
)
from sendonce.streams.store import MemoryLedgerStore


@dataclass
class RecordingSink:
    """Keeps every produced record."""

    produced: list[tuple[str, bytes | None, bytes]] = field(default_factory=list)
    headers: list[tuple[tuple[str, bytes], ...]] = field(default_factory=list)

    async def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        """Record it."""
        self.produced.append((topic, key, value))
        self.headers.append(tuple(headers or ()))


@dataclass
class InMemoryRecordFetcher:
    """Serves records the pipeline created, by coordinates."""

    records: dict[IntentRef, ConsumedRecord] = field(default_factory=dict)

    async def fetch(self, ref: IntentRef) -> ConsumedRecord | None:
        """The record at ``ref`` or ``None``."""
        return self.records.get(ref)


class InMemoryPipeline:
    """An intents topic, a ledger and result topics, all in memory."""

    def __init__(
        self,
        provider: EmailProvider,
        settings: Settings | None = None,
        codec: SchemaCodec | None = None,
        clock: Callable[[], int] | None = None,
        reconcile_reader: RecordFetcher | None = None,
    ) -> None:
        self.settings = settings or Settings(partitions=12, retry_base_delay_s=0.0)
        self.codec = codec or default_codec()
        self.store = MemoryLedgerStore()
        self.sink = RecordingSink()
        self.provider = provider
        self._next_offset: dict[int, int] = {}
        self.fetcher = InMemoryRecordFetcher()
        self.processor = IntentProcessor(
            self.settings,
            self.store,
            provider,
            self.sink,
            self.codec,
            sleep=_no_sleep,
            clock=clock,
            fetcher=reconcile_reader or self.fetcher,
            command_fetcher=self.fetcher,
        )

    def record(
        self, key: bytes | None, value: bytes | None, partition: int | None = None
    ) -> ConsumedRecord:
        """Append a raw record to the in-memory intents topic."""
        if partition is None:
            partition = partition_for_key(key, self.settings.partitions) if key else 0
        offset = self._next_offset.get(partition, 0)
        self._next_offset[partition] = offset + 1
        record = ConsumedRecord(self.settings.topics.intents, partition, offset, key, value)
        self.fetcher.records[record.ref] = record
        return record

    def intent_record(self, intent: Mapping[str, Any]) -> ConsumedRecord:
        """Encode and key an intent as the publisher would."""
        full = complete_intent(intent, now_ms=0)
        key = idempotency_key_for(full).value.encode()
        return self.record(key, self.codec.encode("EmailIntent", full))

    def command_record(
        self,
        key: str,
        action: str,
        reason: str = "checked with the recipient",
        *,
        command_id: str | None = None,
        operator: str = "ops@test",
    ) -> ConsumedRecord:
        """An operator command as ``sendonce review resolve`` publishes it."""
        from sendonce.streams.processor import encode_command

        partition = partition_for_key(key.encode(), self.settings.partitions)
        offset = self._next_offset.get(-100 - partition, 0)
        self._next_offset[-100 - partition] = offset + 1
        value = encode_command(
            self.codec,
            command_id=command_id or f"cmd-{partition}-{offset}",
            key=key,
            action=action,
            operator=operator,
            reason=reason,
            issued_at_ms=0,
        )
        topic = self.settings.topics.commands
        return ConsumedRecord(topic, partition, offset, key.encode(), value)

    async def run_commands(self, records: list[ConsumedRecord]) -> BatchStats:
        """Process a batch of the commands topic."""
        return await self.processor.process_commands(records)

    async def run(self, records: list[ConsumedRecord]) -> BatchStats:
        """Process one batch."""
        return await self.processor.process_batch(records)

    async def reconcile(self) -> BatchStats:
        """One reconciler tick."""
        return await self.processor.reconcile_due()

    def deferred_records(self) -> list[ConsumedRecord]:
        """What the worker moved to the deferred lane, as records of that topic."""
        topic = self.settings.topics.intents_deferred
        out = []
        for (t, key, value), headers in zip(self.sink.produced, self.sink.headers, strict=True):
            if t == topic:
                partition = partition_for_key(key, self.settings.partitions) if key else 0
                offset = self._next_offset.get(-1 - partition, 0)
                self._next_offset[-1 - partition] = offset + 1
                out.append(ConsumedRecord(topic, partition, offset, key, value, headers=headers))
        return out

    def outputs(self, topic: str) -> list[dict[str, Any]]:
        """Decoded records produced to ``topic``."""
        return [self.codec.decode(v) for t, _, v in self.sink.produced if t == topic]

    def results(self) -> list[dict[str, Any]]:
        """Every decoded result, in production order."""
        topics = set(self.settings.topics.results())
        return [self.codec.decode(v) for t, _, v in self.sink.produced if t in topics]


async def _no_sleep(_: float) -> None:
    return None
