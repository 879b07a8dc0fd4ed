"""The rendering of ``sendonce trace`` (pure: bundle in, text / JSON out)."""

from __future__ import annotations

import argparse
import json

import pytest

from sendonce.cli.trace import add_cli, render_text
from sendonce.ops.history import StoredRecord
from sendonce.ops.trace import (
    IntentView,
    ResultView,
    TraceBundle,
    intent_view,
    iso,
    protect_address,
    result_view,
    scrub,
    state_view,
    to_json,
)
from sendonce.schemas.codec import default_codec
from sendonce.streams.ledger import (
    AttemptRecord,
    AuditRecord,
    IntentRef,
    LedgerEntry,
    LedgerStatus,
    ResultOutcome,
    ResultRecord,
)

KEY = "acme:0123456789abcdef0123456789abcdef"
T0 = 1_714_564_800_000  # 2024-05-01T12:00:00Z
ORIGIN = IntentRef("email.intents", 3, 17)


def _entry(**changes: object) -> LedgerEntry:
    attempts = (
        AttemptRecord(
            attempt_id="a1",
            number=1,
            worker="worker-0",
            started_at_ms=T0,
            finished_at_ms=T0 + 120,
            status="not_sent_retryable",
            provider_request_id="req-1",
            error_code="TooManyRequests",
            evidence={
                "request-id": "req-1",
                "client-request-id": "crid-1",
                "Date": "Wed, 01 May 2024 12:00:00 GMT",
                "x-ms-ags-diagnostic": '{"ServerInfo":{"DataCenter":"Emulator"}}',
            },
        ),
        AttemptRecord(
            attempt_id="a2",
            number=2,
            worker="worker-0",
            started_at_ms=T0 + 1_500,
            finished_at_ms=T0 + 3_600,
            status="ambiguous",
            error_code="connection_reset",
            evidence={
                "client-request-id": "crid-2",
                "create_client_request_id": "crid-2c",
                "draft_id": "AAMk-draft",
            },
        ),
        AttemptRecord(
            attempt_id="a2",
            number=2,
            worker="worker-0",
            started_at_ms=T0 + 5_000,
            kind="lookup",
            finished_at_ms=T0 + 5_000,
            status="found",
            provider_request_id="req-lookup",
            evidence={"detail": "found in Sent Items (1 copy)"},
        ),
    )
    base = LedgerEntry(
        key=KEY,
        status=LedgerStatus.SENT,
        content_fingerprint="f" * 64,
        tenant_id="acme",
        source_event_id="evt-7",
        action_type="receipt",
        origin=ORIGIN,
        attempt_id="a2",
        attempt_count=2,
        worker="worker-0",
        created_at_ms=T0,
        updated_at_ms=T0 + 5_000,
        provider="graph",
        provider_request_id="req-lookup",
        provider_message_id="AAMk-sent",
        internet_message_id="<sendonce.abc@acme.example>",
        accepted_at_ms=T0 + 3_000,
        reconciled=True,
        attempts=attempts,
        sender="alerts@acme.example",
        lookups=1,
        audit=(
            AuditRecord(
                command_id="cmd-1",
                action="sent",
                operator="ops@acme.example",
                reason="confirmed with jane.doe@customer.example by phone",
                issued_at_ms=T0 + 10_000,
                applied_at_ms=T0 + 10_500,
                outcome="refused",
                detail="already SENT",
                worker="worker-1",
            ),
        ),
    )
    data = {**base.__dict__, **changes}
    return LedgerEntry(**data)


def _bundle(**changes: object) -> TraceBundle:
    intents = (
        IntentView(
            topic="email.intents",
            partition=3,
            offset=17,
            timestamp_ms=T0 - 50,
            lane="intents",
            tenant_id="acme",
            source_event_id="evt-7",
            action_type="receipt",
            sender="alerts@acme.example",
            recipients=(protect_address("user7@example.com"),),
            created_at_ms=T0 - 60,
            headers=(("sendonce-replayed-from", "email.intents:3:2"), ("sendonce-replay", "r-1")),
        ),
        IntentView(
            topic="email.intents.deferred",
            partition=3,
            offset=0,
            timestamp_ms=T0 - 10,
            lane="deferred",
            headers=(("sendonce-origin", "email.intents:3:17"),),
            problem="undecodable: MalformedRecordError",
        ),
    )
    results = (
        ResultView(
            topic="email.results.ambiguous",
            partition=3,
            offset=0,
            timestamp_ms=T0 + 3_700,
            outcome="AMBIGUOUS",
            result_id="res-amb",
            intent=ORIGIN,
            attempt_id="a2",
            attempt_count=2,
            decided_at_ms=T0 + 3_600,
            error_code="connection_reset",
            error_message="reset while sending to m***@example.com",
        ),
        ResultView(
            topic="email.results.sent",
            partition=3,
            offset=4,
            timestamp_ms=T0 + 5_100,
            outcome="SENT",
            result_id="res-sent",
            intent=ORIGIN,
            reconciled=True,
            provider="graph",
            provider_request_id="req-lookup",
            internet_message_id="<sendonce.abc@acme.example>",
            attempt_id="a2",
            attempt_count=2,
            decided_at_ms=T0 + 5_000,
        ),
    )
    values: dict[str, object] = {
        "key": KEY,
        "generated_at_ms": T0 + 60_000,
        "ledger": _entry(),
        "intents": intents,
        "results": results,
    }
    values.update(changes)
    return TraceBundle(**values)  # type: ignore[arg-type]


