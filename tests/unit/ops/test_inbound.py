"""Reactions to inbound events: a replay past the TTL cannot send a second email."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sendonce.connectors.outbox import OutboxProvider
from sendonce.ops.inbound import intent_for_inbound
from sendonce.streams.testing import InMemoryPipeline


def test_a_replayed_event_and_a_regenerated_reply_send_one_email(tmp_path: Path) -> None:
    outbox = OutboxProvider(tmp_path)
    pipeline = InMemoryPipeline(outbox)
    event = {"dedupe_id": "graph:AAMkAG-notification-7"}
    common = {
        "tenant_id": "acme",
        "action_type": "auto-reply",
        "sender": "support@acme.example",
        "to": ["customer@example.com"],
        "subject": "Re: your question",
    }
    first = intent_for_inbound(event, text_body="Thanks, we are on it.", **common)
    again = intent_for_inbound(event, text_body="Thanks, we are on it.", **common)
    reworded = intent_for_inbound(event, text_body="Thank you! Looking into it now.", **common)
    records = [pipeline.intent_record(i) for i in (first, again, reworded)]
    asyncio.run(pipeline.run(records))
    assert [r["outcome"] for r in pipeline.results()] == ["SENT", "DUPLICATE", "CONFLICT"]
    assert len(list(tmp_path.glob("*.eml"))) == 1


def test_other_actions_on_the_same_event_are_separate_emails(tmp_path: Path) -> None:
    pipeline = InMemoryPipeline(OutboxProvider(tmp_path))
    event = {"dedupe_id": "graph:n-8"}
    base = {
        "tenant_id": "acme",
        "sender": "support@acme.example",
        "to": ["customer@example.com"],
        "subject": "Re: ticket",
        "text_body": "Noted.",
    }
    reply = intent_for_inbound(event, action_type="auto-reply", **base)
    escalation = intent_for_inbound(event, action_type="escalation", **base)
    asyncio.run(pipeline.run([pipeline.intent_record(reply), pipeline.intent_record(escalation)]))
    assert [r["outcome"] for r in pipeline.results()] == ["SENT", "SENT"]
