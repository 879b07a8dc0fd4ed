"""A Microsoft Graph + Entra ID emulator for tests, demos and staging.

An aiohttp server over HTTPS (a test CA generated with ``trustme``; point clients at
:attr:`GraphEmulator.ca_bundle_path`) that speaks the same paths as the real services, so
the real MSAL and a real Graph client work against it unpatched:

Entra ID (authority ``{base_url}/{tenant}``; MSAL needs ``instance_discovery=False``)
    ``GET /{tenant}/v2.0/.well-known/openid-configuration`` and
    ``POST /{tenant}/oauth2/v2.0/token`` (client credentials grant, authenticated by a
    client secret or a certificate-signed client assertion; opaque bearer tokens).

Graph (``{base_url}/v1.0``; every call needs a valid bearer token)
    ``POST /users/{sender}/sendMail`` -> 202;
    ``POST /users/{sender}/messages`` (draft; ``Prefer: IdType="ImmutableId"``) -> 201;
    ``POST /users/{sender}/messages/{id}/send`` -> 202;
    ``GET /users/{sender}/mailFolders/SentItems/messages?$filter=singleValueExtendedProperties/
    any(ep: ep/id eq '...' and ep/value eq '...')`` with ``$select``/``$expand``/``$top``.
    Responses carry ``request-id``, ``client-request-id``, ``Date`` and
    ``x-ms-ags-diagnostic``; errors have Graph's ``{"error": {"code", "message",
    "innerError"}}`` shape. More than ``max_concurrency`` (4) requests in flight for one
    mailbox are answered 429 ``ApplicationThrottled``, like Exchange Online.

Admin (plain JSON, no auth, for tests and chaos runs)
    ``GET /_admin/deliveries``, ``GET /_admin/requests``, ``GET /_admin/concurrency``,
    ``GET|POST|DELETE /_admin/faults``, ``DELETE /_admin/faults/{id}``,
    ``POST /_admin/reset``, ``POST /_admin/expire-tokens``; the same as methods.

Faults (latency, 429, 503, 504, accept-then-reset, accept-then-timeout, delivered-twice,
Sent Items visibility delay) are described in :mod:`connectors.graph.emulator_faults`.

The emulator never logs tokens, secrets, assertions or message bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from types import TracebackType
from typing import Any

import trustme
from aiohttp import web

from sendonce.connectors.graph.emulator_faults import AppliedFaults, Fault, FaultBook
from sendonce.connectors.graph.emulator_identity import (
    CLIENT_ASSERTION_TYPE,
    GRAPH_SCOPES,
    ClientCertificate,
    TokenEndpointError,
    discovery_document,
    token_error_body,
    verify_client_assertion,
    verify_client_secret,
)
from sendonce.connectors.graph.emulator_store import (
    Delivery,
    FilterError,
    RequestRecord,
    StoredMessage,
    TokenRecord,
    new_immutable_id,
    new_request_id,
    new_rest_id,
    now_ms,
    parse_expand,
    parse_property_filter,
    parse_select,
    property_name,
    valid_property_id,
)

__all__ = [
    "DEFAULT_CLIENT_ID",
    "DEFAULT_TENANT",
    "ClientCertificate",
    "EmulatorThread",
    "Fault",
    "GraphEmulator",
]

logger = logging.getLogger(__name__)

DEFAULT_TENANT = "11111111-2222-4333-8444-555555555555"
DEFAULT_CLIENT_ID = "22222222-3333-4444-8555-666666666666"
DEFAULT_KEY_PROPERTY_NAME = "SendonceIdempotencyKey"
CA_FILE = "graph-emulator-ca.pem"
CA_KEY_FILE = "graph-emulator-ca.key"

# Graph's JSON POST limit is 4 MB; larger messages need upload sessions.
_MAX_BODY = 4 * 1024 * 1024
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
_IMMUTABLE_PREFER = re.compile(r'idtype\s*=\s*"?immutableid"?', re.IGNORECASE)
_INTERNET_MESSAGE_ID = re.compile(r"^<[^<>@\s]+@[^<>@\s]+>$")
_ADDRESS = re.compile(r"^[^@\s<>]+@[^@\s<>]+$")
_WELL_KNOWN_EMPTY_FOLDERS = frozenset({"inbox", "deleteditems", "outbox", "archive", "junkemail"})
_ORDERBY = re.compile(
    r"^\s*(sentDateTime|createdDateTime|receivedDateTime)(?:\s+(asc|desc))?\s*$", re.IGNORECASE
)
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
        re.compile(r"^users/(?P<user>[^/]+)/mailfolders/(?P<folder>[^/]+)/messages$", re.I),
        "listMessages",
    ),
)


class _GraphError(Exception):
    """A Graph error response: status, ``error.code``, ``error.message``, extra headers."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(f"{status} {code}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


