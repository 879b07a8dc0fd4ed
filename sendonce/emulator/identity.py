"""The Entra ID endpoints of the Graph emulator: OpenID discovery and the token endpoint.

``GET /{tenant}/v2.0/.well-known/openid-configuration`` and ``POST /{tenant}/oauth2/v2.0/
token`` (client credentials grant) at the same paths as Entra, so the real MSAL gets its
tokens here unpatched (authority ``{base_url}/{tenant}``, ``instance_discovery=False``).
Issued tokens are opaque random strings that the Graph routes check; every token and
secret goes into the emulator's sensitive set and never into a log. The credential
checks themselves are in :mod:`sendonce.emulator.credentials`.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from sendonce.emulator.credentials import (
    CLIENT_ASSERTION_TYPE,
    GRAPH_SCOPES,
    TokenEndpointError,
    discovery_document,
    token_error_body,
    verify_client_assertion,
    verify_client_secret,
)
from sendonce.emulator.state import EmulatorState
from sendonce.emulator.store import RequestRecord, TokenRecord

__all__ = ["IdentityEndpoints"]

logger = logging.getLogger(__name__)


class IdentityEndpoints(EmulatorState):
    """The emulator's Entra ID: discovery and the client credentials token endpoint."""

    def _add_identity_routes(self, app: web.Application) -> None:
        app.router.add_get(
            "/{tenant}/v2.0/.well-known/openid-configuration", self._handle_discovery
        )
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self._handle_token)

    def _tenant_matches(self, tenant: str) -> bool:
        return tenant.lower() == self.tenant.lower()

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
