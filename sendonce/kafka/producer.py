"""The awaited producer: asyncio callers get each record's acknowledgement (acks=all).

Both long-lived writers use it: the worker (ledger changelog records and results, each
awaited before it moves on) and the webhook receiver (which answers a provider 2xx only
once Kafka acknowledged every record of the request). Through Faust's producer
(aiokafka, pure Python) each awaited write cost a chain of futures, buffer hand-offs
and a produce request written by the event loop's thread; the benchmark's profile put
a quarter of the worker's CPU there. This producer hands the records to librdkafka
(confluent-kafka), which batches, sends and retries them in its own threads without
the GIL, and resolves each caller's future once the broker acknowledged the record
(idempotent, acks=all, murmur2 partitioner: see :mod:`sendonce.kafka.clients`).

Delivery reports are served by one polling thread, which wakes the event loop once per
round of reports rather than once per record. librdkafka reports every record, at the
latest after ``message.timeout.ms``, so every future resolves.

The librdkafka client (and its connections and threads) starts with the first send, or
with :meth:`DurableProducer.start`: building a worker app must not open connections it
may never use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, Producer

from sendonce.kafka.clients import producer_config

__all__ = ["Delivered", "DeliveryError", "DurableProducer"]

log = logging.getLogger("sendonce.kafka.producer")

#: How long one poll of the delivery-report thread blocks when nothing arrives.
POLL_S = 0.05
#: How long a send waits between attempts while librdkafka's local queue is full.
QUEUE_FULL_BACKOFF_S = 0.005


class DeliveryError(RuntimeError):
    """Kafka did not acknowledge a record (after librdkafka's own retries)."""

    def __init__(self, topic: str, error: Any) -> None:
        super().__init__(f"write to {topic} failed: {error}")
        self.retriable = bool(getattr(error, "retriable", lambda: False)())
        #: librdkafka's own words for the failure ("Local: Message timed out").
        self.reason = str(error.str()) if hasattr(error, "str") else str(error)


@dataclass(frozen=True)
class Delivered:
    """Where an acknowledged record landed."""

    topic: str
    partition: int
    offset: int


_Report = tuple["asyncio.Future[Delivered]", str, Any, int, int]


class DurableProducer:
    """Produces records and returns only after the broker acknowledged each (acks=all).

    Keys without an explicit partition are placed by Kafka's default partitioner
    (murmur2, as Java clients and aiokafka do), so records keyed by idempotency key
    or dedupe id land where consumers in any language expect them.

    ``logger`` names the Python logger librdkafka's own lines go to (``None``:
    librdkafka's default). ``on_error`` becomes librdkafka's ``error_cb``; with
    ``replace_after_fatal`` a fatal error (an idempotent producer that hit one refuses
    every further record) makes the next use replace the client, after failing the
    records the old one still held.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        client_id: str | None = None,
        linger_ms: float = 5.0,
        logger: str | None = None,
        on_error: Callable[[KafkaError], None] | None = None,
        replace_after_fatal: bool = False,
        poll_s: float = POLL_S,
        thread_name: str = "sendonce-producer-poll",
        log: logging.Logger = log,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        overrides: dict[str, Any] = {}
        if client_id is not None:
            overrides["client.id"] = client_id
        # Awaited records go out in small produce requests, one after another: a
        # request must not wait for the previous one's TCP ACK.
        overrides["socket.nagle.disable"] = True
        # Results carry whole intents' metadata, not bodies; ledger entries and raw
        # webhook events are small. Compression would cost CPU on the caller's one
        # busy thread.
        overrides["compression.type"] = "none"
        if on_error is not None or replace_after_fatal:
            # Without an error_cb librdkafka logs errors itself: keep that default.
            overrides["error_cb"] = self._on_error
        self._config = producer_config(
            bootstrap_servers,
            logger=logger,
            linger_ms=linger_ms,
            overrides={**overrides, **(extra or {})},
        )
        self._on_error_cb = on_error
        self._replace_after_fatal = replace_after_fatal
        self._fatal = False
        self._poll_s = poll_s
        self._thread_name = thread_name
        self._log = log
        # Guards the client reference: the poll thread reads it, a replacement swaps it.
        self._lock = threading.Lock()
        self._producer: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        # Appended to by delivery callbacks, which run inside poll() on the poll thread
        # (or on the caller's thread while a failed client is purged); swapped out by
        # the poll thread only, so no lock is needed: list.append is atomic.
        self._reports: list[_Report] = []

    # -- sending -----------------------------------------------------------------------

    def enqueue(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[Delivered]:
        """Hand one record to librdkafka; the future resolves with its delivery report.

        A failed delivery resolves it with :class:`DeliveryError`. Raises
        ``BufferError`` when librdkafka's local queue is full and ``KafkaException``
        when librdkafka refuses the record: callers choose whether to wait or give up.
        Cancel the future to drop interest in the report.
        """
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise RuntimeError("DurableProducer is bound to another event loop")
        producer = self._client()
        future: asyncio.Future[Delivered] = loop.create_future()

        def delivered(error: Any, message: Any) -> None:
            self._reports.append((future, topic, error, message.partition(), message.offset()))

        kwargs: dict[str, Any] = {"key": key, "value": value, "on_delivery": delivered}
        if partition is not None:
            kwargs["partition"] = partition
        if headers:
            kwargs["headers"] = list(headers)
        producer.produce(topic, **kwargs)
        return future

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
        return await (
            await self._enqueue_when_room(topic, key, value, partition=partition, headers=headers)
        )

    async def _enqueue_when_room(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[Delivered]:
        while True:
            try:
                return self.enqueue(topic, key, value, partition=partition, headers=headers)
            except BufferError:
                # librdkafka's queue is full: wait for deliveries to drain it.
                await asyncio.sleep(QUEUE_FULL_BACKOFF_S)

    async def write(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        partition: int,
        *,
        enqueued: Callable[[], None] | None = None,
    ) -> int:
        """A changelog write (:class:`streams.store.ChangelogWriter`): the record's offset.

        ``enqueued`` (a test hook) runs once librdkafka holds the record, before its
        acknowledgement is awaited.
        """
        future = await self._enqueue_when_room(topic, key, value, partition=partition)
        if enqueued is not None:
            enqueued()
        return (await future).offset

    async def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        """A result or dead letter (:class:`streams.processor.Sink`), partitioned by key."""
        await self.send(topic, key, value, headers=headers)

    async def list_topics(self, topic: str, timeout: float) -> Any:
        """The cluster's metadata for ``topic`` (a round trip, off the event loop)."""
        return await asyncio.to_thread(self._client().list_topics, topic, timeout)

    # -- the client and its poll thread ------------------------------------------------

    def start(self) -> None:
        """Start the librdkafka client now (connections, poll thread) instead of lazily."""
        self._client()

    def _client(self) -> Any:
        with self._lock:
            if self._producer is None:
                self._producer = Producer(self._config)
                self._thread = threading.Thread(
                    target=self._poll, name=self._thread_name, daemon=True
                )
                self._thread.start()
            elif self._fatal:
                self._log.warning("replacing the Kafka producer after a fatal error")
                old = self._producer
                self._producer = Producer(self._config)
                self._fatal = False
                # Records of the old client already failed (fatal): drop them.
                with contextlib.suppress(Exception):
                    old.purge()
                    old.poll(0)  # fires the purged records' reports: their senders fail
            return self._producer

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal() and self._replace_after_fatal:
            self._fatal = True
        if self._on_error_cb is not None:
            self._on_error_cb(err)

    def _poll(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                producer = self._producer
            # Delivery callbacks run here, in this thread.
            producer.poll(self._poll_s)
            if self._reports and self._loop is not None:
                reports, self._reports = self._reports, []
                try:
                    self._loop.call_soon_threadsafe(_resolve, reports)
                except RuntimeError:
                    return  # the loop is closed: nobody awaits these any more

    def close(self, timeout: float = 10.0) -> int:
        """Deliver what is queued (up to ``timeout`` seconds) and stop the poll thread.

        Returns how many records were still unacknowledged (0 for an unused producer,
        which has nothing to flush and returns at once).
        """
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
        with self._lock:
            if self._producer is None:
                return 0
            return int(self._producer.flush(timeout))


def _resolve(reports: list[_Report]) -> None:
    for future, topic, error, partition, offset in reports:
        if future.done():
            continue  # its sender was cancelled
        if error is not None and error.code() != KafkaError.NO_ERROR:
            future.set_exception(DeliveryError(topic, error))
        else:
            future.set_result(Delivered(topic, partition, offset))
