"""Graph payloads, client-request-id, the Sent Items URL and evidence headers."""

from __future__ import annotations

import email
import email.policy
import re
import uuid
from dataclasses import replace
from email.message import EmailMessage
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from sendonce.connectors.base import OutgoingEmail
from sendonce.connectors.graph.message import (
    EXTENDED_PROPERTY_ID,
    PROPERTY_SET_GUID,
    client_request_id,
    draft_body,
    draft_state_url,
    drafts_filter_url,
    evidence_from_headers,
    graph_message,
    message_url,
    send_mail_body,
    sent_items_filter_url,
    template_text,
    user_url,
)
from sendonce.connectors.outbox import render_eml

GRAPH = "https://graph.microsoft.com/v1.0"


def outgoing(**kw: Any) -> OutgoingEmail:
    fields: dict[str, Any] = {
        "idempotency_key": "acme:order-42:confirmation",
        "attempt_id": "att-1",
        "tenant_id": "acme",
        "sender": "orders@acme.example",
        "to": ("bob@example.com", "dora@example.com"),
        "cc": ("carol@example.com",),
        "bcc": ("audit@acme.example",),
        "subject": "Grüße, your order",
        "text_body": "plain text",
        "headers": (
            ("X-Campaign", "spring"),
            ("x-lower", "yes"),
            ("Reply-To", "ignored@example.com"),
            ("Xylophone", "not an X- header"),
            ("Message-ID", "<forged@example.com>"),
        ),
        "message_id": "sendonce.abc123@acme.example",
    }
    fields.update(kw)
    return OutgoingEmail(**fields)


def test_extended_property_id_is_a_named_string_property_under_a_fixed_guid() -> None:
    assert uuid.UUID(PROPERTY_SET_GUID)  # a well-formed GUID
    assert EXTENDED_PROPERTY_ID == (
        "String {b591447a-f7c8-41a6-96ab-2d474262ce9a} Name SendonceIdempotencyKey"
    )


def test_text_message_shape() -> None:
    msg = graph_message(outgoing(), with_internet_message_id=False)
    assert msg == {
        "subject": "Grüße, your order",
        "body": {"contentType": "Text", "content": "plain text"},
        "toRecipients": [
            {"emailAddress": {"address": "bob@example.com"}},
            {"emailAddress": {"address": "dora@example.com"}},
        ],
        "ccRecipients": [{"emailAddress": {"address": "carol@example.com"}}],
        "bccRecipients": [{"emailAddress": {"address": "audit@acme.example"}}],
        "singleValueExtendedProperties": [
            {"id": EXTENDED_PROPERTY_ID, "value": "acme:order-42:confirmation"}
        ],
        "internetMessageHeaders": [
            {"name": "X-Campaign", "value": "spring"},
            {"name": "x-lower", "value": "yes"},
        ],
    }


def test_display_names_are_sent_apart_from_the_address() -> None:
    # Graph's emailAddress.address takes a bare address; "Bob <bob@...>" there is a 400.
    msg = graph_message(
        outgoing(
            to=("Bob <bob@example.com>", '"Smith, Dora" <dora@example.com>'),
            cc=("  carol@example.com ",),
            bcc=("<audit@acme.example>",),
        ),
        with_internet_message_id=False,
    )
    assert msg["toRecipients"] == [
        {"emailAddress": {"name": "Bob", "address": "bob@example.com"}},
        {"emailAddress": {"name": "Smith, Dora", "address": "dora@example.com"}},
    ]
    assert msg["ccRecipients"] == [{"emailAddress": {"address": "carol@example.com"}}]
    assert msg["bccRecipients"] == [{"emailAddress": {"address": "audit@acme.example"}}]


def test_html_body_wins() -> None:
    msg = graph_message(outgoing(html_body="<p>hi</p>"), with_internet_message_id=False)
    assert msg["body"] == {"contentType": "HTML", "content": "<p>hi</p>"}


def test_missing_body_is_empty_text() -> None:
    msg = graph_message(outgoing(text_body=None), with_internet_message_id=False)
    assert msg["body"] == {"contentType": "Text", "content": ""}


