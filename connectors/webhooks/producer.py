"""An asyncio front for a confluent-kafka idempotent producer: await the broker's acks.

The receiver may answer a provider with 2xx only after Kafka acknowledged
every record of the request (acks=all). librdkafka reports each record's fate
in a delivery callback, which runs in whichever thread calls ``poll()``; here a
background thread polls, and each callback resolves an asyncio future on the
event loop through ``call_soon_threadsafe``. librdkafka guarantees one report per
record, at the latest after ``message.timeout.ms``, so every future resolves.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, Message, Producer

__all__ = ["AckingProducer", "EventSink", "ProduceError"]

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
_rdkafka_log = logging.getLogger("sendonce.kafka.receiver")
_rdkafka_log.addFilter(_RepeatFilter())


class ProduceError(RuntimeError):
    """Kafka did not acknowledge every record (the receiver answers 503)."""


class EventSink(Protocol):
    """Where the receiver writes events; :class:`AckingProducer` in production."""

    async def send_all(self, topic: str, records: Sequence[tuple[bytes, bytes]]) -> None:
        """Write ``(key, value)`` records; return only once all are acknowledged."""
        ...

    async def healthy(self, topic: str) -> bool:
        """Whether the broker answers and ``topic`` exists."""
        ...

    def close(self) -> None:
        """Flush what is in flight and release resources."""
        ...


class AckingProducer:
    """Idempotent producer (acks=all, murmur2_random) whose sends are awaited per batch.

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
        self._config: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            "enable.idempotence": True,
            "acks": "all",
            # The partition Java clients (and Faust) pick for a key: the dedupe
            # stream relies on one owner per dedupe id.
            "partitioner": "murmur2_random",
            # Requests wait for acks anyway; a short linger batches concurrent ones.
            "linger.ms": 2,
            "message.timeout.ms": max(1, int(timeout_s * 1000)),
            # A missing topic is a deployment error (503), not something to create
            # with the broker's default partition count behind the stream's back.
            "allow.auto.create.topics": False,
            "logger": _rdkafka_log,
            # Idle connections are closed by brokers routinely; not worth a log line.
            "log.connection.close": False,
            "error_cb": self._on_error,
            **(extra_config or {}),
        }
        self._fatal = False
        self._lock = threading.Lock()
        self._producer = Producer(self._config)
        self._stop = threading.Event()
        self._poller = threading.Thread(
            target=self._poll_loop, name="receiver-kafka-poll", daemon=True
        )
        self._poller.start()

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                producer = self._producer
            # Delivery callbacks run here, in this thread.
            producer.poll(0.1)

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            # An idempotent producer that hit a fatal error refuses every further
            # record; the next send replaces it.
            self._fatal = True
            log.error("Kafka producer fatal error: %s", err.str())
            return
        # Through the same repeat filter as librdkafka's own lines: a broker that
        # stays down is reported once a minute, not once per reconnect attempt.
        _rdkafka_log.warning("producer error: %s", err.str())

    def _usable_producer(self) -> Producer:
        with self._lock:
            if self._fatal:
                log.warning("replacing the Kafka producer after a fatal error")
                old = self._producer
                self._producer = Producer(self._config)
                self._fatal = False
                # Records of the old producer already failed (fatal): drop them.
                with contextlib.suppress(Exception):
                    old.purge()
                    old.poll(0)  # fires the purged records' callbacks: their requests get 503
            return self._producer

    async def send_all(self, topic: str, records: Sequence[tuple[bytes, bytes]]) -> None:
        """Produce ``(key, value)`` records and wait for every acknowledgement.

        Raises :class:`ProduceError` if any record failed or timed out. Records
        acknowledged before another failed stay on the topic: the provider's
        retry writes them again and the dedupe stream drops the repeats.
        """
        loop = asyncio.get_running_loop()
        producer = self._usable_producer()
        futures: list[asyncio.Future[str | None]] = []
        for key, value in records:
            future: asyncio.Future[str | None] = loop.create_future()
            callback = functools.partial(self._delivered, loop, future)
            try:
                producer.produce(topic, value=value, key=key, on_delivery=callback)
            except BufferError:
                raise ProduceError("the producer's local queue is full") from None
            except KafkaException as exc:
                raise ProduceError(f"produce failed: {exc.args[0]}") from None
            futures.append(future)
        if not futures:
            return
        try:
            # Belt and braces: librdkafka reports every record by message.timeout.ms,
            # this bound only matters if that promise were ever broken.
            outcomes = await asyncio.wait_for(asyncio.gather(*futures), self.timeout_s + 5.0)
        except TimeoutError:
            raise ProduceError(f"not acknowledged within {self.timeout_s + 5.0:.0f}s") from None
        errors = [o for o in outcomes if o is not None]
        if errors:
            raise ProduceError(f"{len(errors)} of {len(futures)} records failed: {errors[0]}")

    @staticmethod
    def _delivered(
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[str | None],
        err: KafkaError | None,
        msg: Message,
    ) -> None:
        outcome = None if err is None else str(err.str())

        def resolve() -> None:
            # The request may have given up already (timeout, shutdown).
            if not future.done():
                future.set_result(outcome)

        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(resolve)

    async def healthy(self, topic: str) -> bool:
        """A metadata round trip: the broker answers and ``topic`` exists."""
        producer = self._usable_producer()
        try:
            metadata = await asyncio.to_thread(producer.list_topics, topic, 2.0)
        except KafkaException:
            return False
        found = metadata.topics.get(topic)
        return bool(metadata.brokers) and found is not None and found.error is None

    def close(self, timeout: float = 10.0) -> None:
        """Stop polling, then deliver (or fail) what is still in flight."""
        self._stop.set()
        self._poller.join()
        with self._lock:
            remaining = self._producer.flush(timeout)
        if remaining:
            log.warning("%d records still unacknowledged at shutdown", remaining)
