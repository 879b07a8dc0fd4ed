"""Microsoft Graph change and lifecycle notifications: parsing, clientState, dedupe ids.

Graph POSTs ``{"value": [notification, ...]}``. Each notification carries the
``clientState`` the subscription was created with; the receiver compares it,
in constant time, with the secret configured for the notification's
``subscriptionId`` (or, when the subscription has none, its ``tenantId``).

Every notification gets a **dedupe id** that is the same on every redelivery:

* ``graph:{id}`` when Graph sent a notification ``id``;
* otherwise ``graph:sha256:{hex}`` over a canonical JSON (sorted keys, no
  whitespace) of the fields that identify the change: subscriptionId,
  changeType, resource, resourceData.id and tenantId, plus the fields that tell
  two *different* events about the same resource apart (resourceData's
  ``@odata.etag``; for lifecycle notifications the lifecycleEvent and the
  subscriptionExpirationDateTime). Absent fields are ``null``, so the id does
  not depend on key order or on which optional fields a delivery carried.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "LIFECYCLE_EVENTS",
    "ClientStateVerifier",
    "GraphNotification",
    "NotificationError",
    "dedupe_id",
    "parse_notifications",
    "to_webhook_event",
]

# The lifecycle events Graph documents; others are still produced (as LIFECYCLE)
# so a new event type reaches the downstream handler instead of being dropped.
LIFECYCLE_EVENTS = frozenset({"reauthorizationRequired", "subscriptionRemoved", "missed"})

# Notification fields that must be strings when present.
_STRING_FIELDS = (
    "id",
    "subscriptionId",
    "tenantId",
    "changeType",
    "resource",
    "lifecycleEvent",
    "clientState",
    "subscriptionExpirationDateTime",
)


class NotificationError(ValueError):
    """The request body is not a Graph notification collection (answered with 400)."""


@dataclass(frozen=True)
class GraphNotification:
    """One element of ``value[]``, as received."""

    raw: Mapping[str, Any]

    def _text(self, name: str) -> str | None:
        value = self.raw.get(name)
        return value if isinstance(value, str) else None

    @property
    def notification_id(self) -> str | None:
        """Graph's own notification id (optional in Graph's schema)."""
        return self._text("id") or None

    @property
    def subscription_id(self) -> str | None:
        """The subscription the notification was delivered for."""
        return self._text("subscriptionId")

    @property
    def tenant_id(self) -> str | None:
        """The tenant of the subscription."""
        return self._text("tenantId")

    @property
    def change_type(self) -> str | None:
        """created / updated / deleted (change notifications only)."""
        return self._text("changeType")

    @property
    def resource(self) -> str | None:
        """The resource path the notification is about."""
        return self._text("resource")

    @property
    def lifecycle_event(self) -> str | None:
        """reauthorizationRequired / subscriptionRemoved / missed, for lifecycle notifications."""
        return self._text("lifecycleEvent") or None

    @property
    def subscription_expiration(self) -> str | None:
        """subscriptionExpirationDateTime, as sent."""
        return self._text("subscriptionExpirationDateTime")

    @property
    def client_state(self) -> str | None:
        """The clientState sent with the notification (a secret: never log it)."""
        return self._text("clientState")

    @property
    def resource_data(self) -> Mapping[str, Any]:
        """``resourceData`` when it is an object, else empty."""
        data = self.raw.get("resourceData")
        return data if isinstance(data, Mapping) else {}

    @property
    def resource_id(self) -> str | None:
        """``resourceData.id``, when present."""
        value = self.resource_data.get("id")
        return value if isinstance(value, str) else None

    @property
    def is_lifecycle(self) -> bool:
        """True for subscription lifecycle notifications."""
        return self.lifecycle_event is not None


def parse_notifications(document: Any) -> list[GraphNotification]:
    """Validate a decoded request body and return its notifications.

    Raises :class:`NotificationError` (with a message that never quotes the
    body) when ``value`` is missing or is not an array of objects, or when a
    notification field has the wrong type.
    """
    if not isinstance(document, dict):
        raise NotificationError("body must be a JSON object with a 'value' array")
    value = document.get("value")
    if not isinstance(value, list):
        raise NotificationError("body must have a 'value' array of notifications")
    notifications = []
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise NotificationError(f"value[{index}] is not an object")
        for name in _STRING_FIELDS:
            if name in item and item[name] is not None and not isinstance(item[name], str):
                raise NotificationError(f"value[{index}].{name} must be a string")
        if "resourceData" in item and not isinstance(item["resourceData"], dict | None):
            raise NotificationError(f"value[{index}].resourceData must be an object")
        notifications.append(GraphNotification(item))
    return notifications


def dedupe_id(notification: GraphNotification) -> str:
    """The notification's stable dedupe id (see the module docstring)."""
    if notification.notification_id is not None:
        return f"graph:{notification.notification_id}"
    etag = notification.resource_data.get("@odata.etag")
    identity: dict[str, Any] = {
        "subscriptionId": notification.subscription_id,
        "changeType": notification.change_type,
        "resource": notification.resource,
        "resourceDataId": notification.resource_id,
        "tenantId": notification.tenant_id,
        "etag": etag if isinstance(etag, str) else None,
        "lifecycleEvent": notification.lifecycle_event,
        # A subscription gets reauthorizationRequired again after each renewal; the
        # expiry it reports is what tells those rounds apart.
        "subscriptionExpirationDateTime": (
            notification.subscription_expiration if notification.is_lifecycle else None
        ),
    }
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "graph:sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