def test_template_intent_renders_the_outbox_text() -> None:
    out = outgoing(
        text_body=None,
        template_id="order-confirmation-v2",
        template_params=(("order", "42"), ("name", "Bob")),
    )
    msg = graph_message(out, with_internet_message_id=False)
    assert msg["body"] == {
        "contentType": "Text",
        "content": "[template order-confirmation-v2]\norder: 42\nname: Bob\n",
    }
    # Same text as the outbox stores for the same intent.
    parsed = email.message_from_bytes(render_eml(out, 0.0), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    part = parsed.get_body(preferencelist=("plain",))
    assert part is not None
    assert part.get_content().replace("\r\n", "\n") == template_text(out)


@pytest.mark.parametrize("template_id", [None, "welcome"])
def test_an_empty_html_body_is_no_html_body(template_id: str | None) -> None:
    # An empty html_body leaves the fingerprint as if there were none (schemas/README.md,
    # version 2), so it must not reach the recipient either: the text (or the rendered
    # template) is sent, as without it.
    out = outgoing(text_body="hi", html_body="", template_id=template_id)
    msg = graph_message(out, with_internet_message_id=False)
    assert (
        msg["body"]
        == graph_message(replace(out, html_body=None), with_internet_message_id=False)["body"]
    )
    parsed = email.message_from_bytes(render_eml(out, 0.0), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    assert not parsed.is_multipart()
    assert parsed.get_content_type() == "text/plain"


def test_no_x_headers_means_no_header_list() -> None:
    msg = graph_message(outgoing(headers=(("Reply-To", "a@b"),)), with_internet_message_id=False)
    assert "internetMessageHeaders" not in msg


def test_internet_message_id_only_when_asked() -> None:
    out = outgoing()
    assert "internetMessageId" not in graph_message(out, with_internet_message_id=False)
    with_id = graph_message(out, with_internet_message_id=True)
    assert with_id["internetMessageId"] == "<sendonce.abc123@acme.example>"
    no_id = graph_message(outgoing(message_id=""), with_internet_message_id=True)
    assert "internetMessageId" not in no_id


def test_send_mail_body_saves_to_sent_items_without_internet_message_id() -> None:
    out = outgoing()
    body = send_mail_body(out)
    assert body == {
        "message": graph_message(out, with_internet_message_id=False),
        "saveToSentItems": True,
    }
    opted_in = send_mail_body(out, with_internet_message_id=True)
    assert opted_in["message"]["internetMessageId"] == "<sendonce.abc123@acme.example>"


def test_draft_body_carries_internet_message_id_and_the_key() -> None:
    body = draft_body(outgoing())
    assert body["internetMessageId"] == "<sendonce.abc123@acme.example>"
    assert body["singleValueExtendedProperties"][0]["value"] == "acme:order-42:confirmation"


def test_client_request_id_is_a_deterministic_guid() -> None:
    first = client_request_id("acme:k1", "att-1")
    assert first == client_request_id("acme:k1", "att-1")
    parsed = uuid.UUID(first)
    assert parsed.version == 5
    assert str(parsed) == first
    assert first != client_request_id("acme:k1", "att-2")
    assert first != client_request_id("acme:k2", "att-1")
    assert first != client_request_id("acme:k1", "att-1", step="create")
    assert client_request_id("acme:k1", "att-1", step="") == first
    # The parts are not just concatenated: moving a character across the boundary
    # gives another id.
    assert client_request_id("ab", "c") != client_request_id("a", "bc")


def test_client_request_id_is_stable_across_releases() -> None:
    # Pinned: changing the namespace or the encoding would break correlation with
    # ids already recorded in ledgers.
    assert client_request_id("acme:k1", "att-1") == "20141916-2ce2-54aa-b8cf-6e6880c8f6c6"


def _query(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


def test_sent_items_filter_url() -> None:
    url = sent_items_filter_url(GRAPH, "orders@acme.example", "acme:k1")
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == (
        f"{GRAPH}/users/orders@acme.example/mailFolders/SentItems/messages"
    )
    q = _query(url)
    assert q["$filter"] == (
        f"singleValueExtendedProperties/Any(ep: ep/id eq '{EXTENDED_PROPERTY_ID}'"
        " and ep/value eq 'acme:k1')"
    )
    assert q["$select"] == "id,internetMessageId,sentDateTime,subject"
    assert q["$expand"] == f"singleValueExtendedProperties($filter=id eq '{EXTENDED_PROPERTY_ID}')"
    # Fully encoded: no raw spaces, quotes, braces or parentheses in the query.
    assert not re.search(r"[ '{}()]", parts.query)
    # The $-prefixed option names stay literal.
    assert [p.split("=", 1)[0] for p in parts.query.split("&")] == [
        "$filter",
        "$select",
        "$expand",
    ]


def test_sent_items_filter_url_doubles_single_quotes_and_encodes_specials() -> None:
    key = "acme:O'Brien & co #1+2%"
    url = sent_items_filter_url(GRAPH + "/", "orders@acme.example", key)
    assert "/v1.0/users/" in url and "//users" not in url
    flt = _query(url)["$filter"]
    assert flt.endswith("ep/value eq 'acme:O''Brien & co #1+2%')")
    # '&', '#', '+' and '%' in the key cannot leak into the URL's structure.
    assert list(_query(url)) == ["$filter", "$select", "$expand"]
    assert urlsplit(url).fragment == ""


def test_drafts_filter_url_lists_the_keys_drafts_without_expanding() -> None:
    key = "acme:O'Brien & co #1+2%"
    url = drafts_filter_url(GRAPH, "orders@acme.example", key)
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == (
        f"{GRAPH}/users/orders@acme.example/mailFolders/drafts/messages"
    )
    q = _query(url)
    # The same filter as the Sent Items lookup's, over Drafts.
    assert (
        q["$filter"] == _query(sent_items_filter_url(GRAPH, "orders@acme.example", key))["$filter"]
    )
    assert q["$select"] == "id,internetMessageId,isDraft,createdDateTime"
    assert list(q) == ["$filter", "$select"]
    assert not re.search(r"[ '{}()]", parts.query)


def test_message_urls_quote_the_id_as_one_path_segment() -> None:
    immutable = "AAkALgAAAAAAHYQDEapmEc2byACqAC-EWg0A_x-y=AAA="
    assert message_url(GRAPH, "orders@acme.example", immutable) == (
        f"{GRAPH}/users/orders@acme.example/messages/{immutable}"
    )
    assert message_url(GRAPH, "o@acme.example", "a/b+c?d").endswith("/messages/a%2Fb%2Bc%3Fd")
    url = draft_state_url(GRAPH, "orders@acme.example", immutable)
    assert urlsplit(url).path.endswith(f"/messages/{immutable}")
    assert _query(url) == {"$select": "id,isDraft,internetMessageId,sentDateTime,parentFolderId"}


def test_sender_is_quoted_as_one_path_segment() -> None:
    assert user_url(GRAPH, "a+b@x.example") == f"{GRAPH}/users/a%2Bb@x.example"
    url = sent_items_filter_url(GRAPH, "evil/../x?y#z@x.example", "k")
    path = urlsplit(url).path
    assert path.startswith("/v1.0/users/evil%2F..%2Fx%3Fy%23z@x.example/")
    assert unquote(path.split("/")[3]) == "evil/../x?y#z@x.example"


@pytest.mark.parametrize(
    "headers",
    [
        {
            "Request-Id": "r-1",
            "Client-Request-Id": "c-1",
            "date": "Wed, 01 May 2024 12:00:00 GMT",
            "X-MS-AGS-Diagnostic": '{"ServerInfo":{}}',
            "Content-Type": "application/json",
            "Authorization": "Bearer secret",
        },
        CIMultiDictProxy(
            CIMultiDict(
                [
                    ("request-id", "r-1"),
                    ("client-request-id", "c-1"),
                    ("Date", "Wed, 01 May 2024 12:00:00 GMT"),
                    ("x-ms-ags-diagnostic", '{"ServerInfo":{}}'),
                    ("request-id", "r-2"),
                    ("Set-Cookie", "x=y"),
                ]
            )
        ),
    ],
    ids=["dict", "multidict"],
)
def test_evidence_from_headers(headers: Any) -> None:
    assert evidence_from_headers(headers) == {
        "request-id": "r-1",
        "client-request-id": "c-1",
        "Date": "Wed, 01 May 2024 12:00:00 GMT",
        "x-ms-ags-diagnostic": '{"ServerInfo":{}}',
    }


def test_evidence_from_headers_with_missing_headers() -> None:
    assert evidence_from_headers({"Content-Length": "0"}) == {}
