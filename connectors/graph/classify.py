"""Classify one Microsoft Graph send attempt into a :class:`~connectors.base.SendStatus`.

Pure functions, no I/O: the provider records what happened to an HTTP attempt in an
:class:`HttpAttempt` and acts on the :class:`Classification` it gets back.

``sendMail`` (and ``POST .../messages/{id}/send``) answering 202 only means "accepted
for later processing", and Graph has been seen to deliver messages for which it
answered 429, 503 or 504 (retrying a 504 four times gave four copies). Microsoft
states no idempotency for these calls, so anything that happened after the request
may have reached Graph is AMBIGUOUS: the reconciler looks it up in Sent Items, it is
never resent blind.

Send call (``sendMail`` / draft ``send``):

| what happened                                             | status                    |
| --------------------------------------------------------- | ------------------------- |
| 202                                                       | ACCEPTED                  |
| 400 recipient/content error (ErrorInvalidRecipients,      | REJECTED,                 |
|   ErrorInvalidRequest, ErrorMessageSizeExceeded,          |   error_code = Graph code |
|   RequestBodyRead, ...)                                   |                           |
| 403 (ErrorAccessDenied, MailboxNotEnabledForRESTAPI,      | REJECTED, Graph code      |
|   ErrorSendAsDenied, ...)                                 |                           |
| 404 (ErrorInvalidUser, ResourceNotFound, MailboxNotFound) | REJECTED, Graph code      |
| 401 (InvalidAuthenticationToken, ...): refused before     | NOT_SENT_RETRYABLE,       |
|   processing; refresh the token and retry once            |   refresh_token=True      |
| failed before the request was written: connection         | NOT_SENT_RETRYABLE        |
|   refused, DNS failure, TLS handshake/certificate         |                           |
|   failure, connect timeout, proxy failure                 |                           |
| 429 on the send call itself                               | AMBIGUOUS                 |
| 5xx (500, 502, 503, 504, ...)                             | AMBIGUOUS                 |
| any other status (other 2xx, 3xx, other 4xx)              | AMBIGUOUS                 |
| failed after the request may have been written: read      | AMBIGUOUS                 |
|   timeout, connection reset, server disconnected, total   |                           |
|   timeout, redirect errors, any other exception           |                           |

``Retry-After`` (delta-seconds or HTTP-date) is kept as ``retry_after_s`` on every row
that carries one, so the throttle can block the mailbox for that long.

A 401 is answered by authentication before Graph processes anything, so the request
provably did nothing: the provider refreshes its token and retries once ("refresh").
If the retry is also refused, the provider reports the NOT_SENT_RETRYABLE outcome.

Draft create (``POST /users/{sender}/messages``, see :func:`classify_create`). The
draft-send protocol (issue 17) must never make two drafts for one key, so a create
that may have been processed is AMBIGUOUS: the ledger finds the draft by the key's
extended property (it is visible in Drafts as soon as the create completed) instead
of creating another.

| what happened                                             | status                    |
| --------------------------------------------------------- | ------------------------- |
| 2xx (normally 201) with the draft                         | ``None``: created         |
| 400 / 403 / 404                                           | REJECTED, Graph code      |
| 401: refused before processing                            | NOT_SENT_RETRYABLE,       |
|                                                           |   refresh_token=True      |
| failed before the request was written (as above)          | NOT_SENT_RETRYABLE        |
| 429, 5xx, any other status                                | AMBIGUOUS (find by key)   |
| failed after the request may have been written: read      | AMBIGUOUS (find by key)   |
|   timeout, reset, server disconnected, any other exception |                           |

Draft send (``POST /users/{sender}/messages/{id}/send``, see
:func:`classify_send_draft`): the send-call table, except that 404
``ErrorItemNotFound`` is AMBIGUOUS: the item is no longer a draft, which is what an
earlier send of it that went through leaves behind (the ledger reads its state).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Literal

import aiohttp

from sendonce.connectors.base import ProviderEvidence, SendStatus

#: Where an attempt ended. ``connect``: failed before a byte of the request was
#: written. ``write``: the request may have been (partly) written, no status line was
#: read. ``response``: a status line was received.
Stage = Literal["connect", "write", "response"]

_STAGE_ORDER: dict[Stage, int] = {"connect": 0, "write": 1, "response": 2}

#: Statuses whose refusal is permanent and happens before anything is sent.
REJECTED_STATUSES = frozenset({400, 403, 404})

#: aiohttp exceptions raised only while establishing the connection, i.e. before
#: the request is written. ``ClientConnectorError`` covers refused connections,
#: DNS (``ClientConnectorDNSError``), TLS (``ClientConnectorSSLError``,
#: ``ClientConnectorCertificateError``) and proxy connect failures.
#: ``ConnectionTimeoutError`` is raised by ``ClientSession`` only around
#: ``connector.connect()``; ``ServerFingerprintMismatch`` after the TLS handshake
#: but before the request; the URL errors before any connection is attempted.
_BEFORE_WRITE: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectorError,
    aiohttp.ConnectionTimeoutError,
    aiohttp.ServerFingerprintMismatch,
    aiohttp.InvalidURL,
    aiohttp.NonHttpUrlClientError,
)


@dataclass(frozen=True)
class HttpAttempt:
    """What the provider observed for one HTTP request to Graph.

    ``stage`` is where the attempt ended as far as the caller knows; when an
    ``exception`` is given, the later of ``stage`` and :func:`stage_of_exception`
    is used, so a caller can never make an attempt look earlier (safer) than its
    exception proves. A ``status`` means a response was received.
    """

    stage: Stage
    status: int | None = None
    graph_error_code: str | None = None
    retry_after: str | None = None
    exception: BaseException | None = None


@dataclass(frozen=True)
class Classification(ProviderEvidence):
    """The verdict for one attempt, for the provider to turn into a SendOutcome.

    Of the provider's evidence an HTTP attempt alone tells only ``error_code`` and
    ``error_message``; the provider adds the ids from the response.
    """

    status: SendStatus
    #: Seconds Graph asked us to wait (Retry-After), if it said so.
    retry_after_s: float | None = None
    #: The token was refused before any processing: refresh it and retry once.
    refresh_token: bool = False


def stage_of_exception(exc: BaseException) -> Stage:
    """Map an exception raised by an aiohttp request to the stage it proves.

    Only exceptions that aiohttp raises while connecting map to ``connect``
    (including a failed proxy ``CONNECT``: nothing reached Graph). A
    ``ClientResponseError`` (``raise_for_status()``) maps to ``response``.
    Everything else maps to ``write``, i.e. the request may have reached Graph:
    read timeouts (``SocketTimeoutError``), a bare ``asyncio.TimeoutError`` (the
    total timeout can fire at any point), ``ServerDisconnectedError``,
    ``ClientOSError`` (reset, broken pipe), ``ClientConnectionResetError`` (a
    pooled connection closed under us: we cannot tell whether bytes left),
    redirect errors (a redirect is an answer to a written request),
    cancellation, and anything unknown.
    """
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        # The proxy refused CONNECT; its status is the proxy's, not Graph's.
        return "connect"
    if isinstance(exc, aiohttp.RedirectClientError):
        # Subclasses of InvalidURL/NonHttpUrlClientError raised after a 3xx answer.
        return "write"
    if isinstance(exc, aiohttp.ClientResponseError):
        return "response"
    if isinstance(exc, _BEFORE_WRITE):
        return "connect"
    return "write"


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Parse a ``Retry-After`` value into seconds from ``now`` (epoch seconds).

    Accepts delta-seconds (``"30"``; fractional values are tolerated) and an
    HTTP-date (``"Wed, 21 Oct 2015 07:28:00 GMT"``). A date in the past gives 0.
    Anything unparseable gives ``None``: the caller falls back to its own backoff.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if math.isnan(seconds) or math.isinf(seconds):
            return None
        return max(0.0, seconds)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        # RFC 9110 HTTP-dates are always GMT; email.utils returns naive for "-0000".
        when = when.replace(tzinfo=UTC)
    reference = time.time() if now is None else now
    return max(0.0, when.timestamp() - reference)


def parse_graph_error(body: bytes | str | None) -> tuple[str | None, str | None]:
    """Extract ``(code, message)`` from a Graph error body ``{"error": {...}}``.

    Never raises: a body that is not Graph's error JSON gives ``(None, None)``.
    """
    if not body:
        return None, None
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None, None
    if not isinstance(doc, dict):
        return None, None
    error = doc.get("error")
    if not isinstance(error, dict):
        return None, None
    code = error.get("code")
    message = error.get("message")
    return (
        code if isinstance(code, str) and code else None,
        message if isinstance(message, str) and message else None,
    )


def _resolve(attempt: HttpAttempt) -> tuple[Stage, int | None]:
    """The stage and status to classify by, never earlier than the evidence."""
    status = attempt.status
    exc = attempt.exception
    if (
        status is None
        and isinstance(exc, aiohttp.ClientResponseError)
        and not isinstance(exc, aiohttp.ClientHttpProxyError)
        and exc.status > 0
    ):
        status = exc.status
    if status is not None:
        return "response", status
    stage = attempt.stage
    if exc is not None:
        from_exc = stage_of_exception(exc)
        if _STAGE_ORDER[from_exc] > _STAGE_ORDER[stage]:
            stage = from_exc
    if stage == "response":
        # A response stage without a status (e.g. the status line was cut off)
        # proves no more than "written".
        return "write", None
    return stage, None


def _code(attempt: HttpAttempt, status: int | None) -> str:
    if attempt.graph_error_code:
        return attempt.graph_error_code
    if status is not None:
        return f"http_{status}"
    if attempt.exception is not None:
        return type(attempt.exception).__name__
    return "unknown"


def _exception_name(attempt: HttpAttempt) -> str:
    # Only the type name: exception texts can carry URLs and headers, and the
    # ledger and logs must stay free of anything sensitive.
    return type(attempt.exception).__name__ if attempt.exception is not None else "no response"


def _verdict(
    status: SendStatus,
    attempt: HttpAttempt,
    http_status: int | None,
    message: str,
    retry_after_s: float | None,
    *,
    refresh_token: bool = False,
) -> Classification:
    """A verdict other than ACCEPTED: it always carries an error code and message."""
    return Classification(
        status,
        error_code=_code(attempt, http_status),
        error_message=message,
        retry_after_s=retry_after_s,
        refresh_token=refresh_token,
    )


def _refusal(
    attempt: HttpAttempt, status: int | None, retry_after_s: float | None, *, step: str, token: str
) -> Classification | None:
    """The verdicts the send and draft-create calls share, or ``None``.

    A 401 was refused before processing: refresh the token and retry once
    (``token`` is the message). 400/403/404 are permanent refusals (``step`` names
    the call in the message).
    """
    if status == 401:
        return _verdict(
            SendStatus.NOT_SENT_RETRYABLE, attempt, status, token, retry_after_s, refresh_token=True
        )
    if status in REJECTED_STATUSES:
        message = f"{status}{step}: Graph refused the message permanently"
        return _verdict(SendStatus.REJECTED, attempt, status, message, retry_after_s)
    return None


def classify(attempt: HttpAttempt, *, now: float | None = None) -> Classification:
    """Classify a send call (``sendMail`` or draft ``send``); see the module table.

    ``now`` (epoch seconds) is only used to turn an HTTP-date ``Retry-After``
    into seconds; it defaults to the wall clock.
    """
    retry_after_s = parse_retry_after(attempt.retry_after, now=now)
    stage, status = _resolve(attempt)
    if stage == "connect":
        return _verdict(
            SendStatus.NOT_SENT_RETRYABLE,
            attempt,
            status,
            f"failed before the request was written ({_exception_name(attempt)})",
            retry_after_s,
        )
    if stage == "write":
        return _verdict(
            SendStatus.AMBIGUOUS,
            attempt,
            status,
            f"failed after the request may have been written ({_exception_name(attempt)});"
            " reconcile before any resend",
            retry_after_s,
        )
    if status is None:  # unreachable: _resolve pairs "response" with a status
        raise AssertionError("response stage without a status")
    if status == 202:
        return Classification(SendStatus.ACCEPTED, retry_after_s=retry_after_s)
    token = "401: token refused before processing; refresh and retry once"
    if (refused := _refusal(attempt, status, retry_after_s, step="", token=token)) is not None:
        return refused
    if status == 429:
        detail = "429 on the send call: Graph has delivered throttled sends"
    elif 500 <= status <= 599:
        detail = f"{status}: Graph has delivered sends it answered with 5xx"
    else:
        detail = f"unexpected status {status}"
    message = f"{detail}; reconcile before any resend"
    return _verdict(SendStatus.AMBIGUOUS, attempt, status, message, retry_after_s)


def classify_create(attempt: HttpAttempt, *, now: float | None = None) -> Classification | None:
    """Classify a draft create (``POST /users/{sender}/messages``); see the module table.

    Returns ``None`` when the draft was created (any 2xx, normally 201): not an
    outcome to report, the caller reads the draft's id from the body. Otherwise the
    outcome: 400/403/404 -> REJECTED, 401 -> NOT_SENT_RETRYABLE with
    ``refresh_token``, a failure before the request was written -> NOT_SENT_RETRYABLE,
    everything else (429, 5xx, other statuses, timeouts, resets) -> AMBIGUOUS: the
    draft may exist, so the caller looks for it by key before creating another.
    """
    retry_after_s = parse_retry_after(attempt.retry_after, now=now)
    stage, status = _resolve(attempt)
    if status is not None and 200 <= status <= 299:
        return None
    if stage == "connect":
        return _verdict(
            SendStatus.NOT_SENT_RETRYABLE,
            attempt,
            status,
            f"draft create failed before the request was written ({_exception_name(attempt)});"
            " no draft exists",
            retry_after_s,
        )
    token = "401 on draft create: refresh the token and retry once"
    step = " on draft create"
    if (refused := _refusal(attempt, status, retry_after_s, step=step, token=token)) is not None:
        return refused
    where = f"status {status}" if status is not None else _exception_name(attempt)
    message = (
        f"draft create may have been processed ({where}); find the draft by key"
        " before creating another"
    )
    return _verdict(SendStatus.AMBIGUOUS, attempt, status, message, retry_after_s)


def classify_send_draft(attempt: HttpAttempt, *, now: float | None = None) -> Classification:
    """Classify ``POST /users/{sender}/messages/{id}/send``: :func:`classify`, but for one row.

    404 ``ErrorItemNotFound`` is AMBIGUOUS, not REJECTED. Graph's message-send reference
    (learn.microsoft.com/graph/api/message-send) sends "an existing draft message" and
    "saves the message in the Sent Items folder"; once a send of it was accepted the
    item is no longer a draft, and the send action no longer finds it (the emulator
    answers 404 ``ErrorItemNotFound`` as Exchange does for an id that names no draft).
    So this answer may mean "an earlier send went through": the ledger reads the
    draft's state by its immutable id, it never fails the key on it. A 404 for the
    mailbox (``ErrorInvalidUser``, ``MailboxNotEnabledForRESTAPI``) stays REJECTED.
    """
    _, status = _resolve(attempt)
    if status == 404 and attempt.graph_error_code == "ErrorItemNotFound":
        return _verdict(
            SendStatus.AMBIGUOUS,
            attempt,
            status,
            "404 ErrorItemNotFound on draft send: the item is no longer a draft (an earlier"
            " send may have gone through); read the draft's state before any resend",
            parse_retry_after(attempt.retry_after, now=now),
        )
    return classify(attempt, now=now)


__all__ = [
    "REJECTED_STATUSES",
    "Classification",
    "HttpAttempt",
    "Stage",
    "classify",
    "classify_create",
    "classify_send_draft",
    "parse_graph_error",
    "parse_retry_after",
    "stage_of_exception",
]
