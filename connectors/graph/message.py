"""Microsoft Graph request payloads and URLs for one :class:`OutgoingEmail`; pure.

Every message carries the idempotency key in a named String single-value extended
property under the project's own GUID (:data:`EXTENDED_PROPERTY_ID`). Graph stores
it with the message and copies it to Sent Items, where the reconciler finds an
ambiguous send with :func:`sent_items_filter_url`, and a draft whose create had an
unknown outcome with :func:`drafts_filter_url`. Extended properties are not
transmitted to recipients.

``internetMessageId`` is documented as "updatable only if isDraft is true": draft
create accepts it, so draft-send mode sets the deterministic ``<message_id>``;
``sendMail`` leaves it out by default (Graph's documentation does not say that
``sendMail`` honours it), and the Sent Items lookup relies on the extended property.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from sendonce.connectors.base import OutgoingEmail
from sendonce.keys import display_name_and_address

#: The project's fixed GUID for its named MAPI properties. Never change it: messages
#: already sent can only be found under this id.
PROPERTY_SET_GUID = "b591447a-f7c8-41a6-96ab-2d474262ce9a"
#: Single-value extended property holding the idempotency key.
EXTENDED_PROPERTY_ID = f"String {{{PROPERTY_SET_GUID}}} Name SendonceIdempotencyKey"
#: uuid5 namespace for ``client-request-id`` values. Fixed so ids are reproducible.
CLIENT_REQUEST_ID_NAMESPACE = uuid.UUID("47b7d252-979a-4912-b30b-74229d054523")
#: Fields the Sent Items lookup asks for.
SENT_ITEMS_SELECT = ("id", "internetMessageId", "sentDateTime", "subject")
#: Fields the Drafts lookup asks for (the oldest draft of a key is the one to send).
DRAFTS_SELECT = ("id", "internetMessageId", "isDraft", "createdDateTime")
#: Fields read to tell a draft from a sent message (``GET .../messages/{id}``).
DRAFT_STATE_SELECT = ("id", "isDraft", "internetMessageId", "sentDateTime", "parentFolderId")
#: Request header for ids that survive the move from Drafts to Sent Items.
IMMUTABLE_ID_PREFER = {"Prefer": 'IdType="ImmutableId"'}
#: Response headers kept as evidence for the ledger, in their canonical spelling.
EVIDENCE_HEADERS = ("request-id", "client-request-id", "Date", "x-ms-ags-diagnostic")


def _recipients(addresses: tuple[str, ...]) -> list[dict[str, dict[str, str]]]:
    # Intents may name recipients "Name <address>"; Graph wants the two apart.
    recipients = []
    for text in addresses:
        name, address = display_name_and_address(text)
        email_address = {"name": name, "address": address} if name else {"address": address}
        recipients.append({"emailAddress": email_address})
    return recipients


def template_text(email: OutgoingEmail) -> str:
    """The text body of a template intent, rendered as the outbox renders it."""
    params = "\n".join(f"{k}: {v}" for k, v in email.template_params)
    return f"[template {email.template_id}]\n{params}\n"


def _body(email: OutgoingEmail) -> dict[str, str]:
    # Graph takes one body: HTML when there is one, else the text (or template) one. An
    # empty HTML body counts as none: the fingerprint does not tell it from none either.
    if email.html_body:
        return {"contentType": "HTML", "content": email.html_body}
    if email.template_id is not None:
        return {"contentType": "Text", "content": template_text(email)}
    return {"contentType": "Text", "content": email.text_body or ""}


def graph_message(email: OutgoingEmail, *, with_internet_message_id: bool) -> dict[str, Any]:
    """The Graph ``message`` resource JSON for ``email``.

    Only headers named ``X-...`` become ``internetMessageHeaders`` (Graph refuses
    others; it also refuses more than five, which then surfaces as a 400 REJECTED
    rather than a silently dropped header). ``internetMessageId`` is set to
    ``<email.message_id>`` when requested and the email has one.
    """
    message: dict[str, Any] = {
        "subject": email.subject,
        "body": _body(email),
        "toRecipients": _recipients(email.to),
        "ccRecipients": _recipients(email.cc),
        "bccRecipients": _recipients(email.bcc),
        "singleValueExtendedProperties": [
            {"id": EXTENDED_PROPERTY_ID, "value": email.idempotency_key}
        ],
    }
    if with_internet_message_id and email.message_id:
        message["internetMessageId"] = f"<{email.message_id}>"
    headers = [
        {"name": name, "value": value} for name, value in email.headers if name[:2].lower() == "x-"
    ]
    if headers:
        message["internetMessageHeaders"] = headers
    return message


def send_mail_body(
    email: OutgoingEmail, *, with_internet_message_id: bool = False
) -> dict[str, Any]:
    """Request body of ``POST /users/{sender}/sendMail``, saving to Sent Items.

    ``saveToSentItems`` is what makes the reconciler's lookup possible.
    """
    return {
        "message": graph_message(email, with_internet_message_id=with_internet_message_id),
        "saveToSentItems": True,
    }


def draft_body(email: OutgoingEmail) -> dict[str, Any]:
    """Request body of draft create (``POST /users/{sender}/messages``)."""
    return graph_message(email, with_internet_message_id=True)


def client_request_id(key: str, attempt_id: str, *, step: str = "") -> str:
    """Deterministic GUID for the ``client-request-id`` header of one attempt.

    The same key and attempt always give the same id, so Microsoft support can
    correlate every retry of an attempt; ``step`` (e.g. ``"create"``) tells the
    requests of one attempt apart where that helps.
    """
    # JSON keeps the parts unambiguous whatever characters the key holds.
    parts = [key, attempt_id] if not step else [key, attempt_id, step]
    return str(uuid.uuid5(CLIENT_REQUEST_ID_NAMESPACE, json.dumps(parts)))


def _odata_string(value: str) -> str:
    """An OData string literal: single quotes, embedded quotes doubled."""
    return "'" + value.replace("'", "''") + "'"


def user_url(graph_url: str, sender: str) -> str:
    """``{graph_url}/users/{sender}`` with the sender quoted as one path segment."""
    return f"{graph_url.rstrip('/')}/users/{quote(sender, safe='@')}"


def _key_filter_url(
    graph_url: str, sender: str, folder: str, key: str, select: tuple[str, ...], *, expand: bool
) -> str:
    prop = _odata_string(EXTENDED_PROPERTY_ID)
    flt = (
        "singleValueExtendedProperties/Any(ep: ep/id eq "
        f"{prop} and ep/value eq {_odata_string(key)})"
    )
    options = [("$filter", flt), ("$select", ",".join(select))]
    if expand:
        options.append(("$expand", f"singleValueExtendedProperties($filter=id eq {prop})"))
    query = "&".join(f"{name}={quote(value, safe='')}" for name, value in options)
    return f"{user_url(graph_url, sender)}/mailFolders/{folder}/messages?{query}"


def sent_items_filter_url(graph_url: str, sender: str, key: str) -> str:
    """URL listing the sender's Sent Items messages tagged with ``key``.

    Fully percent-encoded; pass it to aiohttp as ``yarl.URL(url, encoded=True)`` so
    it is sent as is.
    """
    return _key_filter_url(graph_url, sender, "SentItems", key, SENT_ITEMS_SELECT, expand=True)


def drafts_filter_url(graph_url: str, sender: str, key: str) -> str:
    """URL listing the sender's Drafts tagged with ``key`` (encoded like the Sent Items one).

    No ``$orderby``: Graph refuses an ``$orderby`` on a property the extended-property
    ``$filter`` does not name, so the caller orders by ``createdDateTime`` itself.
    """
    return _key_filter_url(graph_url, sender, "drafts", key, DRAFTS_SELECT, expand=False)


def message_url(graph_url: str, sender: str, message_id: str) -> str:
    """``{graph_url}/users/{sender}/messages/{id}``, the id quoted as one path segment.

    Graph's ids are URL-safe base64 (``=`` padding kept as is); anything else is quoted.
    """
    return f"{user_url(graph_url, sender)}/messages/{quote(message_id, safe='=')}"


def draft_state_url(graph_url: str, sender: str, draft_id: str) -> str:
    """URL reading whether message ``draft_id`` is still a draft, and its sent evidence."""
    select = quote(",".join(DRAFT_STATE_SELECT), safe=",")
    return f"{message_url(graph_url, sender, draft_id)}?$select={select}"


def evidence_from_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Pick the response headers the ledger keeps as evidence, case-insensitively.

    Keys come back in canonical spelling (``request-id``, ``client-request-id``,
    ``Date``, ``x-ms-ags-diagnostic``); the first value wins if one repeats.
    """
    wanted = {name.lower(): name for name in EVIDENCE_HEADERS}
    found: dict[str, str] = {}
    for name, value in headers.items():
        canonical = wanted.get(name.lower())
        if canonical is not None and canonical not in found:
            found[canonical] = value
    return found


__all__ = [
    "CLIENT_REQUEST_ID_NAMESPACE",
    "DRAFTS_SELECT",
    "DRAFT_STATE_SELECT",
    "EVIDENCE_HEADERS",
    "EXTENDED_PROPERTY_ID",
    "IMMUTABLE_ID_PREFER",
    "PROPERTY_SET_GUID",
    "SENT_ITEMS_SELECT",
    "client_request_id",
    "draft_body",
    "draft_state_url",
    "drafts_filter_url",
    "evidence_from_headers",
    "graph_message",
    "message_url",
    "send_mail_body",
    "sent_items_filter_url",
    "template_text",
    "user_url",
]
