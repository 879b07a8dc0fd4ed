"""The webhook receiver through real HTTP against the real broker.

Each test gets its own topics (a unique prefix) and its own receiver on a free
port; events are read back from ``email.webhooks.raw`` with a fresh consumer.
"Nothing produced" is proven with a sentinel: after the rejected request a good
one is accepted (202 = acknowledged), and the topic then holds the sentinel only.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from confluent_kafka import KafkaException

from sendonce.connectors.webhooks.receiver import ReceiverConfig, ReceiverThread
from sendonce.connectors.webhooks.signed import sign
from sendonce.dev.kafka import LocalKafka
from sendonce.kafka.topics import create_topics
from sendonce.ops.results import ReadRecord, read_topics
from sendonce.settings import Settings

pytestmark = pytest.mark.integration

SUB_A = "7f2d3c4e-aaaa-4f00-9000-000000000001"
SUB_B = "7f2d3c4e-bbbb-4f00-9000-000000000002"
TENANT = "84bd8158-6d4d-4958-8b9f-9d6445542f95"
STATE_A = "client-state-a-0c9e1d"
STATE_B = "client-state-b-77ab20"
SIGNING_SECRET = "billing-signing-secret-5521"


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    url: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1"
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def post_json(url: str, path: str, doc: Any, **headers: str) -> Reply:
    body = json.dumps(doc).encode()
    return request(url, "POST", path, body, {"Content-Type": "application/json", **headers})


def notification(n: int | str, *, with_id: bool = True, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "subscriptionId": SUB_A,
        "clientState": STATE_A,
        "changeType": "created",
        "resource": f"Users/u-1/Messages/m-{n}",
        "tenantId": TENANT,
        "resourceData": {"@odata.type": "#Microsoft.Graph.Message", "id": f"m-{n}"},
    }
    if with_id:
        base["id"] = f"notif-{n}"
    base.update(overrides)
    return base


def settings_for(bootstrap: str, tmp_path: Path, **overrides: Any) -> Settings:
    tag = uuid.uuid4().hex[:8]
    values: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "app_id": f"sendonce-rx-{tag}",
        "topic_prefix": f"rx{tag}.",
        "partitions": 3,
        "data_dir": tmp_path / "worker",
        "receiver_port": 0,
        "receiver_client_states": f"{SUB_A}={STATE_A},{SUB_B}={STATE_B}",
        "receiver_signing_secrets": f"billing={SIGNING_SECRET}",
        "receiver_produce_timeout_s": 3.0,
    }
    values.update(overrides)
    settings = Settings(**values)
    create_topics(settings)
    return settings


def read_raw(bootstrap: str, topic: str, timeout: float = 30.0) -> list[ReadRecord]:
    """Every record of ``topic`` from offset 0 to its end, with a fresh consumer."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return list(read_topics(bootstrap, [topic], timeout=timeout))
        except KafkaException:
            # A just-created topic's partitions can answer NOT_LEADER for a moment.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)  # polling with a deadline: there is no event to await


@dataclass
class Rig:
    settings: Settings
    url: str

    def raw(self) -> list[ReadRecord]:
        return read_raw(self.settings.bootstrap_servers, self.settings.topics.webhooks_raw)

    def keys(self) -> list[str]:
        return sorted((r.key or b"").decode() for r in self.raw())

    def sentinel(self) -> str:
        """Get one good event accepted; returns its dedupe id."""
        n = f"sentinel-{uuid.uuid4().hex[:6]}"
        reply = post_json(self.url, "/graph/notifications", {"value": [notification(n)]})
        assert reply.status == 202, reply.body
        return f"graph:notif-{n}"


@pytest.fixture
def rig(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Rig]:
    settings = settings_for(kafka_bootstrap, tmp_path)
    with ReceiverThread(ReceiverConfig.from_settings(settings)) as running:
        yield Rig(settings, running.url)


# --- handshake and rejections ---------------------------------------------------


def test_validation_handshake(rig: Rig) -> None:
    token = "Validation: Testing client application 3/7 + more"
    for method, path in (("POST", "/graph/notifications"), ("GET", "/graph/lifecycle")):
        started = time.monotonic()
        reply = request(
            rig.url,
            method,
            f"{path}?validationToken={quote(token, safe='')}",
            b"" if method == "POST" else None,
            {"Content-Type": "text/plain"},
        )
        assert time.monotonic() - started < 2.0
        assert reply.status == 200
        assert reply.headers["content-type"].startswith("text/plain")
        assert reply.body.decode() == token
    sentinel = rig.sentinel()
    assert rig.keys() == [sentinel]


