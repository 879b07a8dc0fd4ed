"""Reading one intent record back by offset, for the reconciler."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from streams.ledger import IntentRef
from streams.processor import ConsumedRecord

log = logging.getLogger("sendonce.worker")


class KafkaRecordFetcher:
    """Fetches single records by topic/partition/offset with a group-less consumer.

    Reconciliation is rare (ambiguous sends only), so one consumer reassigned
    per fetch, serialised by a lock and run off the event loop, is enough.
    """

    def __init__(self, bootstrap_servers: str, timeout_s: float = 10.0) -> None:
        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            # Required by librdkafka even though nothing joins or commits.
            "group.id": f"sendonce-fetcher-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "logger": logging.getLogger("sendonce.kafka.fetcher"),
        }
        self._consumer = Consumer(config)
        self._timeout_s = timeout_s
        self._lock = asyncio.Lock()

    async def fetch(self, ref: IntentRef) -> ConsumedRecord | None:
        """The record at ``ref``; ``None`` when it no longer exists."""
        async with self._lock:
            return await asyncio.to_thread(self._fetch, ref)

    def _fetch(self, ref: IntentRef) -> ConsumedRecord | None:
        tp = TopicPartition(ref.topic, ref.partition, ref.offset)
        low, high = self._consumer.get_watermark_offsets(tp, timeout=self._timeout_s)
        if not low <= ref.offset < high:
            return None
        self._consumer.assign([tp])
        msg = self._consumer.poll(self._timeout_s)
        if msg is None or msg.error() or msg.offset() != ref.offset:
            raise RuntimeError(f"could not read intent record {ref.topic}[{ref.partition}]")
        _, timestamp_ms = msg.timestamp()
        return ConsumedRecord(
            topic=ref.topic,
            partition=ref.partition,
            offset=ref.offset,
            key=msg.key(),
            value=msg.value(),
            timestamp_ms=timestamp_ms,
            headers=_headers(msg.headers()),
        )

    def close(self) -> None:
        """Leave."""
        self._consumer.close()


def _headers(raw: Any) -> tuple[tuple[str, bytes | None], ...]:
    pairs = raw.items() if isinstance(raw, dict) else (raw or [])
    return tuple((str(k), v.encode() if isinstance(v, str) else v) for k, v in pairs)
