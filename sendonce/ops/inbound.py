"""Turning deduped inbound events into email intents that cannot send twice.

The dedupe stream lets each inbound event through once, within its TTL. The
second line of defence is the intent's key: derived from the inbound event id
and the action, not from the (possibly regenerated) reply, so a replay that
slipped past the TTL, or an agent re-deciding the same reply with other words,
resolves against the ledger as a DUPLICATE or a CONFLICT, never a second email.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def reaction_key(dedupe_id: str, action_type: str) -> str:
    """The producer-supplied idempotency key of "react to this inbound event this way"."""
    return f"inbound:{dedupe_id}:{action_type}"


def intent_for_inbound(
    event: Mapping[str, Any],
    *,
    tenant_id: str,
    action_type: str,
    sender: str,
    to: Sequence[str],
    subject: str,
    text_body: str | None = None,
    html_body: str | None = None,
) -> dict[str, Any]:
    """An EmailIntent reacting to a deduped WebhookEvent, keyed by the event's id."""
    dedupe_id = str(event["dedupe_id"])
    return {
        "tenant_id": tenant_id,
        "source_event_id": dedupe_id,
        "action_type": action_type,
        "sender": sender,
        "to": list(to),
        "subject": subject,
        "text_body": text_body,
        "html_body": html_body,
        "idempotency_key": reaction_key(dedupe_id, action_type),
    }
