"""Metrics: counters moved by the processors, the state gauges, the HTTP endpoints.

Metrics live in prometheus_client's process-wide registry, so every check is a
delta between two readings of ``REGISTRY.get_sample_value``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from sendonce.connectors.base import (
    LookupResult,
    LookupStatus,
    OutgoingEmail,
    SendOutcome,
    SendStatus,
)
from sendonce.connectors.graph.throttle import MailboxThrottle
from sendonce.connectors.outbox import OutboxProvider
from sendonce.connectors.webhooks.receiver import ReceiverConfig, WebhookReceiver
from sendonce.schemas.codec import default_codec
from sendonce.settings import Settings
from sendonce.streams import metrics
from sendonce.streams.ledger import LedgerStatus
from sendonce.streams.processor import ConsumedRecord
from sendonce.streams.testing import InMemoryPipeline, RecordingSink
from sendonce.streams.webhooks import SightingProcessor
from tests.unit.streams.test_webhooks import record as raw_webhook_record


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Readings:
    """Sample values now, to compare with later ones."""

    def __init__(self, *samples: tuple[str, Mapping[str, str]]) -> None:
        self.samples = samples
        self.before = [value(name, **labels) for name, labels in samples]

    def deltas(self) -> list[float]:
        return [
            value(name, **labels) - before
            for (name, labels), before in zip(self.samples, self.before, strict=True)
        ]


def intent(n: int, **overrides: Any) -> dict[str, Any]:
    base = {
        "tenant_id": "metrics",
        "source_event_id": f"evt-{n}",
        "action_type": "receipt",
        "sender": "orders@metrics.example",
        "to": [f"user{n}@example.com"],
        "subject": f"Receipt {n}",
        "text_body": f"Thanks for order {n}.",
    }
    base.update(overrides)
    return base


def outcome(name: str) -> tuple[str, dict[str, str]]:
    return ("sendonce_intents_total", {"outcome": name})


def test_results_dead_letters_and_send_latency_are_counted(tmp_path: Path) -> None:
    p = InMemoryPipeline(OutboxProvider(tmp_path / "outbox"))
    readings = Readings(
        outcome("SENT"),
        outcome("DUPLICATE"),
        outcome("CONFLICT"),
        outcome("FAILED"),
        ("sendonce_dead_letters_total", {"error_type": "undecodable"}),
        (
            "sendonce_provider_latency_seconds_count",
            {"provider": "outbox", "outcome_class": "accepted"},
        ),
        (
            "sendonce_provider_latency_seconds_count",
            {"provider": "outbox", "outcome_class": "rejected"},
        ),
    )
    records = [p.intent_record(intent(n)) for n in range(2)]
    records.append(p.intent_record(intent(2, idempotency_key="order-2")))
    records += [p.intent_record(intent(0)), p.intent_record(intent(1))]  # repeats
    # The producer's own key reused with other content.
    records.append(p.intent_record(intent(2, idempotency_key="order-2", subject="other")))
    records.append(p.intent_record(intent(9, to=["someone@nowhere.invalid"])))
    records.append(p.record(b"metrics:garbage", b"\x00 not avro"))

    stats = asyncio.run(p.run(records))

    assert readings.deltas() == [3, 2, 1, 1, 1, 3, 1]
    assert stats.provider_calls == 4


class FlakyProvider:
    """Refuses twice (first with a Retry-After), then accepts."""

    name = "flaky"

    def __init__(self) -> None:
        self.calls = 0

    async def send(self, outgoing: OutgoingEmail) -> SendOutcome:
        self.calls += 1
        if self.calls == 1:
            return SendOutcome(SendStatus.NOT_SENT_RETRYABLE, self.name, retry_after_s=3.0)
        if self.calls == 2:
            return SendOutcome(SendStatus.NOT_SENT_RETRYABLE, self.name)
        return SendOutcome(SendStatus.ACCEPTED, self.name, provider_message_id="m")

    async def lookup(self, idempotency_key: str, message_id: str, sender: str) -> LookupResult:
        raise AssertionError("no lookup expected")

    async def close(self) -> None:
        return None


def test_retry_delays_are_counted_as_throttle_waits_by_reason() -> None:
    # A fixed clock: with the wall clock, a millisecond that passed between deciding
    # the wait and starting it made the 3 s wait read 2.999 (CI, 2026-12-03).
    p = InMemoryPipeline(
        FlakyProvider(), settings=Settings(retry_base_delay_s=0.5), clock=lambda: 1_000_000
    )
    readings = Readings(
        ("sendonce_throttle_waits_total", {"provider": "flaky", "reason": "retry_after"}),
        ("sendonce_throttle_wait_seconds_total", {"provider": "flaky", "reason": "retry_after"}),
        ("sendonce_throttle_waits_total", {"provider": "flaky", "reason": "backoff"}),
        ("sendonce_throttle_wait_seconds_total", {"provider": "flaky", "reason": "backoff"}),
        (
            "sendonce_provider_latency_seconds_count",
            {"provider": "flaky", "outcome_class": "not_sent_retryable"},
        ),
    )
    asyncio.run(p.run([p.intent_record(intent(1))]))
    # Retry-After 3 s beats the first backoff (0.5 s); the second backoff is 1 s.
    assert readings.deltas() == [1, 3.0, 1, 1.0, 2]


class AmbiguousThenFound:
    name = "laggy"

    def __init__(self) -> None:
        self.found = False

    async def send(self, outgoing: OutgoingEmail) -> SendOutcome:
        return SendOutcome(SendStatus.AMBIGUOUS, self.name, error_code="read_timeout")

    async def lookup(self, idempotency_key: str, message_id: str, sender: str) -> LookupResult:
        if self.found:
            return LookupResult(LookupStatus.FOUND, self.name, provider_message_id="m")
        return LookupResult(LookupStatus.UNKNOWN, self.name)

    async def close(self) -> None:
        return None


def test_open_ambiguous_sends_are_a_gauge_and_lookups_are_timed() -> None:
    now = [1_000_000]
    provider = AmbiguousThenFound()
    p = InMemoryPipeline(provider, clock=lambda: now[0])
    readings = Readings(
        ("sendonce_ambiguous_open", {}),
        outcome("AMBIGUOUS"),
        (
            "sendonce_provider_lookup_latency_seconds_count",
            {"provider": "laggy", "outcome_class": "unknown"},
        ),
        (
            "sendonce_provider_lookup_latency_seconds_count",
            {"provider": "laggy", "outcome_class": "found"},
        ),
    )
    asyncio.run(p.run([p.intent_record(intent(n)) for n in range(2)]))
    assert readings.deltas() == [2, 2, 0, 0]

    now[0] += 3_600_000  # past the deadline: the next lookup gives up (review)
    asyncio.run(p.reconcile())
    assert readings.deltas() == [2, 2, 2, 0]
    assert not p.processor.reconcile_index  # flagged for review: no lookup due...
    assert all(e.review_required for e in p.store.entries.values())
    # ...but still open, and still counted after a rebuild (a rebalance).
    assert p.processor.rebuild_reconcile_index(p.store.open_entries()) == 0
    assert readings.deltas()[0] == 2

    # A rebuild on a worker that owns none of them counts none.
    p.processor._owns = lambda partition: False
    p.processor.rebuild_reconcile_index(p.store.open_entries())
    assert readings.deltas()[0] == 0
    p.processor._owns = lambda partition: True
    p.processor.rebuild_reconcile_index(p.store.open_entries())
    assert readings.deltas()[0] == 2
    assert all(e.status is LedgerStatus.AMBIGUOUS for e in p.store.entries.values())


def test_a_found_lookup_closes_the_ambiguous_send() -> None:
    now = [1_000_000]
    provider = AmbiguousThenFound()
    p = InMemoryPipeline(provider, clock=lambda: now[0])
    readings = Readings(
        ("sendonce_ambiguous_open", {}),
        (
            "sendonce_provider_lookup_latency_seconds_count",
            {"provider": "laggy", "outcome_class": "found"},
        ),
        outcome("SENT"),
    )
    asyncio.run(p.run([p.intent_record(intent(1))]))
    assert readings.deltas() == [1, 0, 0]
    provider.found = True
    now[0] += 60_000
    asyncio.run(p.reconcile())
    assert readings.deltas() == [0, 1, 1]


def webhook_record(dedupe_id: str, offset: int) -> ConsumedRecord:
    """A raw webhook event on its id's partition (as the receiver produces it)."""
    return raw_webhook_record(dedupe_id, offset)


