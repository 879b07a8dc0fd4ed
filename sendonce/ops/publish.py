"""Publishing intents: the tiny API platforms and agents use.

``IntentPublisher.publish(intent)`` validates the intent, computes its
idempotency key, and produces it keyed by that key with an idempotent
producer (acks=all) and Kafka's murmur2 partitioner, so every producer, in any
language, puts a key on the same partition: one owner per key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from sendonce.kafka.clients import producer_config
from sendonce.keys import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_RECORD_BYTES,
    IdempotencyKey,
    OversizeIntentError,
    complete_intent,
    idempotency_key_for,
    validate_intent,
)
from sendonce.schemas.codec import SchemaCodec, default_codec


class PublishError(RuntimeError):
    """The broker did not acknowledge a record."""


class IntentPublisher:
    """Publishes EmailIntent records keyed by idempotency key."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str = "email.intents",
        codec: SchemaCodec | None = None,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        extra_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.topic = topic
        self.codec = codec or default_codec()
        self.max_body_bytes = max_body_bytes
        self.max_record_bytes = max_record_bytes
        self._errors: list[str] = []
        # murmur2, as the worker expects: it checks records sit on the partition this picks.
        self._producer = Producer(
            producer_config(
                bootstrap_servers, logger="sendonce.kafka.producer", overrides=extra_config
            )
        )

    def publish(self, intent: Mapping[str, Any]) -> IdempotencyKey:
        """Validate, key and enqueue one intent; call :meth:`flush` to await acks."""
        full = complete_intent(intent)
        validate_intent(full, max_body_bytes=self.max_body_bytes)
        key = idempotency_key_for(full)
        value = self.codec.encode("EmailIntent", full)
        size = len(value) + len(key.value.encode())
        if size > self.max_record_bytes:
            # The broker would refuse it, or the worker could not wrap it for the
            # dead-letter topic whole: refuse it here, where the producer can fix it.
            raise OversizeIntentError(
                "intent",
                f"the encoded record is {size} bytes; limit {self.max_record_bytes} "
                "(SENDONCE_MAX_RECORD_BYTES)",
            )
        self.publish_raw(key.value.encode(), value)
        return key

    def publish_raw(
        self,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        """Enqueue a record as is (tests and tools use this for bad input)."""
        while True:
            try:
                self._producer.produce(
                    self.topic,
                    value=value,
                    key=key,
                    headers=list(headers or ()),
                    on_delivery=self._on_delivery,
                )
                return
            except BufferError:
                self._producer.poll(0.1)

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._errors.append(str(err))

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until every enqueued record is acknowledged; raise if any failed."""
        remaining = self._producer.flush(timeout)
        if remaining:
            raise PublishError(f"{remaining} records not acknowledged within {timeout}s")
        if self._errors:
            errors, self._errors = self._errors, []
            raise PublishError(f"{len(errors)} records failed: {errors[0]}")

    def close(self) -> None:
        """Flush and release the producer (librdkafka frees it when unreferenced)."""
        if self._producer is not None:
            self.flush()
            self._producer = None  # type: ignore[assignment]

    def __enter__(self) -> IntentPublisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()


def publish_intents(
    bootstrap_servers: str, intents: list[Mapping[str, Any]], topic: str = "email.intents"
) -> list[IdempotencyKey]:
    """Publish intents and wait for the broker's acknowledgement of all of them."""
    with IntentPublisher(bootstrap_servers, topic) as publisher:
        return [publisher.publish(i) for i in intents]
