"""The benchmark's workload: intent records, how they are produced, how results are timed.

Every latency is taken from Kafka record timestamps, so the load generator's own
scheduling (it shares two cores with everything else) never enters a figure:

* *intent produced*: the intent record's CreateTime, stamped by the producer when
  ``produce()`` is called;
* *result visible*: the result record's LogAppendTime, stamped by the broker when it
  appended the record (the result topics are created with
  ``message.timestamp.type=LogAppendTime`` for the benchmark).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    TIMESTAMP_LOG_APPEND_TIME,
    KafkaError,
    KafkaException,
    Message,
    Producer,
)
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from sendonce.kafka.clients import producer_config
from sendonce.kafka.follower import TopicFollower
from sendonce.kafka.topics import create_topics
from sendonce.keys import complete_intent, idempotency_key_for
from sendonce.schemas.codec import default_codec
from sendonce.settings import Settings

#: One intent record as produced: (key, value).
Record = tuple[bytes, bytes]

_BODY = (
    "Thank you for your order. It has been packed and handed to the carrier; "
    "you can follow it with the tracking link in your account. "
) * 2


def make_records(count: int, *, start: int = 0, mailboxes: int = 64) -> list[Record]:
    """``count`` distinct, valid intents, keyed and encoded as a publisher would.

    Senders rotate over ``mailboxes`` mailboxes (the Graph runs throttle per mailbox).
    The same records are used by every configuration: each run has its own topics
    and ledger, so the keys never meet an earlier run's entries.
    """
    codec = default_codec()
    records: list[Record] = []
    for n in range(start, start + count):
        intent = complete_intent(
            {
                "tenant_id": "bench",
                "source_event_id": f"order-{n}:shipped",
                "action_type": "receipt",
                "sender": f"orders{n % mailboxes}@bench.example",
                "to": [f"customer{n}@example.com"],
                "subject": f"Your order {n} shipped",
                "text_body": _BODY,
            }
        )
        key = idempotency_key_for(intent).value.encode()
        records.append((key, codec.encode("EmailIntent", intent)))
    return records


def bench_settings(
    bootstrap: str, name: str, work: Any, partitions: int, **overrides: Any
) -> Settings:
    """Settings of one run: its own app id (group, changelog), topics and data dir."""
    tag = f"{name}-{uuid.uuid4().hex[:6]}"
    return Settings(
        bootstrap_servers=bootstrap,
        app_id=f"bench-{tag}",
        topic_prefix=f"bench-{tag}.",
        partitions=partitions,
        data_dir=work / tag / "data",
        outbox_dir=work / tag / "outbox",
        **overrides,
    )


def create_bench_topics(settings: Settings, timeout: float = 30.0) -> None:
    """Create a run's topics; result and dead-letter topics stamp LogAppendTime.

    They are created first, so :func:`sendonce.topics.create_topics` finds them and
    creates the rest exactly as a deployment would.
    """
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    stamped = [*settings.topics.results(), settings.topics.dlq]
    futures = admin.create_topics(
        [
            NewTopic(
                name,
                settings.partitions,
                settings.replication_factor,
                config={"message.timestamp.type": "LogAppendTime"},
            )
            for name in stamped
        ],
        request_timeout=timeout,
    )
    for future in futures.values():
        future.result(timeout)
    create_topics(settings, timeout)


class IntentProducer:
    """Produces intent records like :class:`sendonce.publish.IntentPublisher` does.

    Same producer configuration (idempotent, acks=all, murmur2 partitioner); it
    keeps each record's CreateTime from the delivery report.
    """

    def __init__(self, bootstrap: str, topic: str, *, linger_ms: int = 5) -> None:
        self.topic = topic
        self.created_ms: dict[bytes, int] = {}
        self._errors: list[str] = []
        self._producer = Producer(
            producer_config(bootstrap, logger="bench.producer", linger_ms=linger_ms)
        )

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._errors.append(str(err))
            return
        key = msg.key()
        if key is not None:
            self.created_ms[key] = msg.timestamp()[1]

    def _produce(self, key: bytes, value: bytes) -> None:
        while True:
            try:
                self._producer.produce(self.topic, value, key, on_delivery=self._delivered)
                return
            except BufferError:
                self._producer.poll(0.05)

    def burst(self, records: Sequence[Record]) -> None:
        """Produce ``records`` as fast as the client takes them, then await every ack."""
        for n, (key, value) in enumerate(records):
            self._produce(key, value)
            if n % 2000 == 0:
                self._producer.poll(0)
        self.flush()

    def paced(self, records: Sequence[Record], rate: float) -> None:
        """Produce ``records`` at ``rate`` per second (evenly spaced), then await every ack."""
        started = time.perf_counter()
        for n, (key, value) in enumerate(records):
            due = started + n / rate
            # poll() serves delivery reports while it waits; it may return early.
            while (wait := due - time.perf_counter()) > 0:
                self._producer.poll(wait)
            self._produce(key, value)
            self._producer.poll(0)
        self.flush()

    def flush(self, timeout: float = 120.0) -> None:
        """Await every outstanding acknowledgement; raise if any record failed."""
        left = self._producer.flush(timeout)
        if left or self._errors:
            raise RuntimeError(f"{left} intents unacknowledged, errors: {self._errors[:3]}")


@dataclass(frozen=True)
class Arrival:
    """A result (or dead letter) as the benchmark saw it."""

    topic: str
    visible_ms: int
    value: bytes | None


@dataclass
class ResultCollector:
    """Follows a run's result and dead-letter topics from their beginning.

    The same :class:`~sendonce.kafka.follower.TopicFollower` the operators' tools
    watch results with; what is the benchmark's is the timing below.

    Only keys and timestamps are read; values are kept for callers that decode them.
    """

    settings: Settings
    arrivals: dict[bytes, Arrival] = field(default_factory=dict)
    repeats: int = 0

    def __post_init__(self) -> None:
        self._follower = TopicFollower(
            self.settings.bootstrap_servers,
            [*self.settings.topics.results(), self.settings.topics.dlq],
            group="bench-collector",
            logger="bench.collector",
        )

    def poll(self, timeout: float = 0.2) -> int:
        """Read what is there; returns the number of records read."""
        got = 0
        for msg in self._follower.consume(5000, timeout):
            err = msg.error()
            if err is not None:
                raise KafkaException(err)
            key = msg.key()
            if key is None:
                continue
            got += 1
            kind, stamp = msg.timestamp()
            if kind != TIMESTAMP_LOG_APPEND_TIME:
                # Not a benchmark topic's stamp: fall back to when we saw it.
                stamp = int(time.time() * 1000)
            if key in self.arrivals:
                self.repeats += 1  # a result repeated after a retry; the first counts
                continue
            self.arrivals[key] = Arrival(msg.topic() or "", stamp, msg.value())
        return got

    def wait_for(
        self,
        keys: Iterable[bytes],
        *,
        idle_timeout: float = 90.0,
        alive: Callable[[], bool] | None = None,
    ) -> None:
        """Block until every key has a result; fail when nothing arrives for ``idle_timeout``."""
        missing = {k for k in keys if k not in self.arrivals}
        last_progress = time.monotonic()
        while missing:
            if self.poll(0.2):
                before = len(missing)
                missing = {k for k in missing if k not in self.arrivals}
                if len(missing) < before:
                    last_progress = time.monotonic()
            if alive is not None and not alive():
                raise RuntimeError(f"the process under test exited; {len(missing)} results missing")
            if time.monotonic() - last_progress > idle_timeout:
                raise TimeoutError(
                    f"{len(missing)} results missing, none arrived for {idle_timeout:.0f}s"
                )

    def close(self) -> None:
        """Leave."""
        self._follower.close()


@dataclass(frozen=True)
class Phase:
    """Timings of one phase (burst or paced) of one run."""

    intents: int
    seconds: float
    latencies_ms: list[float]
    not_sent: int

    @property
    def rate(self) -> float:
        """Intents per second from the first intent produced to the last result visible."""
        return self.intents / self.seconds if self.seconds > 0 else 0.0


def phase_timings(
    records: Sequence[Record],
    created_ms: dict[bytes, int],
    collector: ResultCollector,
    sent_topic: str,
) -> Phase:
    """Throughput and per-intent latency (produced -> result visible) of ``records``."""
    latencies: list[float] = []
    first = min(created_ms[k] for k, _ in records)
    last = first
    not_sent = 0
    for key, _ in records:
        arrival = collector.arrivals[key]
        latencies.append(float(arrival.visible_ms - created_ms[key]))
        last = max(last, arrival.visible_ms)
        if arrival.topic != sent_topic:
            not_sent += 1
    # Millisecond stamps: never let a tiny run divide by zero.
    return Phase(len(records), max(last - first, 1) / 1000.0, latencies, not_sent)
