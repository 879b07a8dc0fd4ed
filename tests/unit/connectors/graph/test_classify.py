"""Graph outcome classification: every row of the table in connectors/graph/classify.py."""

from __future__ import annotations

import asyncio
import socket
import ssl
from datetime import UTC, datetime
from email.utils import format_datetime

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey
from yarl import URL

from sendonce.connectors.base import SendStatus
from sendonce.connectors.graph.classify import (
    Classification,
    HttpAttempt,
    Stage,
    classify,
    classify_create,
    classify_send_draft,
    parse_graph_error,
    parse_retry_after,
    stage_of_exception,
)

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC).timestamp()
KEY = ConnectionKey("graph.microsoft.com", 443, True, True, None, None, None)
REQ = aiohttp.RequestInfo(
    URL("https://graph.microsoft.com/v1.0/users/a@b/sendMail"),
    "POST",
    {},  # type: ignore[arg-type]
    URL("https://graph.microsoft.com/v1.0/users/a@b/sendMail"),
)

BEFORE_WRITE: list[BaseException] = [
    aiohttp.ClientConnectorError(KEY, ConnectionRefusedError(111, "Connection refused")),
    aiohttp.ClientConnectorDNSError(KEY, socket.gaierror(-2, "Name or service not known")),
    aiohttp.ClientConnectorSSLError(KEY, ssl.SSLError(1, "handshake failure")),
    aiohttp.ClientConnectorCertificateError(KEY, ssl.SSLCertVerificationError(1, "verify")),
    aiohttp.ClientProxyConnectionError(KEY, ConnectionRefusedError(111, "refused")),
    aiohttp.ClientHttpProxyError(REQ, (), status=407),
    aiohttp.ConnectionTimeoutError("Connection timeout to host"),
    aiohttp.ServerFingerprintMismatch(b"expected", b"got", "graph.microsoft.com", 443),
    aiohttp.InvalidUrlClientError(URL("not a url")),
    aiohttp.NonHttpUrlClientError(URL("ftp://graph.microsoft.com")),
]

AFTER_WRITE: list[BaseException] = [
    aiohttp.ServerDisconnectedError(),
    aiohttp.ClientOSError(104, "Connection reset by peer"),
    aiohttp.ClientConnectionResetError("Cannot write to closing transport"),
    ConnectionResetError(104, "Connection reset by peer"),
    aiohttp.SocketTimeoutError("Timeout on reading data from socket"),
    aiohttp.ServerTimeoutError("Timeout on reading data from socket"),
    TimeoutError(),  # asyncio.TimeoutError: the total timeout, fired anywhere
    aiohttp.ClientPayloadError("Response payload is not completed"),
    aiohttp.InvalidUrlRedirectClientError("http://[", "invalid redirect"),
    aiohttp.NonHttpUrlRedirectClientError(URL("ftp://elsewhere")),
    asyncio.CancelledError(),
    RuntimeError("something unforeseen"),
]


def _id(exc: BaseException) -> str:
    return type(exc).__name__


@pytest.mark.parametrize("exc", BEFORE_WRITE, ids=_id)
def test_failures_before_the_request_is_written_are_not_sent(exc: BaseException) -> None:
    assert stage_of_exception(exc) == "connect"
    c = classify(HttpAttempt("connect", exception=exc))
    assert c.status is SendStatus.NOT_SENT_RETRYABLE
    assert c.error_code == type(exc).__name__
    assert not c.refresh_token


@pytest.mark.parametrize("exc", AFTER_WRITE, ids=_id)
def test_failures_after_the_request_may_be_written_are_ambiguous(exc: BaseException) -> None:
    assert stage_of_exception(exc) == "write"
    # Even if the caller believed it was still connecting, the exception wins.
    stages: tuple[Stage, ...] = ("connect", "write")
    for stage in stages:
        c = classify(HttpAttempt(stage, exception=exc))
        assert c.status is SendStatus.AMBIGUOUS, stage
        assert c.error_code == type(exc).__name__


