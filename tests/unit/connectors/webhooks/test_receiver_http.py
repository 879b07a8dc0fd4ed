"""The receiver's HTTP layer against a recording sink (no Kafka): statuses and bodies.

The Kafka side (acks, broker down) is covered in tests/integration/test_receiver.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from sendonce.connectors.webhooks.producer import ProduceError
from sendonce.connectors.webhooks.receiver import ReceiverConfig, WebhookReceiver
from sendonce.connectors.webhooks.signed import sign
from sendonce.schemas.codec import default_codec

SUB = "sub-aaaa-1111"
STATE = "client-state-secret-7f3a9c"
SIGNING_KEY = b"signing-key-for-billing-42"
NOW = 1_700_000_000.0
BODY_MARKER = "body text that must never be logged"


class RecordingSink:
    """Stands in for Kafka: records what would be produced, or fails on demand."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes, bytes]] = []
        self.fail = False
        self.up = True

    async def send_all(self, topic: str, records: Sequence[tuple[bytes, bytes]]) -> None:
        if self.fail:
            raise ProduceError("1 of 1 records failed: Local: Message timed out")
        self.records.extend((topic, k, v) for k, v in records)

    async def healthy(self, topic: str) -> bool:
        return self.up

    def close(self) -> None:
        pass

    def events(self) -> list[dict[str, Any]]:
        return [default_codec().decode(v) for _, _, v in self.records]


Scenario = Callable[[TestClient[Any, Any], RecordingSink], Awaitable[None]]


def run(scenario: Scenario, **config: Any) -> RecordingSink:
    sink = RecordingSink()
    cfg = ReceiverConfig(
        bootstrap_servers="127.0.0.1:1",
        topic="email.webhooks.raw",
        client_states={SUB: STATE},
        signing_keys={"billing": SIGNING_KEY},
        **config,
    )
    receiver = WebhookReceiver(cfg, sink=sink, clock=lambda: NOW)

    async def main() -> None:
        # As WebhookReceiver.start() does: the access log would show the query string.
        server = TestServer(receiver.app, host="127.0.0.1")
        await server.start_server(access_log=None)
        async with TestClient(server) as client:
            await scenario(client, sink)

    asyncio.run(main())
    return sink


def note(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "n-1",
        "subscriptionId": SUB,
        "clientState": STATE,
        "changeType": "created",
        "resource": "Users/u/Messages/m",
        "tenantId": "t-1",
        "resourceData": {"id": "m", "subject": BODY_MARKER},
    }
    base.update(overrides)
    return base


async def post_json(client: TestClient[Any, Any], path: str, doc: Any) -> ClientResponse:
    return await client.post(path, json=doc)


async def error_of(resp: ClientResponse) -> str:
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert body["status"] == resp.status
    return str(body["error"])


@pytest.mark.parametrize("path", ["/graph/notifications", "/graph/lifecycle"])
@pytest.mark.parametrize("method", ["POST", "GET"])
def test_validation_handshake(path: str, method: str) -> None:
    async def scenario(client: TestClient[Any, Any], sink: RecordingSink) -> None:
        resp = await client.request(
            method,
            path + "?validationToken=Validation%3A%20Testing%20client%20application",
            headers={"Content-Type": "text/plain"},
        )
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        assert await resp.text() == "Validation: Testing client application"

    assert run(scenario).records == []


def test_good_notifications_are_produced_keyed_by_dedupe_id() -> None:
    async def scenario(client: TestClient[Any, Any], sink: RecordingSink) -> None:
        doc = {"value": [note(), note(id=None)]}
        doc["value"][1].pop("id")
        resp = await post_json(client, "/graph/notifications", doc)
        assert resp.status == 202
        assert await resp.json() == {"accepted": 2}

    sink = run(scenario)
    keys = [k.decode() for _, k, _ in sink.records]
    assert keys[0] == "graph:n-1"
    assert keys[1].startswith("graph:sha256:")
    events = sink.events()
    assert [e["dedupe_id"] for e in events] == keys
    assert all(e["kind"] == "NOTIFICATION" and e["source"] == "graph" for e in events)
    assert events[0]["received_at"] == int(NOW * 1000)
    assert events[0]["headers"]["content-type"].startswith("application/json")
    assert STATE not in events[0]["payload"]


