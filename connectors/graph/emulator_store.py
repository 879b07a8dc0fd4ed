"""State of the Graph emulator: mailboxes, messages, deliveries and request records.

Also the small OData pieces the emulator understands: the extended-property ``$filter``
(``singleValueExtendedProperties/any(ep: ep/id eq '...' and ep/value eq '...')``),
``$select`` and ``$expand=singleValueExtendedProperties($filter=id eq '...')``.

Ids behave like Exchange's: a message has a REST id that changes when it moves between
folders (a sent draft gets a new one) and an immutable id that never changes; a request
with ``Prefer: IdType="ImmutableId"`` sees immutable ids, any other request REST ids.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = [
    "Delivery",
    "ExpandSpec",
    "FilterError",
    "PropertyFilter",
    "RequestRecord",
    "StoredMessage",
    "TokenRecord",
    "graph_datetime",
    "new_immutable_id",
    "new_rest_id",
    "normalize_property_id",
    "parse_expand",
    "parse_property_filter",
    "parse_select",
]

Folder = Literal["drafts", "sentitems"]

# Properties a message has in the emulator, i.e. what ``$select`` may name.
MESSAGE_PROPERTIES = (
    "id",
    "createdDateTime",
    "lastModifiedDateTime",
    "changeKey",
    "categories",
    "receivedDateTime",
    "sentDateTime",
    "hasAttachments",
    "internetMessageId",
    "subject",
    "bodyPreview",
    "importance",
    "parentFolderId",
    "conversationId",
    "isDeliveryReceiptRequested",
    "isReadReceiptRequested",
    "isRead",
    "isDraft",
    "body",
    "sender",
    "from",
    "toRecipients",
    "ccRecipients",
    "bccRecipients",
    "replyTo",
)
_PROPERTY_BY_LOWER = {p.lower(): p for p in MESSAGE_PROPERTIES}


class FilterError(ValueError):
    """An OData query option the emulator does not support (answered with 400)."""


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


def normalize_property_id(prop_id: str) -> str:
    """Compare extended property ids like Exchange: case- and spacing-insensitive."""
    return " ".join(prop_id.split()).lower()


# An extended property id: ``String {GUID} Name X``, ``String {GUID} Id 0x8005`` or
# ``String 0x0037`` (the MAPI property types Graph accepts in singleValueExtendedProperties).
_GUID = r"\{[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\}"
_PROPERTY_ID = re.compile(
    r"^(String|Integer|Boolean|SystemTime|Long|Double|Binary|CLSID)\s+"
    rf"(?:{_GUID}\s+Name\s+\S+|{_GUID}\s+Id\s+0x[0-9a-fA-F]{{1,4}}|0x[0-9a-fA-F]{{1,4}})$",
    re.IGNORECASE,
)


def valid_property_id(prop_id: str) -> bool:
    """Whether ``prop_id`` is a well-formed single-value extended property id."""
    return _PROPERTY_ID.match(prop_id.strip()) is not None


def property_name(prop_id: str) -> str | None:
    """The ``Name`` part of a named property id, else None."""
    parts = prop_id.split()
    if len(parts) == 4 and parts[2].lower() == "name":
        return parts[3]
    return None


# --------------------------------------------------------------------------- OData


_TOKEN = re.compile(r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<punct>[():])|(?P<word>[A-Za-z_$][\w./$]*))")


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise FilterError(f"Invalid filter clause: unexpected text at position {pos}.")
        pos = m.end()
        kind = m.lastgroup
        assert kind is not None
        value = m.group(kind)
        if kind == "str":
            value = value[1:-1].replace("''", "'")
        tokens.append((kind, value))
    return tokens


@dataclass(frozen=True)
class PropertyFilter:
    """``singleValueExtendedProperties/any(ep: ep/id eq ID [and ep/value eq VALUE])``."""

    property_id: str
    value: str | None

    def matches(self, properties: list[dict[str, str]]) -> bool:
        """Whether any of ``properties`` has this id (and value).

        Values compare case-insensitively: keys that differ only in case would collide in
        a real mailbox's string comparisons too, so the emulator never hides such a clash.
        """
        wanted = normalize_property_id(self.property_id)
        for prop in properties:
            if normalize_property_id(prop["id"]) != wanted:
                continue
            if self.value is None or prop["value"].lower() == self.value.lower():
                return True
        return False


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, kind: str, value: str | None = None) -> str:
        tok = self.peek()
        if tok is None or tok[0] != kind or (value is not None and tok[1].lower() != value):
            want = value or kind
            got = "end of input" if tok is None else repr(tok[1])
            raise FilterError(f"Invalid filter clause: expected {want}, got {got}.")
        self.pos += 1
        return tok[1]

    def at(self, kind: str, value: str | None = None) -> bool:
        tok = self.peek()
        return tok is not None and tok[0] == kind and (value is None or tok[1].lower() == value)


def parse_property_filter(text: str) -> PropertyFilter:
    """Parse the extended-property ``$filter`` (already URL-decoded); FilterError otherwise."""
    p = _Parser(_tokenize(text))
    depth = 0
    while p.at("punct", "("):
        p.take("punct")
        depth += 1
    head = p.take("word")
    if head.lower() != "singlevalueextendedproperties/any":
        raise FilterError(
            "Invalid filter clause: only singleValueExtendedProperties/any(...) is supported."
        )
    p.take("punct", "(")
    var = p.take("word")
    p.take("punct", ":")
    clauses: dict[str, str] = {}
    while True:
        inner = 0
        while p.at("punct", "("):
            p.take("punct")
            inner += 1
        path = p.take("word").lower()
        field_name = path.removeprefix(var.lower() + "/")
        if field_name == path or field_name not in ("id", "value"):
            raise FilterError(f"Invalid filter clause: unsupported operand {path!r}.")
        if field_name in clauses:
            raise FilterError(f"Invalid filter clause: {field_name!r} compared twice.")
        p.take("word", "eq")
        clauses[field_name] = p.take("str")
        for _ in range(inner):
            p.take("punct", ")")
        if p.at("word", "and"):
            p.take("word")
            continue
        break
    p.take("punct", ")")
    for _ in range(depth):
        p.take("punct", ")")
    if p.peek() is not None:
        raise FilterError(f"Invalid filter clause: unexpected {p.peek()[1]!r}.")  # type: ignore[index]
    if "id" not in clauses:
        raise FilterError("Invalid filter clause: the lambda must compare ep/id.")
    if not valid_property_id(clauses["id"]):
        raise FilterError(f"Invalid filter clause: malformed property id {clauses['id']!r}.")
    return PropertyFilter(property_id=clauses["id"], value=clauses.get("value"))


def parse_select(text: str | None) -> list[str] | None:
    """``$select`` as canonical property names (``id`` always first); None = all."""
    if text is None or not text.strip():
        return None
    names = ["id"]
    for raw in text.split(","):
        name = raw.strip()
        canonical = _PROPERTY_BY_LOWER.get(name.lower())
        if canonical is None:
            if name.lower() == "singlevalueextendedproperties":
                continue  # selected through $expand; Graph tolerates naming it here
            raise FilterError(
                f"Could not find a property named '{name}' on type 'microsoft.graph.message'."
            )
        if canonical not in names:
            names.append(canonical)
    return names


@dataclass(frozen=True)
class ExpandSpec:
    """``$expand=singleValueExtendedProperties[($filter=id eq '...')]``."""

    property_id: str | None


_EXPAND = re.compile(
    r"^\s*singleValueExtendedProperties\s*(?:\(\s*\$filter\s*=\s*(?P<filter>.*)\)\s*)?$",
    re.IGNORECASE | re.DOTALL,
)


def parse_expand(text: str | None) -> ExpandSpec | None:
    """Parse ``$expand``; only the extended properties are expandable."""
    if text is None or not text.strip():
        return None
    m = _EXPAND.match(text)
    if m is None:
        raise FilterError(f"Parsing OData Select and Expand failed: unsupported $expand {text!r}.")
    flt = m.group("filter")
    if flt is None:
        return ExpandSpec(property_id=None)
    p = _Parser(_tokenize(flt))
    p.take("word", "id")
    p.take("word", "eq")
    prop_id = p.take("str")
    if p.peek() is not None:
        raise FilterError("Invalid filter clause in $expand: only id eq '...' is supported.")
    return ExpandSpec(property_id=prop_id)


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
        """JSON form for the admin API (no message body, ever)."""
        return {
            "seq": self.seq,
            "mailbox": self.mailbox,
            "idempotency_key": self.idempotency_key,
            "internet_message_id": self.internet_message_id,
            "message_id": self.message_id,
            "immutable_id": self.immutable_id,
            "request_id": self.request_id,
            "client_request_id": self.client_request_id,
            "timestamp_ms": self.timestamp_ms,
            "operation": self.operation,
            "transport_duplicate": self.transport_duplicate,
            "recipients": list(self.recipients),
            "subject": self.subject,
            "extended_properties": dict(self.extended_properties),
        }


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