def test_the_caller_can_only_make_an_attempt_later_never_earlier() -> None:
    refused = aiohttp.ClientConnectorError(KEY, ConnectionRefusedError(111, "refused"))
    # The caller knows the request was written (e.g. from a trace hook): stay ambiguous.
    assert classify(HttpAttempt("write", exception=refused)).status is SendStatus.AMBIGUOUS
    assert classify(HttpAttempt("connect")).status is SendStatus.NOT_SENT_RETRYABLE
    assert classify(HttpAttempt("write")).status is SendStatus.AMBIGUOUS
    # "response" without any status proves nothing beyond "written".
    assert classify(HttpAttempt("response")).status is SendStatus.AMBIGUOUS


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (202, None, SendStatus.ACCEPTED),
        (400, "ErrorInvalidRecipients", SendStatus.REJECTED),
        (400, "ErrorInvalidRequest", SendStatus.REJECTED),
        (400, "ErrorMessageSizeExceeded", SendStatus.REJECTED),
        (400, "RequestBodyRead", SendStatus.REJECTED),
        (400, "InvalidInternetMessageHeaderCollection", SendStatus.REJECTED),
        (403, "ErrorAccessDenied", SendStatus.REJECTED),
        (403, "MailboxNotEnabledForRESTAPI", SendStatus.REJECTED),
        (403, "ErrorSendAsDenied", SendStatus.REJECTED),
        (404, "ErrorInvalidUser", SendStatus.REJECTED),
        (404, "ResourceNotFound", SendStatus.REJECTED),
        (404, "MailboxNotFound", SendStatus.REJECTED),
        (429, "ApplicationThrottled", SendStatus.AMBIGUOUS),
        (429, "MailboxConcurrency", SendStatus.AMBIGUOUS),
        (500, "InternalServerError", SendStatus.AMBIGUOUS),
        (502, None, SendStatus.AMBIGUOUS),
        (503, "ServiceNotAvailable", SendStatus.AMBIGUOUS),
        (504, "GatewayTimeout", SendStatus.AMBIGUOUS),
        (200, None, SendStatus.AMBIGUOUS),
        (204, None, SendStatus.AMBIGUOUS),
        (302, None, SendStatus.AMBIGUOUS),
        (409, "ErrorIrresolvableConflict", SendStatus.AMBIGUOUS),
        (413, None, SendStatus.AMBIGUOUS),
    ],
)
def test_status_rows(status: int, code: str | None, expected: SendStatus) -> None:
    c = classify(HttpAttempt("response", status=status, graph_error_code=code))
    assert c.status is expected
    assert not c.refresh_token
    if expected is SendStatus.ACCEPTED:
        assert c.error_code is None
    else:
        assert c.error_code == (code or f"http_{status}")


@pytest.mark.parametrize("status", [429, 503, 504])
def test_throttled_and_gateway_errors_are_ambiguous_and_keep_retry_after(status: int) -> None:
    c = classify(
        HttpAttempt("response", status=status, graph_error_code="X", retry_after="17"),
        now=NOW,
    )
    assert c == Classification(
        SendStatus.AMBIGUOUS,
        error_code="X",
        error_message=c.error_message,
        retry_after_s=17.0,
    )
    assert c.error_message is not None and "reconcile" in c.error_message


def test_retry_after_as_http_date() -> None:
    when = format_datetime(datetime.fromtimestamp(NOW + 42, tz=UTC), usegmt=True)
    c = classify(HttpAttempt("response", status=429, retry_after=when), now=NOW)
    assert c.status is SendStatus.AMBIGUOUS
    assert c.retry_after_s == pytest.approx(42.0)


