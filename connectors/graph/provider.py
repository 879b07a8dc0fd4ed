"""Microsoft Graph as an :class:`~connectors.base.EmailProvider`.

Two sending modes:

* ``sendmail``: ``POST /users/{sender}/sendMail`` with ``saveToSentItems: true``;
* ``draft-send``: ``POST /users/{sender}/messages`` (``Prefer: IdType="ImmutableId"``,
  with a deterministic ``internetMessageId``), then ``POST .../messages/{id}/send``;
  records the immutable id and the internet message id.

The provider is a :class:`~connectors.base.DraftingProvider` in either mode
(``drafts_first`` in ``draft-send``): :meth:`GraphProvider.create_draft`,
:meth:`~GraphProvider.send_draft`, :meth:`~GraphProvider.find_draft` (Drafts, then Sent
Items, by the key's extended property) and :meth:`~GraphProvider.draft_state` (the
message by its immutable id: still a draft, sent, or gone), so the ledger can keep the
draft's id between the two calls and let the mailbox settle an ambiguous answer.
:meth:`~GraphProvider.send` in ``draft-send`` mode is the two calls in a row.

Every message carries the idempotency key in a single-value extended property
(``connectors/graph/message.py``), which is what :meth:`GraphProvider.lookup`
searches the sender's Sent Items for. Every request sends a ``client-request-id``
derived from key and attempt; the outcome's evidence keeps ``request-id``,
``client-request-id``, ``Date`` and ``x-ms-ags-diagnostic``.

Outcome classification (``connectors/graph/classify.py``):

===========================================================  ====================
what happened                                                 SendStatus
===========================================================  ====================
202                                                           ACCEPTED
400 recipient/content errors, 403 access denied / mailbox     REJECTED (no retry)
not enabled, 404 mailbox not found
connection refused, DNS or TLS failure before the request    NOT_SENT_RETRYABLE
was written
timeout, reset, 5xx, 429 on the send call, any other         AMBIGUOUS (never
failure after the request was written                         resent blind)
401 InvalidAuthenticationToken                                token refreshed, the
                                                              request retried once
===========================================================  ====================

A draft create that may have been processed (429, 5xx, timeout, reset) is AMBIGUOUS
too (find the draft by key, never create a second one), and a draft send answered 404
``ErrorItemNotFound`` is AMBIGUOUS (the item is no longer a draft).

All requests go through a :class:`~connectors.graph.throttle.MailboxThrottle`:
at most 4 in flight per mailbox, a request budget per 10 minutes, a
messages-per-minute cap, and Retry-After honoured by every task of the mailbox.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from sendonce.connectors.base import (
    LookupResult,
    LookupStatus,
    OutgoingEmail,
    SendOutcome,
    SendStatus,
)
from sendonce.connectors.graph.auth import GraphAuthError, GraphTokenProvider
from sendonce.connectors.graph.classify import (
    Classification,
    HttpAttempt,
    classify,
    classify_create,
    classify_send_draft,
    parse_graph_error,
    stage_of_exception,
)
from sendonce.connectors.graph.message import (
    IMMUTABLE_ID_PREFER,
    client_request_id,
    draft_body,
    draft_state_url,
    drafts_filter_url,
    evidence_from_headers,
    message_url,
    send_mail_body,
    sent_items_filter_url,
    user_url,
)
from sendonce.connectors.graph.throttle import MailboxThrottle
from sendonce.settings import Settings

log = logging.getLogger("sendonce.graph")

GRAPH_URL = "https://graph.microsoft.com/v1.0"
MODES = ("sendmail", "draft-send")
#: The detail of an empty Sent Items answer (UNKNOWN for ``lookup``: Sent Items lag).
_NOT_IN_SENT_ITEMS = "not in Sent Items (yet)"


@dataclass(frozen=True)
class GraphSettings:
    """How to reach Graph and how hard to push it."""

    graph_url: str = GRAPH_URL
    mode: str = "sendmail"
    ca_bundle: Path | None = None
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    max_concurrent_per_mailbox: int = 4
    requests_per_window: int | None = 9_000
    sends_per_minute: int | None = 30

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"Graph mode must be one of {MODES}, not {self.mode!r}")


@dataclass
class _Response:
    status: int
    headers: Mapping[str, str]
    body: bytes


@dataclass
class _Listing:
    """A folder listing that Graph answered with 200: its messages and the call's trail."""

    messages: list[dict[str, Any]]
    request_id: str | None
    evidence: dict[str, str]