class Markers:
    def __init__(self) -> None:
        self.data: dict[tuple[int, bytes], bytes] = {}

    def get(self, key: bytes, partition: int) -> bytes | None:
        return self.data.get((partition, key))

    async def put(self, key: bytes, value: bytes, partition: int) -> None:
        self.data[(partition, key)] = value


class NeverForwarded:
    async def contains(self, dedupe_id: str, partition: int, since_ms: int) -> bool:
        return False


def test_webhook_events_forwarded_replayed_and_dead_lettered_are_counted() -> None:
    sink = RecordingSink()
    processor = SightingProcessor(Settings(), Markers(), sink, NeverForwarded(), default_codec())
    readings = Readings(
        ("sendonce_webhook_events_total", {"result": "forwarded"}),
        ("sendonce_webhook_events_total", {"result": "replay"}),
        ("sendonce_dead_letters_total", {"error_type": "invalid_webhook"}),
    )
    bad = ConsumedRecord("email.webhooks.raw", 0, 9, b"x", b"not avro")
    records = [webhook_record("a", 0), webhook_record("a", 1), webhook_record("b", 2), bad]
    asyncio.run(processor.process_batch(records))
    assert readings.deltas() == [2, 1, 1]


def test_graph_mailbox_limiter_waits_are_reported_by_reason() -> None:
    now = [0.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    throttle = MailboxThrottle(
        max_concurrent=1, sends_per_minute=1, clock=lambda: now[0], sleep=sleep
    )
    throttle.on_wait = metrics.throttle_observer("graph-test")

    def sample(reason: str) -> list[tuple[str, dict[str, str]]]:
        labels = {"provider": "graph-test", "reason": reason}
        return [
            ("sendonce_throttle_waits_total", labels),
            ("sendonce_throttle_wait_seconds_total", labels),
        ]

    readings = Readings(
        *sample("mailbox_rate"), *sample("mailbox_retry_after"), *sample("mailbox_concurrency")
    )

    async def scenario() -> None:
        async with throttle.request("a@x.example"):
            pass
        async with throttle.request("a@x.example"):  # the per-minute cap: 62 s
            pass
        throttle.retry_after("a@x.example", 120.0)
        async with throttle.request("a@x.example", sending=False):  # Retry-After: 120 s
            pass
        holding = asyncio.Event()
        release = asyncio.Event()

        async def hold() -> None:
            async with throttle.request("b@x.example", sending=False):
                holding.set()
                await release.wait()

        task = asyncio.create_task(hold())
        await holding.wait()
        waiter = asyncio.create_task(_enter(throttle, "b@x.example"))
        await asyncio.sleep(0)
        release.set()
        await asyncio.gather(task, waiter)

    asyncio.run(scenario())
    # The cap's window is a minute plus 2 s of slack (connectors.graph.throttle).
    assert readings.deltas() == [1, 62.0, 1, 120.0, 1, 0.0]


async def _enter(throttle: MailboxThrottle, mailbox: str) -> None:
    async with throttle.request(mailbox, sending=False):
        pass


def test_worker_gauges_compute_lag_from_frontiers_and_cache_committed_offsets() -> None:
    committed_reads: list[tuple[str, int]] = []
    owned = {"intents": [0, 1, 2], "raw": [0]}
    frontiers = {("intents", 0): 40}
    highs = {("intents", 0): 50, ("intents", 1): 7, ("raw", 0): 3}  # intents[2]: unknown
    ledger = {0: 10, 1: 20}

    async def committed(topic: str, partition: int) -> int:
        committed_reads.append((topic, partition))
        return 5 if topic == "intents" else 3

    async def highwaters(tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        return {tp: highs[tp] for tp in tps if tp in highs}

    gauges = metrics.WorkerGauges(
        topics=lambda: ["intents", "raw"],
        owned=lambda topic: owned[topic],
        frontiers=lambda: frontiers,
        committed=committed,
        highwaters=highwaters,
        ledger=lambda: ledger,
    )
    asyncio.run(gauges.refresh())
    lag = "sendonce_consumer_lag"
    assert value(lag, topic="intents", partition="0") == 10
    assert value(lag, topic="intents", partition="1") == 2
    assert REGISTRY.get_sample_value(lag, {"topic": "intents", "partition": "2"}) is None
    assert value(lag, topic="raw", partition="0") == 0
    assert value("sendonce_ledger_entries", partition="1") == 20

    # Committed offsets come from the broker once per assignment.
    frontiers[("intents", 1)] = 7
    ledger.pop(1)
    asyncio.run(gauges.refresh())
    assert value(lag, topic="intents", partition="1") == 0
    assert REGISTRY.get_sample_value("sendonce_ledger_entries", {"partition": "1"}) is None
    assert committed_reads == [("intents", 1), ("raw", 0)]
    gauges.forget()
    asyncio.run(gauges.refresh())
    assert committed_reads == [("intents", 1), ("raw", 0), ("raw", 0)]

    # A failing part keeps its previous values.
    async def broken(tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        raise RuntimeError("consumer busy")

    gauges._highwaters = broken
    asyncio.run(gauges.refresh())
    assert value(lag, topic="intents", partition="0") == 10


def test_ledger_estimates_read_rocksdb_of_active_partitions_only(tmp_path: Path) -> None:
    from faust.types import TP
    from rocksdict import Rdict

    dbs = {p: Rdict(str(tmp_path / f"db{p}")) for p in (0, 1)}
    for i in range(25):
        dbs[0][f"k{i}".encode()] = b"v"
    dbs[1][b"k"] = b"v"

    class Assignor:
        def assigned_actives(self) -> set[TP]:
            return {TP("ledger-changelog", 0), TP("other", 1)}

    class Topic:
        def get_topic_name(self) -> str:
            return "ledger-changelog"

    class Store:
        app = type("App", (), {"assignor": Assignor()})()
        _dbs = dbs

    class Table:
        data = Store()
        changelog_topic = Topic()

    try:
        assert metrics.ledger_key_estimates(Table()) == {0: 25}
    finally:
        for db in dbs.values():
            db.close()


def test_metrics_server_serves_metrics_health_and_readiness() -> None:
    ready = [False]
    refreshed: list[int] = []

    async def refresh() -> None:
        refreshed.append(1)

    server = metrics.MetricsServer("127.0.0.1", 0, ready=lambda: ready[0], refresh=refresh)

    async def scenario() -> None:
        async with TestClient(TestServer(server.make_app())) as client:
            resp = await client.get("/readyz")
            assert resp.status == 503
            ready[0] = True
            assert (await client.get("/readyz")).status == 200
            assert (await client.get("/healthz")).status == 200
            resp = await client.get("/metrics")
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            names = {f.name for f in text_string_to_metric_families(await resp.text())}
            assert {"sendonce_intents", "sendonce_consumer_lag", "sendonce_ambiguous_open"} <= names

    asyncio.run(scenario())
    assert refreshed == [1]


def test_metrics_server_on_a_taken_port_logs_and_carries_on() -> None:
    async def scenario() -> None:
        first = metrics.MetricsServer("127.0.0.1", 0, ready=lambda: True)
        url = await first.start()
        port = int(url.rsplit(":", 1)[1])
        second = metrics.MetricsServer("127.0.0.1", port, ready=lambda: True)
        await second.start_or_warn()  # no exception
        assert second.url == ""
        await first.stop()

    asyncio.run(scenario())


class Sink:
    def __init__(self) -> None:
        self.records: list[tuple[str, bytes, bytes]] = []

    async def send_all(self, topic: str, records: Any) -> None:
        self.records.extend((topic, k, v) for k, v in records)

    async def healthy(self, topic: str) -> bool:
        return True

    def close(self) -> None:
        pass


def test_receiver_metrics_count_notifications_rejections_handshakes_and_records() -> None:
    config = ReceiverConfig(
        bootstrap_servers="127.0.0.1:1",
        topic="email.webhooks.raw",
        client_states={"sub-1": "secret-state"},
    )
    receiver = WebhookReceiver(config, sink=Sink(), clock=lambda: 1_700_000_000.0)

    def note(state: str, n: int) -> dict[str, Any]:
        return {
            "id": f"n-{n}",
            "subscriptionId": "sub-1",
            "clientState": state,
            "changeType": "created",
            "resource": "Users/u/Messages/m",
            "tenantId": "t-1",
        }

    async def scenario() -> dict[str, float]:
        server = TestServer(receiver.app, host="127.0.0.1")
        await server.start_server(access_log=None)
        async with TestClient(server) as client:
            before = await scrape(client)
            ok = {"value": [note("secret-state", 1), note("secret-state", 2)]}
            assert (await client.post("/graph/notifications", json=ok)).status == 202
            bad = {"value": [note("wrong", 3)]}
            assert (await client.post("/graph/notifications", json=bad)).status == 403
            handshake = "/graph/notifications?validationToken=abc"
            assert (await client.post(handshake)).status == 200
            unsigned = await client.post("/webhooks/nobody", json={})
            assert unsigned.status == 404
            after = await scrape(client)
        return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}

    deltas = asyncio.run(scenario())
    assert deltas['sendonce_receiver_notifications_total{route="graph"}'] == 3
    assert deltas['sendonce_receiver_rejected_total{reason="client_state"}'] == 1
    assert deltas['sendonce_receiver_rejected_total{reason="unknown_source"}'] == 1
    assert deltas["sendonce_receiver_validations_total"] == 1
    assert deltas["sendonce_receiver_records_produced_total"] == 2
    assert deltas['sendonce_receiver_responses_total{status="202"}'] == 1


async def scrape(client: TestClient[Any, Any]) -> dict[str, float]:
    resp = await client.get("/metrics")
    assert resp.status == 200
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(await resp.text()):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            found[s.name + (f"{{{labels}}}" if labels else "")] = s.value
    return found


def test_metric_names_carry_no_message_data() -> None:
    # Labels are classes, never keys or recipients: nothing from a send leaks into them.
    text = json.dumps([f.name for f in REGISTRY.collect()])
    assert "@" not in text