def test_iso_is_utc_with_milliseconds() -> None:
    assert iso(T0 + 7) == "2024-05-01T12:00:00.007Z"
    assert iso(None) is None


def test_protect_address_masks_and_hashes_the_normalised_address() -> None:
    shown = protect_address("User7@Example.com")
    assert shown.startswith("U***@Example.com#")
    assert "user7" not in shown.lower()
    # The hash is over the normalised address: an operator can check a known one.
    assert shown.split("#")[1] == protect_address("user7@example.com").split("#")[1]
    assert protect_address("a@example.com") != protect_address("b@example.com")


def test_scrub_masks_addresses_in_free_text() -> None:
    assert scrub("invalid recipient john.smith@contoso.com.") == (
        "invalid recipient j***@contoso.com."
    )
    assert scrub(None) is None


def test_json_form_has_every_attempt_with_its_support_evidence() -> None:
    doc = to_json(_bundle())
    json.dumps(doc)  # serialisable as is
    assert doc["key"] == KEY and doc["found"] is True
    ledger = doc["ledger"]
    assert ledger["status"] == "SENT" and ledger["reconciled"] is True
    assert ledger["origin"] == {"topic": "email.intents", "partition": 3, "offset": 17}
    assert ledger["accepted_at"] == "2024-05-01T12:00:03.000Z"

    first, second, lookup = doc["attempts"]
    assert first == {
        "kind": "send",
        "reconciliation": False,
        "number": 1,
        "attempt_id": "a1",
        "worker": "worker-0",
        "provider": "graph",
        "started_at": "2024-05-01T12:00:00.000Z",
        "finished_at": "2024-05-01T12:00:00.120Z",
        "status": "not_sent_retryable",
        "request_id": "req-1",
        "client_request_id": "crid-1",
        "date": "Wed, 01 May 2024 12:00:00 GMT",
        "x_ms_ags_diagnostic": '{"ServerInfo":{"DataCenter":"Emulator"}}',
        "error_code": "TooManyRequests",
        "detail": None,
        "evidence": first["evidence"],
    }
    assert second["request_id"] is None and second["client_request_id"] == "crid-2"
    assert second["evidence"]["create_client_request_id"] == "crid-2c"
    assert lookup["kind"] == "lookup" and lookup["reconciliation"] is True
    assert lookup["status"] == "found" and lookup["request_id"] == "req-lookup"
    assert lookup["detail"] == "found in Sent Items (1 copy)"

    [audit] = doc["audit"]
    assert audit["command_id"] == "cmd-1" and audit["outcome"] == "refused"
    assert "jane.doe" not in audit["reason"] and "j***@customer.example" in audit["reason"]

    intent, deferred = doc["intents"]
    assert intent["headers"] == {
        "sendonce-replayed-from": "email.intents:3:2",
        "sendonce-replay": "r-1",
    }
    assert deferred["lane"] == "deferred"
    assert deferred["headers"] == {"sendonce-origin": "email.intents:3:17"}
    assert [r["outcome"] for r in doc["results"]] == ["AMBIGUOUS", "SENT"]
    assert doc["results"][1]["reconciled"] is True
    assert doc["results"][0]["intent"] == ledger["origin"]


def test_text_form_is_aligned_and_leads_with_what_to_hand_to_support() -> None:
    text = render_text(_bundle())
    lines = text.splitlines()
    assert lines[0] == f"sendonce trace {KEY}  (as of 2024-05-01T12:01:00.000Z)"
    assert "request-id, client-request-id and Date" in lines[1]
    # One support line per provider call, right under the header.
    assert lines[2].split() == [
        "send",
        "#1",
        "not_sent_retryable",
        "request-id",
        "req-1",
        "client-request-id",
        "crid-1",
        "Date",
        "Wed,",
        "01",
        "May",
        "2024",
        "12:00:00",
        "GMT",
    ]
    assert "crid-2" in lines[3] and "lookup" in lines[4] and "req-lookup" in lines[4]
    for section in ("LEDGER", "ATTEMPTS (3)", "OPERATOR AUDIT (1)", "INTENT RECORDS (2)"):
        assert section in lines
    assert "RESULTS (2)" in lines
    assert "  status               SENT (reconciled)" in lines
    # Values of one block start in the same column.
    ledger = lines[lines.index("LEDGER") + 1 : lines.index("ATTEMPTS (3)") - 1]
    assert len({len(line) - len(line[2:].split("  ", 1)[1].lstrip()) for line in ledger}) == 1
    assert "  lookup for attempt 2 (reconciliation)  found" in lines
    assert any("draft_id" in line and "AAMk-draft" in line for line in lines)
    assert any("sendonce-origin" in line and "email.intents:3:17" in line for line in lines)
    assert "  SENT  reconciled  2024-05-01T12:00:05.100Z" in lines


