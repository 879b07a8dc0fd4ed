"""The inbound dedupe stream, in memory: first sightings forwarded once, replays counted."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from sendonce.schemas.codec import default_codec
from sendonce.settings import Settings
from sendonce.streams.ledger import IntentRef
from sendonce.streams.processor import ConsumedRecord, partition_for_key
from sendonce.streams.testing import RecordingSink
from sendonce.streams.webhooks import (
    ForwardEvent,
    MarkSighting,
    SightingMarker,
    SightingProcessor,
    SightingStatus,
    decide_sighting,
)

DAY_MS = 86_400_000


class Crash(Exception):
    pass


@dataclass
class Bytes:
    data: dict[tuple[int, bytes], bytes] = field(default_factory=dict)
    crash_on_put: int | None = None
    puts: int = 0

    def get(self, key: bytes, partition: int) -> bytes | None:
        return self.data.get((partition, key))

    async def put(self, key: bytes, value: bytes, partition: int) -> None:
        self.puts += 1
        self.data[(partition, key)] = value
        if self.crash_on_put == self.puts:
            raise Crash  # durable, then the worker dies


@dataclass
class SinkLookup:
    sink: RecordingSink
    topic: str

    async def contains(self, dedupe_id: str, partition: int, since_ms: int) -> bool:
        return any(t == self.topic and k == dedupe_id.encode() for t, k, _ in self.sink.produced)


def event(dedupe_id: str) -> bytes:
    return default_codec().encode(
        "WebhookEvent",
        {
            "dedupe_id": dedupe_id,
            "source": "graph",
            "kind": "NOTIFICATION",
            "tenant_id": "t",
            "subscription_id": "s",
            "change_type": "created",
            "resource": "users/x/messages/y",
            "resource_id": "y",
            "lifecycle_event": None,
            "client_state_verified": True,
            "received_at": 0,
            "payload": json.dumps({"id": dedupe_id}),
            "headers": {},
        },
    )


def record(dedupe_id: str, offset: int, topic: str = "email.webhooks.raw") -> ConsumedRecord:
    """A raw event on the partition Kafka's murmur2 partitioner picks for its id."""
    partition = partition_for_key(dedupe_id.encode(), Settings().partitions)
    return ConsumedRecord(topic, partition, offset, dedupe_id.encode(), event(dedupe_id))


def processor(store: Bytes, sink: RecordingSink, now: list[int] | None = None) -> SightingProcessor:
    s = Settings()
    clock = (lambda: now[0]) if now else None
    return SightingProcessor(
        s, store, sink, SinkLookup(sink, s.topics.webhooks_deduped), default_codec(), clock=clock
    )


def forwarded(sink: RecordingSink) -> list[bytes | None]:
    return [k for t, k, _ in sink.produced if t == Settings().topics.webhooks_deduped]


def test_five_deliveries_and_a_full_replay_forward_once() -> None:
    store, sink = Bytes(), RecordingSink()
    p = processor(store, sink)
    stats = asyncio.run(p.process_batch([record("n1", i) for i in range(5)]))
    replay = asyncio.run(p.process_batch([record("n1", i) for i in range(5)]))
    assert forwarded(sink) == [b"n1"]
    assert (stats.forwarded, stats.replays) == (1, 4)
    assert (replay.forwarded, replay.replays) == (0, 5)
    assert p.replays_total == 9


def test_crash_between_marking_and_forwarding_forwards_once_after_restart() -> None:
    store, sink = Bytes(crash_on_put=1), RecordingSink()
    with contextlib.suppress(Crash):
        asyncio.run(processor(store, sink).process_batch([record("n1", 0)]))
    assert forwarded(sink) == []  # marked, not forwarded
    store.crash_on_put = None
    # Restart: the uncommitted record is redelivered, then replays.
    stats = asyncio.run(processor(store, sink).process_batch([record("n1", 0), record("n1", 1)]))
    assert forwarded(sink) == [b"n1"]
    assert stats.reconciled == 1 and stats.replays == 1


