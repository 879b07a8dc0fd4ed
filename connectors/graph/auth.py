"""App-only Microsoft Graph access tokens with MSAL (client secret or certificate).

:class:`GraphTokenProvider` wraps the real ``msal.ConfidentialClientApplication``:

* MSAL is synchronous (it uses ``requests``; even constructing the application performs
  the authority's OpenID discovery over HTTP), so every MSAL call runs in a worker thread
  through :func:`asyncio.to_thread` and never blocks the event loop.
* The token is kept in memory and refreshed ahead of expiry (5 minutes early, or half the
  lifetime for short-lived tokens); concurrent callers share one refresh (single flight).
* :meth:`GraphTokenProvider.invalidate` drops a token Graph refused (401
  ``InvalidAuthenticationToken``) so the next :meth:`~GraphTokenProvider.get_token`
  fetches a new one, once, however many requests saw the 401.
* Failures become :class:`GraphAuthError`, whose text never contains the client secret,
  the private key's passphrase, a client assertion or a token.

For the emulator (or any private authority), pass ``authority=emulator.authority()`` and
``ca_bundle=emulator.ca_bundle_path``; MSAL then runs with ``instance_discovery=False``
(no call to login.microsoftonline.com) and verifies TLS against that CA bundle.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msal

__all__ = [
    "DEFAULT_AUTHORITY_HOST",
    "GRAPH_SCOPE",
    "GraphAuthError",
    "GraphTokenProvider",
]

logger = logging.getLogger(__name__)

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
DEFAULT_AUTHORITY_HOST = "https://login.microsoftonline.com"
# OAuth errors that describe the identity provider's state, not the request.
_TRANSIENT_ERRORS = frozenset({"temporarily_unavailable", "server_error"})
# Anything shaped like a JWT (a token or a client assertion) is scrubbed from error text.
_JWT_LIKE = re.compile(r"eyJ[\w-]*\.[\w-]*\.[\w-]*")
_THUMBPRINT = re.compile(r"^[0-9a-fA-F]{40}$")
# After a failed early refresh, retry no sooner than this while the old token still works.
_REFRESH_RETRY_S = 30.0


class GraphAuthError(Exception):
    """No token: MSAL's ``error`` and ``error_description``, or the transport failure.

    ``transient`` is True when retrying later may succeed (network, TLS, identity provider
    unavailable); False for configuration errors such as ``invalid_client``.
    """

    def __init__(
        self,
        error: str,
        description: str = "",
        *,
        transient: bool = False,
        error_codes: tuple[int, ...] = (),
        correlation_id: str | None = None,
    ) -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description
        self.transient = transient
        self.error_codes = error_codes
        self.correlation_id = correlation_id


@dataclass(frozen=True)
class _Cached:
    token: str
    expires_at: float  # provider clock
    refresh_at: float  # provider clock


class _PinnedCAHttpClient:
    """The ``http_client`` MSAL uses when a CA bundle is given.

    MSAL's ``verify=`` only sets ``requests.Session.verify``, and requests lets the
    ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` environment variables override a session's
    ``verify`` (psf/requests#3829): on machines that set them, the emulator's CA would be
    ignored. Passing ``verify`` on every request is the documented way around that; it
    also carries the timeout and MSAL's one-retry adapter.
    """

    def __init__(self, ca_bundle: str, timeout: float) -> None:
        import requests  # type: ignore[import-untyped]

        self._verify = ca_bundle
        self._timeout = timeout
        self._session: Any = requests.Session()
        adapter = requests.adapters.HTTPAdapter(max_retries=1)
        self._session.mount("https://", adapter)
        self._session.mount("http://", adapter)

    def get(
        self,
        url: str,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """HTTP GET, as MSAL's ``HttpClient`` interface describes it."""
        kwargs.setdefault("timeout", self._timeout)
        return self._session.get(url, params=params, headers=headers, verify=self._verify, **kwargs)

    def post(
        self,
        url: str,
        params: Mapping[str, Any] | None = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """HTTP POST, as MSAL's ``HttpClient`` interface describes it."""
        kwargs.setdefault("timeout", self._timeout)
        return self._session.post(
            url, params=params, data=data, headers=headers, verify=self._verify, **kwargs
        )

    def close(self) -> None:
        """Close the pooled connections."""
        self._session.close()


class GraphTokenProvider:
    """App-only access tokens for Microsoft Graph, cached and refreshed before expiry.

    Give either ``client_secret``, or ``certificate_key_path`` (PEM private key) with
    ``certificate_thumbprint`` (SHA-1 hex of the DER certificate, as shown in the app
    registration). ``authority`` defaults to ``https://login.microsoftonline.com/{tenant}``;
    ``ca_bundle`` is a PEM file MSAL verifies the authority's TLS certificate with.
    ``clock`` (monotonic seconds) exists for tests.
    """

    def __init__(
        self,
        *,
        tenant_id: str,
        client_id: str,
        client_secret: str | None = None,
        certificate_key_path: str | os.PathLike[str] | None = None,
        certificate_thumbprint: str | None = None,
        certificate_key_passphrase: str | None = None,
        authority: str | None = None,
        ca_bundle: str | os.PathLike[str] | None = None,
        scope: str = GRAPH_SCOPE,
        refresh_margin: float = 300.0,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not tenant_id or not client_id:
            raise ValueError("tenant_id and client_id are required")
        has_cert = certificate_key_path is not None or certificate_thumbprint is not None
        if (client_secret is not None) == has_cert:
            raise ValueError(
                "give either client_secret, or certificate_key_path with certificate_thumbprint"
            )
        if has_cert:
            if certificate_key_path is None or certificate_thumbprint is None:
                raise ValueError("certificate auth needs certificate_key_path and _thumbprint")
            thumbprint = certificate_thumbprint.replace(":", "").replace(" ", "")
            if not _THUMBPRINT.match(thumbprint):
                raise ValueError("certificate_thumbprint must be the SHA-1 thumbprint (40 hex)")
            certificate_thumbprint = thumbprint.upper()
        if refresh_margin < 0:
            raise ValueError("refresh_margin must be >= 0")
        self.tenant_id = tenant_id
        self.client_id = client_id
        self.authority = (authority or f"{DEFAULT_AUTHORITY_HOST}/{tenant_id}").rstrip("/")
        self._custom_authority = authority is not None
        self.ca_bundle = None if ca_bundle is None else str(ca_bundle)
        self.scope = scope
        self._secret = client_secret
        self._key_path = None if certificate_key_path is None else Path(certificate_key_path)
        self._thumbprint = certificate_thumbprint
        self._passphrase = certificate_key_passphrase
        self._margin = refresh_margin
        self._timeout = timeout
        self._clock = clock

        self._app: Any = None
        self._http_client: _PinnedCAHttpClient | None = None
        # MSAL objects are used from worker threads; one caller at a time.
        self._msal_lock = threading.Lock()
        self._cached: _Cached | None = None
        self._inflight: asyncio.Task[str] | None = None

    @property
    def credential_kind(self) -> str:
        """``client_secret`` or ``certificate``."""
        return "client_secret" if self._secret is not None else "certificate"

    def __repr__(self) -> str:
        return (
            f"GraphTokenProvider(tenant_id={self.tenant_id!r}, client_id={self.client_id!r}, "
            f"credential={self.credential_kind!r}, authority={self.authority!r})"
        )

    __str__ = __repr__

    # ------------------------------------------------------------------ public API

    async def get_token(self) -> str:
        """A valid access token for ``scope``; fetched or refreshed only when needed."""
        cached = self._cached
        if cached is not None and self._clock() < cached.refresh_at:
            return cached.token
        loop = asyncio.get_running_loop()
        task = self._inflight
        if task is None or task.done() or task.get_loop() is not loop:
            task = loop.create_task(self._refresh())
            self._inflight = task
        # shield: one caller being cancelled must not cancel the refresh the others share.
        return await asyncio.shield(task)

    async def invalidate(self, token: str) -> None:
        """Forget ``token`` (Graph answered 401 with it) so the next call fetches another.

        A token that is no longer the cached one is ignored: the refresh already happened.
        """
        cached = self._cached
        if cached is not None and hmac.compare_digest(cached.token, token):
            self._cached = None
            logger.info("Graph access token invalidated after a 401; next call refreshes")

    def close(self) -> None:
        """Release MSAL's HTTP connections."""
        with self._msal_lock:
            if self._http_client is not None:
                self._http_client.close()
            self._app = None
            self._http_client = None

    # ------------------------------------------------------------------ internals

    async def _refresh(self) -> str:
        started = self._clock()
        previous = self._cached
        try:
            result = await asyncio.to_thread(self._acquire_blocking)
        except GraphAuthError as exc:
            now = self._clock()
            if previous is not None and self._cached is previous and now < previous.expires_at:
                # An early refresh failed but the token still works: keep using it, and
                # try again a little later rather than on every call.
                retry_at = min(now + _REFRESH_RETRY_S, (now + previous.expires_at) / 2)
                self._cached = _Cached(previous.token, previous.expires_at, retry_at)
                logger.warning("Graph token refresh failed, current token still valid: %s", exc)
                return previous.token
            raise
        token = str(result["access_token"])
        lifetime = max(float(result.get("expires_in", 0)), 0.0)
        early = min(self._margin, lifetime / 2)
        self._cached = _Cached(token, started + lifetime, started + lifetime - early)
        logger.info(
            "Graph access token acquired for client %s (expires in %ds)", self.client_id, lifetime
        )
        return token

    def _acquire_blocking(self) -> dict[str, Any]:
        """Runs in a worker thread: build MSAL's app if needed and fetch a fresh token."""
        with self._msal_lock:
            try:
                if self._app is None:
                    self._app = self._build_app()
                # Our cache decides when to refresh; MSAL's own cache would hand back the
                # token we just decided to replace (or the one Graph refused).
                self._app.remove_tokens_for_client()
                result = self._app.acquire_token_for_client(scopes=[self.scope])
            except GraphAuthError:
                raise
            except Exception as exc:
                # requests' exceptions derive from OSError: network and TLS trouble.
                raise GraphAuthError(
                    type(exc).__name__,
                    self._redact(str(exc)),
                    transient=isinstance(exc, OSError),
                ) from None
        if not isinstance(result, dict) or "access_token" not in result:
            raise self._error_from_result(result if isinstance(result, dict) else {})
        return result

    def _build_app(self) -> Any:
        credential: str | dict[str, str]
        if self._secret is not None:
            credential = self._secret
        else:
            assert self._key_path is not None and self._thumbprint is not None
            try:
                key_pem = self._key_path.read_text()
            except OSError as exc:
                raise GraphAuthError(
                    "certificate_unreadable",
                    f"cannot read the certificate private key {str(self._key_path)!r}: "
                    f"{exc.strerror}",
                ) from None
            credential = {"private_key": key_pem, "thumbprint": self._thumbprint}
            if self._passphrase is not None:
                credential["passphrase"] = self._passphrase
        kwargs: dict[str, Any] = {"authority": self.authority, "timeout": self._timeout}
        if self._custom_authority:
            # A private authority (the emulator) is unknown to Microsoft's instance
            # discovery, which would also mean a call to login.microsoftonline.com.
            kwargs["instance_discovery"] = False
        if self.ca_bundle is not None:
            self._http_client = _PinnedCAHttpClient(self.ca_bundle, self._timeout)
            kwargs["http_client"] = self._http_client
            kwargs["verify"] = self.ca_bundle
        return msal.ConfidentialClientApplication(
            self.client_id, client_credential=credential, **kwargs
        )

    def _error_from_result(self, result: Mapping[str, Any]) -> GraphAuthError:
        error = str(result.get("error") or "no_access_token")
        description = self._redact(str(result.get("error_description") or ""))
        codes = tuple(int(c) for c in result.get("error_codes") or () if str(c).isdigit())
        return GraphAuthError(
            error,
            description,
            transient=error in _TRANSIENT_ERRORS,
            error_codes=codes,
            correlation_id=result.get("correlation_id"),
        )

    def _redact(self, text: str) -> str:
        for secret in (self._secret, self._passphrase):
            if secret:
                text = text.replace(secret, "***")
        cached = self._cached
        if cached is not None:
            text = text.replace(cached.token, "***")
        return _JWT_LIKE.sub("***", text)