def test_text_form_never_shows_recipients_plain() -> None:
    text = render_text(_bundle())
    assert "user7@example.com" not in text
    assert "u***@example.com#" in text
    assert "jane.doe@customer.example" not in text


def test_unknown_key_and_missing_ledger() -> None:
    unknown = _bundle(ledger=None, intents=(), results=())
    assert unknown.found is False
    assert to_json(unknown)["found"] is False
    assert to_json(unknown)["attempts"] == []
    assert f"no ledger entry and no intent record for key {KEY}" in render_text(unknown)
    not_yet = _bundle(ledger=None, results=(), notes=("ledger not read: topic x does not exist",))
    text = render_text(not_yet)
    assert "no ledger entry (not processed yet" in text
    assert "NOTES" in text and "topic x does not exist" in text


def test_views_decode_records_without_their_content() -> None:
    codec = default_codec()
    value = codec.encode(
        "EmailIntent",
        {
            "tenant_id": "acme",
            "source_event_id": "evt-7",
            "action_type": "receipt",
            "sender": "alerts@acme.example",
            "to": ["user7@example.com"],
            "cc": [],
            "bcc": ["audit@acme.example"],
            "subject": "Your receipt",
            "text_body": "secret body",
            "html_body": None,
            "template_id": None,
            "template_params": {},
            "idempotency_key": None,
            "headers": {"X-Customer": "Jane"},
            "created_at": T0,
        },
    )
    record = StoredRecord(
        "email.intents.deferred",
        3,
        5,
        T0,
        KEY.encode(),
        value,
        (("sendonce-origin", b"email.intents:3:17"), ("traceparent", b"00-abc")),
    )
    view = intent_view(record, "deferred", codec)
    assert view.source_event_id == "evt-7" and view.created_at_ms == T0
    assert view.recipients == (
        protect_address("user7@example.com"),
        protect_address("audit@acme.example"),
    )
    assert view.headers == (("sendonce-origin", "email.intents:3:17"),)
    dumped = json.dumps(to_json(_bundle(intents=(view,))))
    for secret in ("Your receipt", "secret body", "Jane", "user7@example.com"):
        assert secret not in dumped

    bad = intent_view(
        StoredRecord("email.intents", 3, 6, T0, KEY.encode(), b"junk"), "intents", codec
    )
    assert bad.problem is not None and bad.problem.startswith("undecodable")

    result = ResultRecord(
        result_id="res-1",
        outcome=ResultOutcome.FAILED,
        idempotency_key=KEY,
        tenant_id="acme",
        source_event_id="evt-7",
        action_type="receipt",
        intent=ORIGIN,
        decided_at_ms=T0,
        error_code="ErrorInvalidRecipients",
        error_message="bad recipient user7@example.com",
    )
    encoded = codec.encode("EmailResult", result.to_avro())
    view_r = result_view(
        StoredRecord("email.results.failed", 3, 0, T0, KEY.encode(), encoded), codec
    )
    assert view_r.outcome == "FAILED" and view_r.intent == ORIGIN
    assert view_r.error_message == "bad recipient u***@example.com"


@pytest.mark.parametrize(
    "argv",
    [[], ["k", "--source-event", "e", "--tenant", "t"], ["--source-event", "e"]],
)
def test_cli_needs_exactly_one_way_to_name_the_key(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers())
    args = parser.parse_args(["trace", *argv])
    assert args.func(args) == 2


def test_the_states_a_drafted_key_went_through_are_shown_with_its_draft_id() -> None:
    def version(offset: int, **changes: object) -> StoredRecord:
        entry = _entry(**changes)
        return StoredRecord(
            "sendonce-ledger-changelog", 3, offset, T0 + offset, KEY.encode(), entry.to_bytes()
        )

    states = tuple(
        state_view(r)
        for r in (
            version(0, status=LedgerStatus.PENDING, attempt_count=1, reconciled=False),
            version(1, status=LedgerStatus.DRAFTED, attempt_count=1, draft_id="AAkALg-1"),
            version(2, status=LedgerStatus.AMBIGUOUS, draft_id="AAkALg-1", error_code="504"),
            version(3, status=LedgerStatus.SENT, draft_id="AAkALg-1"),
            StoredRecord("sendonce-ledger-changelog", 3, 4, T0, KEY.encode(), None),
        )
    )
    bundle = _bundle(ledger=_entry(draft_id="AAkALg-1"), states=states)
    data = to_json(bundle)
    assert data["ledger"]["draft_id"] == "AAkALg-1"
    assert [s["status"] for s in data["states"]] == [
        "PENDING",
        "DRAFTED",
        "AMBIGUOUS",
        "SENT",
        "deleted",
    ]
    assert data["states"][1]["draft_id"] == "AAkALg-1"
    text = render_text(bundle)
    assert "STATES (ledger changelog, oldest first) (5)" in text
    assert "draft id" in text and "AAkALg-1" in text
    drafted = next(line for line in text.splitlines() if line.strip().startswith("DRAFTED"))
    assert "draft AAkALg-1" in drafted and "(offset 1)" in drafted
