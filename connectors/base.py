"""The one small interface every email provider implements.

Stream code never sees HTTP status codes or file-system errors: a connector
classifies every outcome of a send into one of four :class:`SendStatus` values,
and every reconciliation lookup into one of three :class:`LookupStatus` values.

========================  ====================================================
SendStatus                meaning for the ledger
========================  ====================================================
ACCEPTED                  the provider took the message; record its ids (SENT)
REJECTED                  permanent refusal; retrying will not change it (FAILED)
NOT_SENT_RETRYABLE        provably never reached the provider; retry with backoff
AMBIGUOUS                 may or may not have been accepted; never resend blind
========================  ====================================================
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


class SendStatus(enum.Enum):
    """How a provider answered one send attempt."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    NOT_SENT_RETRYABLE = "not_sent_retryable"
    AMBIGUOUS = "ambiguous"


class LookupStatus(enum.Enum):
    """What a reconciliation lookup by idempotency key found."""

    FOUND = "found"
    #: The provider can prove the message was never accepted (the outbox can;
    #: Microsoft Graph's Sent Items cannot, since saving there lags the send).
    NOT_FOUND_DEFINITIVE = "not_found_definitive"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class OutgoingEmail:
    """Everything a provider needs to send one email for one ledger attempt."""

    idempotency_key: str
    attempt_id: str
    tenant_id: str
    sender: str
    to: tuple[str, ...]
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()
    subject: str = ""
    text_body: str | None = None
    html_body: str | None = None
    template_id: str | None = None
    template_params: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    #: Deterministic RFC 5322 Message-ID (without angle brackets), derived from the key.
    message_id: str = ""


@dataclass(frozen=True)
class SendOutcome:
    """The classified result of one send attempt, with the provider's evidence."""

    status: SendStatus
    provider: str
    provider_request_id: str | None = None
    provider_message_id: str | None = None
    internet_message_id: str | None = None
    accepted_at_ms: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    #: Seconds the provider asked us to wait (429/503 Retry-After), if any.
    retry_after_s: float | None = None
    #: Extra evidence for the trail (client-request-id, Date, diagnostics ...).
    evidence: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LookupResult:
    """The answer to "did the provider accept a message for this key?"."""

    status: LookupStatus
    provider: str
    provider_request_id: str | None = None
    provider_message_id: str | None = None
    internet_message_id: str | None = None
    accepted_at_ms: int | None = None
    detail: str | None = None
    #: The lookup request's own evidence (client-request-id, Date, diagnostics ...).
    evidence: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class EmailProvider(Protocol):
    """An email provider behind sendonce's ledger.

    Implementations must be safe to call concurrently from one event loop and
    must never raise for provider-side outcomes: they classify them instead.
    Exceptions are reserved for programming errors.
    """

    name: str

    async def send(self, email: OutgoingEmail) -> SendOutcome:
        """Send one email and classify the outcome."""
        ...

    async def lookup(self, idempotency_key: str, message_id: str, sender: str) -> LookupResult:
        """Find out whether ``sender`` had a message for this key accepted earlier."""
        ...

    async def close(self) -> None:
        """Release connections and files."""
        ...


def estimated_wait_s(provider: EmailProvider, sender: str, ahead: int = 0) -> float:
    """How long a send from ``sender`` would wait for the provider's rate limits.

    Optional capability: a provider with per-mailbox limits (Graph) defines
    ``estimated_wait_s(sender, ahead)``, where ``ahead`` counts sends the caller
    admitted for that sender and has not finished; others never make a sender wait.
    """
    method = getattr(provider, "estimated_wait_s", None)
    return float(method(sender, ahead)) if callable(method) else 0.0
