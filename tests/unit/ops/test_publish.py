"""IntentPublisher refuses what the topics could not carry, before producing anything."""

from __future__ import annotations

import pytest

from sendonce.keys import OversizeIntentError
from sendonce.ops.publish import IntentPublisher


def _intent(body: str) -> dict[str, object]:
    return {
        "tenant_id": "acme",
        "source_event_id": "evt-1",
        "action_type": "receipt",
        "sender": "orders@acme.example",
        "to": ["bob@example.com"],
        "subject": "Your receipt",
        "text_body": body,
    }


def test_an_intent_over_the_record_limit_is_refused_at_publish_time() -> None:
    # No broker on port 1: a refused intent never reaches librdkafka.
    publisher = IntentPublisher("127.0.0.1:1", max_record_bytes=70_000)
    with pytest.raises(OversizeIntentError, match=r"is \d+ bytes; limit 70000") as caught:
        publisher.publish(_intent("x" * 80_000))
    assert caught.value.error_type == "oversize"


def test_the_default_body_limit_fits_the_default_record_limit() -> None:
    publisher = IntentPublisher("127.0.0.1:1")
    # The largest body the default accepts still makes a record the topics take.
    publisher.publish(_intent("x" * publisher.max_body_bytes))
    with pytest.raises(OversizeIntentError):
        publisher.publish(_intent("x" * (publisher.max_body_bytes + 1)))
