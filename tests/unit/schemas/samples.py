"""Realistic example records for each schema (timestamps in int milliseconds)."""

from __future__ import annotations

from typing import Any

SECRET = "SECRET-BODY-never-in-messages"
"""A field value that no error message may contain (they name fields, never values)."""

INTENT: dict[str, Any] = {
    "tenant_id": "acme",
    "source_event_id": "order-1001:shipped",
    "action_type": "receipt",
    "sender": "orders@acme.example",
    "to": ["bob@example.com", "Carol <carol@example.net>"],
    "cc": ["dave@example.org"],
    "bcc": [],
    "subject": "Your order 1001 has shipped ✓",
    "text_body": "Hi Bob,\nyour order is on its way.",
    "html_body": "<p>Hi Bob,</p><p>your order is on its way.</p>",
    "template_id": None,
    "template_params": {},
    "idempotency_key": None,
    "headers": {"In-Reply-To": "<m-1@acme.example>"},
    "created_at": 1_700_000_000_123,
}

RESULT: dict[str, Any] = {
    "result_id": "r-acme:7ff96c685f54c8b7-0-42-SENT",
    "outcome": "DUPLICATE",
    "idempotency_key": "acme:7ff96c685f54c8b7072635efb9d28957",
    "tenant_id": "acme",
    "source_event_id": "order-1001:shipped",
    "action_type": "receipt",
    "provider": "graph",
    "provider_request_id": "5a2d8c4e-0000-4000-8000-000000000001",
    "provider_message_id": None,
    "internet_message_id": "<acme.7ff96c685f54c8b7@sendonce>",
    "attempt_id": "att-1",
    "attempt_count": 1,
    "intent_topic": "email.intents",
    "intent_partition": 3,
    "intent_offset": 2**40 + 7,
    "original_result_id": "r-acme:7ff96c685f54c8b7-0-7-SENT",
    "original_intent_partition": 3,
    "original_intent_offset": 7,
    "accepted_at": 1_700_000_001_000,
    "decided_at": 1_700_000_555_000,
    "error_code": None,
    "error_message": None,
    "reconciled": False,
    "worker": "worker-1/4242",
}

DEAD_LETTER: dict[str, Any] = {
    "source_topic": "email.intents",
    "source_partition": 0,
    "source_offset": 12,
    "source_timestamp": 1_700_000_000_000,
    "original_key": b"acme:k",
    "original_value": b"\x00\xff not avro",
    "original_headers": [
        {"key": "trace", "value": b"abc"},
        {"key": "empty", "value": None},
        {"key": "trace", "value": b"dup"},
    ],
    "reason": "no Avro single-object marker",
    "error_type": "undecodable",
    "failed_at": 1_700_000_000_500,
    "worker": None,
}

WEBHOOK: dict[str, Any] = {
    "dedupe_id": "graph:sub-1:3f2a",
    "source": "graph",
    "kind": "NOTIFICATION",
    "tenant_id": "contoso-tenant",
    "subscription_id": "sub-1",
    "change_type": "created",
    "resource": "Users/u1/Messages/m1",
    "resource_id": "m1",
    "lifecycle_event": None,
    "client_state_verified": True,
    "received_at": 1_700_000_000_000,
    "payload": '{"subscriptionId":"sub-1","changeType":"created"}',
    "headers": {"content-type": "application/json"},
}

COMMAND: dict[str, Any] = {
    "command_id": "0f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a",
    "idempotency_key": "acme:2b0c1f4e9d8a7b6c5d4e3f2a1b0c9d8e",
    "action": "RESEND",
    "reason": "mailbox owner confirmed nothing arrived",
    "operator": "dana@ops",
    "issued_at": 1_700_000_000_000,
}

SAMPLES: dict[str, dict[str, Any]] = {
    "EmailIntent": INTENT,
    "EmailResult": RESULT,
    "DeadLetter": DEAD_LETTER,
    "WebhookEvent": WEBHOOK,
    "OperatorCommand": COMMAND,
}
