"""The outbox provider: RFC 5322 files, one per key, definitive lookups."""

from __future__ import annotations

import asyncio
import email
import email.policy
from pathlib import Path

import pytest

from sendonce.connectors.base import EmailProvider, LookupStatus, OutgoingEmail, SendStatus
from sendonce.connectors.outbox import OutboxFault, OutboxProvider, eml_name
from sendonce.streams.ledger import message_id_for


def outgoing(key: str = "acme:k1", attempt: str = "a1", **kw: object) -> OutgoingEmail:
    fields: dict[str, object] = {
        "idempotency_key": key,
        "attempt_id": attempt,
        "tenant_id": "acme",
        "sender": "orders@acme.example",
        "to": ("bob@example.com",),
        "cc": ("carol@example.com",),
        "subject": "Grüße, your order",
        "text_body": "plain text",
        "html_body": "<p>html</p>",
        "headers": (("X-Campaign", "spring"), ("Reply-To", "ignored@example.com")),
        "message_id": message_id_for(key, "orders@acme.example"),
    }
    fields.update(kw)
    return OutgoingEmail(**fields)  # type: ignore[arg-type]


def test_it_is_an_email_provider(tmp_path: Path) -> None:
    assert isinstance(OutboxProvider(tmp_path), EmailProvider)


def test_accepted_message_is_a_parseable_rfc5322_file(tmp_path: Path) -> None:
    outbox = OutboxProvider(tmp_path)
    out = outgoing()
    outcome = asyncio.run(outbox.send(out))
    assert outcome.status is SendStatus.ACCEPTED
    path = tmp_path / eml_name(out.idempotency_key)
    assert outcome.provider_message_id == path.name
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert msg["Message-ID"] == f"<{out.message_id}>" == outcome.internet_message_id
    assert msg["Subject"] == "Grüße, your order"
    assert msg["X-Sendonce-Idempotency-Key"] == "acme:k1"
    assert msg["X-Campaign"] == "spring"
    assert msg["Reply-To"] is None  # only X- headers pass through
    assert msg.get_body(("plain",)).get_content().strip() == "plain text"  # type: ignore[union-attr]
    assert msg.get_body(("html",)).get_content().strip() == "<p>html</p>"  # type: ignore[union-attr]
    assert list((tmp_path / ".tmp").iterdir()) == []


def test_second_attempt_for_a_key_writes_no_second_file(tmp_path: Path) -> None:
    outbox = OutboxProvider(tmp_path)
    first = asyncio.run(outbox.send(outgoing(attempt="a1")))
    second = asyncio.run(outbox.send(outgoing(attempt="a2", text_body="changed")))
    assert second.status is SendStatus.ACCEPTED
    assert second.evidence["already_present"] == "true"
    assert second.provider_request_id == first.provider_request_id == "a1"
    assert len(list(tmp_path.glob("*.eml"))) == 1


def test_lookup_is_definitive(tmp_path: Path) -> None:
    outbox = OutboxProvider(tmp_path)
    out = outgoing()
    missing = asyncio.run(outbox.lookup(out.idempotency_key, out.message_id))
    assert missing.status is LookupStatus.NOT_FOUND_DEFINITIVE
    sent = asyncio.run(outbox.send(out))
    found = asyncio.run(outbox.lookup(out.idempotency_key, out.message_id))
    assert found.status is LookupStatus.FOUND
    assert found.internet_message_id == sent.internet_message_id
    assert found.provider_request_id == "a1"
    assert found.accepted_at_ms is not None
    assert abs(found.accepted_at_ms - (sent.accepted_at_ms or 0)) < 1000


def test_invalid_domain_is_rejected_and_nothing_written(tmp_path: Path) -> None:
    outbox = OutboxProvider(tmp_path)
    outcome = asyncio.run(outbox.send(outgoing(to=("x@nowhere.invalid",))))
    assert outcome.status is SendStatus.REJECTED
    assert outcome.error_code == "recipient_domain_invalid"
    assert not list(tmp_path.glob("*.eml"))


def test_unwritable_folder_is_not_sent_retryable(tmp_path: Path) -> None:
    outbox = OutboxProvider(tmp_path)
    (tmp_path / ".tmp").rmdir()
    (tmp_path / ".tmp").write_text("not a directory")
    outcome = asyncio.run(outbox.send(outgoing()))
    assert outcome.status is SendStatus.NOT_SENT_RETRYABLE
    assert not list(tmp_path.glob("*.eml"))


def test_template_intent_renders_its_params(tmp_path: Path) -> None:
    outbox = OutboxProvider(tmp_path)
    out = outgoing(
        text_body=None, html_body=None, template_id="welcome", template_params=(("name", "Bob"),)
    )
    asyncio.run(outbox.send(out))
    text = (tmp_path / eml_name(out.idempotency_key)).read_text()
    assert "[template welcome]" in text and "name: Bob" in text


@pytest.mark.parametrize("spec", ["kill-after-accept", "kill-after-accept:0", "explode:1"])
def test_bad_fault_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="kill-after-accept:N"):
        OutboxFault.parse(spec)


def test_fault_spec_parses() -> None:
    assert OutboxFault.parse("") is None
    assert OutboxFault.parse("kill-after-accept:3") == OutboxFault(3)


def test_message_id_is_deterministic_per_key() -> None:
    a = message_id_for("acme:k1", "orders@acme.example")
    assert a == message_id_for("acme:k1", "orders@acme.example")
    assert a != message_id_for("acme:k2", "orders@acme.example")
    assert a.endswith("@acme.example")
