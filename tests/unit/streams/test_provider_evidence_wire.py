"""The provider's evidence reaches every wire format exactly as before.

``provider_evidence_wire.json`` was written by the code before ``ProviderEvidence``
became one value object (issue 14): the ledger entry after every write, every result's
Avro fields and ``sendonce trace --json`` for three scripted keys (accepted with every
field set, then a duplicate and a conflicting intent; ambiguous, looked up twice and
found; rejected, then a duplicate). Any change to a key, a value or an order fails here.
Issue 17 added two trace fields on purpose (``ledger.draft_id`` and ``states``); the
regenerated file was checked to differ from the old one by those two only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sendonce.connectors.base import LookupResult, LookupStatus, SendOutcome, SendStatus
from sendonce.ops.history import StoredRecord
from sendonce.ops.trace import TraceBundle, result_view, to_json
from sendonce.schemas.codec import default_codec
from sendonce.streams.ledger import (
    Decision,
    Emit,
    IntentArrived,
    IntentFacts,
    IntentRef,
    LedgerEntry,
    LookupFinished,
    Persist,
    SendFinished,
    decide,
)

GOLDEN = Path(__file__).with_name("provider_evidence_wire.json")
KEY = "acme:0123456789abcdef0123456789abcdef"
T0 = 1_714_564_800_000
SENDER = "alerts@acme.example"
INTENT = IntentFacts(
    KEY, "acme", "evt-7", "receipt", "f" * 64, IntentRef("email.intents", 3, 17), SENDER
)
OTHER = IntentFacts(
    KEY, "acme", "evt-8", "receipt", "f" * 64, IntentRef("email.intents", 3, 40), SENDER
)
CLASH = IntentFacts(
    KEY, "acme", "evt-9", "receipt", "e" * 64, IntentRef("email.intents", 3, 41), SENDER
)

ACCEPTED = SendOutcome(
    SendStatus.ACCEPTED,
    "graph",
    provider_request_id="req-1",
    provider_message_id="AAMk-1",
    internet_message_id="<m1@acme.example>",
    accepted_at_ms=T0 + 90,
    error_code="stray",
    error_message="stray message",
    retry_after_s=2.5,
    evidence={
        "request-id": "req-1",
        "client-request-id": "crid-1",
        "Date": "Wed, 01 May 2024 12:00:00 GMT",
    },
)
AMBIGUOUS = SendOutcome(
    SendStatus.AMBIGUOUS,
    "graph",
    provider_request_id="req-2",
    error_code="http_504",
    error_message="504 from jane.doe@customer.example",
    evidence={"client-request-id": "crid-2"},
)
UNKNOWN = LookupResult(
    LookupStatus.UNKNOWN,
    "graph",
    provider_request_id="req-l1",
    detail="not in Sent Items (yet)",
    evidence={"client-request-id": "crid-l1"},
)
FOUND = LookupResult(
    LookupStatus.FOUND,
    "graph",
    provider_message_id="AAMk-2",
    internet_message_id="<m2@acme.example>",
    detail="found in Sent Items (1 copy)",
    evidence={"detail": "x", "Date": "d"},
)
REJECTED = SendOutcome(
    SendStatus.REJECTED, "outbox", provider_request_id="a1", error_message="bad domain"
)

SCENARIOS: dict[str, tuple[SendOutcome, tuple[LookupResult, ...], tuple[IntentFacts, ...]]] = {
    "accepted": (ACCEPTED, (), (OTHER, CLASH)),
    "reconciled": (AMBIGUOUS, (UNKNOWN, FOUND), (OTHER,)),
    "rejected": (REJECTED, (), (OTHER,)),
}


def _run(
    outcome: SendOutcome, lookups: tuple[LookupResult, ...], later: tuple[IntentFacts, ...]
) -> dict[str, Any]:
    """Entry bytes after every Persist, every result's Avro fields, the trace JSON."""
    entries: list[str] = []
    results: list[dict[str, Any]] = []

    def apply(decision: Decision) -> LedgerEntry | None:
        for effect in decision.effects:
            if isinstance(effect, Persist):
                entries.append(effect.entry.to_bytes().decode())
            elif isinstance(effect, Emit):
                results.append(effect.result.to_avro())
        return decision.entry

    entry = apply(decide(None, IntentArrived(INTENT, T0, "worker-0")))
    assert entry is not None
    entry = apply(decide(entry, SendFinished(INTENT, entry.attempt_id, outcome, T0 + 100)))
    for n, lookup in enumerate(lookups):
        assert entry is not None
        now = T0 + 40_000 + n * 60_000
        entry = apply(decide(entry, LookupFinished(INTENT, entry.attempt_id, lookup, now)))
    for intent in later:
        entry = apply(decide(entry, IntentArrived(intent, T0 + 900_000, "worker-1")))
    assert entry is not None
    assert LedgerEntry.from_bytes(entries[-1].encode()) == entry

    codec = default_codec()
    views = tuple(
        result_view(
            StoredRecord(
                "email.results", 3, i, T0 + i, KEY.encode(), codec.encode("EmailResult", result)
            ),
            codec,
        )
        for i, result in enumerate(results)
    )
    bundle = TraceBundle(key=KEY, generated_at_ms=T0 + 1_000_000, ledger=entry, results=views)
    trace = json.dumps(to_json(bundle), indent=2, sort_keys=False)
    return {"entries": entries, "results": results, "trace": trace}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_wire_formats_are_unchanged(name: str) -> None:
    golden = json.loads(GOLDEN.read_text())[name]
    produced = _run(*SCENARIOS[name])
    assert produced["entries"] == golden["entries"]
    assert produced["results"] == golden["results"]
    assert produced["trace"] == golden["trace"]
