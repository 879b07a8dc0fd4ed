"""The worker's writes to Kafka: ledger changelog records and results, each awaited.

Every intent makes three writes the worker waits for (PENDING, SENT, the result).
Through Faust's producer (aiokafka, pure Python) each one cost a chain of futures,
buffer hand-offs and a produce request written by the event loop's thread; the
benchmark's profile put a quarter of the worker's CPU there. This producer hands the
records to librdkafka (confluent-kafka), which batches, sends and retries them in its
own threads without the GIL, and resolves each caller's future once the broker
acknowledged the record (acks=all, idempotent).

Delivery reports are served by one polling thread, which wakes the event loop once
per round of reports rather than once per record.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, Producer

#: How long one poll of the delivery-report thread blocks when nothing arrives.
POLL_S = 0.05
#: How long a send waits between attempts while librdkafka's local queue is full.
QUEUE_FULL_BACKOFF_S = 0.005


class DeliveryError(RuntimeError):
    """Kafka did not acknowledge a record (after librdkafka's own retries)."""

    def __init__(self, topic: str, error: Any) -> None:
        super().__init__(f"write to {topic} failed: {error}")
        self.retriable = bool(getattr(error, "retriable", lambda: False)())


@dataclass(frozen=True)
class Delivered:
    """Where an acknowledged record landed."""

    topic: str
    partition: int
    offset: int


class DurableProducer:
    """Produces records and returns only after the broker acknowledged each (acks=all).

    Keys without an explicit partition are placed by Kafka's default partitioner
    (murmur2, as Java clients and aiokafka do), so results keyed by idempotency key
    land where consumers in any language expect them.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        client_id: str = "sendonce-worker",
        linger_ms: float = 5.0,
        extra: dict[str, Any] | None = None,
    ) -> None:
        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            "client.id": client_id,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": linger_ms,
            "partitioner": "murmur2_random",
            # Small produce requests must not wait for the previous one's TCP ACK.
            "socket.nagle.disable": True,
            # Results carry whole intents' metadata, not bodies; the ledger entries are
            # small. Compression would cost CPU on the worker's one busy thread.
            "compression.type": "none",
            **(extra or {}),
        }
        # The librdkafka client (and its connections) starts with the first send:
        # building a worker app must not open connections it may never use.
        self._config = config
        self._producer: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        # Appended to by delivery callbacks, which run inside poll() on the poll thread
        # only; swapped out by that same thread, so no lock is needed.
        self._reports: list[tuple[asyncio.Future[Delivered], str, Any, int, int]] = []

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> Delivered:
        """Produce one record; returns once the broker acknowledged it."""
        loop = asyncio.get_running_loop()
        producer = self._start(loop)
        future: asyncio.Future[Delivered] = loop.create_future()

        def delivered(error: Any, message: Any) -> None:
            self._reports.append((future, topic, error, message.partition(), message.offset()))

        kwargs: dict[str, Any] = {"key": key, "value": value, "on_delivery": delivered}
        if partition is not None:
            kwargs["partition"] = partition
        if headers:
            kwargs["headers"] = list(headers)
        while True:
            try:
                producer.produce(topic, **kwargs)
                break
            except BufferError:
                # librdkafka's queue is full: wait for deliveries to drain it.
                await asyncio.sleep(QUEUE_FULL_BACKOFF_S)
        return await future

    async def write(self, topic: str, key: bytes, value: bytes, partition: int) -> int:
        """A changelog write (:class:`streams.store.ChangelogWriter`): the record's offset."""
        return (await self.send(topic, key, value, partition=partition)).offset

    async def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        """A result or dead letter (:class:`streams.processor.Sink`), partitioned by key."""
        await self.send(topic, key, value, headers=headers)

    def _start(self, loop: asyncio.AbstractEventLoop) -> Any:
        if self._thread is not None:
            if loop is not self._loop:
                raise RuntimeError("DurableProducer is bound to another event loop")
            return self._producer
        self._loop = loop
        self._producer = Producer(self._config)
        self._thread = threading.Thread(
            target=self._poll, args=(self._producer,), name="sendonce-producer-poll", daemon=True
        )
        self._thread.start()
        return self._producer

    def _poll(self, producer: Any) -> None:
        loop = self._loop
        assert loop is not None
        while not self._stopping.is_set():
            producer.poll(POLL_S)
            if self._reports:
                reports, self._reports = self._reports, []
                try:
                    loop.call_soon_threadsafe(_resolve, reports)
                except RuntimeError:
                    return  # the loop is closed: nobody awaits these any more

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (up to ``timeout`` seconds) and stop the poll thread."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
        if self._producer is not None:
            self._producer.flush(timeout)


def _resolve(reports: list[tuple[asyncio.Future[Delivered], str, Any, int, int]]) -> None:
    for future, topic, error, partition, offset in reports:
        if future.done():
            continue  # its sender was cancelled
        if error is not None and error.code() != KafkaError.NO_ERROR:
            future.set_exception(DeliveryError(topic, error))
        else:
            future.set_result(Delivered(topic, partition, offset))
