"""Following topics as records arrive: how tools, tests and benchmarks watch for results.

A :class:`TopicFollower` is assigned every partition of its topics (no group join, so
it reads from the first poll instead of after a rebalance, and it never commits), from
the beginning or from where each partition ends when it is created: a caller that is
about to produce records and wants only what they cause takes the ends first. It
yields raw messages; what a record means (a result to decode, a key to time) is the
caller's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from confluent_kafka import Consumer, Message, TopicPartition

from sendonce.kafka.clients import consumer_config

__all__ = ["MissingTopicsError", "TopicFollower", "from_beginning"]


class MissingTopicsError(RuntimeError):
    """A topic to follow does not exist."""


def from_beginning(_topic: str, _partition: int) -> int:
    """Start every partition at offset 0 (the first record still stored)."""
    return 0


class TopicFollower:
    """Reads every partition of ``topics`` from ``start_at(topic, partition)`` onwards.

    ``group`` prefixes the private group id librdkafka requires; ``logger`` names the
    Python logger librdkafka's lines go to. Raises :class:`MissingTopicsError` when a
    topic does not exist.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topics: Sequence[str],
        *,
        group: str,
        start_at: Callable[[str, int], int] = from_beginning,
        logger: str | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self._consumer = Consumer(consumer_config(bootstrap_servers, group=group, logger=logger))
        try:
            metadata = self._consumer.list_topics(timeout=timeout_s)
            missing = [t for t in topics if t not in metadata.topics]
            if missing:
                raise MissingTopicsError(f"topics do not exist: {missing}")
            self._consumer.assign(
                [
                    TopicPartition(t, p, start_at(t, p))
                    for t in topics
                    for p in sorted(metadata.topics[t].partitions)
                ]
            )
        except BaseException:
            self._consumer.close()
            raise

    def consume(self, max_records: int, timeout: float) -> list[Message]:
        """Up to ``max_records`` messages, returned when that many arrived or after ``timeout``.

        Messages carrying an error (``msg.error()``) are returned too: whether one
        is fatal is the caller's call.
        """
        return list(self._consumer.consume(max_records, timeout=timeout))

    def close(self) -> None:
        """Leave (nothing was committed)."""
        self._consumer.close()
