"""What the Graph emulator's mail operations do: send, draft and send, list Sent Items.

``POST /users/{sender}/sendMail`` (202), ``POST /users/{sender}/messages`` (a draft, 201;
``Prefer: IdType="ImmutableId"`` gives immutable ids), ``POST /users/{sender}/messages/
{id}/send`` (202), ``GET /users/{sender}/messages/{id}`` (one message by REST or immutable
id) and ``GET /users/{sender}[/mailFolders/{folder}]/messages`` with the
extended-property ``$filter``, ``$select``, ``$expand``, ``$top``, ``$skip`` and
``$orderby``. Requests are validated as Graph validates them (same error codes), so a
client that works here is not relying on leniency. Every message that leaves a mailbox is
recorded as a delivery, with the idempotency key taken from its extended property, which
is what tests count to prove exactly-once. The request pipeline around these operations
(auth, routing, concurrency, faults) is :mod:`sendonce.emulator.graph_routes`.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from sendonce.emulator.faults import AppliedFaults
from sendonce.emulator.graph_routes import GraphError, GraphRoutes, Outcome
from sendonce.emulator.odata import (
    FilterError,
    parse_expand,
    parse_property_filter,
    parse_select,
    property_name,
    valid_property_id,
)
from sendonce.emulator.store import (
    Delivery,
    RequestRecord,
    StoredMessage,
    folder_id,
    new_immutable_id,
    new_rest_id,
    now_ms,
)

__all__ = ["MailOperations"]

_IMMUTABLE_PREFER = re.compile(r'idtype\s*=\s*"?immutableid"?', re.IGNORECASE)
_INTERNET_MESSAGE_ID = re.compile(r"^<[^<>@\s]+@[^<>@\s]+>$")
_ADDRESS = re.compile(r"^[^@\s<>]+@[^@\s<>]+$")
_WELL_KNOWN_EMPTY_FOLDERS = frozenset({"inbox", "deleteditems", "outbox", "archive", "junkemail"})
_ORDERBY = re.compile(
    r"^\s*(sentDateTime|createdDateTime|receivedDateTime)(?:\s+(asc|desc))?\s*$", re.IGNORECASE
)


@dataclass
class _ParsedMessage:
    subject: str
    to: list[dict[str, Any]]
    cc: list[dict[str, Any]]
    bcc: list[dict[str, Any]]
    body: dict[str, Any]
    internet_message_id: str | None
    extended: list[dict[str, str]]

    @property
    def recipients(self) -> list[dict[str, Any]]:
        return self.to + self.cc + self.bcc


def _addresses(recipients: Iterable[dict[str, Any]]) -> list[str]:
    return [str(r["emailAddress"]["address"]) for r in recipients]


def _no_recipients() -> GraphError:
    """Graph's refusal to send a message (or a draft) that has no recipient at all."""
    return GraphError(
        400, "ErrorInvalidRecipients", "At least one recipient is required, but none were found."
    )


def _id_preference_applied(immutable: bool) -> dict[str, str]:
    """The response headers that confirm ``Prefer: IdType="ImmutableId"`` was honoured."""
    return {"Preference-Applied": 'IdType="ImmutableId"'} if immutable else {}


