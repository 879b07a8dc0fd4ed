"""State of the Graph emulator: mailboxes, messages, deliveries and request records.

Ids behave like Exchange's: a message has a REST id that changes when it moves between
folders (a sent draft gets a new one) and an immutable id that never changes; a request
with ``Prefer: IdType="ImmutableId"`` sees immutable ids, any other request REST ids.
The query options that select messages live in :mod:`sendonce.emulator.odata`.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from sendonce.emulator.odata import MESSAGE_PROPERTIES, ExpandSpec, normalize_property_id

__all__ = [
    "Delivery",
    "RequestRecord",
    "StoredMessage",
    "TokenRecord",
    "graph_datetime",
    "new_immutable_id",
    "new_request_id",
    "new_rest_id",
    "now_ms",
]

Folder = Literal["drafts", "sentitems", "outbox"]


def graph_datetime(epoch_s: float) -> str:
    """Graph's DateTimeOffset rendering: ``2024-05-01T12:00:00Z``."""
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii")


def new_rest_id() -> str:
    """A fresh REST message id that looks like Exchange's (``AAMkAG...``)."""
    return "AAMkAG" + _b64(secrets.token_bytes(63)).rstrip("=") + "AAA="


def new_immutable_id() -> str:
    """A fresh immutable message id that looks like Exchange's (``AAkALg...``)."""
    return "AAkALgAAAAAAHYQDEapmEc2byACqAC-EWg0A" + _b64(secrets.token_bytes(45)) + "AAA="


def folder_id(mailbox: str, folder: Folder) -> str:
    """A stable folder id per mailbox and well-known folder name."""
    return "AAMkAG" + _b64(hashlib.sha256(f"{mailbox}/{folder}".encode()).digest()) + "AAA="


# --------------------------------------------------------------------------- records


@dataclass
class StoredMessage:
    """A message in a mailbox (a draft, or a Sent Items copy)."""

    mailbox: str
    rest_id: str
    immutable_id: str
    folder: Folder
    created_s: float
    subject: str
    internet_message_id: str
    to: list[dict[str, Any]]
    cc: list[dict[str, Any]]
    bcc: list[dict[str, Any]]
    body: dict[str, Any]
    extended: list[dict[str, str]]
    conversation_id: str = field(default_factory=lambda: new_rest_id()[:40])
    change_key: str = field(default_factory=lambda: _b64(secrets.token_bytes(18)))
    sent_s: float | None = None
    modified_s: float = 0.0
    # monotonic time from which a Sent Items listing shows the message
    visible_at: float = 0.0

    def graph_json(
        self,
        *,
        immutable: bool,
        select: list[str] | None,
        expand: ExpandSpec | None,
    ) -> dict[str, Any]:
        """Render like Graph: ``$select`` limits fields; extended properties only if expanded."""
        sender = {"emailAddress": {"name": self.mailbox, "address": self.mailbox}}
        content = str(self.body.get("content", ""))
        full: dict[str, Any] = {
            "id": self.immutable_id if immutable else self.rest_id,
            "createdDateTime": graph_datetime(self.created_s),
            "lastModifiedDateTime": graph_datetime(self.modified_s or self.created_s),
            "changeKey": self.change_key,
            "categories": [],
            "receivedDateTime": graph_datetime(self.sent_s or self.created_s),
            "sentDateTime": graph_datetime(self.sent_s) if self.sent_s is not None else None,
            "hasAttachments": False,
            "internetMessageId": self.internet_message_id,
            "subject": self.subject,
            "bodyPreview": content[:255],
            "importance": "normal",
            "parentFolderId": folder_id(self.mailbox, self.folder),
            "conversationId": self.conversation_id,
            "isDeliveryReceiptRequested": False,
            "isReadReceiptRequested": False,
            "isRead": True,
            "isDraft": self.folder == "drafts",
            "body": {"contentType": self.body.get("contentType", "text"), "content": content},
            "sender": sender,
            "from": sender,
            "toRecipients": self.to,
            "ccRecipients": self.cc,
            "bccRecipients": self.bcc,
            "replyTo": [],
        }
        out: dict[str, Any] = {"@odata.etag": f'W/"{self.change_key}"'}
        for name in select or MESSAGE_PROPERTIES:
            out[name] = full[name]
        if expand is not None:
            props = self.extended
            if expand.property_id is not None:
                wanted = normalize_property_id(expand.property_id)
                props = [p for p in props if normalize_property_id(p["id"]) == wanted]
            out["singleValueExtendedProperties"] = [dict(p) for p in props]
        return out

    def matches_id(self, message_id: str) -> bool:
        """Whether ``message_id`` (REST or immutable) names this message."""
        return message_id in (self.rest_id, self.immutable_id)


@dataclass
class Delivery:
    """One message that left a mailbox (what a recipient would receive)."""

    seq: int
    mailbox: str
    idempotency_key: str | None
    internet_message_id: str
    message_id: str
    immutable_id: str
    request_id: str
    client_request_id: str
    timestamp_ms: float
    operation: str
    transport_duplicate: bool
    recipients: list[str]
    subject: str
    extended_properties: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        """JSON form for the admin API (no message body, ever): every field, copied."""
        return dataclasses.asdict(self)


@dataclass
class RequestRecord:
    """One HTTP request the emulator handled (Graph, token or discovery)."""

    seq: int
    kind: Literal["graph", "token", "discovery"]
    method: str
    path: str
    request_id: str
    client_request_id: str | None
    start_ms: float
    mailbox: str | None = None
    operation: str | None = None
    client_id: str | None = None
    end_ms: float | None = None
    status: int | None = None
    # "response", "reset" (connection dropped) or "timeout" (response withheld)
    outcome: str = "response"
    error_code: str | None = None
    faults: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON form for the admin API."""
        return {
            "seq": self.seq,
            "kind": self.kind,
            "method": self.method,
            "path": self.path,
            "mailbox": self.mailbox,
            "operation": self.operation,
            "client_id": self.client_id,
            "request_id": self.request_id,
            "client_request_id": self.client_request_id,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "status": self.status,
            "outcome": self.outcome,
            "error_code": self.error_code,
            "faults": list(self.faults),
        }


@dataclass(frozen=True)
class TokenRecord:
    """An issued access token's owner and expiry (monotonic seconds)."""

    client_id: str
    expires_at: float


def now_ms() -> float:
    """Wall-clock milliseconds, the unit of every admin timestamp."""
    return time.time() * 1000.0


def new_request_id() -> str:
    """A Graph ``request-id``."""
    return str(uuid.uuid4())