class ClientStateVerifier:
    """Checks clientState values against secrets keyed by subscription or tenant id.

    A subscription's own secret wins over its tenant's; ids are compared
    case-insensitively (Graph ids are GUIDs, whose case is not significant).
    """

    def __init__(self, secrets: Mapping[str, str]) -> None:
        self._secrets = {name.lower(): secret.encode() for name, secret in secrets.items()}

    def __repr__(self) -> str:
        # Never the secrets themselves.
        return f"ClientStateVerifier({len(self._secrets)} secrets)"

    def secret_for(self, notification: GraphNotification) -> bytes | None:
        """The configured secret for this notification, if any."""
        for name in (notification.subscription_id, notification.tenant_id):
            if name and name.lower() in self._secrets:
                return self._secrets[name.lower()]
        return None

    def verify(self, notification: GraphNotification) -> bool:
        """True when the notification's clientState equals its configured secret."""
        expected = self.secret_for(notification)
        given = notification.client_state
        if expected is None or given is None:
            return False
        return hmac.compare_digest(given.encode(), expected)

    def verify_all(self, notifications: Sequence[GraphNotification]) -> bool:
        """True when every notification verifies (one bad one rejects the request)."""
        # Check all of them, not just up to the first failure: the work done does
        # not then reveal which position failed.
        results = [self.verify(n) for n in notifications]
        return all(results)


def to_webhook_event(
    notification: GraphNotification,
    *,
    received_at_ms: int,
    headers: Mapping[str, str],
) -> dict[str, Any]:
    """The WebhookEvent record (schemas/WebhookEvent.avsc) of a verified notification.

    The payload is the notification as received minus ``clientState``: the
    secret is not copied to Kafka, where consumers might log payloads;
    ``client_state_verified`` carries the outcome instead.
    """
    payload = {k: v for k, v in notification.raw.items() if k != "clientState"}
    return {
        "dedupe_id": dedupe_id(notification),
        "source": "graph",
        "kind": "LIFECYCLE" if notification.is_lifecycle else "NOTIFICATION",
        "tenant_id": notification.tenant_id,
        "subscription_id": notification.subscription_id,
        "change_type": None if notification.is_lifecycle else notification.change_type,
        "resource": notification.resource,
        "resource_id": notification.resource_id,
        "lifecycle_event": notification.lifecycle_event,
        "client_state_verified": True,
        "received_at": received_at_ms,
        "payload": json.dumps(payload, ensure_ascii=False, separators=(",", ":")),
        "headers": dict(headers),
    }
