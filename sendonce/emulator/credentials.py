"""Entra ID's rules for the Graph emulator: app credentials, client assertions, error shape.

Only the pieces an app-only daemon uses: the OpenID discovery document, and the checks of
the token endpoint's client credentials grant, authenticated by a client secret or by a
signed client assertion (RFC 7523 ``private_key_jwt``, the form MSAL sends for a
certificate credential). Errors have Entra's shape (``error``, ``error_description``
starting with an ``AADSTS`` code, ``error_codes``, ``trace_id``, ``correlation_id``) so
client code written against the emulator handles real failures the same way. The HTTP
endpoints that apply these rules are in :mod:`sendonce.emulator.identity`.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

__all__ = [
    "CLIENT_ASSERTION_TYPE",
    "GRAPH_SCOPES",
    "ClientCertificate",
    "TokenEndpointError",
    "discovery_document",
    "token_error_body",
    "verify_client_assertion",
    "verify_client_secret",
]

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# The two spellings of Graph's app-only scope (by URI, and by Graph's well-known app id).
GRAPH_SCOPES = frozenset(
    {
        "https://graph.microsoft.com/.default",
        "00000003-0000-0000-c000-000000000000/.default",
    }
)
_ASSERTION_ALGORITHMS = ("RS256", "PS256")
# Clock skew tolerated on the assertion's exp/nbf, as identity providers commonly do.
_ASSERTION_LEEWAY_S = 300


class TokenEndpointError(Exception):
    """A token request Entra would refuse: HTTP status, OAuth error and AADSTS code."""

    def __init__(self, status: int, error: str, aadsts: int, description: str) -> None:
        super().__init__(f"AADSTS{aadsts}: {description}")
        self.status = status
        self.error = error
        self.aadsts = aadsts
        self.description = description


def token_error_body(
    exc: TokenEndpointError, *, base_url: str, correlation_id: str
) -> dict[str, Any]:
    """Entra's JSON error body for ``exc``."""
    trace_id = str(uuid.uuid4())
    stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())
    return {
        "error": exc.error,
        "error_description": (
            f"AADSTS{exc.aadsts}: {exc.description}\r\nTrace ID: {trace_id}\r\n"
            f"Correlation ID: {correlation_id}\r\nTimestamp: {stamp}"
        ),
        "error_codes": [exc.aadsts],
        "timestamp": stamp,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
        "error_uri": f"{base_url}/error?code={exc.aadsts}",
    }


def discovery_document(base_url: str, tenant: str) -> dict[str, Any]:
    """The tenant's ``v2.0/.well-known/openid-configuration``, shaped like Entra's."""
    root = f"{base_url}/{tenant}"
    return {
        "token_endpoint": f"{root}/oauth2/v2.0/token",
        "token_endpoint_auth_methods_supported": [
            "client_secret_post",
            "private_key_jwt",
            "client_secret_basic",
        ],
        "jwks_uri": f"{root}/discovery/v2.0/keys",
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": f"{root}/v2.0",
        "request_uri_parameter_supported": False,
        "userinfo_endpoint": f"{base_url}/oidc/userinfo",
        "authorization_endpoint": f"{root}/oauth2/v2.0/authorize",
        "device_authorization_endpoint": f"{root}/oauth2/v2.0/devicecode",
        "http_logout_supported": True,
        "frontchannel_logout_supported": True,
        "end_session_endpoint": f"{root}/oauth2/v2.0/logout",
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "tid"],
        "tenant_region_scope": "EU",
        "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
    }


def _thumbprint_hex(value: str) -> str:
    return value.replace(":", "").strip().lower()


@dataclass(frozen=True)
class ClientCertificate:
    """A certificate registered on an app: its public key and thumbprints (lowercase hex)."""

    public_key: RSAPublicKey
    sha1_thumbprint: str | None
    sha256_thumbprint: str | None

    @classmethod
    def from_pem(cls, pem: str | bytes, thumbprint: str | None = None) -> ClientCertificate:
        """From a certificate PEM, or a bare public key PEM plus its certificate's thumbprint.

        A bare key has no thumbprint of its own, yet Entra finds the key by the assertion's
        ``x5t``/``x5t#S256`` header, so the thumbprint (SHA-1 or SHA-256 hex) is required.
        """
        data = pem.encode() if isinstance(pem, str) else pem
        if b"BEGIN CERTIFICATE" in data:
            cert = x509.load_pem_x509_certificate(data)
            key = cert.public_key()
            sha1 = cert.fingerprint(hashes.SHA1()).hex()  # x5t is SHA-1 by spec
            sha256 = cert.fingerprint(hashes.SHA256()).hex()
        else:
            key = serialization.load_pem_public_key(data)  # type: ignore[assignment]
            if thumbprint is None:
                raise ValueError("a bare public key needs the thumbprint of its certificate")
            tp = _thumbprint_hex(thumbprint)
            if len(tp) == 40:
                sha1, sha256 = tp, None
            elif len(tp) == 64:
                sha1, sha256 = None, tp
            else:
                raise ValueError("thumbprint must be SHA-1 (40 hex) or SHA-256 (64 hex)")
        if not isinstance(key, RSAPublicKey):
            raise ValueError("client certificates must hold an RSA key (Entra signs with RS/PS256)")
        return cls(public_key=key, sha1_thumbprint=sha1, sha256_thumbprint=sha256)