def test_wrong_client_state_is_403_and_nothing_is_produced(rig: Rig) -> None:
    # One good and one bad notification: the whole request is refused.
    doc = {"value": [notification(1), notification(2, clientState=STATE_B)]}
    reply = post_json(rig.url, "/graph/notifications", doc)
    assert reply.status == 403
    assert "clientState" in reply.json()["error"]
    assert STATE_A not in reply.body.decode()
    sentinel = rig.sentinel()
    assert rig.keys() == [sentinel]


def test_malformed_json_is_400_and_nothing_is_produced(rig: Rig) -> None:
    body = b'{"value": [{"subscriptionId": "' + SUB_A.encode() + b'", "clientState": '
    reply = request(
        rig.url, "POST", "/graph/notifications", body, {"Content-Type": "application/json"}
    )
    assert reply.status == 400
    assert "malformed JSON" in reply.json()["error"]
    assert SUB_A not in reply.body.decode()
    missing_value = post_json(rig.url, "/graph/notifications", {"notifications": []})
    assert missing_value.status == 400
    sentinel = rig.sentinel()
    assert rig.keys() == [sentinel]


def test_oversize_is_413_and_wrong_content_type_is_415(rig: Rig) -> None:
    limit = rig.settings.receiver_max_body_bytes
    big = json.dumps({"value": [notification(1, pad="x" * limit)]}).encode()
    reply = request(
        rig.url, "POST", "/graph/notifications", big, {"Content-Type": "application/json"}
    )
    assert reply.status == 413
    assert str(limit) in reply.json()["error"]
    body = json.dumps({"value": [notification(2)]}).encode()
    reply = request(rig.url, "POST", "/graph/notifications", body, {"Content-Type": "text/plain"})
    assert reply.status == 415
    # The receiver keeps serving, and neither request produced anything.
    sentinel = rig.sentinel()
    assert rig.keys() == [sentinel]


# --- accepted events ----------------------------------------------------------------


def test_good_notifications_are_acknowledged_records_keyed_by_dedupe_id(rig: Rig) -> None:
    doc = {
        "value": [
            notification(1),
            notification(2, with_id=False),
            notification(3, subscriptionId=SUB_B, clientState=STATE_B),
        ]
    }
    reply = post_json(rig.url, "/graph/notifications", doc, **{"User-Agent": "graph-test/1.0"})
    assert reply.status == 202
    assert reply.json() == {"accepted": 3}
    records = rig.raw()
    assert len(records) == 3
    by_key = {(r.key or b"").decode(): r.value for r in records}
    derived = [k for k in by_key if k.startswith("graph:sha256:")]
    assert set(by_key) == {"graph:notif-1", "graph:notif-3", *derived} and len(derived) == 1
    first = by_key["graph:notif-1"]
    assert first["dedupe_id"] == "graph:notif-1"
    assert first["source"] == "graph"
    assert first["kind"] == "NOTIFICATION"
    assert first["subscription_id"] == SUB_A
    assert first["tenant_id"] == TENANT
    assert first["change_type"] == "created"
    assert first["resource_id"] == "m-1"
    assert first["client_state_verified"] is True
    assert first["headers"]["user-agent"] == "graph-test/1.0"
    payload = json.loads(first["payload"])
    assert payload["resourceData"]["id"] == "m-1"
    assert "clientState" not in payload
    assert by_key["graph:notif-3"]["subscription_id"] == SUB_B


def test_the_same_notification_five_times_gives_five_records_with_one_key(rig: Rig) -> None:
    doc = {"value": [notification(7, with_id=False)]}
    for _ in range(5):
        assert post_json(rig.url, "/graph/notifications", doc).status == 202
    records = rig.raw()
    assert len(records) == 5
    assert len({r.key for r in records}) == 1
    assert len({r.partition for r in records}) == 1  # one owner per dedupe id
    assert {r.value["dedupe_id"] for r in records} == {records[0].key.decode()}  # type: ignore[union-attr]


def test_lifecycle_notification_is_produced_marked_lifecycle(rig: Rig) -> None:
    life = {
        "subscriptionId": SUB_A,
        "clientState": STATE_A,
        "tenantId": TENANT,
        "lifecycleEvent": "subscriptionRemoved",
        "subscriptionExpirationDateTime": "2030-01-01T00:00:00Z",
    }
    assert post_json(rig.url, "/graph/lifecycle", {"value": [life]}).status == 202
    [record] = rig.raw()
    assert record.value["kind"] == "LIFECYCLE"
    assert record.value["lifecycle_event"] == "subscriptionRemoved"
    assert record.value["change_type"] is None