@pytest.mark.parametrize("code", ["InvalidAuthenticationToken", None])
def test_401_asks_for_one_token_refresh(code: str | None) -> None:
    c = classify(HttpAttempt("response", status=401, graph_error_code=code))
    assert c.status is SendStatus.NOT_SENT_RETRYABLE
    assert c.refresh_token
    assert c.error_code == (code or "http_401")


def test_status_from_raise_for_status_is_used() -> None:
    bad = aiohttp.ClientResponseError(REQ, (), status=400, message="Bad Request")
    assert stage_of_exception(bad) == "response"
    assert classify(HttpAttempt("write", exception=bad)).status is SendStatus.REJECTED
    throttled = aiohttp.ClientResponseError(REQ, (), status=429)
    assert classify(HttpAttempt("write", exception=throttled)).status is SendStatus.AMBIGUOUS
    # A proxy's refusal is not Graph's 403: nothing reached Graph.
    proxy = aiohttp.ClientHttpProxyError(REQ, (), status=403)
    assert classify(HttpAttempt("write", exception=proxy)).status is SendStatus.AMBIGUOUS
    assert classify(HttpAttempt("connect", exception=proxy)).status is (
        SendStatus.NOT_SENT_RETRYABLE
    )


def test_a_received_status_wins_over_a_later_body_read_failure() -> None:
    # 202 arrived, then reading the (empty) body failed: still accepted.
    c = classify(
        HttpAttempt("response", status=202, exception=aiohttp.ClientPayloadError("truncated"))
    )
    assert c.status is SendStatus.ACCEPTED


def test_error_messages_carry_no_exception_text() -> None:
    secret = "Bearer eyJ0eXAiOiJKV1Qi"
    c = classify(HttpAttempt("write", exception=RuntimeError(secret)))
    assert c.error_message is not None
    assert secret not in c.error_message
    assert "RuntimeError" in c.error_message


# --- draft create -----------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201])
def test_create_success_is_not_a_send_outcome(status: int) -> None:
    assert classify_create(HttpAttempt("response", status=status)) is None


@pytest.mark.parametrize(
    ("attempt", "expected", "refresh"),
    [
        (HttpAttempt("response", 400, "ErrorInvalidRecipients"), SendStatus.REJECTED, False),
        (HttpAttempt("response", 403, "ErrorAccessDenied"), SendStatus.REJECTED, False),
        (HttpAttempt("response", 404, "MailboxNotFound"), SendStatus.REJECTED, False),
        (
            HttpAttempt("response", 401, "InvalidAuthenticationToken"),
            SendStatus.NOT_SENT_RETRYABLE,
            True,
        ),
        # Refused before a byte was written: no draft can exist.
        *[
            (HttpAttempt("connect", exception=exc), SendStatus.NOT_SENT_RETRYABLE, False)
            for exc in BEFORE_WRITE
        ],
        # Issue 17: the draft may exist (Graph has processed requests it answered with
        # 429/5xx); the ledger finds it by key rather than creating a second one.
        (HttpAttempt("response", 429, "ApplicationThrottled"), SendStatus.AMBIGUOUS, False),
        (HttpAttempt("response", 429, "TooManyRequests"), SendStatus.AMBIGUOUS, False),
        (HttpAttempt("response", 500), SendStatus.AMBIGUOUS, False),
        (HttpAttempt("response", 502), SendStatus.AMBIGUOUS, False),
        (HttpAttempt("response", 503, "ServiceNotAvailable"), SendStatus.AMBIGUOUS, False),
        (HttpAttempt("response", 504, "UnknownError"), SendStatus.AMBIGUOUS, False),
        (HttpAttempt("response", 302), SendStatus.AMBIGUOUS, False),
        (HttpAttempt("response", 409, "ErrorIrresolvableConflict"), SendStatus.AMBIGUOUS, False),
        (HttpAttempt("response", 413), SendStatus.AMBIGUOUS, False),
        (HttpAttempt("response"), SendStatus.AMBIGUOUS, False),  # no status line: written
        *[
            (HttpAttempt("write", exception=exc), SendStatus.AMBIGUOUS, False)
            for exc in AFTER_WRITE
        ],
    ],
    ids=lambda v: f"{v.stage}-{v.status or _id(v.exception)}" if isinstance(v, HttpAttempt) else "",
)
def test_create_failures(attempt: HttpAttempt, expected: SendStatus, refresh: bool) -> None:
    c = classify_create(attempt)
    assert c is not None
    assert c.status is expected
    assert c.refresh_token is refresh
    assert c.error_code  # Graph's code, the status or the exception's type
    if expected is SendStatus.AMBIGUOUS:
        assert c.error_message is not None and "find the draft by key" in c.error_message


