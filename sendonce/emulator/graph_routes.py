"""How the Graph emulator answers a Graph request, whatever the operation.

Every call to ``{base_url}/v1.0/...`` goes through one pipeline, in Graph's order: the
bearer token is checked, the path routed to an operation, the mailbox checked against the
tenant's policy (unknown, disabled, access-denied), the call counted against the mailbox's
concurrency (over ``max_concurrency`` in flight is 429 ``ApplicationThrottled``, like
Exchange Online), a send counted against the mailbox's message rate (over
``sends_per_minute`` in any sliding 60 s is 429, refused before it is processed), then
the fault rules decide whether the operation runs and what the
client gets back (an error, a dropped connection, a withheld response). Responses carry
``request-id``, ``client-request-id``, ``Date`` and ``x-ms-ags-diagnostic``; errors have
Graph's ``{"error": {"code", "message", "innerError"}}`` shape. What the operations do is
in :mod:`sendonce.emulator.mail`; which faults exist, in :mod:`sendonce.emulator.faults`.
The log says method, path (no query string), mailbox and status, never bodies or tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

from aiohttp import web

from sendonce.emulator.faults import AppliedFaults, Fault
from sendonce.emulator.state import EmulatorState
from sendonce.emulator.store import RequestRecord

__all__ = ["GraphError", "GraphRoutes", "Outcome"]

logger = logging.getLogger(__name__)

_JSON_TYPE = "application/json;odata.metadata=minimal;odata.streaming=true;charset=utf-8"
_AGS_DIAGNOSTIC = json.dumps(
    {
        "ServerInfo": {
            "DataCenter": "Emulator",
            "Slice": "E",
            "Ring": "0",
            "ScaleUnit": "000",
            "RoleInstance": "EMU000001",
        }
    },
    separators=(",", ":"),
)
_WWW_AUTHENTICATE = (
    'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/'
    'authorize", client_id="00000003-0000-0000-c000-000000000000"'
)
# Exchange Online's words for a mailbox over its concurrency limit (ours, or a fault's).
_CONCURRENCY_LIMIT_MESSAGE = "Application is over its MailboxConcurrency limit."
# Exchange Online caps a mailbox at 30 messages per minute (Exchange Online limits,
# "Sending limits": message rate limit). Which answer Graph gives a sendMail over it is
# not documented anywhere we found (searched Microsoft's docs and the docs' GitHub
# issues): the service description says excess submissions are "throttled and carried
# over to the following minutes", and for SMTP client submission that they are
# "rejected and the client will need to retry" (MicrosoftDocs/OfficeDocs-Support#1150,
# OfficeDocs-O365ServiceDescriptions#568 point out the contradiction). The emulator
# takes the strict reading, a refusal a client can see, with Graph's generic throttling
# answer (429, error code TooManyRequests, Retry-After), so a sender over the cap is
# caught in tests instead of being silently slowed down. Not Exchange's documented code.
_RATE_LIMIT_CODE = "TooManyRequests"
_RATE_LIMIT_MESSAGE = "The mailbox is over its message rate limit. Retry after the indicated time."
_SEND_OPERATIONS = frozenset({"sendMail", "sendDraft"})
_RATE_WINDOW_S = 60.0
# Faults answered with an HTTP error: kind -> status.
_STATUS_FAULTS = {"throttle": 429, "unavailable": 503, "gateway_timeout": 504}
_GRAPH_ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("POST", re.compile(r"^users/(?P<user>[^/]+)/sendmail$", re.IGNORECASE), "sendMail"),
    ("POST", re.compile(r"^users/(?P<user>[^/]+)/messages$", re.IGNORECASE), "createMessage"),
    (
        "POST",
        re.compile(r"^users/(?P<user>[^/]+)/messages/(?P<id>[^/]+)/send$", re.IGNORECASE),
        "sendDraft",
    ),
    ("GET", re.compile(r"^users/(?P<user>[^/]+)/messages$", re.IGNORECASE), "listMessages"),
    (
        "GET",
        re.compile(r"^users/(?P<user>[^/]+)/messages/(?P<id>[^/]+)$", re.IGNORECASE),
        "getMessage",
    ),
    (
        "GET",
        re.compile(r"^users/(?P<user>[^/]+)/mailfolders/(?P<folder>[^/]+)/messages$", re.I),
        "listMessages",
    ),
)


class GraphError(Exception):
    """A Graph error response: status, ``error.code``, ``error.message``, extra headers."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(f"{status} {code}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


@dataclass
class Outcome:
    """What processing a Graph call produced (before faults shape the response)."""

    status: int
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


class _Slot:
    """One request's share of its mailbox's concurrency; released exactly once."""

    def __init__(self, emulator: GraphRoutes, mailbox: str) -> None:
        self._emulator = emulator
        self._mailbox = mailbox
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._emulator._release_slot(self._mailbox)


