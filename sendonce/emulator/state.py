"""What every part of the Graph emulator shares: its configuration and its memory.

:class:`EmulatorState` is the base of the emulator's parts (identity, Graph routes and
mail, admin API; :class:`~sendonce.emulator.server.GraphEmulator` combines them). It
holds the registered apps, the mailbox policy, the fault book, and everything the
emulator remembers (tokens, messages, deliveries, request records, concurrency counts,
send times)
behind one lock, plus the request-record bookkeeping every handler does. Keeping the
state in one place is what lets the admin API see exactly what the handlers did.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from aiohttp import web

from sendonce.emulator.credentials import ClientCertificate
from sendonce.emulator.faults import Fault, FaultBook
from sendonce.emulator.store import (
    Delivery,
    RequestRecord,
    StoredMessage,
    TokenRecord,
    new_request_id,
    now_ms,
)

__all__ = ["DEFAULT_CLIENT_ID", "DEFAULT_KEY_PROPERTY_NAME", "DEFAULT_TENANT", "EmulatorState"]

DEFAULT_TENANT = "11111111-2222-4333-8444-555555555555"
DEFAULT_CLIENT_ID = "22222222-3333-4444-8555-666666666666"
DEFAULT_KEY_PROPERTY_NAME = "SendonceIdempotencyKey"


class EmulatorState:
    """Configuration and state of one emulator; see :class:`GraphEmulator` for the options."""

    def __init__(
        self,
        *,
        tenant: str = DEFAULT_TENANT,
        client_secrets: Mapping[str, str] | None = None,
        client_certificates: Mapping[str, ClientCertificate | str | bytes] | None = None,
        mailboxes: Iterable[str] | None = None,
        disabled_mailboxes: Iterable[str] = (),
        denied_mailboxes: Iterable[str] = (),
        token_lifetime: int = 3599,
        max_concurrency: int = 4,
        concurrency_retry_after: int = 1,
        sends_per_minute: int = 30,
        faults: Iterable[Fault | Mapping[str, Any]] = (),
        seed: int = 0,
        key_property_name: str = DEFAULT_KEY_PROPERTY_NAME,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if token_lifetime <= 0:
            raise ValueError("token_lifetime must be positive")
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        if sends_per_minute < 0:
            raise ValueError("sends_per_minute must be >= 0 (0: no cap)")
        self.tenant = tenant
        secrets_by_app = dict(client_secrets or {})
        certs_by_app = {
            app: c if isinstance(c, ClientCertificate) else ClientCertificate.from_pem(c)
            for app, c in (client_certificates or {}).items()
        }
        if not secrets_by_app and not certs_by_app:
            secrets_by_app[DEFAULT_CLIENT_ID] = secrets.token_urlsafe(24)
        self._secrets = secrets_by_app
        self._certificates = certs_by_app
        self._mailboxes = None if mailboxes is None else {m.lower() for m in mailboxes}
        self._disabled = {m.lower() for m in disabled_mailboxes}
        self._denied = {m.lower() for m in denied_mailboxes}
        self.token_lifetime = token_lifetime
        self.max_concurrency = max_concurrency
        self.concurrency_retry_after = concurrency_retry_after
        #: Exchange Online's message rate limit per mailbox; 0 lifts it.
        self.sends_per_minute = sends_per_minute
        #: Monotonic seconds for the send-rate window (injectable for tests).
        self._clock = clock
        self.key_property_name = key_property_name
        self._seed = seed
        self._faults = FaultBook((Fault.coerce(f) for f in faults), seed=seed)

        # One lock for all state: handlers run on the server's loop, admin methods may be
        # called from another thread (run_in_thread); no awaits happen while it is held.
        self._lock = threading.Lock()
        self._tokens: dict[str, TokenRecord] = {}
        # Everything that must never appear in a log, kept across reset(), so a
        # test can prove that nothing it saw leaked (see sensitive_values()).
        self._sensitive: set[str] = set(secrets_by_app.values())
        self._messages: dict[str, list[StoredMessage]] = {}
        self._deliveries: list[Delivery] = []
        self._requests: list[RequestRecord] = []
        self._in_flight: dict[str, int] = {}
        self._max_in_flight: dict[str, int] = {}
        self._concurrency_throttled: dict[str, int] = {}
        #: Arrival times of the sends admitted in the last minute, per mailbox.
        self._send_times: dict[str, deque[float]] = {}
        self._rate_throttled: dict[str, int] = {}
        self._seq = 0

        # Set by the server while it listens.
        self._base_url: str | None = None
        self._stopping: asyncio.Event | None = None

    # ------------------------------------------------------------------ records

    def _new_record(self, request: web.Request, kind: Any) -> RequestRecord:
        with self._lock:
            self._seq += 1
            rec = RequestRecord(
                seq=self._seq,
                kind=kind,
                method=request.method,
                path=request.path,
                request_id=new_request_id(),
                client_request_id=request.headers.get("client-request-id"),
                start_ms=now_ms(),
            )
            self._requests.append(rec)
        return rec

    def _finish(self, rec: RequestRecord, status: int | None, error_code: str | None) -> None:
        with self._lock:
            rec.status = status
            rec.error_code = error_code
            rec.end_ms = now_ms()

    def _public_base(self, request: web.Request) -> str:
        # The host the client used, so discovery and assertion audiences match its view
        # (127.0.0.1, localhost, or a staging host name given in tls_names).
        return f"https://{request.host}"
