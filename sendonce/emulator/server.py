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
    mailbox are answered 429 ``ApplicationThrottled``, like Exchange Online; more than
    ``sends_per_minute`` (30; 0 = no cap) sends (sendMail, draft send) from one mailbox in
    any 60 s are refused with 429 ``TooManyRequests`` and a Retry-After, undelivered.

Admin (plain JSON, no auth, for tests and chaos runs)
    ``GET /_admin/deliveries``, ``GET /_admin/requests``, ``GET /_admin/concurrency``,
    ``GET|POST|DELETE /_admin/faults``, ``DELETE /_admin/faults/{id}``,
    ``POST /_admin/reset``, ``POST /_admin/expire-tokens``; the same as methods.

Faults (latency, 429, 503, 504, accept-then-reset, accept-then-timeout, delivered-twice,
Sent Items visibility delay) are described in :mod:`sendonce.emulator.faults`.

The emulator never logs tokens, secrets, assertions or message bodies.

This module is the server: the test CA and TLS, start and stop (in the caller's event loop
or a thread of its own), and :class:`GraphEmulator`, which puts the parts together: the
Entra ID endpoints (:mod:`~sendonce.emulator.identity`), the Graph request pipeline
(:mod:`~sendonce.emulator.graph_routes`) and its mail operations
(:mod:`~sendonce.emulator.mail`), and the admin API (:mod:`~sendonce.emulator.admin`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import trustme
from aiohttp import web

from sendonce.emulator.admin import AdminApi
from sendonce.emulator.credentials import ClientCertificate
from sendonce.emulator.faults import Fault
from sendonce.emulator.identity import IdentityEndpoints
from sendonce.emulator.mail import MailOperations
from sendonce.emulator.state import DEFAULT_KEY_PROPERTY_NAME, DEFAULT_TENANT

__all__ = ["CA_FILE", "CA_KEY_FILE", "EmulatorThread", "GraphEmulator"]

logger = logging.getLogger(__name__)

CA_FILE = "graph-emulator-ca.pem"
CA_KEY_FILE = "graph-emulator-ca.key"

# Graph's JSON POST limit is 4 MB; larger messages need upload sessions.
_MAX_BODY = 4 * 1024 * 1024


class GraphEmulator(AdminApi, IdentityEndpoints, MailOperations):
    """Microsoft Graph mail + Entra ID app-only auth, over HTTPS, with fault injection.

    ``client_secrets`` and ``client_certificates`` register apps (client id -> secret, or
    client id -> certificate PEM / :class:`ClientCertificate`). With neither, one app is
    registered: :data:`DEFAULT_CLIENT_ID` with a random secret (see :attr:`client_secret`).
    ``mailboxes`` restricts the known mailboxes (others get 404 ``ErrorInvalidUser``);
    ``disabled_mailboxes`` get 404 ``MailboxNotEnabledForRESTAPI`` and ``denied_mailboxes``
    403 ``ErrorAccessDenied`` (an application access policy). ``ca_dir`` keeps the test CA
    (certificate and key) so a restarted emulator stays trusted; default: a temp dir.
    ``sends_per_minute`` caps each mailbox's sends in any sliding 60 s (Exchange Online's
    message rate limit; 0 lifts it); ``clock`` is the monotonic clock of that window.
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
        sends_per_minute: int = 30,
        faults: Iterable[Fault | Mapping[str, Any]] = (),
        seed: int = 0,
        ca_dir: str | os.PathLike[str] | None = None,
        tls_names: Iterable[str] = (),
        key_property_name: str = DEFAULT_KEY_PROPERTY_NAME,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            tenant=tenant,
            client_secrets=client_secrets,
            client_certificates=client_certificates,
            mailboxes=mailboxes,
            disabled_mailboxes=disabled_mailboxes,
            denied_mailboxes=denied_mailboxes,
            token_lifetime=token_lifetime,
            max_concurrency=max_concurrency,
            concurrency_retry_after=concurrency_retry_after,
            sends_per_minute=sends_per_minute,
            faults=faults,
            seed=seed,
            key_property_name=key_property_name,
            clock=clock,
        )
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._ca_bundle_path, ca = self._load_or_create_ca(ca_dir)
        names = ["127.0.0.1", "localhost", "::1", *tls_names]
        self._ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(*dict.fromkeys(names)).configure_cert(self._ssl_context)

        self._runner: web.AppRunner | None = None

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
        self._add_identity_routes(app)
        self._add_admin_routes(app)
        self._add_graph_routes(app)
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