class GraphRoutes(EmulatorState):
    """The request pipeline of ``/v1.0``; subclasses serve the operations (:meth:`_dispatch`)."""

    def _add_graph_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/v1.0/{tail:.*}", self._handle_graph)

    def _graph_headers(self, rec: RequestRecord) -> dict[str, str]:
        return {
            "request-id": rec.request_id,
            # Graph echoes the caller's id, or reuses its own request-id when none was sent.
            "client-request-id": rec.client_request_id or rec.request_id,
            "x-ms-ags-diagnostic": _AGS_DIAGNOSTIC,
            "Date": formatdate(usegmt=True),
            "Cache-Control": "no-cache",
            "Strict-Transport-Security": "max-age=31536000",
        }

    def _error_response(self, rec: RequestRecord, exc: GraphError) -> web.Response:
        body = {
            "error": {
                "code": exc.code,
                "message": exc.message,
                "innerError": {
                    "date": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
                    "request-id": rec.request_id,
                    "client-request-id": rec.client_request_id or rec.request_id,
                },
            }
        }
        headers = {**self._graph_headers(rec), **exc.headers, "Content-Type": _JSON_TYPE}
        return web.Response(status=exc.status, text=json.dumps(body), headers=headers)

    def _response(self, rec: RequestRecord, outcome: Outcome) -> web.Response:
        headers = {**self._graph_headers(rec), **outcome.headers}
        if outcome.body is None:
            return web.Response(status=outcome.status, headers=headers)
        headers["Content-Type"] = _JSON_TYPE
        return web.Response(status=outcome.status, text=json.dumps(outcome.body), headers=headers)

    def _check_token(self, request: web.Request) -> None:
        auth = request.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        headers = {"WWW-Authenticate": _WWW_AUTHENTICATE}
        if scheme.lower() != "bearer" or not token.strip():
            raise GraphError(401, "InvalidAuthenticationToken", "Access token is empty.", headers)
        with self._lock:
            record = self._tokens.get(token.strip())
        if record is None:
            raise GraphError(
                401,
                "InvalidAuthenticationToken",
                "IDX14100: JWT is not well formed; the token is not one this service issued.",
                headers,
            )
        if record.expires_at <= time.monotonic():
            raise GraphError(
                401,
                "InvalidAuthenticationToken",
                "Lifetime validation failed, the token is expired.",
                headers,
            )

    def _check_mailbox(self, mailbox: str) -> None:
        if mailbox in self._disabled:
            raise GraphError(
                404,
                "MailboxNotEnabledForRESTAPI",
                "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
            )
        if self._mailboxes is not None and mailbox not in self._mailboxes:
            raise GraphError(404, "ErrorInvalidUser", f"The requested user '{mailbox}' is invalid.")
        if mailbox in self._denied:
            raise GraphError(
                403,
                "ErrorAccessDenied",
                "Access to OData is disabled: [RAOP] : Blocked by tenant configured AppOnly "
                "AccessPolicy settings.",
            )

    def _acquire_slot(self, mailbox: str) -> _Slot:
        """Count one more request in flight; 429 ``ApplicationThrottled`` over the limit.

        The rejected request counts towards the observed maximum: it was concurrent.
        """
        with self._lock:
            n = self._in_flight.get(mailbox, 0) + 1
            self._max_in_flight[mailbox] = max(n, self._max_in_flight.get(mailbox, 0))
            if n > self.max_concurrency:
                throttled = self._concurrency_throttled.get(mailbox, 0) + 1
                self._concurrency_throttled[mailbox] = throttled
            else:
                self._in_flight[mailbox] = n
                return _Slot(self, mailbox)
        raise GraphError(
            429,
            "ApplicationThrottled",
            _CONCURRENCY_LIMIT_MESSAGE,
            {"Retry-After": str(self.concurrency_retry_after)},
        )

    def _admit_send(self, mailbox: str) -> None:
        """Count one send against the mailbox's message rate; 429 over ``sends_per_minute``.

        A send is counted when admitted, whatever becomes of it after (a fault, an
        error): the client cannot tell either, so it must count it too. A refused send
        is not counted and not processed (nothing is delivered). Retry-After is the
        whole seconds until the oldest send in the window leaves it.
        """
        limit = self.sends_per_minute
        if not limit:
            return
        with self._lock:
            now = self._clock()
            times = self._send_times.setdefault(mailbox, deque())
            while times and times[0] + _RATE_WINDOW_S <= now:
                times.popleft()
            if len(times) < limit:
                times.append(now)
                return
            self._rate_throttled[mailbox] = self._rate_throttled.get(mailbox, 0) + 1
            wait = times[len(times) - limit] + _RATE_WINDOW_S - now
        raise GraphError(
            429,
            _RATE_LIMIT_CODE,
            _RATE_LIMIT_MESSAGE,
            {"Retry-After": str(max(1, math.ceil(wait)))},
        )

    def _release_slot(self, mailbox: str) -> None:
        with self._lock:
            self._in_flight[mailbox] = self._in_flight.get(mailbox, 1) - 1

    async def _pause(self, seconds: float) -> None:
        """Sleep that ends early when the emulator stops (so shutdown never waits)."""
        assert self._stopping is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    @staticmethod
    def _route(method: str, tail: str) -> tuple[str, dict[str, str]]:
        path_matched = False
        for route_method, pattern, operation in _GRAPH_ROUTES:
            m = pattern.match(tail)
            if m is None:
                continue
            path_matched = True
            if route_method == method:
                return operation, m.groupdict()
        if path_matched:
            raise GraphError(405, "BadRequest", f"The HTTP method '{method}' is not allowed.")
        first = tail.split("/", 1)[0]
        raise GraphError(400, "BadRequest", f"Resource not found for the segment '{first}'.")

    # ------------------------------------------------------------------ Graph handler

    async def _handle_graph(self, request: web.Request) -> web.StreamResponse:
        rec = self._new_record(request, "graph")
        slot: _Slot | None = None
        try:
            self._check_token(request)
            operation, params = self._route(request.method, request.match_info["tail"])
            mailbox = params["user"].lower()
            with self._lock:
                rec.mailbox, rec.operation = mailbox, operation
            self._check_mailbox(mailbox)
            slot = self._acquire_slot(mailbox)
            if operation in _SEND_OPERATIONS:
                self._admit_send(mailbox)
            applied = self._faults.select(mailbox, operation)
            with self._lock:
                rec.faults = applied.kinds
            if applied.latency_s:
                await self._pause(applied.latency_s)
            return await self._run_with_faults(request, rec, slot, operation, params, applied)
        except GraphError as exc:
            self._finish(rec, exc.status, exc.code)
            self._log(rec)
            return self._error_response(rec, exc)
        finally:
            if slot is not None:
                slot.release()

    async def _run_with_faults(
        self,
        request: web.Request,
        rec: RequestRecord,
        slot: _Slot,
        operation: str,
        params: dict[str, str],
        applied: AppliedFaults,
    ) -> web.StreamResponse:
        fault = applied.outcome
        if fault is not None and fault.kind in _STATUS_FAULTS and not fault.delivers:
            raise self._fault_error(fault)
        outcome: Outcome | None = None
        if fault is None or fault.delivers:
            outcome = await self._dispatch(request, rec, operation, params, applied)
        if fault is None:
            assert outcome is not None
            self._finish(rec, outcome.status, None)
            self._log(rec)
            return self._response(rec, outcome)
        if fault.kind in _STATUS_FAULTS:
            # The work was done (a send went out); the caller is told it failed anyway.
            raise self._fault_error(fault)
        if fault.kind == "reset":
            return self._reset(request, rec)
        # timeout: the work is done, so the mailbox's concurrency slot is free again (a
        # client that gave up may rightly send more); only the response is withheld.
        slot.release()
        with self._lock:
            rec.outcome = "timeout"
        await self._pause(fault.hang_ms / 1000.0)
        if outcome is None:
            return self._reset(request, rec)
        self._finish(rec, outcome.status, None)
        self._log(rec)
        return self._response(rec, outcome)

    @staticmethod
    def _fault_error(fault: Fault) -> GraphError:
        if fault.kind == "throttle":
            message = (
                _CONCURRENCY_LIMIT_MESSAGE
                if fault.code == "ApplicationThrottled"
                else "The request has been throttled. Please retry after the indicated time."
            )
            return GraphError(429, fault.code, message, {"Retry-After": str(fault.retry_after)})
        if fault.kind == "unavailable":
            return GraphError(
                503,
                "ServiceNotAvailable",
                "Service is temporarily unavailable. Please retry later.",
                {"Retry-After": str(fault.retry_after)},
            )
        return GraphError(504, "UnknownError", "")

    def _reset(self, request: web.Request, rec: RequestRecord) -> web.Response:
        with self._lock:
            rec.outcome = "reset"
        self._finish(rec, None, None)
        self._log(rec)
        transport = request.transport
        if transport is not None:
            # abort(), not close(): no TLS close_notify and no flush, like a dropped link.
            transport.abort()
        # Never written: aiohttp treats the write to the aborted transport as a client
        # disconnect and drops it quietly (raising instead would log a 500 traceback).
        return web.Response(status=500)

    def _log(self, rec: RequestRecord) -> None:
        # Method, path (no query string), mailbox and status only: never bodies or tokens.
        logger.debug(
            "%s %s mailbox=%s status=%s outcome=%s faults=%s request-id=%s",
            rec.method,
            rec.path,
            rec.mailbox,
            rec.status,
            rec.outcome,
            ",".join(rec.faults) or "-",
            rec.request_id,
        )

    async def _dispatch(
        self,
        request: web.Request,
        rec: RequestRecord,
        operation: str,
        params: dict[str, str],
        applied: AppliedFaults,
    ) -> Outcome:
        """Run ``operation`` (one of :data:`~sendonce.emulator.faults.OPERATIONS`)."""
        raise NotImplementedError