class _Slot:
    """One request's share of its mailbox's concurrency; released exactly once."""

    def __init__(self, emulator: GraphEmulator, mailbox: str) -> None:
        self._emulator = emulator
        self._mailbox = mailbox
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._emulator._release_slot(self._mailbox)


@dataclass
class _Outcome:
    """What processing a Graph call produced (before faults shape the response)."""

    status: int
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _ParsedMessage:
    subject: str
    to: list[dict[str, Any]]
    cc: list[dict[str, Any]]
    bcc: list[dict[str, Any]]
    body: dict[str, Any]
    internet_message_id: str | None
    extended: list[dict[str, str]]

    @property
    def recipients(self) -> list[dict[str, Any]]:
        return self.to + self.cc + self.bcc


def _addresses(recipients: Iterable[dict[str, Any]]) -> list[str]:
    return [str(r["emailAddress"]["address"]) for r in recipients]


class GraphEmulator:
    """Microsoft Graph mail + Entra ID app-only auth, over HTTPS, with fault injection.

    ``client_secrets`` and ``client_certificates`` register apps (client id -> secret, or
    client id -> certificate PEM / :class:`ClientCertificate`). With neither, one app is
    registered: :data:`DEFAULT_CLIENT_ID` with a random secret (see :attr:`client_secret`).
    ``mailboxes`` restricts the known mailboxes (others get 404 ``ErrorInvalidUser``);
    ``disabled_mailboxes`` get 404 ``MailboxNotEnabledForRESTAPI`` and ``denied_mailboxes``
    403 ``ErrorAccessDenied`` (an application access policy). ``ca_dir`` keeps the test CA
    (certificate and key) so a restarted emulator stays trusted; default: a temp dir.
    """

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
        faults: Iterable[Fault | Mapping[str, Any]] = (),
        seed: int = 0,
        ca_dir: str | os.PathLike[str] | None = None,
        tls_names: Iterable[str] = (),
        key_property_name: str = DEFAULT_KEY_PROPERTY_NAME,
    ) -> None:
        if token_lifetime <= 0:
            raise ValueError("token_lifetime must be positive")
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
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
        self.key_property_name = key_property_name
        self._seed = seed
        self._faults = FaultBook(
            (f if isinstance(f, Fault) else Fault.from_dict(f) for f in faults), seed=seed
        )

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
        self._seq = 0

        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._ca_bundle_path, ca = self._load_or_create_ca(ca_dir)
        names = ["127.0.0.1", "localhost", "::1", *tls_names]
        self._ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(*dict.fromkeys(names)).configure_cert(self._ssl_context)

        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None
        self._stopping: asyncio.Event | None = None

    # ------------------------------------------------------------------ lifecycle

    def _load_or_create_ca(self, ca_dir: str | os.PathLike[str] | None) -> tuple[Path, trustme.CA]:
        if ca_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="graph-emulator-")
            ca = trustme.CA(organization_name="sendonce Graph emulator")
            path = Path(self._tmp.name) / CA_FILE
            ca.cert_pem.write_to_path(str(path))
            return path, ca
        directory = Path(ca_dir)
        directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = directory / CA_FILE, directory / CA_KEY_FILE
        if cert_path.exists() and key_path.exists():
            # Reuse the CA so clients configured with this bundle keep trusting restarts.
            return cert_path, trustme.CA.from_pem(cert_path.read_bytes(), key_path.read_bytes())
        ca = trustme.CA(organization_name="sendonce Graph emulator")
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(ca.private_key_pem.bytes())
        ca.cert_pem.write_to_path(str(cert_path))
        return cert_path, ca

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port`` (0 = a free port) over HTTPS."""
        if self._runner is not None:
            raise RuntimeError("the emulator is already running")
        self._stopping = asyncio.Event()
        app = web.Application(client_max_size=_MAX_BODY)
        app.router.add_get(
            "/{tenant}/v2.0/.well-known/openid-configuration", self._handle_discovery
        )
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self._handle_token)
        self._add_admin_routes(app)
        app.router.add_route("*", "/v1.0/{tail:.*}", self._handle_graph)
        # No access log: request lines carry query strings, and the emulator keeps its
        # own records (admin API) and logs without them.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=self._ssl_context)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_port = runner.addresses[0][1]
        url_host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
        if ":" in url_host:
            url_host = f"[{url_host}]"
        self._base_url = f"https://{url_host}:{bound_port}"
        logger.info("Graph emulator listening on %s (tenant %s)", self._base_url, self.tenant)

    async def stop(self) -> None:
        """Stop serving; requests held by a ``timeout`` fault are released first."""
        if self._stopping is not None:
            self._stopping.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> GraphEmulator:
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def run_in_thread(self, host: str = "127.0.0.1", port: int = 0) -> EmulatorThread:
        """Serve from a daemon thread with its own event loop (for synchronous callers)."""
        return EmulatorThread(self, host, port)

    # ------------------------------------------------------------------ addresses

    @property
    def base_url(self) -> str:
        """``https://127.0.0.1:PORT`` once started."""
        if self._base_url is None:
            raise RuntimeError("the emulator is not started")
        return self._base_url

    @property
    def graph_url(self) -> str:
        """Graph's versioned root, ``{base_url}/v1.0``."""
        return f"{self.base_url}/v1.0"

    def authority(self, tenant: str | None = None) -> str:
        """The MSAL authority for ``tenant`` (default: the emulator's tenant)."""
        return f"{self.base_url}/{tenant or self.tenant}"

    @property
    def ca_bundle_path(self) -> Path:
        """PEM file of the test CA that signed the server certificate."""
        return self._ca_bundle_path

    @property
    def client_id(self) -> str:
        """The first registered client id (the default app when none were given)."""
        return next(iter(self._secrets), None) or next(iter(self._certificates))

    @property
    def client_secret(self) -> str | None:
        """The secret of :attr:`client_id`, if it has one (for tests and the CLI)."""
        return self._secrets.get(self.client_id)

    # ------------------------------------------------------------------ admin (Python)

    def deliveries(
        self, mailbox: str | None = None, key: str | None = None
    ) -> list[dict[str, Any]]:
        """Every delivery, oldest first, optionally for one mailbox and/or key."""
        with self._lock:
            out = [d.to_dict() for d in self._deliveries]
        if mailbox is not None:
            out = [d for d in out if d["mailbox"] == mailbox.lower()]
        if key is not None:
            out = [d for d in out if d["idempotency_key"] == key]
        return out

    def requests(self, kind: str = "graph", mailbox: str | None = None) -> list[dict[str, Any]]:
        """Request records of ``kind`` (graph, token, discovery or all), oldest first."""
        with self._lock:
            out = [r.to_dict() for r in self._requests if kind in ("all", r.kind)]
        if mailbox is not None:
            out = [r for r in out if r["mailbox"] == mailbox.lower()]
        return out

    def worker_env(self) -> dict[str, str]:
        """``SENDONCE_*`` variables that point a worker's Graph provider at this emulator."""
        return {
            "SENDONCE_PROVIDER": "graph",
            "SENDONCE_GRAPH_TENANT_ID": self.tenant,
            "SENDONCE_GRAPH_CLIENT_ID": self.client_id,
            "SENDONCE_GRAPH_CLIENT_SECRET": self.client_secret or "",
            "SENDONCE_GRAPH_AUTHORITY": self.authority(),
            "SENDONCE_GRAPH_URL": self.graph_url,
            "SENDONCE_GRAPH_CA_BUNDLE": str(self.ca_bundle_path),
        }

    def sensitive_values(self) -> set[str]:
        """Client secrets, issued access tokens and message bodies this emulator has seen.

        For leak tests: none of these may appear in any log record.
        """
        with self._lock:
            return set(self._sensitive)

    def concurrency(self) -> dict[str, Any]:
        """Observed maximum in-flight requests per mailbox and the 429s it caused."""
        with self._lock:
            return {
                "limit": self.max_concurrency,
                "max_in_flight": dict(self._max_in_flight),
                "in_flight": {k: v for k, v in self._in_flight.items() if v},
                "throttled": dict(self._concurrency_throttled),
            }

    def faults(self) -> list[dict[str, Any]]:
        """The fault rules with their remaining counts."""
        return [f.to_dict() for f in self._faults.list()]

    def add_fault(self, fault: Fault | Mapping[str, Any]) -> int:
        """Add a fault rule; returns its id."""
        return self._faults.add(fault if isinstance(fault, Fault) else Fault.from_dict(fault))

    def set_faults(self, faults: Iterable[Fault | Mapping[str, Any]]) -> list[int]:
        """Replace every fault rule."""
        parsed = [f if isinstance(f, Fault) else Fault.from_dict(f) for f in faults]
        self._faults.clear()
        return [self._faults.add(f) for f in parsed]

    def remove_fault(self, fault_id: int) -> bool:
        """Remove one fault rule."""
        return self._faults.remove(fault_id)

    def clear_faults(self) -> None:
        """Remove every fault rule."""
        self._faults.clear()

    def reset(self, seed: int | None = None) -> None:
        """Forget messages, deliveries, records, concurrency stats and faults; reseed.

        Issued tokens stay valid: clients keep their cached tokens across test cases.
        """
        self._faults.clear()
        self._faults.reseed(self._seed if seed is None else seed)
        with self._lock:
            self._messages.clear()
            self._deliveries.clear()
            self._requests.clear()
            self._max_in_flight = {k: v for k, v in self._in_flight.items() if v}
            self._concurrency_throttled.clear()

    def expire_tokens(self) -> int:
        """Make every issued access token invalid (Graph then answers 401); returns count."""
        with self._lock:
            live = {t: r for t, r in self._tokens.items() if r.expires_at > time.monotonic()}
            for token, record in live.items():
                # Kept (not dropped) so Graph answers "expired", as it does for an old token.
                self._tokens[token] = TokenRecord(record.client_id, expires_at=0.0)
        return len(live)

    # ------------------------------------------------------------------ admin (HTTP)

    def _add_admin_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/_admin/deliveries", self._admin_deliveries)
        r.add_get("/_admin/requests", self._admin_requests)
        r.add_get("/_admin/concurrency", self._admin_concurrency)
        r.add_get("/_admin/faults", self._admin_faults_get)
        r.add_post("/_admin/faults", self._admin_faults_post)
        r.add_delete("/_admin/faults", self._admin_faults_delete)
        r.add_delete("/_admin/faults/{id}", self._admin_fault_delete)
        r.add_post("/_admin/reset", self._admin_reset)
        r.add_post("/_admin/expire-tokens", self._admin_expire_tokens)

    async def _admin_deliveries(self, request: web.Request) -> web.Response:
        q = request.query
        return web.json_response(self.deliveries(q.get("mailbox"), q.get("key")))

    async def _admin_requests(self, request: web.Request) -> web.Response:
        q = request.query
        return web.json_response(self.requests(q.get("kind", "graph"), q.get("mailbox")))

    async def _admin_concurrency(self, request: web.Request) -> web.Response:
        return web.json_response(self.concurrency())

    async def _admin_faults_get(self, request: web.Request) -> web.Response:
        return web.json_response(self.faults())

    async def _admin_faults_post(self, request: web.Request) -> web.Response:
        """Body: one fault object, a list, or ``{"faults": [...]}``; ``?replace=1`` replaces."""
        try:
            data = await request.json()
            if isinstance(data, dict) and "faults" in data:
                data = data["faults"]
            items = data if isinstance(data, list) else [data]
            parsed = [Fault.from_dict(item) for item in items]
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if request.query.get("replace", "").lower() in ("1", "true", "yes"):
            ids = self.set_faults(parsed)
        else:
            ids = [self.add_fault(f) for f in parsed]
        return web.json_response({"ids": ids})

    async def _admin_faults_delete(self, request: web.Request) -> web.Response:
        self.clear_faults()
        return web.json_response({"cleared": True})

    async def _admin_fault_delete(self, request: web.Request) -> web.Response:
        try:
            fault_id = int(request.match_info["id"])
        except ValueError:
            return web.json_response({"error": "fault id must be an integer"}, status=400)
        if not self.remove_fault(fault_id):
            return web.json_response({"error": "no such fault"}, status=404)
        return web.json_response({"removed": fault_id})

    async def _admin_reset(self, request: web.Request) -> web.Response:
        seed: int | None = None
        if request.can_read_body:
            try:
                data = await request.json()
                seed = None if data.get("seed") is None else int(data["seed"])
            except (ValueError, TypeError, AttributeError) as exc:
                return web.json_response({"error": str(exc)}, status=400)
        self.reset(seed)
        return web.json_response({"reset": True})

    async def _admin_expire_tokens(self, request: web.Request) -> web.Response:
        return web.json_response({"expired": self.expire_tokens()})

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

    # ------------------------------------------------------------------ Entra ID

    def _tenant_matches(self, tenant: str) -> bool:
        return tenant.lower() == self.tenant.lower()

    def _public_base(self, request: web.Request) -> str:
        # The host the client used, so discovery and assertion audiences match its view
        # (127.0.0.1, localhost, or a staging host name given in tls_names).
        return f"https://{request.host}"

    async def _handle_discovery(self, request: web.Request) -> web.Response:
        rec = self._new_record(request, "discovery")
        tenant = request.match_info["tenant"]
        if not self._tenant_matches(tenant):
            exc = TokenEndpointError(
                400,
                "invalid_tenant",
                90002,
                f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant "
                "ID and are signing into the correct cloud.",
            )
            return self._token_error(request, rec, exc)
        self._finish(rec, 200, None)
        return web.json_response(discovery_document(self._public_base(request), tenant))

    def _token_error(
        self, request: web.Request, rec: RequestRecord, exc: TokenEndpointError
    ) -> web.Response:
        correlation = request.headers.get("client-request-id") or str(uuid.uuid4())
        body = token_error_body(
            exc, base_url=self._public_base(request), correlation_id=correlation
        )
        self._finish(rec, exc.status, f"AADSTS{exc.aadsts}")
        logger.info(
            "token request refused: client_id=%s AADSTS%s %s",
            rec.client_id,
            exc.aadsts,
            exc.error,
        )
        return web.json_response(body, status=exc.status, headers={"Cache-Control": "no-store"})

    async def _handle_token(self, request: web.Request) -> web.Response:
        rec = self._new_record(request, "token")
        try:
            form = await request.post()
            tenant = request.match_info["tenant"]
            if not self._tenant_matches(tenant):
                raise TokenEndpointError(
                    400, "invalid_request", 90002, f"Tenant '{tenant}' not found."
                )
            grant = str(form.get("grant_type", ""))
            if grant != "client_credentials":
                raise TokenEndpointError(
                    400,
                    "unsupported_grant_type",
                    70003,
                    f"The app requested an unsupported grant type '{grant}'.",
                )
            client_id = str(form.get("client_id", ""))
            rec.client_id = client_id or None
            if not client_id:
                raise TokenEndpointError(
                    400,
                    "invalid_request",
                    900144,
                    "The request body must contain the following parameter: 'client_id'.",
                )
            if client_id not in self._secrets and client_id not in self._certificates:
                raise TokenEndpointError(
                    400,
                    "unauthorized_client",
                    700016,
                    f"Application with identifier '{client_id}' was not found in the directory "
                    f"'{self.tenant}'.",
                )
            self._authenticate_client(request, form, client_id, tenant)
            scopes = str(form.get("scope", "")).split()
            if len(scopes) != 1 or scopes[0].lower() not in GRAPH_SCOPES:
                raise TokenEndpointError(
                    400,
                    "invalid_scope",
                    1002012,
                    f"The provided value for scope {' '.join(scopes)!r} is not valid. Client "
                    "credential flows must have a scope value with /.default suffixed to the "
                    "resource identifier (application ID URI).",
                )
        except TokenEndpointError as exc:
            return self._token_error(request, rec, exc)
        token = secrets.token_urlsafe(48)
        with self._lock:
            self._sensitive.add(token)
            self._tokens[token] = TokenRecord(
                client_id=client_id, expires_at=time.monotonic() + self.token_lifetime
            )
        self._finish(rec, 200, None)
        logger.info("token issued: client_id=%s expires_in=%s", client_id, self.token_lifetime)
        return web.json_response(
            {
                "token_type": "Bearer",
                "expires_in": self.token_lifetime,
                "ext_expires_in": self.token_lifetime,
                "access_token": token,
            },
            headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
        )

    def _authenticate_client(
        self, request: web.Request, form: Mapping[str, Any], client_id: str, tenant: str
    ) -> None:
        secret = form.get("client_secret")
        assertion = form.get("client_assertion")
        if secret:
            registered = [self._secrets[client_id]] if client_id in self._secrets else []
            verify_client_secret(str(secret), registered)
            return
        if assertion:
            if form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
                raise TokenEndpointError(
                    400,
                    "invalid_request",
                    50027,
                    "The client_assertion_type must be "
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer.",
                )
            cert = self._certificates.get(client_id)
            token_endpoint = f"{self._public_base(request)}/{tenant}/oauth2/v2.0/token"
            verify_client_assertion(
                str(assertion),
                client_id=client_id,
                certificates=[cert] if cert else [],
                audiences=[token_endpoint],
            )
            return
        raise TokenEndpointError(
            401,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or "
            "'client_secret'.",
        )

    # ------------------------------------------------------------------ Graph plumbing

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

    def _error_response(self, rec: RequestRecord, exc: _GraphError) -> web.Response:
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

    def _response(self, rec: RequestRecord, outcome: _Outcome) -> web.Response:
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
            raise _GraphError(401, "InvalidAuthenticationToken", "Access token is empty.", headers)
        with self._lock:
            record = self._tokens.get(token.strip())
        if record is None:
            raise _GraphError(
                401,
                "InvalidAuthenticationToken",
                "IDX14100: JWT is not well formed; the token is not one this service issued.",
                headers,
            )
        if record.expires_at <= time.monotonic():
            raise _GraphError(
                401,
                "InvalidAuthenticationToken",
                "Lifetime validation failed, the token is expired.",
                headers,
            )

    def _check_mailbox(self, mailbox: str) -> None:
        if mailbox in self._disabled:
            raise _GraphError(
                404,
                "MailboxNotEnabledForRESTAPI",
                "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
            )
        if self._mailboxes is not None and mailbox not in self._mailboxes:
            raise _GraphError(
                404, "ErrorInvalidUser", f"The requested user '{mailbox}' is invalid."
            )
        if mailbox in self._denied:
            raise _GraphError(
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
        raise _GraphError(
            429,
            "ApplicationThrottled",
            "Application is over its MailboxConcurrency limit.",
            {"Retry-After": str(self.concurrency_retry_after)},
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
            raise _GraphError(405, "BadRequest", f"The HTTP method '{method}' is not allowed.")
        first = tail.split("/", 1)[0]
        raise _GraphError(400, "BadRequest", f"Resource not found for the segment '{first}'.")

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
            applied = self._faults.select(mailbox, operation)
            with self._lock:
                rec.faults = applied.kinds
            if applied.latency_s:
                await self._pause(applied.latency_s)
            return await self._run_with_faults(request, rec, slot, operation, params, applied)
        except _GraphError as exc:
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
        outcome: _Outcome | None = None
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
    def _fault_error(fault: Fault) -> _GraphError:
        if fault.kind == "throttle":
            message = (
                "Application is over its MailboxConcurrency limit."
                if fault.code == "ApplicationThrottled"
                else "The request has been throttled. Please retry after the indicated time."
            )
            return _GraphError(429, fault.code, message, {"Retry-After": str(fault.retry_after)})
        if fault.kind == "unavailable":
            return _GraphError(
                503,
                "ServiceNotAvailable",
                "Service is temporarily unavailable. Please retry later.",
                {"Retry-After": str(fault.retry_after)},
            )
        return _GraphError(504, "UnknownError", "")

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

    # ------------------------------------------------------------------ Graph operations

    async def _dispatch(
        self,
        request: web.Request,
        rec: RequestRecord,
        operation: str,
        params: dict[str, str],
        applied: AppliedFaults,
    ) -> _Outcome:
        mailbox = params["user"].lower()
        immutable = any(_IMMUTABLE_PREFER.search(v) for v in request.headers.getall("Prefer", []))
        if operation == "listMessages":
            return self._list_messages(request, mailbox, params.get("folder"), immutable)
        body = await self._read_json(request)
        if operation == "sendMail":
            return self._send_mail(rec, mailbox, body, applied)
        if operation == "createMessage":
            return self._create_message(request, mailbox, body, immutable)
        return self._send_draft(rec, mailbox, params["id"], applied)

    @staticmethod
    async def _read_json(request: web.Request) -> dict[str, Any]:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise _GraphError(
                413, "RequestEntityTooLarge", "The request payload exceeds 4 MB."
            ) from None
        except ConnectionResetError:
            # The client went away mid-body (a worker SIGKILLed by the torture
            # harness): nothing was sent, and no traceback belongs in the log.
            raise _GraphError(400, "BadRequest", "The request body was cut off.") from None
        if not raw.strip():
            return {}
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise _GraphError(
                400,
                "BadRequest",
                "Unable to read JSON request payload. Please ensure Content-Type header is set "
                "and payload is of valid JSON format.",
            ) from None
        if not isinstance(data, dict):
            raise _GraphError(400, "BadRequest", "The request payload must be a JSON object.")
        return data

    def _parse_message(self, data: Any, *, require_recipients: bool) -> _ParsedMessage:
        if not isinstance(data, dict):
            raise _GraphError(
                400, "ErrorInvalidRequest", "The request is invalid: 'message' is required."
            )
        lists: dict[str, list[dict[str, Any]]] = {}
        for name in ("toRecipients", "ccRecipients", "bccRecipients"):
            value = data.get(name, [])
            if value is None:
                value = []
            if not isinstance(value, list):
                raise _GraphError(400, "ErrorInvalidRecipients", f"'{name}' must be a list.")
            for recipient in value:
                address = (
                    recipient.get("emailAddress", {}).get("address")
                    if isinstance(recipient, dict)
                    and isinstance(recipient.get("emailAddress"), dict)
                    else None
                )
                if not isinstance(address, str) or not _ADDRESS.match(address):
                    raise _GraphError(
                        400,
                        "ErrorInvalidRecipients",
                        f"At least one recipient isn't valid., Recipient '{address}' isn't "
                        "resolved. All recipients must be resolved before a message can be "
                        "submitted.",
                    )
            lists[name] = [
                {"emailAddress": {"name": r["emailAddress"].get("name", ""), "address": a}}
                for r in value
                for a in [r["emailAddress"]["address"]]
            ]
        if require_recipients and not any(lists.values()):
            raise _GraphError(
                400,
                "ErrorInvalidRecipients",
                "At least one recipient is required, but none were found.",
            )
        subject = data.get("subject", "")
        if not isinstance(subject, str):
            raise _GraphError(400, "ErrorInvalidRequest", "'subject' must be a string.")
        body = data.get("body", {"contentType": "text", "content": ""})
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("content", ""), str)
            or str(body.get("contentType", "text")).lower() not in ("text", "html")
        ):
            raise _GraphError(
                400, "ErrorInvalidRequest", "'body' must have contentType text or html."
            )
        imid = data.get("internetMessageId")
        if imid is not None and (not isinstance(imid, str) or not _INTERNET_MESSAGE_ID.match(imid)):
            raise _GraphError(
                400,
                "ErrorInvalidInternetMessageHeader",
                "The internetMessageId must have the form <local-part@domain>.",
            )
        props = data.get("singleValueExtendedProperties", [])
        if not isinstance(props, list) or not all(
            isinstance(p, dict)
            and isinstance(p.get("id"), str)
            and isinstance(p.get("value"), str)
            and valid_property_id(p["id"])
            for p in props
        ):
            raise _GraphError(
                400,
                "ErrorInvalidProperty",
                "The extended property attribute combination is invalid.",
            )
        return _ParsedMessage(
            subject=subject,
            to=lists["toRecipients"],
            cc=lists["ccRecipients"],
            bcc=lists["bccRecipients"],
            body={
                "contentType": str(body.get("contentType", "text")),
                "content": body.get("content", ""),
            },
            internet_message_id=imid,
            extended=[{"id": p["id"], "value": p["value"]} for p in props],
        )

    def _new_message(self, mailbox: str, parsed: _ParsedMessage, folder: Any) -> StoredMessage:
        content = parsed.body.get("content") if isinstance(parsed.body, dict) else None
        if isinstance(content, str) and content.strip():
            with self._lock:
                self._sensitive.add(content)
        return StoredMessage(
            mailbox=mailbox,
            rest_id=new_rest_id(),
            immutable_id=new_immutable_id(),
            folder=folder,
            created_s=time.time(),
            subject=parsed.subject,
            internet_message_id=parsed.internet_message_id
            or f"<{secrets.token_hex(16).upper()}@emulator>",
            to=parsed.to,
            cc=parsed.cc,
            bcc=parsed.bcc,
            body=parsed.body,
            extended=parsed.extended,
        )

    def _record_delivery(
        self, rec: RequestRecord, msg: StoredMessage, operation: str, duplicate: bool
    ) -> None:
        key = next(
            (
                p["value"]
                for p in msg.extended
                if (property_name(p["id"]) or "").lower() == self.key_property_name.lower()
            ),
            None,
        )
        self._deliveries.append(
            Delivery(
                seq=len(self._deliveries) + 1,
                mailbox=msg.mailbox,
                idempotency_key=key,
                internet_message_id=msg.internet_message_id,
                message_id=msg.rest_id,
                immutable_id=msg.immutable_id,
                request_id=rec.request_id,
                client_request_id=rec.client_request_id or rec.request_id,
                timestamp_ms=now_ms(),
                operation=operation,
                transport_duplicate=duplicate,
                recipients=_addresses(msg.to + msg.cc + msg.bcc),
                subject=msg.subject,
                extended_properties={p["id"]: p["value"] for p in msg.extended},
            )
        )

    def _send_mail(
        self, rec: RequestRecord, mailbox: str, body: dict[str, Any], applied: AppliedFaults
    ) -> _Outcome:
        parsed = self._parse_message(body.get("message"), require_recipients=True)
        save = body.get("saveToSentItems", True)
        if not isinstance(save, bool):
            raise _GraphError(400, "ErrorInvalidRequest", "'saveToSentItems' must be a boolean.")
        sent = self._new_message(mailbox, parsed, "sentitems")
        copies = [sent]
        if applied.duplicate:
            # The transport's second copy is the same message: same internet message id.
            twin = self._new_message(mailbox, parsed, "sentitems")
            twin.internet_message_id = sent.internet_message_id
            copies.append(twin)
        with self._lock:
            for i, msg in enumerate(copies):
                msg.sent_s = time.time()
                msg.visible_at = time.monotonic() + applied.visibility_delay_s
                if save:
                    self._messages.setdefault(mailbox, []).append(msg)
                self._record_delivery(rec, msg, "sendMail", duplicate=i > 0)
        return _Outcome(status=202)

    def _create_message(
        self, request: web.Request, mailbox: str, body: dict[str, Any], immutable: bool
    ) -> _Outcome:
        try:
            # Like Graph, extended properties come back only when $expand asks for them.
            expand = parse_expand(request.query.get("$expand"))
        except FilterError as exc:
            raise _GraphError(400, "BadRequest", str(exc)) from None
        parsed = self._parse_message(body, require_recipients=False)
        msg = self._new_message(mailbox, parsed, "drafts")
        with self._lock:
            self._messages.setdefault(mailbox, []).append(msg)
        out = msg.graph_json(immutable=immutable, select=None, expand=expand)
        out = {
            "@odata.context": f"{self._graph_root()}/$metadata#users('{mailbox}')/messages/$entity",
            **out,
        }
        headers = {"Preference-Applied": 'IdType="ImmutableId"'} if immutable else {}
        location = f"{self._graph_root()}/users/{mailbox}/messages/{out['id']}"
        headers["Location"] = location
        return _Outcome(status=201, body=out, headers=headers)

    def _send_draft(
        self, rec: RequestRecord, mailbox: str, message_id: str, applied: AppliedFaults
    ) -> _Outcome:
        with self._lock:
            msg = next(
                (
                    m
                    for m in self._messages.get(mailbox, [])
                    if m.folder == "drafts" and m.matches_id(message_id)
                ),
                None,
            )
            if msg is None:
                raise _GraphError(
                    404, "ErrorItemNotFound", "The specified object was not found in the store."
                )
            if not (msg.to or msg.cc or msg.bcc):
                raise _GraphError(
                    400,
                    "ErrorInvalidRecipients",
                    "At least one recipient is required, but none were found.",
                )
            # Moving to Sent Items gives a new REST id; the immutable id stays.
            msg.folder = "sentitems"
            msg.rest_id = new_rest_id()
            msg.sent_s = msg.modified_s = time.time()
            msg.visible_at = time.monotonic() + applied.visibility_delay_s
            self._record_delivery(rec, msg, "sendDraft", duplicate=False)
            if applied.duplicate:
                self._record_delivery(rec, msg, "sendDraft", duplicate=True)
        return _Outcome(status=202)

    def _graph_root(self) -> str:
        return self._base_url + "/v1.0" if self._base_url else "/v1.0"

    def _list_messages(
        self, request: web.Request, mailbox: str, folder: str | None, immutable: bool
    ) -> _Outcome:
        q = request.query
        known = {"$filter", "$select", "$expand", "$top", "$skip", "$orderby"}
        unknown = [k for k in q if k.startswith("$") and k.lower() not in known]
        if unknown:
            raise _GraphError(400, "BadRequest", f"Query option '{unknown[0]}' is not supported.")
        try:
            flt = parse_property_filter(q["$filter"]) if "$filter" in q else None
            select = parse_select(q.get("$select"))
            expand = parse_expand(q.get("$expand"))
            top = int(q.get("$top", "10"))
            skip = int(q.get("$skip", "0"))
        except FilterError as exc:
            raise _GraphError(400, "BadRequest", str(exc)) from None
        except ValueError:
            raise _GraphError(400, "BadRequest", "$top and $skip must be integers.") from None
        if not 1 <= top <= 1000 or skip < 0:
            raise _GraphError(400, "BadRequest", "$top must be 1..1000 and $skip >= 0.")
        order_field, descending = "receivedDateTime", True
        if "$orderby" in q:
            m = _ORDERBY.match(q["$orderby"])
            if m is None:
                raise _GraphError(400, "BadRequest", "Unsupported $orderby.")
            order_field = m.group(1)
            descending = (m.group(2) or "asc").lower() == "desc"
        folder_key = folder.lower() if folder is not None else None
        if folder_key is not None and folder_key not in ("sentitems", "drafts"):
            if folder_key in _WELL_KNOWN_EMPTY_FOLDERS:
                return _Outcome(status=200, body={"value": []})
            raise _GraphError(400, "ErrorInvalidIdMalformed", "Id is malformed.")
        now = time.monotonic()
        with self._lock:
            candidates = [
                m
                for m in self._messages.get(mailbox, [])
                if (folder_key is None or m.folder == folder_key)
                and (m.folder != "sentitems" or m.visible_at <= now)
                and (flt is None or flt.matches(m.extended))
            ]
            rendered_all = [
                (m, m.graph_json(immutable=immutable, select=select, expand=expand))
                for m in candidates
            ]

        def sort_key(pair: tuple[StoredMessage, dict[str, Any]]) -> float:
            m = pair[0]
            if order_field.lower() == "createddatetime":
                return m.created_s
            return m.sent_s or m.created_s

        rendered_all.sort(key=sort_key, reverse=descending)
        page = [r for _, r in rendered_all[skip : skip + top]]
        segment = "messages" if folder is None else f"mailFolders('{folder}')/messages"
        body: dict[str, Any] = {
            "@odata.context": f"{self._graph_root()}/$metadata#users('{mailbox}')/{segment}",
            "value": page,
        }
        if skip + top < len(rendered_all):
            next_url = request.url.update_query({"$skip": str(skip + top)})
            body["@odata.nextLink"] = f"{self._public_base(request)}{next_url.path_qs}"
        headers = {"Preference-Applied": 'IdType="ImmutableId"'} if immutable else {}
        return _Outcome(status=200, body=body, headers=headers)


class EmulatorThread:
    """A :class:`GraphEmulator` serving from a daemon thread with its own event loop."""

    def __init__(self, emulator: GraphEmulator, host: str = "127.0.0.1", port: int = 0) -> None:
        self.emulator = emulator
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(host, port), name="graph-emulator", daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error

    def _run(self, host: str, port: int) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.emulator.start(host, port))
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            self._loop.close()
            return
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server and the thread (idempotent)."""
        if not self._thread.is_alive():
            return
        fut = asyncio.run_coroutine_threadsafe(self.emulator.stop(), self._loop)
        fut.result(timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)

    def __enter__(self) -> GraphEmulator:
        return self.emulator

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
