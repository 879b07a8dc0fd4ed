"""The receiver's Kafka sink: a request's records written, and every ack awaited.

The receiver may answer a provider with 2xx only after Kafka acknowledged every
record of the request (acks=all). The producing itself (idempotent, murmur2, a poll
thread resolving asyncio futures) is :class:`sendonce.kafka.producer.DurableProducer`,
the worker's too; what is the receiver's own lives here: its contract with the HTTP
layer (:class:`EventSink`, :class:`ProduceError`, answered with 503), failing fast
when librdkafka's queue is full, replacing a client that hit a fatal error, and
librdkafka's log lines thinned to one per distinct failure a minute.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException

from sendonce.kafka.producer import Delivered, DeliveryError, DurableProducer

__all__ = ["EventSink", "KafkaEventSink", "ProduceError"]

log = logging.getLogger("sendonce.receiver.kafka")


class _RepeatFilter(logging.Filter):
    """Drops a record that repeats one seen within ``window_s`` (numbers ignored).

    While a broker is down librdkafka logs every reconnect attempt, about once
    a second; one line per distinct failure per minute says the same.
    """

    def __init__(self, window_s: float = 60.0) -> None:
        super().__init__()
        self.window_s = window_s
        self._last_seen: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        shape = re.sub(r"\d+", "#", record.getMessage())
        now = time.monotonic()
        last = self._last_seen.get(shape)
        if last is not None and now - last < self.window_s:
            return False
        if len(self._last_seen) > 1000:  # bounded: hostile input cannot grow it forever
            self._last_seen.clear()
        self._last_seen[shape] = now
        return True


# librdkafka's own log lines (routed to Python logging via the "logger" config).
_RDKAFKA_LOGGER = "sendonce.kafka.receiver"
_rdkafka_log = logging.getLogger(_RDKAFKA_LOGGER)
_rdkafka_log.addFilter(_RepeatFilter())


class ProduceError(RuntimeError):
    """Kafka did not acknowledge every record (the receiver answers 503)."""


class EventSink(Protocol):
    """Where the receiver writes events; :class:`KafkaEventSink` in production."""

    async def send_all(self, topic: str, records: Sequence[tuple[bytes, bytes]]) -> None:
        """Write ``(key, value)`` records; return only once all are acknowledged."""
        ...

    async def healthy(self, topic: str) -> bool:
        """Whether the broker answers and ``topic`` exists."""
        ...

    def close(self) -> None:
        """Flush what is in flight and release resources."""
        ...


class KafkaEventSink:
    """Writes a request's records through an idempotent acks=all producer, awaited per batch.

    ``timeout_s`` becomes ``message.timeout.ms``: a record not acknowledged by
    then fails, so a request never waits longer than that for Kafka.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        timeout_s: float = 5.0,
        extra_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self._producer = DurableProducer(
            bootstrap_servers,
            # Requests wait for acks anyway; a short linger batches concurrent ones.
            linger_ms=2,
            logger=_RDKAFKA_LOGGER,
            on_error=self._on_error,
            # An idempotent producer that hit a fatal error refuses every further
            # record; the next send replaces it.
            replace_after_fatal=True,
            poll_s=0.1,
            thread_name="receiver-kafka-poll",
            log=log,
            extra={
                "message.timeout.ms": max(1, int(timeout_s * 1000)),
                # A missing topic is a deployment error (503), not something to create
                # with the broker's default partition count behind the stream's back.
                "allow.auto.create.topics": False,
                # Idle connections are closed by brokers routinely; not worth a log line.
                "log.connection.close": False,
                **(extra_config or {}),
            },
        )
        # Connected from the start: the first request should not pay for it.
        self._producer.start()

    @staticmethod
    def _on_error(err: KafkaError) -> None:
        if err.fatal():
            log.error("Kafka producer fatal error: %s", err.str())
            return
        # Through the same repeat filter as librdkafka's own lines: a broker that
        # stays down is reported once a minute, not once per reconnect attempt.
        _rdkafka_log.warning("producer error: %s", err.str())

    async def send_all(self, topic: str, records: Sequence[tuple[bytes, bytes]]) -> None:
        """Produce ``(key, value)`` records and wait for every acknowledgement.

        Raises :class:`ProduceError` if any record failed or timed out. Records
        acknowledged before another failed stay on the topic: the provider's
        retry writes them again and the dedupe stream drops the repeats.
        """
        futures: list[asyncio.Future[Delivered]] = []
        for key, value in records:
            try:
                futures.append(self._producer.enqueue(topic, key, value))
            except (BufferError, KafkaException) as exc:
                # The request gives up: nobody awaits the records enqueued so far.
                for future in futures:
                    future.cancel()
                if isinstance(exc, BufferError):
                    raise ProduceError("the producer's local queue is full") from None
                raise ProduceError(f"produce failed: {exc.args[0]}") from None
        if not futures:
            return
        try:
            # Belt and braces: librdkafka reports every record by message.timeout.ms,
            # this bound only matters if that promise were ever broken.
            outcomes = await asyncio.wait_for(
                asyncio.gather(*futures, return_exceptions=True), self.timeout_s + 5.0
            )
        except TimeoutError:
            raise ProduceError(f"not acknowledged within {self.timeout_s + 5.0:.0f}s") from None
        errors = [o.reason for o in outcomes if isinstance(o, DeliveryError)]
        if errors:
            raise ProduceError(f"{len(errors)} of {len(futures)} records failed: {errors[0]}")

    async def healthy(self, topic: str) -> bool:
        """A metadata round trip: the broker answers and ``topic`` exists."""
        try:
            metadata = await self._producer.list_topics(topic, 2.0)
        except KafkaException:
            return False
        found = metadata.topics.get(topic)
        return bool(metadata.brokers) and found is not None and found.error is None

    def close(self, timeout: float = 10.0) -> None:
        """Stop polling, then deliver (or fail) what is still in flight."""
        remaining = self._producer.close(timeout)
        if remaining:
            log.warning("%d records still unacknowledged at shutdown", remaining)
