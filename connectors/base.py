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

What a provider said about a message (its ids, when it accepted, why it refused) is
one value, :class:`ProviderEvidence`, declared here once: outcomes and lookups carry
it, and so do the ledger's entries and results and the trace's views above this floor.
"""

from __future__ import annotations

import contextlib
import enum
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, fields
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable


class SendStatus(enum.Enum):
    """How a provider answered one send attempt."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    NOT_SENT_RETRYABLE = "not_sent_retryable"
    AMBIGUOUS = "ambiguous"


class LookupStatus(enum.Enum):
    """What a reconciliation lookup (by idempotency key, or by draft id) found."""

    FOUND = "found"
    #: The provider can prove the message was never accepted (the outbox can;
    #: Microsoft Graph's Sent Items cannot, since saving there lags the send).
    NOT_FOUND_DEFINITIVE = "not_found_definitive"
    UNKNOWN = "unknown"
    #: Drafts (:class:`DraftingProvider`): the message exists unsent, as a draft, so it
    #: provably was not sent; ``provider_message_id`` is the draft's id.
    DRAFT = "draft"
    #: Drafts: the recorded draft id finds no message at all (deleted by someone):
    #: nobody can tell whether it went out; an operator decides.
    GONE = "gone"


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


@dataclass(frozen=True, kw_only=True)
class ProviderEvidence:
    """What the provider said about one message: its ids, acceptance time and refusal.

    A base class rather than a member, so that ``outcome.provider_request_id`` reads
    as before and every record that keeps this evidence (:class:`SendOutcome`,
    :class:`LookupResult`, the Graph classifier's verdict, the ledger's entries and
    results, the trace's result views) inherits the one field list instead of
    repeating it. The fields are keyword-only, so a subclass's own required fields
    keep their positions (``SendOutcome(status, provider, ...)``). Each record
    serialises them as before, under these names: the ledger's changelog JSON, the
    Avro results and the trace's JSON do not change. The call's trail of headers
    (``evidence``) belongs to :class:`ProviderAnswer` only, since a ledger entry and
    a result do not keep it; a ledger attempt keeps the request id, error code and
    trail of its call (``AttemptRecord.finish``).
    """

    provider_request_id: str | None = None
    provider_message_id: str | None = None
    internet_message_id: str | None = None
    accepted_at_ms: int | None = None
    error_code: str | None = None
    error_message: str | None = None

    def provider_evidence(self) -> dict[str, Any]:
        """These fields by name: copying evidence to another record is one call.

        ``replace(entry, **outcome.provider_evidence())``, or as constructor arguments.
        """
        return {name: getattr(self, name) for name in EVIDENCE_FIELDS}

    def as_accepted(self, now_ms: int, request_id: str | None = None) -> ProviderEvidence:
        """The evidence a SENT record keeps from this answer.

        No error (an earlier attempt's timeout stays in its attempt record; on a SENT
        result it would read as a failure), ``now_ms`` when the provider gave no
        acceptance time, ``request_id`` (an earlier request's) when it gave no id.
        """
        return ProviderEvidence(
            provider_request_id=self.provider_request_id or request_id,
            provider_message_id=self.provider_message_id,
            internet_message_id=self.internet_message_id,
            accepted_at_ms=self.accepted_at_ms or now_ms,
        )


#: The field names of :class:`ProviderEvidence`, in declaration order.
EVIDENCE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ProviderEvidence))


_Status = TypeVar("_Status", SendStatus, LookupStatus)


@dataclass(frozen=True)
class ProviderAnswer(ProviderEvidence, Generic[_Status]):
    """A connector's classified answer to one call: a send or a lookup."""

    status: _Status
    provider: str
    #: The call's own trail (client-request-id, request-id, Date, diagnostics ...).
    evidence: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SendOutcome(ProviderAnswer[SendStatus]):
    """The classified result of one send attempt, with the provider's evidence."""

    #: Seconds the provider asked us to wait (429/503 Retry-After), if any.
    retry_after_s: float | None = None


@dataclass(frozen=True)
class LookupResult(ProviderAnswer[LookupStatus]):
    """The answer to "did the provider accept a message for this key?"."""

    detail: str | None = None


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


@runtime_checkable
class DraftingProvider(Protocol):
    """Optional capability: create the message as a draft, record its id, then send it.

    A provider without an idempotency key for sends (Microsoft Graph) can still prove
    what happened to a message it holds a handle on: a draft that is still a draft was
    not sent. The ledger keeps the handle (the DRAFTED state) between the two calls.
    ``drafts_first`` says whether new attempts go through a draft (Graph's
    ``draft-send`` mode); a provider may answer the draft lookups below either way,
    so entries drafted before a switch to one-call sends are still settled.
    """

    name: str
    drafts_first: bool

    async def create_draft(self, email: OutgoingEmail) -> SendOutcome:
        """Create ``email`` as a draft. ACCEPTED means it exists, with its id in
        ``provider_message_id``; AMBIGUOUS means it may exist (find it by key)."""
        ...

    async def send_draft(self, email: OutgoingEmail, draft_id: str) -> SendOutcome:
        """Send the draft ``draft_id`` of ``email`` and classify the outcome."""
        ...

    async def find_draft(self, idempotency_key: str, sender: str) -> LookupResult:
        """The key's draft after a create of unknown outcome: DRAFT (with its id),
        FOUND (already sent), NOT_FOUND_DEFINITIVE (no draft), or UNKNOWN."""
        ...

    async def draft_state(self, draft_id: str, sender: str) -> LookupResult:
        """What became of draft ``draft_id``: DRAFT (not sent), FOUND (sent, with its
        ids), GONE (no such message any more), or UNKNOWN (ask again later)."""
        ...


def drafting(provider: EmailProvider) -> DraftingProvider | None:
    """``provider`` as a :class:`DraftingProvider`, or ``None`` when it cannot draft."""
    return provider if isinstance(provider, DraftingProvider) else None


def estimated_wait_s(provider: EmailProvider, sender: str, ahead: int = 0) -> float:
    """How long a send from ``sender`` would wait for the provider's rate limits.

    Optional capability: a provider with per-mailbox limits (Graph) defines
    ``estimated_wait_s(sender, ahead)``, where ``ahead`` counts sends the caller
    admitted for that sender and has not finished; others never make a sender wait.
    """
    method = getattr(provider, "estimated_wait_s", None)
    return float(method(sender, ahead)) if callable(method) else 0.0


def send_permit(provider: EmailProvider, sender: str) -> AbstractAsyncContextManager[None]:
    """Wait until a send from ``sender`` can start promptly; hold that right inside.

    Optional capability: a provider with per-mailbox limits (Graph) defines
    ``permit(sender)``; the worker takes it before it writes a key's PENDING entry
    and sends inside it, so keys waiting on a saturated mailbox are not PENDING.
    Other providers start every send at once.
    """
    method = getattr(provider, "permit", None)
    if callable(method):
        permit: AbstractAsyncContextManager[None] = method(sender)
        return permit
    return contextlib.nullcontext()