def test_lifecycle_notification_is_marked() -> None:
    async def scenario(client: TestClient[Any, Any], sink: RecordingSink) -> None:
        life = note(lifecycleEvent="reauthorizationRequired")
        for key in ("id", "changeType", "resource", "resourceData"):
            life.pop(key)
        resp = await post_json(client, "/graph/lifecycle", {"value": [life]})
        assert resp.status == 202

    [event] = run(scenario).events()
    assert event["kind"] == "LIFECYCLE"
    assert event["lifecycle_event"] == "reauthorizationRequired"


def test_one_wrong_client_state_rejects_the_request() -> None:
    async def scenario(client: TestClient[Any, Any], sink: RecordingSink) -> None:
        doc = {"value": [note(), note(id="n-2", clientState="guess")]}
        resp = await post_json(client, "/graph/notifications", doc)
        assert resp.status == 403
        assert "clientState" in await error_of(resp)
        unknown = {"value": [note(subscriptionId="not-configured")]}
        assert (await post_json(client, "/graph/notifications", unknown)).status == 403

    assert run(scenario).records == []


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message"),
    [
        (b'{"value": [' + BODY_MARKER.encode(), "application/json", 400, "malformed JSON"),
        (b"\xff\xfe", "application/json", 400, "not UTF-8"),
        (b'{"value": [NaN]}', "application/json", 400, "malformed JSON"),
        (b'{"values": []}', "application/json", 400, "'value' array"),
        (b'{"value": ["' + BODY_MARKER.encode() + b'"]}', "application/json", 400, "value[0]"),
        (b'{"value": []}', "text/plain", 415, "application/json"),
        (b'{"value": []}', "application/x-www-form-urlencoded", 415, "application/json"),
    ],
)
def test_bad_input_is_a_clear_4xx_that_does_not_echo_the_body(
    body: bytes, content_type: str, status: int, message: str
) -> None:
    async def scenario(client: TestClient[Any, Any], sink: RecordingSink) -> None:
        resp = await client.post(
            "/graph/notifications", data=body, headers={"Content-Type": content_type}
        )
        assert resp.status == status
        error = await error_of(resp)
        assert message in error
        assert BODY_MARKER not in error
        # And it keeps serving: a good request right after is accepted.
        assert (await post_json(client, "/graph/notifications", {"value": [note()]})).status == 202

    assert len(run(scenario).records) == 1


def test_oversize_bodies_get_413_by_length_and_while_reading() -> None:
    async def scenario(client: TestClient[Any, Any], sink: RecordingSink) -> None:
        big = json.dumps({"value": [note(pad="x" * 5000)]}).encode()
        resp = await client.post(
            "/graph/notifications", data=big, headers={"Content-Type": "application/json"}
        )
        assert resp.status == 413

        async def chunks() -> AsyncIterator[bytes]:
            # No Content-Length (chunked): only the limit while reading can catch it.
            for i in range(0, len(big), 1000):
                yield big[i : i + 1000]

        resp = await client.post(
            "/graph/notifications", data=chunks(), headers={"Content-Type": "application/json"}
        )
        assert resp.status == 413
        assert "4096" in await error_of(resp)
        # Exactly at the limit is fine.
        small = json.dumps({"value": [note()]}).encode()
        padded = small + b" " * (4096 - len(small))
        resp = await client.post(
            "/graph/notifications", data=padded, headers={"Content-Type": "application/json"}
        )
        assert resp.status == 202

    assert len(run(scenario, max_body_bytes=4096).records) == 1


def test_kafka_failure_is_503_with_retry_after() -> None:
    async def scenario(client: TestClient[Any, Any], sink: RecordingSink) -> None:
        sink.fail = True
        resp = await post_json(client, "/graph/notifications", {"value": [note()]})
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "3"
        sink.fail = False
        assert (await post_json(client, "/graph/notifications", {"value": [note()]})).status == 202

    assert len(run(scenario, produce_timeout_s=2.5).records) == 1


