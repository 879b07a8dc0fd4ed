"""Signed webhooks: signatures, timestamps, secret formats."""

from __future__ import annotations

import base64

import pytest

from sendonce.connectors.webhooks.signed import (
    SignatureError,
    decode_secret,
    sign,
    verify_signature,
)

KEY = b"source-signing-key-0123456789"
BODY = b'{"type":"email.delivered","data":{"id":"d-1"}}'
NOW = 1_700_000_000


def check(signature: str, *, timestamp: int | str = NOW, now: float = NOW, **kw: object) -> None:
    params: dict[str, object] = {
        "webhook_id": "msg_1",
        "timestamp": str(timestamp),
        "signature": signature,
        "body": BODY,
        "now": now,
        "tolerance_s": 300,
    }
    params.update(kw)
    verify_signature(KEY, **params)  # type: ignore[arg-type]


def test_good_signature_passes() -> None:
    check(sign(KEY, "msg_1", NOW, BODY))


def test_known_vector() -> None:
    # Standard Webhooks' published example (secret, id, timestamp, body, signature).
    key = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    body = b'{"test": 2432232314}'
    assert sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == (
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


@pytest.mark.parametrize(
    "tamper",
    [
        {"body": BODY + b" "},
        {"webhook_id": "msg_2"},
    ],
)
def test_tampered_delivery_fails(tamper: dict[str, object]) -> None:
    with pytest.raises(SignatureError, match="no valid signature"):
        check(sign(KEY, "msg_1", NOW, BODY), **tamper)


def test_signature_with_another_key_fails() -> None:
    with pytest.raises(SignatureError, match="no valid signature"):
        check(sign(b"another-key", "msg_1", NOW, BODY))


def test_signature_over_another_timestamp_fails() -> None:
    with pytest.raises(SignatureError, match="no valid signature"):
        check(sign(KEY, "msg_1", NOW - 1, BODY))


@pytest.mark.parametrize("offset", [-301, 301, -10_000])
def test_stale_or_future_timestamp_fails(offset: int) -> None:
    sent = NOW + offset
    with pytest.raises(SignatureError, match="outside the tolerance"):
        check(sign(KEY, "msg_1", sent, BODY), timestamp=sent)


def test_timestamp_at_the_edge_of_the_tolerance_passes() -> None:
    sent = NOW - 300
    check(sign(KEY, "msg_1", sent, BODY), timestamp=sent)


def test_one_matching_signature_among_several_passes() -> None:
    good = sign(KEY, "msg_1", NOW, BODY)
    old_key = sign(b"rotated-out-key", "msg_1", NOW, BODY)
    check(f"{old_key} v1a,abcdef v1,not-base64!! {good}")


def test_only_v1_entries_count() -> None:
    mac = sign(KEY, "msg_1", NOW, BODY).removeprefix("v1,")
    with pytest.raises(SignatureError):
        check(f"v2,{mac}")


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"webhook_id": None}, "missing"),
        ({"signature": ""}, "missing"),
        ({"timestamp": "yesterday"}, "unix seconds"),
        ({"webhook_id": "x" * 257}, "too long"),
    ],
)
def test_missing_or_malformed_headers_fail(kw: dict[str, object], message: str) -> None:
    params: dict[str, object] = {
        "webhook_id": "msg_1",
        "timestamp": str(NOW),
        "signature": sign(KEY, "msg_1", NOW, BODY),
        "body": BODY,
        "now": NOW,
        "tolerance_s": 300,
    }
    params.update(kw)
    with pytest.raises(SignatureError, match=message):
        verify_signature(KEY, **params)  # type: ignore[arg-type]


def test_secret_formats() -> None:
    assert decode_secret("plain-secret") == b"plain-secret"
    assert decode_secret("whsec_" + base64.b64encode(b"\x00\x01raw").decode()) == b"\x00\x01raw"
    with pytest.raises(ValueError, match="not valid base64") as info:
        decode_secret("whsec_***not-base64***")
    assert "not-base64" not in str(info.value)
