"""Generic signed webhooks, Standard Webhooks style (https://www.standardwebhooks.com).

A delivery carries three headers:

* ``webhook-id``: the event's id, the same on every retry of that event;
* ``webhook-timestamp``: unix seconds when it was (re)sent;
* ``webhook-signature``: space-separated ``v1,<base64 HMAC-SHA256>`` entries over
  ``"{id}.{timestamp}.{body}"``; several entries let a sender rotate secrets.

A secret written as ``whsec_<base64>`` is the base64-decoded key (the Standard
Webhooks convention); any other secret is used as its UTF-8 bytes.

The timestamp tolerance bounds how long a captured delivery can be replayed;
the dedupe id (``{source}:{webhook-id}``) catches legitimate retries.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

__all__ = [
    "MAX_WEBHOOK_ID_LENGTH",
    "SignatureError",
    "decode_secret",
    "sign",
    "verify_signature",
]

# The id becomes part of a Kafka key; a bound keeps hostile input from inflating it.
MAX_WEBHOOK_ID_LENGTH = 256


class SignatureError(Exception):
    """The delivery is not authentic or not fresh (answered with 401).

    The message says which check failed and never contains a secret, a
    signature or the body.
    """


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a configured secret (``whsec_`` values are base64)."""
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except binascii.Error:
            # The message must not include the value.
            raise ValueError("a whsec_ secret is not valid base64") from None
    return secret.encode()


def _mac(key: bytes, webhook_id: str, timestamp: str, body: bytes) -> bytes:
    signed = webhook_id.encode() + b"." + timestamp.encode() + b"." + body
    return hmac.new(key, signed, hashlib.sha256).digest()


def sign(key: bytes, webhook_id: str, timestamp: int | str, body: bytes) -> str:
    """The ``webhook-signature`` header value a sender computes (for tests and tools)."""
    mac = _mac(key, webhook_id, str(timestamp), body)
    return "v1," + base64.b64encode(mac).decode()


def verify_signature(
    key: bytes,
    *,
    webhook_id: str | None,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    now: float,
    tolerance_s: float,
) -> None:
    """Raise :class:`SignatureError` unless the delivery is signed with ``key`` and fresh.

    ``timestamp`` must be within ``tolerance_s`` of ``now`` in either direction
    (clock skew), and at least one ``v1`` entry of ``signature`` must match;
    entries of other versions are skipped.
    """
    if not webhook_id or not timestamp or not signature:
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature header")
    if len(webhook_id) > MAX_WEBHOOK_ID_LENGTH:
        raise SignatureError("webhook-id is too long")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise SignatureError("webhook-timestamp is not unix seconds") from None
    if abs(now - sent_at) > tolerance_s:
        raise SignatureError("webhook-timestamp is outside the tolerance (stale or replayed)")
    expected = _mac(key, webhook_id, timestamp, body)
    matched = False
    for entry in signature.split():
        version, _, value = entry.partition(",")
        if version != "v1":
            continue
        try:
            given = base64.b64decode(value, validate=True)
        except binascii.Error:
            continue
        # No early exit: every candidate is compared, in constant time each.
        matched |= hmac.compare_digest(given, expected)
    if not matched:
        raise SignatureError("no valid signature")