@pytest.mark.parametrize("status", [429, 503])
def test_create_keeps_retry_after(status: int) -> None:
    c = classify_create(HttpAttempt("response", status, retry_after="5"))
    assert c is not None and c.retry_after_s == 5.0


# --- sending a draft --------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (202, None, SendStatus.ACCEPTED),
        # The item is no longer a draft: an earlier send of it may have gone through.
        (404, "ErrorItemNotFound", SendStatus.AMBIGUOUS),
        # The mailbox itself is unknown: nothing can have been sent from it.
        (404, "ErrorInvalidUser", SendStatus.REJECTED),
        (404, "MailboxNotEnabledForRESTAPI", SendStatus.REJECTED),
        (400, "ErrorInvalidRecipients", SendStatus.REJECTED),
        (429, "ApplicationThrottled", SendStatus.AMBIGUOUS),
        (503, "ServiceNotAvailable", SendStatus.AMBIGUOUS),
        (504, "UnknownError", SendStatus.AMBIGUOUS),
    ],
)
def test_send_draft_rows(status: int, code: str | None, expected: SendStatus) -> None:
    c = classify_send_draft(HttpAttempt("response", status=status, graph_error_code=code))
    assert c.status is expected
    if expected is not SendStatus.ACCEPTED:
        assert c.error_code == code


def test_send_draft_is_a_send_call_otherwise() -> None:
    for exc in BEFORE_WRITE + AFTER_WRITE:
        attempt = HttpAttempt(stage_of_exception(exc), exception=exc)
        assert classify_send_draft(attempt) == classify(attempt)
    throttled = HttpAttempt("response", 429, "TooManyRequests", retry_after="9")
    assert classify_send_draft(throttled, now=NOW) == classify(throttled, now=NOW)
    assert classify_send_draft(HttpAttempt("response", 401)).refresh_token


# --- helpers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("  ", None),
        ("0", 0.0),
        ("30", 30.0),
        (" 7 ", 7.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        ("nan", None),
        ("inf", None),
        ("soon", None),
        ("Wed, 01 May 2024 12:00:10 GMT", 10.0),
        ("Wed, 01 May 2024 11:59:00 GMT", 0.0),
        ("Wed, 01 May 2024 12:01:00 -0000", 60.0),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"error": {"code": "ErrorInvalidUser", "message": "bad"}}', ("ErrorInvalidUser", "bad")),
        ('{"error": {"code": "X"}}', ("X", None)),
        (b"", (None, None)),
        (None, (None, None)),
        (b"<html>502 Bad Gateway</html>", (None, None)),
        (b"\xff\xfe", (None, None)),
        (b"[1, 2]", (None, None)),
        (b'{"error": "plain"}', (None, None)),
        (b'{"error": {"code": 5}}', (None, None)),
    ],
)
def test_parse_graph_error(
    body: bytes | str | None, expected: tuple[str | None, str | None]
) -> None:
    assert parse_graph_error(body) == expected


def test_stage_literal_values() -> None:
    stages: tuple[Stage, ...] = ("connect", "write", "response")
    assert {stage_of_exception(e) for e in BEFORE_WRITE + AFTER_WRITE} <= set(stages)