def verify_client_secret(given: str, registered: Iterable[str]) -> None:
    """Raise Entra's invalid-secret error unless ``given`` equals a registered secret."""
    # Constant-time comparison: the emulator may stand in for a staging identity provider.
    if not any(hmac.compare_digest(given.encode(), s.encode()) for s in registered):
        raise TokenEndpointError(
            401,
            "invalid_client",
            7000215,
            "Invalid client secret provided. Ensure the secret being sent in the request is "
            "the client secret value, not the client secret ID, for a secret added to app.",
        )


def _b64url_hex(value: str) -> str:
    padded = value + "=" * (-len(value) % 4)
    try:
        return base64.urlsafe_b64decode(padded).hex()
    except (binascii.Error, ValueError):
        return ""


def verify_client_assertion(
    assertion: str,
    *,
    client_id: str,
    certificates: Iterable[ClientCertificate],
    audiences: Iterable[str],
) -> None:
    """Verify a ``private_key_jwt`` client assertion like Entra; TokenEndpointError if bad.

    Checks: RS256/PS256 signature by a registered certificate found through the ``x5t#S256``
    or ``x5t`` header, ``aud`` equal to the token endpoint, ``iss`` = ``sub`` = client id,
    and ``exp`` (with ``nbf``) in range. ``jti`` reuse is allowed: MSAL reuses one assertion
    for several minutes.
    """
    try:
        header = jwt.get_unverified_header(assertion)
    except jwt.PyJWTError:
        raise TokenEndpointError(
            401, "invalid_client", 50027, "JWT token is invalid or malformed."
        ) from None
    alg = header.get("alg")
    if alg not in _ASSERTION_ALGORITHMS:
        raise TokenEndpointError(
            401,
            "invalid_client",
            5002738,
            f"Invalid JWT token. '{alg}' is not a supported signature algorithm.",
        )
    sha256 = _b64url_hex(str(header.get("x5t#S256", "")))
    sha1 = _b64url_hex(str(header.get("x5t", "")))
    cert = next(
        (
            c
            for c in certificates
            if (sha256 and c.sha256_thumbprint == sha256) or (sha1 and c.sha1_thumbprint == sha1)
        ),
        None,
    )
    if cert is None:
        shown = (sha256 or sha1 or "none").upper()
        raise TokenEndpointError(
            401,
            "invalid_client",
            700027,
            "The certificate with identifier used to sign the client assertion is not "
            f"registered on application. [Reason - The key was not found., Thumbprint of key "
            f"used by client: '{shown}']",
        )
    try:
        claims = jwt.decode(
            assertion,
            cert.public_key,
            algorithms=[str(alg)],
            audience=list(audiences),
            leeway=_ASSERTION_LEEWAY_S,
            options={"require": ["exp", "aud", "iss", "sub"]},
        )
    except jwt.InvalidSignatureError:
        raise TokenEndpointError(
            401, "invalid_client", 700027, "Client assertion failed signature validation."
        ) from None
    except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError):
        raise TokenEndpointError(
            401, "invalid_client", 700024, "Client assertion is not within its valid time range."
        ) from None
    except jwt.InvalidAudienceError:
        raise TokenEndpointError(
            401,
            "invalid_client",
            50027,
            "JWT token is invalid or malformed. [Reason - The audience claim is not the token "
            "endpoint.]",
        ) from None
    except jwt.PyJWTError as exc:
        raise TokenEndpointError(
            401,
            "invalid_client",
            50027,
            f"JWT token is invalid or malformed. [{type(exc).__name__}]",
        ) from None
    if claims.get("iss") != client_id or claims.get("sub") != client_id:
        raise TokenEndpointError(
            401,
            "invalid_client",
            700021,
            "Client assertion application identifier doesn't match 'client_id' parameter.",
        )