def test_get_without_token_and_unknown_paths() -> None:
    async def scenario(client: TestClient[Any, Any], sink: RecordingSink) -> None:
        resp = await client.get("/graph/notifications")
        assert resp.status == 405
        assert resp.headers["Allow"] == "POST"
        resp = await client.post("/nowhere", json={})
        assert resp.status == 404
        assert await error_of(resp)

    run(scenario)


def test_healthz_follows_the_sink() -> None:
    async def scenario(client: TestClient[Any, Any], sink: RecordingSink) -> None:
        assert (await client.get("/healthz")).status == 200
        sink.up = False
        assert (await client.get("/healthz")).status == 503

    run(scenario)


def signed_headers(body: bytes, *, ts: float = NOW, key: bytes = SIGNING_KEY) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "webhook-id": "msg_abc",
        "webhook-timestamp": str(int(ts)),
        "webhook-signature": sign(key, "msg_abc", int(ts), body),
    }


def test_signed_webhooks() -> None:
    body = json.dumps({"type": "email.bounced", "data": {"text": BODY_MARKER}}).encode()

    async def scenario(client: TestClient[Any, Any], sink: RecordingSink) -> None:
        ok = await client.post("/webhooks/billing", data=body, headers=signed_headers(body))
        assert ok.status == 202
        bad = signed_headers(body, key=b"wrong-key")
        resp = await client.post("/webhooks/billing", data=body, headers=bad)
        assert resp.status == 401
        assert "signature" in await error_of(resp)
        stale = signed_headers(body, ts=NOW - 301)
        resp = await client.post("/webhooks/billing", data=body, headers=stale)
        assert resp.status == 401
        assert "tolerance" in await error_of(resp)
        unsigned = {"Content-Type": "application/json"}
        assert (await client.post("/webhooks/billing", data=body, headers=unsigned)).status == 401
        resp = await client.post("/webhooks/unknown", data=body, headers=signed_headers(body))
        assert resp.status == 404

    sink = run(scenario)
    [event] = sink.events()
    assert sink.records[0][1] == b"billing:msg_abc"
    assert event["source"] == "billing"
    assert event["dedupe_id"] == "billing:msg_abc"
    assert event["change_type"] == "email.bounced"
    assert event["payload"] == body.decode()
    assert "webhook-signature" not in event["headers"]
    assert event["headers"]["webhook-id"] == "msg_abc"


def test_no_secret_token_or_body_reaches_the_logs(caplog: pytest.LogCaptureFixture) -> None:
    token = "validation-token-value-91c2"
    body = json.dumps({"type": "x", "data": BODY_MARKER}).encode()

    async def scenario(client: TestClient[Any, Any], sink: RecordingSink) -> None:
        await client.post(f"/graph/notifications?validationToken={token}")
        await post_json(client, "/graph/notifications", {"value": [note()]})
        await post_json(client, "/graph/notifications", {"value": [note(clientState=STATE + "x")]})
        await client.post("/graph/notifications", data=b"{" + BODY_MARKER.encode())
        sink.fail = True
        await post_json(client, "/graph/notifications", {"value": [note()]})
        sink.fail = False
        await client.post("/webhooks/billing", data=body, headers=signed_headers(body))
        bad = signed_headers(body, key=b"wrong-key")
        await client.post("/webhooks/billing", data=body, headers=bad)

    # Another test (or the receiver's CLI) may have left the "sendonce" logger at INFO,
    # which dropped the receiver's DEBUG lines when only the root level was lowered:
    # the level is set on the receiver's own logger (the parent's INFO stays, on purpose).
    parent = logging.getLogger("sendonce")
    before = parent.level
    parent.setLevel(logging.INFO)
    try:
        with caplog.at_level(logging.DEBUG, logger="sendonce.receiver"):
            run(scenario)
    finally:
        parent.setLevel(before)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "-> 403" in text and "-> 503" in text, "the requests were not logged at all"
    for sensitive in (STATE, token, BODY_MARKER, SIGNING_KEY.decode(), "v1,"):
        assert sensitive not in text
