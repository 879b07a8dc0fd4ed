"""The Graph emulator over real HTTPS (its own test CA), driven with aiohttp.

Every test talks only to 127.0.0.1. Faults are observed from the client side (status,
headers, exceptions) and from the emulator's admin records (deliveries, requests).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from sendonce.emulator import GraphEmulator
from sendonce.emulator.faults import Fault, FaultBook
from sendonce.emulator.odata import FilterError, parse_property_filter

T = TypeVar("T")

PROP_ID = "String {6a3f1a52-7a56-4e4f-9c3c-2f3e9d1c0b11} Name SendonceIdempotencyKey"
SENDER = "orders@acme.example"
SECRET = "emulator-test-secret-Xq9"
APP = "app-under-test"


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def message(key: str, *, to: str = "bob@example.com", **extra: Any) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "subject": f"order {key}",
        "body": {"contentType": "Text", "content": f"secret body of {key}"},
        "toRecipients": [{"emailAddress": {"address": to, "name": "Bob"}}],
        "singleValueExtendedProperties": [{"id": PROP_ID, "value": key}],
    }
    msg.update(extra)
    return msg


def key_filter(key: str, prop_id: str = PROP_ID) -> str:
    return (
        "singleValueExtendedProperties/Any(ep: ep/id eq '"
        + prop_id
        + "' and ep/value eq '"
        + key.replace("'", "''")
        + "')"
    )


@dataclass
class Env:
    emu: GraphEmulator
    http: aiohttp.ClientSession
    token: str

    def url(self, path: str) -> str:
        return f"{self.emu.graph_url}{path}"

    def auth(self, **headers: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", **headers}

    async def send_mail(self, key: str, mailbox: str = SENDER, **kw: Any) -> aiohttp.ClientResponse:
        async with self.http.post(
            self.url(f"/users/{mailbox}/sendMail"),
            json={"message": message(key), "saveToSentItems": True},
            headers=self.auth(**{"client-request-id": f"crid-{key}"}),
            **kw,
        ) as resp:
            await resp.read()
            return resp

    async def sent_items(self, key: str, mailbox: str = SENDER, **headers: str) -> Any:
        params = {
            "$filter": key_filter(key),
            "$select": "id,internetMessageId,sentDateTime,createdDateTime,subject",
            "$expand": f"singleValueExtendedProperties($filter=id eq '{PROP_ID}')",
        }
        async with self.http.get(
            self.url(f"/users/{mailbox}/mailFolders/SentItems/messages"),
            params=params,
            headers=self.auth(**headers),
        ) as resp:
            assert resp.status == 200, await resp.text()
            return (await resp.json())["value"]


def client_ssl(emu: GraphEmulator) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(emu.ca_bundle_path))


async def fetch_token(emu: GraphEmulator, http: aiohttp.ClientSession, secret: str) -> Any:
    async with http.post(
        f"{emu.authority()}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": APP,
            "client_secret": secret,
            "scope": "https://graph.microsoft.com/.default",
        },
    ) as resp:
        return resp.status, await resp.json()


@asynccontextmanager
async def env(**kwargs: Any) -> AsyncIterator[Env]:
    kwargs.setdefault("client_secrets", {APP: SECRET})
    async with GraphEmulator(**kwargs) as emu:
        connector = aiohttp.TCPConnector(ssl=client_ssl(emu))
        async with aiohttp.ClientSession(connector=connector) as http:
            status, body = await fetch_token(emu, http, SECRET)
            assert status == 200, body
            yield Env(emu, http, body["access_token"])


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll emulator state (it exposes no events) until ``predicate`` holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


# --------------------------------------------------------------------------- Entra side


def test_discovery_document_and_unknown_tenant() -> None:
    async def main() -> None:
        async with env() as e:
            url = f"{e.emu.authority()}/v2.0/.well-known/openid-configuration"
            async with e.http.get(url) as resp:
                doc = await resp.json()
            assert resp.status == 200
            assert doc["token_endpoint"] == f"{e.emu.authority()}/oauth2/v2.0/token"
            assert doc["issuer"] == f"{e.emu.authority()}/v2.0"
            assert doc["authorization_endpoint"].startswith(e.emu.base_url)
            bad = f"{e.emu.base_url}/not-my-tenant/v2.0/.well-known/openid-configuration"
            async with e.http.get(bad) as resp:
                err = await resp.json()
            assert resp.status == 400
            assert err["error_codes"] == [90002]

    run(main())


def test_wrong_secret_is_invalid_client_and_never_echoed() -> None:
    async def main() -> None:
        async with env() as e:
            status, body = await fetch_token(e.emu, e.http, "wrong-secret-123")
            assert status == 401
            assert body["error"] == "invalid_client"
            assert body["error_codes"] == [7000215]
            assert body["error_description"].startswith("AADSTS7000215:")
            assert "wrong-secret-123" not in json.dumps(body)
            assert SECRET not in json.dumps(body)
            tokens = e.emu.requests(kind="token")
            assert [r["status"] for r in tokens] == [200, 401]
            assert tokens[1]["error_code"] == "AADSTS7000215"

    run(main())


def test_graph_calls_need_a_valid_unexpired_token() -> None:
    async def main() -> None:
        async with env() as e:
            url = e.url(f"/users/{SENDER}/sendMail")
            body = {"message": message("k")}
            for headers in ({}, {"Authorization": "Bearer not-a-token"}):
                async with e.http.post(url, json=body, headers=headers) as resp:
                    err = await resp.json()
                assert resp.status == 401
                assert err["error"]["code"] == "InvalidAuthenticationToken"
                assert "WWW-Authenticate" in resp.headers
            assert e.emu.expire_tokens() == 1
            async with e.http.post(url, json=body, headers=e.auth()) as resp:
                err = await resp.json()
            assert resp.status == 401
            assert "expired" in err["error"]["message"]
            assert e.emu.deliveries() == []

    run(main())


# --------------------------------------------------------------------------- Graph mail


def test_send_mail_is_202_with_graph_headers_and_records_a_delivery() -> None:
    async def main() -> None:
        async with env() as e:
            resp = await e.send_mail("k1")
            assert resp.status == 202
            assert resp.headers["Content-Length"] == "0"
            request_id = resp.headers["request-id"]
            uuid.UUID(request_id)
            assert resp.headers["client-request-id"] == "crid-k1"
            assert "Date" in resp.headers
            assert "ServerInfo" in json.loads(resp.headers["x-ms-ags-diagnostic"])
            [d] = e.emu.deliveries()
            assert d["mailbox"] == SENDER
            assert d["idempotency_key"] == "k1"
            assert d["request_id"] == request_id
            assert d["client_request_id"] == "crid-k1"
            assert d["recipients"] == ["bob@example.com"]
            assert d["transport_duplicate"] is False
            assert d["internet_message_id"].startswith("<")
            assert "body" not in json.dumps(d)
            [found] = await e.sent_items("k1")
            assert found["internetMessageId"] == d["internet_message_id"]
            assert found["singleValueExtendedProperties"] == [{"id": PROP_ID, "value": "k1"}]

    run(main())


def test_draft_create_then_send_keeps_immutable_id_and_given_internet_message_id() -> None:
    async def main() -> None:
        async with env() as e:
            imid = "<k2.4f1c@sendonce.acme.example>"
            immutable = {"Prefer": 'IdType="ImmutableId"'}
            async with e.http.post(
                e.url(f"/users/{SENDER}/messages"),
                params={"$expand": f"singleValueExtendedProperties($filter=id eq '{PROP_ID}')"},
                json=message("k2", internetMessageId=imid),
                headers=e.auth(**immutable),
            ) as resp:
                created = await resp.json()
            assert resp.status == 201
            assert resp.headers["Preference-Applied"] == 'IdType="ImmutableId"'
            assert created["internetMessageId"] == imid
            assert created["isDraft"] is True
            draft_id = created["id"]
            assert draft_id.startswith("AAkALg")  # the immutable-id shape
            assert created["singleValueExtendedProperties"] == [{"id": PROP_ID, "value": "k2"}]
            assert e.emu.deliveries() == []  # a draft is not a delivery

            async with e.http.post(
                e.url(f"/users/{SENDER}/messages/{draft_id}/send"), headers=e.auth()
            ) as resp:
                assert resp.status == 202
            [d] = e.emu.deliveries()
            assert (d["immutable_id"], d["internet_message_id"]) == (draft_id, imid)
            assert d["operation"] == "sendDraft"

            [same] = await e.sent_items("k2", **immutable)
            assert same["id"] == draft_id
            [rest] = await e.sent_items("k2")
            assert rest["id"] != draft_id  # the REST id changed when it moved folders
            async with e.http.post(
                e.url(f"/users/{SENDER}/messages/{draft_id}/send"), headers=e.auth()
            ) as resp:
                err = await resp.json()
            assert resp.status == 404
            assert err["error"]["code"] == "ErrorItemNotFound"

    run(main())


def test_sent_items_filter_finds_by_key_and_not_other_keys() -> None:
    async def main() -> None:
        async with env() as e:
            for key in ("k1", "k2", "it's"):
                assert (await e.send_mail(key)).status == 202
            assert [m["subject"] for m in await e.sent_items("k1")] == ["order k1"]
            assert [m["subject"] for m in await e.sent_items("it's")] == ["order it's"]
            assert await e.sent_items("k3") == []
            assert await e.sent_items("k1", mailbox="other@acme.example") == []
            # property ids compare case-insensitively, as in Exchange
            params = {"$filter": key_filter("k2", PROP_ID.lower())}
            async with e.http.get(
                e.url(f"/users/{SENDER}/mailFolders/sentitems/messages"),
                params=params,
                headers=e.auth(),
            ) as resp:
                found = (await resp.json())["value"]
            assert [m["subject"] for m in found] == ["order k2"]
            assert "singleValueExtendedProperties" not in found[0]  # only when expanded
            async with e.http.get(
                e.url(f"/users/{SENDER}/mailFolders/SentItems/messages"),
                params={"$filter": "subject eq 'order k1'"},
                headers=e.auth(),
            ) as resp:
                err = await resp.json()
            assert resp.status == 400
            assert err["error"]["code"] == "BadRequest"

    run(main())


def test_invalid_requests_get_graph_error_codes() -> None:
    async def main() -> None:
        async with env(mailboxes=[SENDER]) as e:
            url = e.url(f"/users/{SENDER}/sendMail")
            no_rcpt = {"message": message("k", toRecipients=[])}
            bad_rcpt = {"message": message("k", to="not-an-address")}
            cases: list[tuple[str, Any, int, str]] = [
                (url, no_rcpt, 400, "ErrorInvalidRecipients"),
                (url, bad_rcpt, 400, "ErrorInvalidRecipients"),
                (url, "{not json", 400, "BadRequest"),
                (
                    e.url("/users/nobody@acme.example/sendMail"),
                    {"message": message("k")},
                    404,
                    "ErrorInvalidUser",
                ),
            ]
            for target, body, status, code in cases:
                kw: dict[str, Any] = (
                    {"data": body, "headers": e.auth(**{"Content-Type": "application/json"})}
                    if isinstance(body, str)
                    else {"json": body, "headers": e.auth()}
                )
                async with e.http.post(target, **kw) as resp:
                    err = await resp.json()
                assert (resp.status, err["error"]["code"]) == (status, code), err
                assert err["error"]["innerError"]["request-id"] == resp.headers["request-id"]
            assert e.emu.deliveries() == []

    run(main())


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        ("throttle", 429, "TooManyRequests"),
        ("unavailable", 503, "ServiceNotAvailable"),
        ("gateway_timeout", 504, "UnknownError"),
    ],
)
def test_status_faults_answer_like_graph(kind: str, status: int, code: str) -> None:
    async def main() -> None:
        async with env() as e:
            e.emu.add_fault({"kind": kind, "mailbox": SENDER, "count": 1, "retry_after": 7})
            e.emu.add_fault({"kind": kind, "mailbox": SENDER, "count": 1, "deliver": True})
            first = await e.send_mail("lost")
            assert first.status == status
            if kind == "throttle":
                assert first.headers["Retry-After"] == "7"
            assert e.emu.deliveries() == []  # refused before it was processed
            second = await e.send_mail("went-out")
            assert second.status == status
            [d] = e.emu.deliveries()  # ...and this one went out despite the error
            assert d["idempotency_key"] == "went-out"
            assert d["request_id"] == second.headers["request-id"]
            assert (await e.send_mail("ok")).status == 202  # counts used up
            records = e.emu.requests(mailbox=SENDER)
            assert [(r["status"], r["error_code"]) for r in records] == [
                (status, code),
                (status, code),
                (202, None),
            ]

    run(main())


def test_reset_delivers_then_drops_the_connection() -> None:
    async def main() -> None:
        async with env() as e:
            e.emu.add_fault({"kind": "reset", "count": 1})
            with pytest.raises(aiohttp.ClientConnectionError):
                await e.send_mail("k-reset")
            [d] = e.emu.deliveries()
            assert d["idempotency_key"] == "k-reset"
            [rec] = e.emu.requests()
            assert (rec["status"], rec["outcome"]) == (None, "reset")
            assert rec["request_id"] == d["request_id"]
            assert (await e.send_mail("k-next")).status == 202

    run(main())


def test_timeout_delivers_and_withholds_the_response() -> None:
    async def main() -> None:
        async with env() as e:
            e.emu.add_fault({"kind": "timeout", "count": 1, "hang_ms": 20_000})
            started = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):
                await e.send_mail("k-timeout", timeout=aiohttp.ClientTimeout(sock_read=0.5))
            assert time.monotonic() - started < 5
            [d] = e.emu.deliveries()
            assert d["idempotency_key"] == "k-timeout"
            # the hung request no longer occupies the mailbox's concurrency
            assert e.emu.concurrency()["in_flight"] == {}
            assert e.emu.requests()[0]["outcome"] == "timeout"
        # leaving the context stopped the emulator without waiting out hang_ms
        assert time.monotonic() - started < 10

    run(main())


def test_delivered_twice_is_two_deliveries_with_one_request_id() -> None:
    async def main() -> None:
        async with env() as e:
            e.emu.add_fault({"kind": "duplicate", "count": 1})
            resp = await e.send_mail("k-dup")
            assert resp.status == 202
            deliveries = e.emu.deliveries(key="k-dup")
            assert [d["transport_duplicate"] for d in deliveries] == [False, True]
            assert {d["request_id"] for d in deliveries} == {resp.headers["request-id"]}
            assert len({d["internet_message_id"] for d in deliveries}) == 1
            assert len(e.emu.requests()) == 1

    run(main())


def test_visibility_delay_hides_a_sent_message_for_a_while() -> None:
    async def main() -> None:
        async with env() as e:
            e.emu.add_fault({"kind": "visibility_delay", "delay_ms": 400, "count": 1})
            sent_at = time.monotonic()
            assert (await e.send_mail("k-late")).status == 202
            assert len(e.emu.deliveries()) == 1
            assert await e.sent_items("k-late") == []
            while not await e.sent_items("k-late"):
                assert time.monotonic() - sent_at < 5
                await asyncio.sleep(0.05)
            assert time.monotonic() - sent_at >= 0.4

    run(main())


def test_latency_fault_delays_the_response() -> None:
    async def main() -> None:
        async with env() as e:
            e.emu.add_fault({"kind": "latency", "latency_ms": 300, "count": 1})
            started = time.monotonic()
            assert (await e.send_mail("k-slow")).status == 202
            assert time.monotonic() - started >= 0.3
            [rec] = e.emu.requests()
            assert rec["faults"] == ["latency"]
            assert rec["end_ms"] - rec["start_ms"] >= 300

    run(main())


def test_more_than_four_concurrent_requests_get_application_throttled() -> None:
    async def main() -> None:
        async with env() as e:
            # Four slow sends occupy the mailbox; the fifth arrives while they are in flight.
            e.emu.add_fault({"kind": "latency", "latency_ms": 1500, "count": 4})
            slow = [asyncio.create_task(e.send_mail(f"k{i}")) for i in range(4)]
            await wait_for(lambda: e.emu.concurrency()["in_flight"].get(SENDER) == 4)
            fifth = await e.send_mail("k5")
            assert fifth.status == 429
            assert fifth.headers["Retry-After"] == "1"
            other = await e.send_mail("k6", mailbox="other@acme.example")
            assert other.status == 202  # the limit is per mailbox
            assert [r.status for r in await asyncio.gather(*slow)] == [202] * 4
            stats = e.emu.concurrency()
            assert stats["max_in_flight"][SENDER] == 5
            assert stats["throttled"] == {SENDER: 1}
            assert stats["in_flight"] == {}
            codes = [r["error_code"] for r in e.emu.requests(mailbox=SENDER)]
            assert codes.count("ApplicationThrottled") == 1
            assert len(e.emu.deliveries(mailbox=SENDER)) == 4

    run(main())


def test_admin_http_api_round_trip() -> None:
    async def main() -> None:
        async with env() as e:
            admin = f"{e.emu.base_url}/_admin"
            fault = {"kind": "throttle", "mailbox": SENDER, "count": 2, "retry_after": 3}
            async with e.http.post(f"{admin}/faults", json={"faults": [fault]}) as resp:
                assert resp.status == 200
                [fault_id] = (await resp.json())["ids"]
            async with e.http.post(f"{admin}/faults", json={"kind": "nope"}) as resp:
                assert resp.status == 400
            assert (await e.send_mail("a")).status == 429
            async with e.http.get(f"{admin}/faults") as resp:
                [listed] = await resp.json()
            assert (listed["id"], listed["remaining"]) == (fault_id, 1)
            async with e.http.delete(f"{admin}/faults") as resp:
                assert resp.status == 200
            assert (await e.send_mail("b")).status == 202
            async with e.http.get(f"{admin}/deliveries") as resp:
                assert [d["idempotency_key"] for d in await resp.json()] == ["b"]
            async with e.http.get(f"{admin}/requests", params={"mailbox": SENDER}) as resp:
                requests = await resp.json()
            assert [r["status"] for r in requests] == [429, 202]
            assert all(r["start_ms"] <= r["end_ms"] for r in requests)
            async with e.http.get(f"{admin}/requests", params={"kind": "token"}) as resp:
                assert len(await resp.json()) == 1
            async with e.http.get(f"{admin}/concurrency") as resp:
                assert (await resp.json())["max_in_flight"] == {SENDER: 1}
            async with e.http.post(f"{admin}/reset") as resp:
                assert resp.status == 200
            assert e.emu.deliveries() == [] and e.emu.requests() == []
            assert (await e.send_mail("c")).status == 202  # the token survived the reset

    run(main())


def test_emulator_logs_no_token_secret_or_body(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def main() -> str:
        async with env() as e:
            await e.send_mail("k-log")
            await e.sent_items("k-log")
            await fetch_token(e.emu, e.http, "a-wrong-secret")
            return e.token

    token = run(main())
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "sendMail" in text  # the emulator did log the requests
    for needle in (token, SECRET, "a-wrong-secret", "secret body of"):
        assert needle not in text


# --------------------------------------------------------------------------- pure parts


def test_fault_probability_is_seeded_and_counts_are_consumed() -> None:
    def draws(seed: int) -> list[bool]:
        book = FaultBook([Fault(kind="unavailable", probability=0.5)], seed=seed)
        return [book.select(SENDER, "sendMail").outcome is not None for _ in range(200)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)
    assert 60 < sum(draws(7)) < 140

    book = FaultBook([Fault(kind="throttle", count=2, mailbox="A@x.example")])
    assert book.select("b@x.example", "sendMail").outcome is None  # other mailbox
    assert [book.select("a@x.example", "sendMail").outcome is not None for _ in range(3)] == [
        True,
        True,
        False,
    ]
    # duplicates only ever apply to deliveries
    dup = FaultBook([Fault(kind="duplicate")])
    assert not dup.select(SENDER, "listMessages").duplicate
    assert dup.select(SENDER, "sendDraft").duplicate


def test_fault_rules_reject_typos() -> None:
    with pytest.raises(ValueError, match="unknown fault fields"):
        Fault.from_dict({"kind": "throttle", "retry_afer": 3})
    with pytest.raises(ValueError, match="unknown fault kind"):
        Fault.from_dict({"kind": "explode"})
    with pytest.raises(ValueError, match="unknown operations"):
        Fault.from_dict({"kind": "reset", "operations": ["sendmial"]})
    assert Fault.from_dict({"kind": "reset", "operations": ["send"]}).operations == frozenset(
        {"sendMail", "sendDraft"}
    )


@pytest.mark.parametrize(
    "text",
    [
        f"singleValueExtendedProperties/Any(ep: ep/id eq '{PROP_ID}' and ep/value eq 'k''1')",
        f"singleValueExtendedProperties/any(x:x/value eq 'k''1' and x/id eq '{PROP_ID}')",
        f"( singleValueExtendedProperties/ANY ( ep : (ep/id eq '{PROP_ID}') and "
        "(ep/value eq 'k''1') ) )",
    ],
)
def test_extended_property_filter_parses_robustly(text: str) -> None:
    flt = parse_property_filter(text)
    assert (flt.property_id, flt.value) == (PROP_ID, "k'1")
    assert flt.matches([{"id": PROP_ID.upper(), "value": "k'1"}])
    assert not flt.matches([{"id": PROP_ID, "value": "k'2"}])


@pytest.mark.parametrize(
    "text",
    [
        "subject eq 'x'",
        "singleValueExtendedProperties/any(ep: ep/value eq 'k')",
        "singleValueExtendedProperties/any(ep: ep/id eq 'nonsense' and ep/value eq 'k')",
        f"singleValueExtendedProperties/any(ep: ep/id eq '{PROP_ID}' or ep/value eq 'k')",
        f"singleValueExtendedProperties/any(ep: ep/id eq '{PROP_ID}') and subject eq 'x'",
        f"singleValueExtendedProperties/any(ep: ep/id eq '{PROP_ID}' and ep/value eq 'k'",
    ],
)
def test_unsupported_filters_are_rejected(text: str) -> None:
    with pytest.raises(FilterError):
        parse_property_filter(text)


# --------------------------------------------------------------------------- CLI


def test_cli_prints_endpoints_and_stops_on_sigterm(tmp_path: Path) -> None:
    code = (
        "import argparse, sys\n"
        "from sendonce.dev.graph_emulator import add_cli\n"
        "p = argparse.ArgumentParser(); sub = p.add_subparsers()\n"
        "add_cli(sub)\n"
        "args = p.parse_args(sys.argv[1:])\n"
        "sys.exit(args.func(args))\n"
    )
    env_vars = {k: v for k, v in os.environ.items() if k != "SENDONCE_GRAPH_EMULATOR_CLIENT_SECRET"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "graph-emulator", "--ca-dir", str(tmp_path), "--tenant", "t1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env_vars,
    )
    try:
        assert proc.stdout is not None
        info: dict[str, str] = {}
        while "client_secret" not in info:
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else "no output"
            name, _, value = line.strip().partition("=")
            info[name] = value
        assert info["authority"].endswith("/t1")
        assert info["graph_url"] == info["authority"].removesuffix("/t1") + "/v1.0"
        assert Path(info["ca_bundle"]).parent == tmp_path
        assert (tmp_path / "graph-emulator-ca.key").exists()

        async def check() -> None:
            ctx = ssl.create_default_context(cafile=info["ca_bundle"])
            form = {
                "grant_type": "client_credentials",
                "client_id": info["client_id"],
                "client_secret": info["client_secret"],
                "scope": "https://graph.microsoft.com/.default",
            }
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as http,
                http.post(f"{info['authority']}/oauth2/v2.0/token", data=form) as resp,
            ):
                assert resp.status == 200

        run(check())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_message_is_read_by_its_id_draft_or_sent_and_the_rest_id_dies_with_the_move() -> None:
    # Issue 17: the draft's immutable id answers "is it still a draft?" (GET
    # /users/{id}/messages/{id}); the REST id changes when the message moves to Sent
    # Items (msgraph-sdk-dotnet issue 2947), the immutable id does not.
    async def main() -> None:
        async with env() as e:
            immutable = {"Prefer": 'IdType="ImmutableId"'}
            async with e.http.post(
                e.url(f"/users/{SENDER}/messages"), json=message("k9"), headers=e.auth()
            ) as resp:
                rest_id = (await resp.json())["id"]
            async with e.http.get(
                e.url(f"/users/{SENDER}/messages/{rest_id}"), headers=e.auth(**immutable)
            ) as resp:
                draft = await resp.json()
            assert resp.status == 200
            assert resp.headers["Preference-Applied"] == 'IdType="ImmutableId"'
            assert draft["isDraft"] is True
            immutable_id = draft["id"]
            assert immutable_id != rest_id
            async with e.http.post(
                e.url(f"/users/{SENDER}/messages/{immutable_id}/send"), headers=e.auth()
            ) as resp:
                assert resp.status == 202
            async with e.http.get(
                e.url(f"/users/{SENDER}/messages/{immutable_id}"),
                params={"$select": "isDraft,parentFolderId"},
                headers=e.auth(**immutable),
            ) as resp:
                sent = await resp.json()
            assert resp.status == 200
            assert sent["isDraft"] is False
            assert set(sent) == {"@odata.context", "@odata.etag", "id", "isDraft", "parentFolderId"}
            async with e.http.get(
                e.url(f"/users/{SENDER}/messages/{rest_id}"), headers=e.auth()
            ) as resp:
                gone = await resp.json()
            assert resp.status == 404
            assert gone["error"]["code"] == "ErrorItemNotFound"

    run(main())


def test_reading_one_message_is_an_operation_that_faults_can_target() -> None:
    # Issue 17: the draft's state is read with GET /users/{id}/messages/{id}; a test
    # must be able to make that lookup fail (503, timeout) like any other call.
    async def main() -> None:
        async with env() as e:
            immutable = {"Prefer": 'IdType="ImmutableId"'}
            async with e.http.post(
                e.url(f"/users/{SENDER}/messages"), json=message("k10"), headers=e.auth(**immutable)
            ) as resp:
                draft_id = (await resp.json())["id"]
            e.emu.add_fault({"kind": "unavailable", "operations": ["getMessage"], "count": 1})
            e.emu.add_fault(
                {"kind": "timeout", "operations": ["getMessage"], "count": 1, "hang_ms": 20_000}
            )
            url = e.url(f"/users/{SENDER}/messages/{draft_id}")
            async with e.http.get(url, headers=e.auth(**immutable)) as resp:
                err = await resp.json()
            assert (resp.status, err["error"]["code"]) == (503, "ServiceNotAvailable")
            with pytest.raises(asyncio.TimeoutError):
                async with e.http.get(
                    url,
                    headers=e.auth(**immutable),
                    timeout=aiohttp.ClientTimeout(sock_read=0.5),
                ) as resp:
                    await resp.read()
            async with e.http.get(url, headers=e.auth(**immutable)) as resp:
                assert resp.status == 200  # counts used up
            gets = [r for r in e.emu.requests() if r["operation"] == "getMessage"]
            assert [(r["status"], r["outcome"]) for r in gets] == [
                (503, "response"),
                (None, "timeout"),  # the response is still withheld
                (200, "response"),
            ]
            # A rule for every operation (no "operations") reaches the lookups too.
            e.emu.add_fault({"kind": "gateway_timeout", "count": 1})
            async with e.http.get(url, headers=e.auth(**immutable)) as resp:
                assert resp.status == 504

    run(main())


def test_drafts_are_listed_by_key_with_immutable_ids_and_leave_the_listing_when_sent() -> None:
    # The draft lookup after a create of unknown outcome (issue 17): the Drafts folder,
    # filtered by the key's extended property, under Prefer: IdType="ImmutableId".
    async def main() -> None:
        async with env() as e:
            immutable = {"Prefer": 'IdType="ImmutableId"'}
            created = []
            for key in ("k11", "k11", "k12"):
                async with e.http.post(
                    e.url(f"/users/{SENDER}/messages"),
                    json=message(key),
                    headers=e.auth(**immutable),
                ) as resp:
                    created.append((await resp.json())["id"])

            async def drafts(key: str, **headers: str) -> tuple[Any, Any]:
                params = {
                    "$filter": key_filter(key),
                    "$select": "id,internetMessageId,isDraft,createdDateTime",
                }
                async with e.http.get(
                    e.url(f"/users/{SENDER}/mailFolders/drafts/messages"),
                    params=params,
                    headers=e.auth(**headers),
                ) as resp:
                    assert resp.status == 200, await resp.text()
                    return (await resp.json())["value"], resp.headers

            found, headers = await drafts("k11", **immutable)
            assert headers["Preference-Applied"] == 'IdType="ImmutableId"'
            assert sorted(m["id"] for m in found) == sorted(created[:2])
            assert all(m["isDraft"] is True and m["createdDateTime"] for m in found)
            assert set(found[0]) == {
                "@odata.etag",
                "id",
                "internetMessageId",
                "isDraft",
                "createdDateTime",
            }
            rest, _ = await drafts("k11")
            assert not {m["id"] for m in rest} & set(created)  # REST ids without the header
            assert (await drafts("k13", **immutable))[0] == []
            async with e.http.post(
                e.url(f"/users/{SENDER}/messages/{created[2]}/send"), headers=e.auth()
            ) as resp:
                assert resp.status == 202
            assert (await drafts("k12", **immutable))[0] == []  # sent: no longer a draft
            [sent] = await e.sent_items("k12", **immutable)
            assert sent["id"] == created[2]

    run(main())


# --------------------------------------------------------------------------- send rate


async def create_draft(e: Env, key: str) -> str:
    async with e.http.post(
        e.url(f"/users/{SENDER}/messages"), json=message(key), headers=e.auth()
    ) as resp:
        assert resp.status == 201, await resp.text()
        draft_id: str = (await resp.json())["id"]
        return draft_id


async def send_draft(e: Env, draft_id: str) -> aiohttp.ClientResponse:
    async with e.http.post(
        e.url(f"/users/{SENDER}/messages/{draft_id}/send"), headers=e.auth()
    ) as resp:
        await resp.read()
        return resp


def test_sends_over_the_per_minute_cap_are_refused_undelivered_until_the_window_frees() -> None:
    # Exchange Online's message rate limit, per mailbox and across all clients: sendMail
    # and a draft's send both count; creating a draft and reading do not.
    now = [1000.0]

    async def main() -> None:
        async with env(sends_per_minute=3, clock=lambda: now[0]) as e:
            assert (await e.send_mail("k1")).status == 202
            now[0] += 10
            drafts = [await create_draft(e, f"d{i}") for i in range(4)]
            assert (await send_draft(e, drafts[0])).status == 202
            assert await e.sent_items("k1")  # reads do not count either
            now[0] += 20
            assert (await e.send_mail("k2")).status == 202
            # Three sends in the window (t=1000, 1010, 1030): the fourth is refused.
            now[0] += 5
            over = await e.send_mail("k3")
            assert over.status == 429
            assert over.headers["Retry-After"] == "25"  # t=1060, when k1 leaves
            refused_draft = await send_draft(e, drafts[1])
            assert refused_draft.status == 429
            # A client on another connection is counted with the same mailbox.
            other = aiohttp.TCPConnector(ssl=client_ssl(e.emu))
            async with (
                aiohttp.ClientSession(connector=other) as http2,
                http2.post(
                    e.url(f"/users/{SENDER}/sendMail"),
                    json={"message": message("k4")},
                    headers=e.auth(),
                ) as resp,
            ):
                assert resp.status == 429
            assert (await e.send_mail("k5", mailbox="other@acme.example")).status == 202

            # Refused before processing: nothing delivered, the draft still a draft.
            assert {d["idempotency_key"] for d in e.emu.deliveries(mailbox=SENDER)} == {
                "k1",
                "d0",
                "k2",
            }
            left = {v for d in e.emu.drafts(SENDER) for v in d["extended_properties"].values()}
            assert left == {"d1", "d2", "d3"}
            codes = [r["error_code"] for r in e.emu.requests(mailbox=SENDER) if r["status"] == 429]
            assert codes == ["TooManyRequests"] * 3
            stats = e.emu.concurrency()
            assert stats["rate_throttled"] == {SENDER: 3}
            assert stats["throttled"] == {}  # not the concurrency limit

            now[0] += 25  # k1's minute is over: one slot frees
            assert (await send_draft(e, drafts[1])).status == 202
            assert (await e.send_mail("k6")).status == 429
            now[0] += 10  # and d0's
            assert (await e.send_mail("k6")).status == 202
            e.emu.reset()
            assert e.emu.concurrency()["rate_throttled"] == {}

    run(main())


def test_send_rate_cap_zero_lets_bursts_through() -> None:
    # The chaos harness, the bench and the burst tests lift the cap (and their workers').
    async def main() -> None:
        async with env(sends_per_minute=0) as e:
            statuses = [(await e.send_mail(f"k{i}")).status for i in range(40)]
            assert statuses == [202] * 40
            assert e.emu.concurrency()["rate_throttled"] == {}

    run(main())


def test_default_cap_is_exchanges_thirty_per_minute() -> None:
    async def main() -> None:
        async with env() as e:
            statuses = [(await e.send_mail(f"k{i}")).status for i in range(31)]
            assert statuses == [202] * 30 + [429]
            assert len(e.emu.deliveries()) == 30

    run(main())


def test_cli_sends_per_minute_flag_reaches_the_emulator() -> None:
    import argparse

    from sendonce.dev.graph_emulator import add_cli, build_emulator

    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers())
    args = parser.parse_args(["graph-emulator", "--sends-per-minute", "0"])
    emulator, _ = build_emulator(args)
    assert emulator.sends_per_minute == 0
    default, _ = build_emulator(parser.parse_args(["graph-emulator"]))
    assert default.sends_per_minute == 30