def test_crash_after_forwarding_before_recording_it_does_not_forward_twice() -> None:
    store, sink = Bytes(crash_on_put=2), RecordingSink()  # 1: MARKED, forward, 2: FORWARDED
    with contextlib.suppress(Crash):
        asyncio.run(processor(store, sink).process_batch([record("n1", 0)]))
    store.data.clear()  # the FORWARDED write is lost with the local state...
    store.crash_on_put = None
    n1 = record("n1", 0)
    origin = IntentRef("email.webhooks.raw", n1.partition, 0)
    marked = SightingMarker("n1", SightingStatus.MARKED, origin, int(time.time() * 1000))
    store.data[(n1.partition, b"n1")] = marked.to_bytes()  # ...the changelog had only MARKED
    asyncio.run(processor(store, sink).process_batch([record("n1", 0)]))
    assert forwarded(sink) == [b"n1"]


def test_a_sighting_after_the_ttl_is_new() -> None:
    store, sink = Bytes(), RecordingSink()
    now = [1_000]
    p = processor(store, sink, now)
    asyncio.run(p.process_batch([record("n1", 0)]))
    now[0] += 8 * DAY_MS
    asyncio.run(p.process_batch([record("n1", 1)]))
    assert forwarded(sink) == [b"n1", b"n1"]


def test_bad_raw_records_are_dead_lettered() -> None:
    store, sink = Bytes(), RecordingSink()
    p = processor(store, sink)
    bad = ConsumedRecord("email.webhooks.raw", 0, 0, b"x", b"not avro")
    wrong_key = ConsumedRecord("email.webhooks.raw", 0, 1, b"other", event("n1"))
    stats = asyncio.run(p.process_batch([bad, wrong_key, record("n2", 2)]))
    assert stats.dead_lettered == 2 and forwarded(sink) == [b"n2"]


def test_a_raw_event_on_another_partition_than_its_id_is_dead_lettered_not_forwarded() -> None:
    # Issue 16: re-produced with another partitioner, the same id would have two owners
    # with two markers, and each would forward it once.
    store, sink = Bytes(), RecordingSink()
    p = processor(store, sink)
    right = record("n1", 0)
    moved = ConsumedRecord(
        right.topic, (right.partition + 1) % Settings().partitions, 0, right.key, right.value
    )
    stats = asyncio.run(p.process_batch([right, moved]))
    assert stats.dead_lettered == 1 and forwarded(sink) == [b"n1"]
    [letter] = [default_codec().decode(v) for t, _, v in sink.produced if t.endswith("dlq")]
    assert letter["error_type"] == "misrouted"
    assert f"belongs on {right.partition}" in letter["reason"]


@settings(max_examples=300, deadline=None)
@given(
    deliveries=st.lists(st.integers(0, 3), min_size=1, max_size=15),
    crash=st.one_of(st.none(), st.integers(1, 20)),
    lose_local=st.booleans(),
)
def test_each_id_forwarded_exactly_once_whatever_crashes(
    deliveries: list[int], crash: int | None, lose_local: bool
) -> None:
    """At-least-once redelivery after a crash at any durable write: exactly one forward per id."""
    store, sink = Bytes(crash_on_put=crash), RecordingSink()
    log = [record(f"id{n}", offset) for offset, n in enumerate(deliveries)]
    committed = 0
    for _ in range(3):
        try:
            for i in range(committed, len(log)):
                asyncio.run(processor(store, sink).process_batch([log[i]]))
                committed = i + 1
            break
        except Crash:
            store.crash_on_put = None
            if lose_local:
                # Only MARKED made it to the changelog in the worst case.
                for k, v in list(store.data.items()):
                    m = SightingMarker.from_bytes(v)
                    store.data[k] = SightingMarker(
                        m.dedupe_id, SightingStatus.MARKED, m.origin, m.marked_at_ms
                    ).to_bytes()
    got = forwarded(sink)
    assert sorted(got) == sorted({f"id{n}".encode() for n in deliveries})


def test_decide_marks_before_forwarding() -> None:
    marker, effects = decide_sighting(None, "n", IntentRef("t", 0, 0), 5, DAY_MS)
    assert isinstance(effects[0], MarkSighting) and effects[0].marker.status.value == "MARKED"
    assert isinstance(effects[1], ForwardEvent)
    assert marker is not None and marker.status is SightingStatus.FORWARDED
