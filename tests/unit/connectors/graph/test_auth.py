"""GraphTokenProvider: the real MSAL against the emulator over HTTPS; nothing patches MSAL.

The emulator runs either on the test's event loop (MSAL itself runs in a worker thread, so
the loop stays free to serve it) or in its own thread for the synchronous MSAL calls.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import msal
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from sendonce.connectors.graph.auth import GraphAuthError, GraphTokenProvider
from sendonce.emulator import GraphEmulator

T = TypeVar("T")

APP = "3f2b8c1e-0000-4000-8000-00000000a11e"
SECRET = "s3cr3t-Value~that.must.not.leak"
SCOPE = "https://graph.microsoft.com/.default"


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_certificate(directory: Path, name: str) -> tuple[Path, str, bytes]:
    """An RSA key and self-signed certificate: (key PEM path, SHA-1 thumbprint, cert PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_path = directory / f"{name}.key.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    thumbprint = hashes.Hash(hashes.SHA1())
    thumbprint.update(cert.public_bytes(serialization.Encoding.DER))
    return key_path, thumbprint.finalize().hex(), cert.public_bytes(serialization.Encoding.PEM)


@asynccontextmanager
async def emulator(**kwargs: Any) -> AsyncIterator[GraphEmulator]:
    kwargs.setdefault("client_secrets", {APP: SECRET})
    async with GraphEmulator(**kwargs) as emu:
        yield emu


def provider(emu: GraphEmulator, **kwargs: Any) -> GraphTokenProvider:
    if "certificate_key_path" not in kwargs:
        kwargs.setdefault("client_secret", SECRET)
    kwargs.setdefault("client_id", APP)
    return GraphTokenProvider(
        tenant_id=emu.tenant,
        authority=emu.authority(),
        ca_bundle=emu.ca_bundle_path,
        **kwargs,
    )


async def graph_status(emu: GraphEmulator, token: str) -> int:
    """Use the token for a real Graph call: proves the emulator issued and accepts it."""
    ctx = ssl.create_default_context(cafile=str(emu.ca_bundle_path))
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as http,
        http.get(
            f"{emu.graph_url}/users/a@acme.example/mailFolders/SentItems/messages",
            headers={"Authorization": f"Bearer {token}"},
        ) as resp,
    ):
        return resp.status


def token_requests(emu: GraphEmulator) -> list[dict[str, Any]]:
    return emu.requests(kind="token")


def test_token_by_client_secret() -> None:
    async def main() -> None:
        async with emulator() as emu:
            tokens = provider(emu)
            token = await tokens.get_token()
            assert await graph_status(emu, token) == 200
            [req] = token_requests(emu)
            assert (req["client_id"], req["status"]) == (APP, 200)

    run(main())


def test_token_by_certificate(tmp_path: Path) -> None:
    key_path, thumbprint, cert_pem = make_certificate(tmp_path, "app-cert")

    async def main() -> None:
        # Only the certificate is registered: a token proves the signed assertion passed.
        async with emulator(client_secrets={}, client_certificates={APP: cert_pem}) as emu:
            tokens = provider(emu, certificate_key_path=key_path, certificate_thumbprint=thumbprint)
            assert "certificate" in repr(tokens)
            assert await graph_status(emu, await tokens.get_token()) == 200
            assert [r["status"] for r in token_requests(emu)] == [200]

    run(main())


def test_certificate_signed_by_another_key_is_refused(tmp_path: Path) -> None:
    _, thumbprint, cert_pem = make_certificate(tmp_path, "registered")
    other_key, _, _ = make_certificate(tmp_path, "impostor")

    async def main() -> None:
        async with emulator(client_secrets={}, client_certificates={APP: cert_pem}) as emu:
            tokens = provider(
                emu, certificate_key_path=other_key, certificate_thumbprint=thumbprint
            )
            with pytest.raises(GraphAuthError) as info:
                await tokens.get_token()
            assert info.value.error == "invalid_client"
            assert 700027 in info.value.error_codes
            assert "PRIVATE KEY" not in str(info.value)
            assert not info.value.transient

    run(main())


def test_wrong_secret_raises_without_revealing_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "Wrong~secret.value-42"

    async def main() -> None:
        async with emulator() as emu:
            tokens = provider(emu, client_secret=wrong)
            with pytest.raises(GraphAuthError) as info:
                await tokens.get_token()
            exc = info.value
            assert exc.error == "invalid_client"
            assert "AADSTS7000215" in str(exc)
            assert exc.transient is False
            for text in (str(exc), repr(exc), repr(tokens), exc.description):
                assert wrong not in text and SECRET not in text

    run(main())
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert wrong not in logged


def test_token_is_cached_and_refreshed_before_expiry() -> None:
    clock = FakeClock()

    async def main() -> None:
        # A 60 s token: refreshed after half its life (the 5-minute margin exceeds it).
        async with emulator(token_lifetime=60) as emu:
            tokens = provider(emu, clock=clock)
            first = await tokens.get_token()
            clock.now += 29
            assert await tokens.get_token() == first
            assert len(token_requests(emu)) == 1  # served from the provider's cache
            clock.now += 2
            second = await tokens.get_token()
            assert second != first  # a new token, not MSAL's cached copy
            assert len(token_requests(emu)) == 2
            assert await graph_status(emu, second) == 200

    run(main())