def test_signed_webhooks_good_bad_and_stale(rig: Rig) -> None:
    body = json.dumps({"type": "email.bounced", "data": {"recipient": "hash:ab12"}}).encode()

    def headers(webhook_id: str, ts: int, secret: str = SIGNING_SECRET) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": sign(secret.encode(), webhook_id, ts, body),
        }

    now = int(time.time())
    good = request(rig.url, "POST", "/webhooks/billing", body, headers("msg_1", now))
    assert good.status == 202
    bad = request(rig.url, "POST", "/webhooks/billing", body, headers("msg_2", now, "nope"))
    assert bad.status == 401
    stale = request(rig.url, "POST", "/webhooks/billing", body, headers("msg_3", now - 3600))
    assert stale.status == 401
    unknown = request(rig.url, "POST", "/webhooks/other", body, headers("msg_4", now))
    assert unknown.status == 404
    [record] = rig.raw()
    assert record.key == b"billing:msg_1"
    assert record.value["source"] == "billing"
    assert record.value["payload"] == body.decode()


def test_healthz_is_ok_while_kafka_answers(rig: Rig) -> None:
    reply = request(rig.url, "GET", "/healthz")
    assert reply.status == 200
    assert reply.json()["topic"] == rig.settings.topics.webhooks_raw


def test_cli_serves_until_sigterm(kafka_bootstrap: str, tmp_path: Path) -> None:
    settings = settings_for(kafka_bootstrap, tmp_path)
    env = {
        **os.environ,
        "SENDONCE_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "SENDONCE_TOPIC_PREFIX": settings.topic_prefix,
        "SENDONCE_RECEIVER_PORT": "0",
        "SENDONCE_RECEIVER_CLIENT_STATES": settings.receiver_client_states,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "sendonce.cli", "receiver"], env=env, stderr=subprocess.PIPE
    )
    try:
        url, early = _listen_url(proc, timeout=30)
        doc = {"value": [notification("cli")]}
        assert post_json(url, "/graph/notifications", doc).status == 202
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=30)
        assert proc.returncode == 0
        log = early + rest.decode(errors="replace")
        assert STATE_A not in log
        assert "stopping" in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    keys = [r.key for r in read_raw(kafka_bootstrap, settings.topics.webhooks_raw)]
    assert keys == [b"graph:notif-cli"]


def _listen_url(proc: subprocess.Popen[bytes], timeout: float) -> tuple[str, str]:
    """The URL from the receiver's "listening on" log line, and stderr read so far."""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    selector = selectors.DefaultSelector()
    selector.register(fd, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        # Raw reads, not readline(): a buffered reader could hold the line back
        # while select() waits for more bytes.
        if not selector.select(deadline - time.monotonic()):
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        text += chunk.decode(errors="replace")
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", text)
        if match:
            return match.group(1), text
    raise AssertionError("no 'listening on' line; stderr:\n" + text)


# --- broker down ------------------------------------------------------------------------


def test_broker_down_is_503_and_the_retry_after_restart_is_accepted(tmp_path: Path) -> None:
    # Our own broker: stopping the session's would disturb every other test.
    broker = LocalKafka(tmp_path / "kafka", heap="384m")
    broker.start(timeout=120)
    try:
        settings = settings_for(broker.bootstrap, tmp_path, receiver_produce_timeout_s=2.0)
        with ReceiverThread(ReceiverConfig.from_settings(settings)) as running:
            url = running.url
            assert (
                post_json(url, "/graph/notifications", {"value": [notification(1)]}).status == 202
            )

            broker.stop()
            doc = {"value": [notification(2)]}
            reply = post_json(url, "/graph/notifications", doc)
            assert reply.status == 503
            assert int(reply.headers["retry-after"]) >= 1
            assert request(url, "GET", "/healthz").status == 503
            # Still serving: the handshake does not need Kafka.
            assert request(url, "GET", "/graph/notifications?validationToken=t").status == 200

            broker.start(timeout=120)
            # The provider keeps retrying until it gets a 2xx; do the same, with a deadline
            # (the producer reconnects with backoff, so the first retry may still fail).
            deadline = time.monotonic() + 60
            attempts = 1
            while (reply := post_json(url, "/graph/notifications", doc)).status != 202:
                assert reply.status == 503, reply.body
                assert time.monotonic() < deadline, f"still 503 after {attempts} retries"
                attempts += 1
            assert request(url, "GET", "/healthz").status == 200
        records = read_raw(broker.bootstrap, settings.topics.webhooks_raw)
        keys = [r.key for r in records]
        assert keys.count(b"graph:notif-1") == 1
        # At least once on the raw topic (a timed-out attempt may have landed too);
        # the dedupe stream lets one through.
        assert keys.count(b"graph:notif-2") >= 1
        assert set(keys) == {b"graph:notif-1", b"graph:notif-2"}
    finally:
        broker.stop()
