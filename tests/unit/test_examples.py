"""examples/intents.jsonl, which README tells newcomers to publish, is valid as documented."""

from __future__ import annotations

import json
from pathlib import Path

from sendonce.keys import complete_intent, idempotency_key_for, validate_intent

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "intents.jsonl"


def test_every_example_intent_is_valid_and_the_retry_shares_its_key() -> None:
    intents = [complete_intent(json.loads(line)) for line in EXAMPLES.read_text().splitlines()]
    for intent in intents:
        validate_intent(intent)
    keys = [idempotency_key_for(i).value for i in intents]
    # README: "5 results: 4 SENT, 1 DUPLICATE": four intended emails and one retry.
    assert len(set(keys)) == 4
    assert keys[-1] == keys[0]
    assert "acme:p:agent-run-9:reply-1" in keys  # the producer-supplied key
    assert any("<" in to for i in intents for to in i["to"])  # display names
    assert any(i["cc"] and i["bcc"] for i in intents)