class MailOperations(GraphRoutes):
    """The mail operations behind the Graph request pipeline."""

    async def _dispatch(
        self,
        request: web.Request,
        rec: RequestRecord,
        operation: str,
        params: dict[str, str],
        applied: AppliedFaults,
    ) -> Outcome:
        mailbox = params["user"].lower()
        immutable = any(_IMMUTABLE_PREFER.search(v) for v in request.headers.getall("Prefer", []))
        if operation == "listMessages":
            return self._list_messages(request, mailbox, params.get("folder"), immutable)
        if operation == "getMessage":
            return self._get_message(request, mailbox, params["id"], immutable)
        body = await self._read_json(request)
        if operation == "sendMail":
            return self._send_mail(rec, mailbox, body, applied)
        if operation == "createMessage":
            return self._create_message(request, mailbox, body, immutable)
        return self._send_draft(rec, mailbox, params["id"], applied)

    @staticmethod
    async def _read_json(request: web.Request) -> dict[str, Any]:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise GraphError(
                413, "RequestEntityTooLarge", "The request payload exceeds 4 MB."
            ) from None
        except ConnectionResetError:
            # The client went away mid-body (a worker SIGKILLed by the torture
            # harness): nothing was sent, and no traceback belongs in the log.
            raise GraphError(400, "BadRequest", "The request body was cut off.") from None
        if not raw.strip():
            return {}
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise GraphError(
                400,
                "BadRequest",
                "Unable to read JSON request payload. Please ensure Content-Type header is set "
                "and payload is of valid JSON format.",
            ) from None
        if not isinstance(data, dict):
            raise GraphError(400, "BadRequest", "The request payload must be a JSON object.")
        return data

    def _parse_message(self, data: Any, *, require_recipients: bool) -> _ParsedMessage:
        if not isinstance(data, dict):
            raise GraphError(
                400, "ErrorInvalidRequest", "The request is invalid: 'message' is required."
            )
        lists: dict[str, list[dict[str, Any]]] = {}
        for name in ("toRecipients", "ccRecipients", "bccRecipients"):
            value = data.get(name, [])
            if value is None:
                value = []
            if not isinstance(value, list):
                raise GraphError(400, "ErrorInvalidRecipients", f"'{name}' must be a list.")
            for recipient in value:
                address = (
                    recipient.get("emailAddress", {}).get("address")
                    if isinstance(recipient, dict)
                    and isinstance(recipient.get("emailAddress"), dict)
                    else None
                )
                if not isinstance(address, str) or not _ADDRESS.match(address):
                    raise GraphError(
                        400,
                        "ErrorInvalidRecipients",
                        f"At least one recipient isn't valid., Recipient '{address}' isn't "
                        "resolved. All recipients must be resolved before a message can be "
                        "submitted.",
                    )
            lists[name] = [
                {"emailAddress": {"name": r["emailAddress"].get("name", ""), "address": a}}
                for r in value
                for a in [r["emailAddress"]["address"]]
            ]
        if require_recipients and not any(lists.values()):
            raise _no_recipients()
        subject = data.get("subject", "")
        if not isinstance(subject, str):
            raise GraphError(400, "ErrorInvalidRequest", "'subject' must be a string.")
        body = data.get("body", {"contentType": "text", "content": ""})
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("content", ""), str)
            or str(body.get("contentType", "text")).lower() not in ("text", "html")
        ):
            raise GraphError(
                400, "ErrorInvalidRequest", "'body' must have contentType text or html."
            )
        imid = data.get("internetMessageId")
        if imid is not None and (not isinstance(imid, str) or not _INTERNET_MESSAGE_ID.match(imid)):
            raise GraphError(
                400,
                "ErrorInvalidInternetMessageHeader",
                "The internetMessageId must have the form <local-part@domain>.",
            )
        props = data.get("singleValueExtendedProperties", [])
        if not isinstance(props, list) or not all(
            isinstance(p, dict)
            and isinstance(p.get("id"), str)
            and isinstance(p.get("value"), str)
            and valid_property_id(p["id"])
            for p in props
        ):
            raise GraphError(
                400,
                "ErrorInvalidProperty",
                "The extended property attribute combination is invalid.",
            )
        return _ParsedMessage(
            subject=subject,
            to=lists["toRecipients"],
            cc=lists["ccRecipients"],
            bcc=lists["bccRecipients"],
            body={
                "contentType": str(body.get("contentType", "text")),
                "content": body.get("content", ""),
            },
            internet_message_id=imid,
            extended=[{"id": p["id"], "value": p["value"]} for p in props],
        )

    def _new_message(self, mailbox: str, parsed: _ParsedMessage, folder: Any) -> StoredMessage:
        content = parsed.body.get("content") if isinstance(parsed.body, dict) else None
        if isinstance(content, str) and content.strip():
            with self._lock:
                self._sensitive.add(content)
        return StoredMessage(
            mailbox=mailbox,
            rest_id=new_rest_id(),
            immutable_id=new_immutable_id(),
            folder=folder,
            created_s=time.time(),
            subject=parsed.subject,
            internet_message_id=parsed.internet_message_id
            or f"<{secrets.token_hex(16).upper()}@emulator>",
            to=parsed.to,
            cc=parsed.cc,
            bcc=parsed.bcc,
            body=parsed.body,
            extended=parsed.extended,
        )

    def _record_delivery(
        self, rec: RequestRecord, msg: StoredMessage, operation: str, duplicate: bool
    ) -> None:
        key = next(
            (
                p["value"]
                for p in msg.extended
                if (property_name(p["id"]) or "").lower() == self.key_property_name.lower()
            ),
            None,
        )
        self._deliveries.append(
            Delivery(
                seq=len(self._deliveries) + 1,
                mailbox=msg.mailbox,
                idempotency_key=key,
                internet_message_id=msg.internet_message_id,
                message_id=msg.rest_id,
                immutable_id=msg.immutable_id,
                request_id=rec.request_id,
                client_request_id=rec.client_request_id or rec.request_id,
                timestamp_ms=now_ms(),
                operation=operation,
                transport_duplicate=duplicate,
                recipients=_addresses(msg.to + msg.cc + msg.bcc),
                subject=msg.subject,
                extended_properties={p["id"]: p["value"] for p in msg.extended},
            )
        )

    def _send_mail(
        self, rec: RequestRecord, mailbox: str, body: dict[str, Any], applied: AppliedFaults
    ) -> Outcome:
        parsed = self._parse_message(body.get("message"), require_recipients=True)
        save = body.get("saveToSentItems", True)
        if not isinstance(save, bool):
            raise GraphError(400, "ErrorInvalidRequest", "'saveToSentItems' must be a boolean.")
        sent = self._new_message(mailbox, parsed, "sentitems")
        copies = [sent]
        if applied.duplicate:
            # The transport's second copy is the same message: same internet message id.
            twin = self._new_message(mailbox, parsed, "sentitems")
            twin.internet_message_id = sent.internet_message_id
            copies.append(twin)
        with self._lock:
            for i, msg in enumerate(copies):
                msg.sent_s = time.time()
                msg.visible_at = time.monotonic() + applied.visibility_delay_s
                if save:
                    self._messages.setdefault(mailbox, []).append(msg)
                self._record_delivery(rec, msg, "sendMail", duplicate=i > 0)
        return Outcome(status=202)

    def _create_message(
        self, request: web.Request, mailbox: str, body: dict[str, Any], immutable: bool
    ) -> Outcome:
        try:
            # Like Graph, extended properties come back only when $expand asks for them.
            expand = parse_expand(request.query.get("$expand"))
        except FilterError as exc:
            raise GraphError(400, "BadRequest", str(exc)) from None
        parsed = self._parse_message(body, require_recipients=False)
        msg = self._new_message(mailbox, parsed, "drafts")
        with self._lock:
            self._messages.setdefault(mailbox, []).append(msg)
        out = msg.graph_json(immutable=immutable, select=None, expand=expand)
        out = {
            "@odata.context": f"{self._graph_root()}/$metadata#users('{mailbox}')/messages/$entity",
            **out,
        }
        headers = _id_preference_applied(immutable)
        location = f"{self._graph_root()}/users/{mailbox}/messages/{out['id']}"
        headers["Location"] = location
        return Outcome(status=201, body=out, headers=headers)

    def _send_draft(
        self, rec: RequestRecord, mailbox: str, message_id: str, applied: AppliedFaults
    ) -> Outcome:
        with self._lock:
            msg = next(
                (
                    m
                    for m in self._messages.get(mailbox, [])
                    if m.folder == "drafts" and m.matches_id(message_id)
                ),
                None,
            )
            if msg is None:
                raise GraphError(
                    404, "ErrorItemNotFound", "The specified object was not found in the store."
                )
            if not (msg.to or msg.cc or msg.bcc):
                raise _no_recipients()
            # Moving to Sent Items gives a new REST id; the immutable id stays.
            msg.folder = "sentitems"
            msg.rest_id = new_rest_id()
            msg.sent_s = msg.modified_s = time.time()
            msg.visible_at = time.monotonic() + applied.visibility_delay_s
            self._record_delivery(rec, msg, "sendDraft", duplicate=False)
            if applied.duplicate:
                self._record_delivery(rec, msg, "sendDraft", duplicate=True)
        return Outcome(status=202)

    def _graph_root(self) -> str:
        return self._base_url + "/v1.0" if self._base_url else "/v1.0"

    def _get_message(
        self, request: web.Request, mailbox: str, message_id: str, immutable: bool
    ) -> Outcome:
        """``GET /users/{id}/messages/{id}``: one message by REST or immutable id.

        Its draft state is current at once: ``isDraft`` turns false when the send is
        accepted, while listing Sent Items lags (``visibility_delay``); until then the
        message reads as in the Outbox. A REST id dies when the message moves out of
        Drafts (Graph gives the Sent Items copy a new one; the immutable id stays).
        """
        unknown = [
            k for k in request.query if k.startswith("$") and k not in ("$select", "$expand")
        ]
        if unknown:
            raise GraphError(400, "BadRequest", f"Query option '{unknown[0]}' is not supported.")
        try:
            select = parse_select(request.query.get("$select"))
            expand = parse_expand(request.query.get("$expand"))
        except FilterError as exc:
            raise GraphError(400, "BadRequest", str(exc)) from None
        with self._lock:
            msg = next(
                (m for m in self._messages.get(mailbox, []) if m.matches_id(message_id)), None
            )
            if msg is None:
                raise GraphError(
                    404, "ErrorItemNotFound", "The specified object was not found in the store."
                )
            out = msg.graph_json(immutable=immutable, select=select, expand=expand)
            if "parentFolderId" in out and msg.visible_at > time.monotonic():
                out["parentFolderId"] = folder_id(mailbox, "outbox")
        out = {
            "@odata.context": f"{self._graph_root()}/$metadata#users('{mailbox}')/messages/$entity",
            **out,
        }
        return Outcome(status=200, body=out, headers=_id_preference_applied(immutable))

    def _list_messages(
        self, request: web.Request, mailbox: str, folder: str | None, immutable: bool
    ) -> Outcome:
        q = request.query
        known = {"$filter", "$select", "$expand", "$top", "$skip", "$orderby"}
        unknown = [k for k in q if k.startswith("$") and k.lower() not in known]
        if unknown:
            raise GraphError(400, "BadRequest", f"Query option '{unknown[0]}' is not supported.")
        try:
            flt = parse_property_filter(q["$filter"]) if "$filter" in q else None
            select = parse_select(q.get("$select"))
            expand = parse_expand(q.get("$expand"))
            top = int(q.get("$top", "10"))
            skip = int(q.get("$skip", "0"))
        except FilterError as exc:
            raise GraphError(400, "BadRequest", str(exc)) from None
        except ValueError:
            raise GraphError(400, "BadRequest", "$top and $skip must be integers.") from None
        if not 1 <= top <= 1000 or skip < 0:
            raise GraphError(400, "BadRequest", "$top must be 1..1000 and $skip >= 0.")
        order_field, descending = "receivedDateTime", True
        if "$orderby" in q:
            m = _ORDERBY.match(q["$orderby"])
            if m is None:
                raise GraphError(400, "BadRequest", "Unsupported $orderby.")
            order_field = m.group(1)
            descending = (m.group(2) or "asc").lower() == "desc"
        folder_key = folder.lower() if folder is not None else None
        if folder_key is not None and folder_key not in ("sentitems", "drafts"):
            if folder_key in _WELL_KNOWN_EMPTY_FOLDERS:
                return Outcome(status=200, body={"value": []})
            raise GraphError(400, "ErrorInvalidIdMalformed", "Id is malformed.")
        now = time.monotonic()
        with self._lock:
            candidates = [
                m
                for m in self._messages.get(mailbox, [])
                if (folder_key is None or m.folder == folder_key)
                and (m.folder != "sentitems" or m.visible_at <= now)
                and (flt is None or flt.matches(m.extended))
            ]
            rendered_all = [
                (m, m.graph_json(immutable=immutable, select=select, expand=expand))
                for m in candidates
            ]

        def sort_key(pair: tuple[StoredMessage, dict[str, Any]]) -> float:
            m = pair[0]
            if order_field.lower() == "createddatetime":
                return m.created_s
            return m.sent_s or m.created_s

        rendered_all.sort(key=sort_key, reverse=descending)
        page = [r for _, r in rendered_all[skip : skip + top]]
        segment = "messages" if folder is None else f"mailFolders('{folder}')/messages"
        body: dict[str, Any] = {
            "@odata.context": f"{self._graph_root()}/$metadata#users('{mailbox}')/{segment}",
            "value": page,
        }
        if skip + top < len(rendered_all):
            next_url = request.url.update_query({"$skip": str(skip + top)})
            body["@odata.nextLink"] = f"{self._public_base(request)}{next_url.path_qs}"
        headers = _id_preference_applied(immutable)
        return Outcome(status=200, body=body, headers=headers)