class _Failed(Exception):
    """A request that ended without a response; carries what the classifier needs."""

    def __init__(self, attempt: HttpAttempt, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(attempt.stage)
        self.attempt = attempt
        self.headers = headers or {}


class GraphProvider:
    """Sends through Microsoft Graph and looks messages up in Drafts and Sent Items.

    A :class:`~connectors.base.DraftingProvider`: ``drafts_first`` is true in
    ``draft-send`` mode; the draft calls work in either mode, so entries drafted
    before a switch to ``sendmail`` are still settled.
    """

    name = "graph"
    drafts_first: bool

    def __init__(
        self,
        tokens: GraphTokenProvider,
        settings: GraphSettings | None = None,
        throttle: MailboxThrottle | None = None,
    ) -> None:
        self.tokens = tokens
        self.settings = settings or GraphSettings()
        self.throttle = throttle or MailboxThrottle(
            max_concurrent=self.settings.max_concurrent_per_mailbox,
            requests_per_window=self.settings.requests_per_window,
            sends_per_minute=self.settings.sends_per_minute,
        )
        self.drafts_first = self.settings.mode == "draft-send"
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Created lazily: a ClientSession must be made inside the running loop.
        if self._session is None:
            import ssl

            ssl_context: ssl.SSLContext | bool = True
            if self.settings.ca_bundle is not None:
                ssl_context = ssl.create_default_context(cafile=str(self.settings.ca_bundle))
            connector = aiohttp.TCPConnector(ssl=ssl_context, limit=0, limit_per_host=0)
            timeout = aiohttp.ClientTimeout(
                total=None,
                sock_connect=self.settings.connect_timeout_s,
                sock_read=self.settings.read_timeout_s,
            )
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        return self._session

    def estimated_wait_s(self, sender: str, ahead: int = 0) -> float:
        """Seconds a send from ``sender`` would wait on this worker's throttle.

        ``ahead``: sends the caller has already admitted for ``sender`` that
        may not have reached the throttle yet.
        """
        return self.throttle.estimated_wait(sender, sending=True, ahead=ahead)

    def permit(self, sender: str) -> AbstractAsyncContextManager[None]:
        """Wait until a send from ``sender`` may start now; hold its mailbox slot inside.

        The worker writes the key's PENDING entry inside this block, then calls
        :meth:`send`, whose requests use the held slot and send permit.
        """
        return self.throttle.hold(sender)

    # -- sending ----------------------------------------------------------

    async def send(self, outgoing: OutgoingEmail) -> SendOutcome:
        """Send one email and classify the outcome.

        In ``draft-send`` mode, one call for callers that do not keep the draft's id
        between the steps: :meth:`create_draft`, then :meth:`send_draft`.
        """
        if self.settings.mode == "draft-send":
            return await self._draft_send(outgoing)
        url = f"{user_url(self.settings.graph_url, outgoing.sender)}/sendMail"
        crid = client_request_id(outgoing.idempotency_key, outgoing.attempt_id)
        return await self._send_call(
            outgoing, url, send_mail_body(outgoing), crid, extra={}, provider_message_id=None
        )

    async def _draft_send(self, outgoing: OutgoingEmail) -> SendOutcome:
        created = await self.create_draft(outgoing)
        if created.status is not SendStatus.ACCEPTED or not created.provider_message_id:
            return created
        sent = await self.send_draft(outgoing, created.provider_message_id)
        return replace(
            sent,
            internet_message_id=sent.internet_message_id or created.internet_message_id,
            evidence={
                **sent.evidence,
                "create_client_request_id": created.evidence.get("client-request-id", ""),
            },
        )

    async def create_draft(self, email: OutgoingEmail) -> SendOutcome:
        """Create ``email`` as a draft in the sender's Drafts, with immutable ids.

        ACCEPTED carries the draft's immutable id (``provider_message_id``) and its
        ``internetMessageId``; AMBIGUOUS means the draft may exist (find it by key
        with :meth:`find_draft` before creating another); see ``classify_create``.
        """
        url = f"{user_url(self.settings.graph_url, email.sender)}/messages"
        crid = client_request_id(email.idempotency_key, email.attempt_id, step="create")
        try:
            response = await self._request(
                email.sender,
                "POST",
                url,
                crid,
                json_body=draft_body(email),
                headers=IMMUTABLE_ID_PREFER,
                sending=False,
            )
        except _Failed as failed:
            # No status: classify_create never calls that "created".
            failure = classify_create(failed.attempt) or classify(failed.attempt)
            return self._outcome(failure, failed.headers, crid)
        except GraphAuthError as exc:
            return self._auth_failure(exc, crid)
        code, message = parse_graph_error(response.body)
        refused = classify_create(
            HttpAttempt("response", response.status, code, response.headers.get("Retry-After"))
        )
        if refused is not None:
            return self._outcome(refused, response.headers, crid, error_message=message)
        draft = _json(response.body)
        draft_id = draft.get("id")
        if not isinstance(draft_id, str) or not draft_id:
            # Created, but without an id to send it by: it may exist, so it is found by
            # key like any other create of unknown outcome, never created twice.
            return self._outcome(
                Classification(
                    SendStatus.AMBIGUOUS,
                    error_code="draft_without_id",
                    error_message=f"draft create answered {response.status} without an id;"
                    " find the draft by key before creating another",
                ),
                response.headers,
                crid,
            )
        imid = draft.get("internetMessageId")
        return self._outcome(
            Classification(SendStatus.ACCEPTED),
            response.headers,
            crid,
            extra={"draft_id": draft_id},
            provider_message_id=draft_id,
            internet_message_id=imid if isinstance(imid, str) else None,
        )

    async def send_draft(self, email: OutgoingEmail, draft_id: str) -> SendOutcome:
        """Send the draft ``draft_id`` (an immutable id) of ``email``; see ``classify_send_draft``.

        ACCEPTED carries ``draft_id`` as ``provider_message_id``: the immutable id stays
        the message's id in Sent Items.
        """
        crid = client_request_id(email.idempotency_key, email.attempt_id, step="send")
        url = f"{message_url(self.settings.graph_url, email.sender, draft_id)}/send"
        return await self._send_call(
            email,
            url,
            None,
            crid,
            extra={"draft_id": draft_id},
            provider_message_id=draft_id,
            internet_message_id=f"<{email.message_id}>" if email.message_id else None,
            classifier=classify_send_draft,
        )

    async def _send_call(
        self,
        outgoing: OutgoingEmail,
        url: str,
        body: dict[str, Any] | None,
        crid: str,
        *,
        extra: dict[str, str],
        provider_message_id: str | None,
        internet_message_id: str | None = None,
        classifier: Callable[[HttpAttempt], Classification] = classify,
    ) -> SendOutcome:
        try:
            response = await self._request(outgoing.sender, "POST", url, crid, json_body=body)
        except _Failed as failed:
            return self._outcome(classifier(failed.attempt), failed.headers, crid, extra=extra)
        except GraphAuthError as exc:
            return self._auth_failure(exc, crid)
        code, message = parse_graph_error(response.body)
        verdict = classifier(
            HttpAttempt("response", response.status, code, response.headers.get("Retry-After"))
        )
        return self._outcome(
            verdict,
            response.headers,
            crid,
            error_message=message,
            extra=extra,
            provider_message_id=provider_message_id,
            internet_message_id=internet_message_id,
        )

    def _outcome(
        self,
        verdict: Classification,
        headers: Mapping[str, str],
        crid: str,
        *,
        error_message: str | None = None,
        extra: dict[str, str] | None = None,
        provider_message_id: str | None = None,
        internet_message_id: str | None = None,
    ) -> SendOutcome:
        evidence = {"client-request-id": crid, **evidence_from_headers(headers), **(extra or {})}
        accepted_at = None
        if verdict.status is SendStatus.ACCEPTED:
            accepted_at = _date_ms(headers.get("Date")) or int(time.time() * 1000)
        return SendOutcome(
            verdict.status,
            self.name,
            provider_request_id=evidence.get("request-id"),
            provider_message_id=provider_message_id,
            internet_message_id=internet_message_id,
            accepted_at_ms=accepted_at,
            error_code=verdict.error_code,
            error_message=verdict.error_message or error_message,
            retry_after_s=verdict.retry_after_s,
            evidence=evidence,
        )

    def _auth_failure(self, exc: GraphAuthError, crid: str) -> SendOutcome:
        # No token means no request reached Graph: provably not sent.
        return SendOutcome(
            SendStatus.NOT_SENT_RETRYABLE,
            self.name,
            error_code="auth_failed",
            error_message=str(exc),
            evidence={"client-request-id": crid},
        )

    # -- lookups ------------------------------------------------------------

    async def lookup(self, idempotency_key: str, message_id: str, sender: str) -> LookupResult:
        """Search the sender's Sent Items for the key's extended property.

        Never definitive: Sent Items lag behind acceptance, so an empty answer
        is UNKNOWN and the reconciler asks again later.
        """
        return await self._sent_items(idempotency_key, sender, immutable=False)

    async def _sent_items(self, key: str, sender: str, *, immutable: bool) -> LookupResult:
        url = sent_items_filter_url(self.settings.graph_url, sender, key)
        crid = client_request_id(key, f"lookup-{int(time.time())}")
        listing = await self._list(sender, url, crid, "Sent Items", immutable=immutable)
        if isinstance(listing, LookupResult):
            return listing
        found = listing.messages
        if not found:
            return LookupResult(
                LookupStatus.UNKNOWN,
                self.name,
                provider_request_id=listing.request_id,
                evidence=listing.evidence,
                detail=_NOT_IN_SENT_ITEMS,
            )
        first = found[0]
        detail = f"found in Sent Items ({len(found)} cop{'y' if len(found) == 1 else 'ies'})"
        if len(found) > 1:
            # One request, several deliveries: a transport duplicate to report,
            # not a second send of ours.
            detail += "; transport duplicate"
        return LookupResult(
            LookupStatus.FOUND,
            self.name,
            provider_request_id=listing.request_id,
            provider_message_id=first.get("id"),
            internet_message_id=first.get("internetMessageId"),
            accepted_at_ms=_iso_ms(first.get("sentDateTime")),
            detail=detail,
            evidence=listing.evidence,
        )

    async def find_draft(self, idempotency_key: str, sender: str) -> LookupResult:
        """The key's draft after a create of unknown outcome.

        DRAFT with the oldest draft's immutable id; else FOUND when Sent Items hold the
        key (already sent); else NOT_FOUND_DEFINITIVE: a draft is listed in Drafts as
        soon as its create completed (no lag like Sent Items'), and the ledger asks only
        after a grace period, so no draft means the create did nothing. Any failure to
        ask is UNKNOWN.
        """
        url = drafts_filter_url(self.settings.graph_url, sender, idempotency_key)
        crid = client_request_id(idempotency_key, f"find-draft-{int(time.time())}")
        listing = await self._list(sender, url, crid, "Drafts", immutable=True)
        if isinstance(listing, LookupResult):
            return listing
        drafts = [
            m
            for m in listing.messages
            if isinstance(m.get("id"), str) and m["id"] and m.get("isDraft") is not False
        ]
        if drafts:
            # Graph lists newest first and createdDateTime has whole seconds: reversed,
            # then a stable sort, puts the oldest first even among ties.
            oldest = sorted(reversed(drafts), key=lambda m: str(m.get("createdDateTime") or ""))[0]
            detail = "draft found in Drafts"
            if len(drafts) > 1:
                detail = f"{len(drafts)} drafts for this key in Drafts; the oldest is used"
            return LookupResult(
                LookupStatus.DRAFT,
                self.name,
                provider_request_id=listing.request_id,
                provider_message_id=oldest["id"],
                internet_message_id=oldest.get("internetMessageId"),
                detail=detail,
                evidence=listing.evidence,
            )
        sent = await self._sent_items(idempotency_key, sender, immutable=True)
        if sent.status is LookupStatus.UNKNOWN and sent.detail == _NOT_IN_SENT_ITEMS:
            return replace(
                sent,
                status=LookupStatus.NOT_FOUND_DEFINITIVE,
                detail="no draft in Drafts and nothing in Sent Items for this key",
            )
        return sent

    async def draft_state(self, draft_id: str, sender: str) -> LookupResult:
        """What became of draft ``draft_id`` (an immutable id): read it by its id.

        ``isDraft`` true -> DRAFT (not sent); false -> FOUND (sent: it has left Drafts,
        with the ids and ``sentDateTime``); 404 ``ErrorItemNotFound`` -> GONE; anything
        else -> UNKNOWN. Microsoft's "Obtain immutable identifiers for Outlook
        resources" (learn.microsoft.com/graph/outlook-immutable-id) keeps an immutable
        id for the item's lifetime in the mailbox, across the move to Sent Items, and
        describes exactly this: create the draft with ``Prefer: IdType="ImmutableId"``,
        send it by that id, then get the message by that id. It also warns that the
        Sent Items copy may not be readable immediately after the send, so a 404 read
        right after a send is not proof of deletion: the ledger asks only after a
        grace period, and GONE goes to an operator, never to a resend.
        """
        url = draft_state_url(self.settings.graph_url, sender, draft_id)
        crid = client_request_id(draft_id, f"draft-state-{int(time.time())}")
        try:
            response = await self._request(
                sender, "GET", url, crid, headers=IMMUTABLE_ID_PREFER, sending=False
            )
        except (_Failed, GraphAuthError) as exc:
            return LookupResult(
                LookupStatus.UNKNOWN,
                self.name,
                detail=f"draft read failed: {type(exc).__name__}",
                evidence={"client-request-id": crid},
            )
        evidence = {"client-request-id": crid, **evidence_from_headers(response.headers)}
        request_id = evidence.get("request-id")
        code, _ = parse_graph_error(response.body)
        if response.status == 404 and code == "ErrorItemNotFound":
            return LookupResult(
                LookupStatus.GONE,
                self.name,
                provider_request_id=request_id,
                error_code=code,
                detail="no message with this id in the mailbox (deleted?)",
                evidence=evidence,
            )
        message = _json(response.body) if response.status == 200 else {}
        is_draft = message.get("isDraft")
        if not isinstance(is_draft, bool):
            what = f"{response.status} {code or ''}".strip()
            if response.status == 200:
                what = "200 without isDraft"
            return LookupResult(
                LookupStatus.UNKNOWN,
                self.name,
                provider_request_id=request_id,
                error_code=code,
                detail=f"draft read answered {what}",
                evidence=evidence,
            )
        imid = message.get("internetMessageId")
        message_id = message.get("id") if isinstance(message.get("id"), str) else draft_id
        return LookupResult(
            LookupStatus.DRAFT if is_draft else LookupStatus.FOUND,
            self.name,
            provider_request_id=request_id,
            provider_message_id=message_id,
            internet_message_id=imid if isinstance(imid, str) else None,
            accepted_at_ms=None if is_draft else _iso_ms(message.get("sentDateTime")),
            detail="still a draft: not sent" if is_draft else "sent: no longer a draft",
            evidence=evidence,
        )

    async def _list(
        self, sender: str, url: str, crid: str, folder: str, *, immutable: bool
    ) -> _Listing | LookupResult:
        """One folder listing: its messages, or the UNKNOWN lookup result of a failure."""
        headers = IMMUTABLE_ID_PREFER if immutable else None
        try:
            response = await self._request(sender, "GET", url, crid, headers=headers, sending=False)
        except (_Failed, GraphAuthError) as exc:
            return LookupResult(
                LookupStatus.UNKNOWN,
                self.name,
                detail=type(exc).__name__,
                evidence={"client-request-id": crid},
            )
        evidence = {"client-request-id": crid, **evidence_from_headers(response.headers)}
        request_id = response.headers.get("request-id")
        if response.status != 200:
            code, _ = parse_graph_error(response.body)
            return LookupResult(
                LookupStatus.UNKNOWN,
                self.name,
                provider_request_id=request_id,
                evidence=evidence,
                detail=f"{folder} lookup answered {response.status} {code or ''}".strip(),
            )
        value = _json(response.body).get("value")
        messages = [m for m in value if isinstance(m, dict)] if isinstance(value, list) else []
        return _Listing(messages, request_id, evidence)

    # -- transport ----------------------------------------------------------

    async def _request(
        self,
        mailbox: str,
        method: str,
        url: str,
        crid: str,
        *,
        json_body: dict[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        sending: bool = True,
    ) -> _Response:
        """One Graph call with throttling and one token refresh on 401."""
        refreshed = False
        while True:
            token = await self.tokens.get_token()
            async with self.throttle.request(mailbox, sending=sending):
                response = await self._http(method, url, token, crid, json_body, headers)
            if response.status == 401 and not refreshed:
                code, _ = parse_graph_error(response.body)
                if code in (None, "InvalidAuthenticationToken"):
                    # Rejected before any processing: safe to retry once.
                    await self.tokens.invalidate(token)
                    refreshed = True
                    continue
            if response.status in (429, 503) and response.headers.get("Retry-After"):
                verdict = classify(
                    HttpAttempt("response", response.status, None, response.headers["Retry-After"])
                )
                if verdict.retry_after_s:
                    self.throttle.retry_after(mailbox, verdict.retry_after_s)
            return response

    async def _http(
        self,
        method: str,
        url: str,
        token: str,
        crid: str,
        json_body: dict[str, Any] | None,
        headers: Mapping[str, str] | None,
    ) -> _Response:
        request_headers = {
            "Authorization": f"Bearer {token}",
            "client-request-id": crid,
            "return-client-request-id": "true",
            **(headers or {}),
        }
        try:
            async with self._client().request(
                method,
                URL(url, encoded=True),
                json=json_body,
                headers=request_headers,
                allow_redirects=False,
            ) as resp:
                body = await resp.read()
                return _Response(resp.status, dict(resp.headers), body)
        except Exception as exc:
            raise _Failed(HttpAttempt(stage_of_exception(exc), exception=exc)) from None

    async def close(self) -> None:
        """Close the HTTP session and MSAL's client."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        self.tokens.close()


def from_settings(settings: Settings) -> GraphProvider:
    """The Graph provider for ``settings`` (``SENDONCE_PROVIDER=graph``; validated by Settings).

    Registered in :data:`sendonce.providers.PROVIDERS`. Empty credential settings
    mean "not given": a secret or a certificate, never both.
    """
    ca_bundle = Path(settings.graph_ca_bundle) if settings.graph_ca_bundle else None
    tokens = GraphTokenProvider(
        tenant_id=settings.graph_tenant_id,
        client_id=settings.graph_client_id,
        client_secret=settings.graph_client_secret or None,
        certificate_key_path=settings.graph_certificate_key_path or None,
        certificate_thumbprint=settings.graph_certificate_thumbprint or None,
        authority=settings.graph_authority or None,
        ca_bundle=ca_bundle,
    )
    return GraphProvider(
        tokens,
        GraphSettings(
            graph_url=settings.graph_url,
            mode=settings.graph_mode,
            ca_bundle=ca_bundle,
            connect_timeout_s=settings.graph_connect_timeout_s,
            read_timeout_s=settings.graph_read_timeout_s,
            max_concurrent_per_mailbox=settings.graph_mailbox_concurrency,
            # 0 lifts a cap (README): GraphSettings says that with None.
            requests_per_window=settings.graph_requests_per_10min or None,
            sends_per_minute=settings.graph_sends_per_minute or None,
        ),
    )


def _json(body: bytes) -> dict[str, Any]:
    import json

    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _date_ms(value: str | None) -> int | None:
    if not value:
        return None
    try:
        return int(parsedate_to_datetime(value).timestamp() * 1000)
    except (TypeError, ValueError):
        return None


def _iso_ms(value: object) -> int | None:
    if not isinstance(value, str):
        return None
    from datetime import datetime

    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None
