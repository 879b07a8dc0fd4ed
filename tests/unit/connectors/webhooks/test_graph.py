"""Graph notifications: dedupe ids, clientState checks, parsing and event records."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sendonce.connectors.webhooks.graph import (
    ClientStateVerifier,
    GraphNotification,
    NotificationError,
    dedupe_id,
    parse_notifications,
    to_webhook_event,
)
from sendonce.schemas.codec import default_codec

SUB_A = "0f6b1e3c-1111-4a4a-9c9c-aaaaaaaaaaaa"
SUB_B = "0f6b1e3c-2222-4b4b-9d9d-bbbbbbbbbbbb"
TENANT = "84bd8158-6d4d-4958-8b9f-9d6445542f95"


def notification(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "subscriptionId": SUB_A,
        "clientState": "secret-a-123456",
        "changeType": "created",
        "resource": "Users/u-1/Messages/m-1",
        "tenantId": TENANT,
        "resourceData": {"@odata.type": "#Microsoft.Graph.Message", "id": "m-1"},
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def g(**overrides: Any) -> GraphNotification:
    return GraphNotification(notification(**overrides))


# --- dedupe ids ---------------------------------------------------------------


def test_graph_notification_id_is_the_dedupe_id_when_present() -> None:
    assert dedupe_id(g(id="notif-42")) == "graph:notif-42"
    # Other fields do not matter once Graph named the notification.
    assert dedupe_id(g(id="notif-42", changeType="updated")) == "graph:notif-42"


def test_derived_dedupe_id_is_a_prefixed_sha256() -> None:
    derived = dedupe_id(g())
    assert derived.startswith("graph:sha256:")
    assert len(derived.removeprefix("graph:sha256:")) == 64
    int(derived.removeprefix("graph:sha256:"), 16)


def test_derived_dedupe_id_is_stable_across_key_order_and_redelivery_noise() -> None:
    raw = notification()
    reordered = dict(reversed(list(raw.items())))
    reordered["resourceData"] = dict(reversed(list(raw["resourceData"].items())))
    assert list(reordered) != list(raw)
    assert dedupe_id(GraphNotification(raw)) == dedupe_id(GraphNotification(reordered))
    # Round trip through JSON text (what a redelivery is) and an unrelated field.
    again = json.loads(json.dumps(raw, indent=2))
    again["subscriptionExpirationDateTime"] = "2030-01-01T00:00:00Z"
    assert dedupe_id(GraphNotification(again)) == dedupe_id(GraphNotification(raw))


@pytest.mark.parametrize(
    "change",
    [
        {"subscriptionId": SUB_B},
        {"changeType": "updated"},
        {"resource": "Users/u-1/Messages/m-2"},
        {"resourceData": {"id": "m-2"}},
        {"tenantId": "another-tenant"},
    ],
)
def test_each_identifying_field_changes_the_derived_id(change: dict[str, Any]) -> None:
    assert dedupe_id(g(**change)) != dedupe_id(g())


def test_a_new_version_of_the_same_resource_is_a_new_event() -> None:
    v1 = g(resourceData={"id": "m-1", "@odata.etag": 'W/"1"'})
    v2 = g(resourceData={"id": "m-1", "@odata.etag": 'W/"2"'})
    assert dedupe_id(v1) != dedupe_id(v2)


def test_lifecycle_events_do_not_collide_with_each_other() -> None:
    ids = {
        dedupe_id(g(lifecycleEvent=event, changeType=None, resource=None, resourceData=None))
        for event in ("reauthorizationRequired", "subscriptionRemoved", "missed")
    }
    assert len(ids) == 3
    # A later reauthorization round (new expiry after a renewal) is a new event.
    first = g(lifecycleEvent="reauthorizationRequired", subscriptionExpirationDateTime="2030-01-01")
    second = g(
        lifecycleEvent="reauthorizationRequired", subscriptionExpirationDateTime="2030-01-02"
    )
    assert dedupe_id(first) != dedupe_id(second)


# --- clientState ----------------------------------------------------------------


def test_client_state_matches_per_subscription() -> None:
    verifier = ClientStateVerifier({SUB_A: "secret-a-123456", SUB_B: "secret-b-654321"})
    assert verifier.verify(g())
    assert verifier.verify(g(subscriptionId=SUB_B, clientState="secret-b-654321"))
    # Each subscription's own secret only: A's secret does not open B.
    assert not verifier.verify(g(subscriptionId=SUB_B, clientState="secret-a-123456"))


def test_client_state_mismatch_missing_or_unconfigured_is_rejected() -> None:
    verifier = ClientStateVerifier({SUB_A: "secret-a-123456"})
    assert not verifier.verify(g(clientState="secret-a-123457"))
    assert not verifier.verify(g(clientState=None))
    assert not verifier.verify(g(clientState=""))
    assert not verifier.verify(g(subscriptionId=SUB_B, tenantId="unknown"))


def test_tenant_secret_applies_when_the_subscription_has_none() -> None:
    verifier = ClientStateVerifier({TENANT: "tenant-secret-1", SUB_B: "secret-b-654321"})
    assert verifier.verify(g(clientState="tenant-secret-1"))
    # The subscription's own secret wins over its tenant's.
    assert not verifier.verify(g(subscriptionId=SUB_B, clientState="tenant-secret-1"))


def test_ids_compare_case_insensitively() -> None:
    verifier = ClientStateVerifier({SUB_A.upper(): "secret-a-123456"})
    assert verifier.verify(g())


def test_one_bad_notification_rejects_the_whole_batch() -> None:
    verifier = ClientStateVerifier({SUB_A: "secret-a-123456"})
    assert verifier.verify_all([g(), g(id="2")])
    assert not verifier.verify_all([g(), g(clientState="wrong"), g(id="3")])


def test_the_comparison_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import sendonce.connectors.webhooks.graph as graph

    calls: list[tuple[bytes, bytes]] = []
    real = graph.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(graph.hmac, "compare_digest", spy)
    assert not ClientStateVerifier({SUB_A: "secret-a-123456"}).verify(g(clientState="nope"))
    assert calls == [(b"nope", b"secret-a-123456")]


def test_verifier_repr_hides_secrets() -> None:
    assert "secret-a" not in repr(ClientStateVerifier({SUB_A: "secret-a-123456"}))


# --- parsing and records ----------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "JSON object"),
        ({}, "'value' array"),
        ({"value": {"a": 1}}, "'value' array"),
        ({"value": [1]}, r"value\[0\] is not an object"),
        ({"value": [{"subscriptionId": 5}]}, r"value\[0\].subscriptionId must be a string"),
        ({"value": [{"resourceData": "x"}]}, "resourceData must be an object"),
    ],
)
def test_malformed_documents_are_rejected(document: Any, message: str) -> None:
    with pytest.raises(NotificationError, match=message):
        parse_notifications(document)


def test_event_record_encodes_and_drops_the_client_state() -> None:
    event = to_webhook_event(g(id="n-1"), received_at_ms=1_700_000_000_000, headers={"a": "b"})
    assert event["kind"] == "NOTIFICATION"
    assert event["dedupe_id"] == "graph:n-1"
    assert event["resource_id"] == "m-1"
    assert "secret-a" not in event["payload"]
    assert json.loads(event["payload"])["resourceData"]["id"] == "m-1"
    decoded = default_codec().decode(default_codec().encode("WebhookEvent", event))
    assert decoded["change_type"] == "created"
    assert decoded["client_state_verified"] is True


def test_lifecycle_event_record() -> None:
    raw = notification(lifecycleEvent="missed", changeType=None, resource=None, resourceData=None)
    event = to_webhook_event(GraphNotification(raw), received_at_ms=1, headers={})
    assert event["kind"] == "LIFECYCLE"
    assert event["lifecycle_event"] == "missed"
    assert event["change_type"] is None