def test_default_margin_refreshes_five_minutes_early() -> None:
    clock = FakeClock()

    async def main() -> None:
        async with emulator(token_lifetime=3599) as emu:
            tokens = provider(emu, clock=clock)
            first = await tokens.get_token()
            clock.now += 3599 - 300 - 1
            assert await tokens.get_token() == first
            clock.now += 2
            assert await tokens.get_token() != first
            assert len(token_requests(emu)) == 2

    run(main())


def test_concurrent_callers_share_one_refresh() -> None:
    async def main() -> None:
        async with emulator() as emu:
            tokens = provider(emu)
            got = await asyncio.gather(*(tokens.get_token() for _ in range(20)))
            assert len(set(got)) == 1
            assert len(token_requests(emu)) == 1

    run(main())


def test_invalidate_after_401_forces_exactly_one_refresh() -> None:
    async def main() -> None:
        async with emulator() as emu:
            tokens = provider(emu)
            old = await tokens.get_token()
            emu.expire_tokens()
            assert await graph_status(emu, old) == 401
            # several requests saw the 401 with the same token
            await asyncio.gather(*(tokens.invalidate(old) for _ in range(5)))
            new = await asyncio.gather(*(tokens.get_token() for _ in range(5)))
            assert len(set(new)) == 1 and new[0] != old
            await tokens.invalidate(old)  # a late 401 for the old token changes nothing
            assert await tokens.get_token() == new[0]
            assert len(token_requests(emu)) == 2
            assert await graph_status(emu, new[0]) == 200

    run(main())


def test_ca_bundle_is_used_even_when_requests_env_points_elsewhere(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # requests lets these override a Session's verify; the provider must still pin its CA.
    system_bundle = ssl.get_default_verify_paths().cafile or str(tmp_path / "none.pem")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", system_bundle)
    monkeypatch.setenv("CURL_CA_BUNDLE", system_bundle)

    async def main() -> None:
        async with emulator() as emu:
            assert await provider(emu).get_token()
            # Without the CA bundle, TLS verification fails: a transient, not-sent error.
            untrusting = GraphTokenProvider(
                tenant_id=emu.tenant,
                client_id=APP,
                client_secret=SECRET,
                authority=emu.authority(),
            )
            with pytest.raises(GraphAuthError) as info:
                await untrusting.get_token()
            assert info.value.transient
            assert SECRET not in str(info.value)

    run(main())


def test_unreachable_authority_is_transient_and_unknown_tenant_is_not() -> None:
    async def main() -> None:
        async with emulator() as emu:
            wrong_tenant = GraphTokenProvider(
                tenant_id="other-tenant",
                client_id=APP,
                client_secret=SECRET,
                authority=emu.authority("other-tenant"),
                ca_bundle=emu.ca_bundle_path,
            )
            with pytest.raises(GraphAuthError) as info:
                await wrong_tenant.get_token()
            assert not info.value.transient
            stopped = provider(emu)
        with pytest.raises(GraphAuthError) as info:
            await stopped.get_token()  # the emulator is gone: connection refused
        assert info.value.transient

    run(main())


def test_repr_and_errors_hide_the_secret() -> None:
    tokens = GraphTokenProvider(tenant_id="t", client_id="c", client_secret=SECRET)
    assert SECRET not in repr(tokens) and SECRET not in str(tokens)
    assert "client_secret" in repr(tokens)
    assert "login.microsoftonline.com/t" in repr(tokens)
    with pytest.raises(ValueError):
        GraphTokenProvider(tenant_id="t", client_id="c")
    with pytest.raises(ValueError):
        GraphTokenProvider(
            tenant_id="t", client_id="c", certificate_key_path="k.pem", certificate_thumbprint="xyz"
        )


def test_plain_msal_against_the_threaded_emulator(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The exact MSAL configuration, synchronous, with the emulator in its own thread."""
    # MSAL's verify= only works when requests' CA environment variables do not override it.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    key_path, thumbprint, cert_pem = make_certificate(tmp_path, "plain")
    emu = GraphEmulator(client_secrets={APP: SECRET}, client_certificates={APP: cert_pem})
    with emu.run_in_thread():
        for credential in (
            SECRET,
            {"private_key": key_path.read_text(), "thumbprint": thumbprint},
        ):
            app = msal.ConfidentialClientApplication(
                APP,
                client_credential=credential,
                authority=emu.authority(),
                instance_discovery=False,
                verify=str(emu.ca_bundle_path),
            )
            result = app.acquire_token_for_client(scopes=[SCOPE])
            assert "access_token" in result, result.get("error_description")
            assert result["token_type"] == "Bearer"
        assert [r["status"] for r in emu.requests(kind="token")] == [200, 200]
