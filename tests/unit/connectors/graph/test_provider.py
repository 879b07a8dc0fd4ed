"""GraphProvider with the real MSAL against the Graph emulator over HTTPS.

Each fault mode: how the provider classifies it, and what the ledger makes of it.
Nothing here patches MSAL or aiohttp; the emulator is a real HTTPS server on
127.0.0.1 with a generated CA.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sendonce.connectors.base import LookupStatus, OutgoingEmail, SendStatus
from sendonce.connectors.graph.auth import GraphTokenProvider
from sendonce.connectors.graph.message import client_request_id
from sendonce.connectors.graph.provider import GraphProvider, GraphSettings
from sendonce.emulator import EmulatorThread, GraphEmulator
from sendonce.streams.ledger import message_id_for
from sendonce.streams.testing import InMemoryPipeline

SENDER = "orders@contoso.example"


@pytest.fixture(scope="module")
def served() -> Iterator[EmulatorThread]:
    # The providers here lift their per-minute cap (provider_for) to send bursts: the
    # emulator's cap is lifted too (its own tests cover it).
    emulator = GraphEmulator(token_lifetime=3599, sends_per_minute=0)
    thread = emulator.run_in_thread()
    try:
        yield thread
    finally:
        thread.stop()


@pytest.fixture
def emulator(served: EmulatorThread) -> GraphEmulator:
    served.emulator.reset()
    return served.emulator


def provider_for(emulator: GraphEmulator, **settings: Any) -> GraphProvider:
    tokens = GraphTokenProvider(
        tenant_id=emulator.tenant,
        client_id=emulator.client_id,
        client_secret=emulator.client_secret,
        authority=emulator.authority(),
        ca_bundle=emulator.ca_bundle_path,
    )
    options: dict[str, Any] = {
        "graph_url": emulator.graph_url,
        "ca_bundle": emulator.ca_bundle_path,
        "read_timeout_s": 2.0,
        "sends_per_minute": None,
    }
    options.update(settings)
    return GraphProvider(tokens, GraphSettings(**options))


def outgoing(n: int = 1, sender: str = SENDER, **kw: Any) -> OutgoingEmail:
    key = f"contoso:key{n}"
    fields: dict[str, Any] = {
        "idempotency_key": key,
        "attempt_id": f"attempt-{n}",
        "tenant_id": "contoso",
        "sender": sender,
        "to": (f"user{n}@example.com",),
        "subject": f"Hello {n}",
        "text_body": "secret body text that must never be logged",
        "message_id": message_id_for(key, sender),
    }
    fields.update(kw)
    return OutgoingEmail(**fields)


async def _send(provider: GraphProvider, email: OutgoingEmail) -> Any:
    try:
        return await provider.send(email)
    finally:
        await provider.close()


def send(emulator: GraphEmulator, email: OutgoingEmail, **settings: Any) -> Any:
    return asyncio.run(_send(provider_for(emulator, **settings), email))


def lookup(emulator: GraphEmulator, email: OutgoingEmail) -> Any:
    async def go() -> Any:
        provider = provider_for(emulator)
        try:
            return await provider.lookup(email.idempotency_key, email.message_id, email.sender)
        finally:
            await provider.close()

    return asyncio.run(go())


def test_sendmail_is_accepted_with_evidence_and_tagged_with_the_key(
    emulator: GraphEmulator,
) -> None:
    email = outgoing()
    outcome = send(emulator, email)
    assert outcome.status is SendStatus.ACCEPTED
    [delivery] = emulator.deliveries(key=email.idempotency_key)
    assert delivery["mailbox"] == SENDER
    crid = client_request_id(email.idempotency_key, email.attempt_id)
    assert delivery["client_request_id"] == crid
    assert outcome.provider_request_id == delivery["request_id"]
    assert {"request-id", "client-request-id", "Date", "x-ms-ags-diagnostic"} <= set(
        outcome.evidence
    )
    found = lookup(emulator, email)
    assert found.status is LookupStatus.FOUND


@pytest.mark.parametrize("mode", ["sendmail", "draft-send"])
def test_display_name_recipients_are_accepted_and_delivered_to_the_address(
    emulator: GraphEmulator, mode: str
) -> None:
    # A valid intent's "Name <address>" recipients (issue 16): Graph refuses them in
    # emailAddress.address with a 400, which made the intent FAIL.
    email = outgoing(3, to=("Bob <bob@example.com>",), cc=('"Lee, Carol" <carol@example.com>',))
    outcome = send(emulator, email, mode=mode)
    assert outcome.status is SendStatus.ACCEPTED, outcome.error_message
    [delivery] = emulator.deliveries(key=email.idempotency_key)
    assert delivery["recipients"] == ["bob@example.com", "carol@example.com"]


def test_draft_send_records_immutable_id_and_deterministic_internet_message_id(
    emulator: GraphEmulator,
) -> None:
    email = outgoing(2)
    outcome = send(emulator, email, mode="draft-send")
    assert outcome.status is SendStatus.ACCEPTED
    assert outcome.internet_message_id == f"<{email.message_id}>"
    [delivery] = emulator.deliveries(key=email.idempotency_key)
    assert outcome.provider_message_id == delivery["immutable_id"]
    assert outcome.evidence["draft_id"] == delivery["immutable_id"]


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ({"kind": "unavailable"}, 503),
        ({"kind": "gateway_timeout"}, 504),
        ({"kind": "throttle", "retry_after": 1}, 429),
    ],
)
def test_5xx_and_429_on_send_are_ambiguous(
    emulator: GraphEmulator, fault: dict[str, Any], code: int
) -> None:
    emulator.add_fault({**fault, "operations": ["send"], "count": 1})
    outcome = send(emulator, outgoing(3))
    assert outcome.status is SendStatus.AMBIGUOUS
    assert outcome.error_code  # Graph's own error code, kept for the evidence trail
    assert [r["status"] for r in emulator.requests()] == [code]


@pytest.mark.parametrize("kind", ["reset", "timeout"])
def test_accepted_then_connection_lost_is_ambiguous_and_found_by_lookup(
    emulator: GraphEmulator, kind: str
) -> None:
    emulator.add_fault({"kind": kind, "operations": ["send"], "count": 1, "hang_ms": 5000})
    email = outgoing(4)
    outcome = send(emulator, email, read_timeout_s=0.5)
    assert outcome.status is SendStatus.AMBIGUOUS
    assert len(emulator.deliveries(key=email.idempotency_key)) == 1
    found = lookup(emulator, email)
    assert found.status is LookupStatus.FOUND
    # The lookup's own evidence, for the trail: the ids the emulator saw.
    [listing] = [r for r in emulator.requests() if r["operation"] == "listMessages"]
    assert found.evidence["client-request-id"] == listing["client_request_id"]
    assert found.evidence["request-id"] == listing["request_id"] == found.provider_request_id


def test_delivered_twice_is_accepted_and_the_lookup_flags_the_transport_duplicate(
    emulator: GraphEmulator,
) -> None:
    emulator.add_fault({"kind": "duplicate", "operations": ["send"], "count": 1})
    email = outgoing(5)
    assert send(emulator, email).status is SendStatus.ACCEPTED
    deliveries = emulator.deliveries(key=email.idempotency_key)
    assert len(deliveries) == 2
    assert len({d["request_id"] for d in deliveries}) == 1
    found = lookup(emulator, email)
    assert found.status is LookupStatus.FOUND
    assert "transport duplicate" in (found.detail or "")


def test_sent_items_visibility_delay_makes_the_lookup_unknown_then_found(
    emulator: GraphEmulator,
) -> None:
    emulator.add_fault(
        {"kind": "visibility_delay", "operations": ["send"], "count": 1, "delay_ms": 1500}
    )
    email = outgoing(6)
    assert send(emulator, email).status is SendStatus.ACCEPTED
    assert lookup(emulator, email).status is LookupStatus.UNKNOWN
    deadline = time.monotonic() + 10
    while lookup(emulator, email).status is not LookupStatus.FOUND:
        assert time.monotonic() < deadline


def test_unknown_mailbox_and_bad_recipient_are_rejected(served: EmulatorThread) -> None:
    emulator = served.emulator
    emulator.reset()
    outcome = send(emulator, outgoing(7, to=("not-an-address",)))
    assert outcome.status is SendStatus.REJECTED
    assert outcome.error_code == "ErrorInvalidRecipients"


def test_connection_refused_is_not_sent_and_retryable(emulator: GraphEmulator) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    provider = provider_for(emulator, graph_url=f"https://127.0.0.1:{closed_port}/v1.0")
    outcome = asyncio.run(_send(provider, outgoing(8)))
    assert outcome.status is SendStatus.NOT_SENT_RETRYABLE


def test_expired_token_is_refreshed_once_and_the_send_goes_through(
    emulator: GraphEmulator,
) -> None:
    async def go() -> Any:
        provider = provider_for(emulator)
        try:
            first = await provider.send(outgoing(9))
            emulator.expire_tokens()
            second = await provider.send(outgoing(10))
            return first, second
        finally:
            await provider.close()

    first, second = asyncio.run(go())
    assert first.status is SendStatus.ACCEPTED and second.status is SendStatus.ACCEPTED
    statuses = [r["status"] for r in emulator.requests() if r["path"].endswith("/sendMail")]
    assert statuses == [202, 401, 202]
    assert len(emulator.requests("token")) == 2  # one refresh, not one per request


def test_retry_after_blocks_the_mailbox_and_not_the_others(emulator: GraphEmulator) -> None:
    emulator.add_fault(
        {
            "kind": "throttle",
            "retry_after": 2,
            "mailbox": SENDER,
            "operations": ["send"],
            "count": 1,
        }
    )
    other = "billing@contoso.example"

    async def go() -> list[Any]:
        provider = provider_for(emulator)
        try:
            throttled = await provider.send(outgoing(11))
            later = asyncio.create_task(provider.send(outgoing(12)))
            meanwhile = await provider.send(outgoing(13, sender=other))
            return [throttled, meanwhile, await later]
        finally:
            await provider.close()

    throttled, meanwhile, later = asyncio.run(go())
    assert throttled.status is SendStatus.AMBIGUOUS and throttled.retry_after_s == 2
    assert meanwhile.status is SendStatus.ACCEPTED and later.status is SendStatus.ACCEPTED
    requests = emulator.requests(mailbox=SENDER)
    answered_429 = next(r for r in requests if r["status"] == 429)
    after = [r for r in requests if r["start_ms"] > answered_429["end_ms"]]
    assert after, "the mailbox was never used again"
    # Nothing reached the mailbox during the Retry-After window (emulator clock).
    assert min(r["start_ms"] for r in after) >= answered_429["end_ms"] + 2000
    other_requests = emulator.requests(mailbox=other)
    assert min(r["start_ms"] for r in other_requests) < answered_429["end_ms"] + 2000


def test_200_concurrent_sends_over_3_mailboxes_stay_within_4_per_mailbox(
    emulator: GraphEmulator,
) -> None:
    emulator.add_fault({"kind": "latency", "latency_ms": 20})
    mailboxes = [f"sender{i}@contoso.example" for i in range(3)]

    async def go() -> list[Any]:
        provider = provider_for(emulator)
        try:
            return await asyncio.gather(
                *(provider.send(outgoing(100 + n, sender=mailboxes[n % 3])) for n in range(200))
            )
        finally:
            await provider.close()

    outcomes = asyncio.run(go())
    assert all(o.status is SendStatus.ACCEPTED for o in outcomes)
    seen = emulator.concurrency()
    assert max(seen["max_in_flight"].values()) <= 4
    assert max(seen["max_in_flight"].values()) == 4  # it did push up to the limit
    assert not any(seen["throttled"].values())
    assert len(emulator.deliveries()) == 200


def intent(n: int) -> dict[str, Any]:
    return {
        "tenant_id": "contoso",
        "source_event_id": f"evt-{n}",
        "action_type": "reply",
        "sender": SENDER,
        "to": [f"user{n}@example.com"],
        "subject": f"Re: {n}",
        "text_body": "body",
    }


def test_ledger_accept_then_reset_ends_sent_through_reconciliation_with_one_delivery(
    emulator: GraphEmulator,
) -> None:
    emulator.add_fault({"kind": "reset", "operations": ["send"], "count": 1})
    now = [1_000_000]

    async def go() -> InMemoryPipeline:
        provider = provider_for(emulator)
        pipeline = InMemoryPipeline(provider, clock=lambda: now[0])
        try:
            await pipeline.run([pipeline.intent_record(intent(1))])
            now[0] += 31_000  # past the grace period
            await pipeline.reconcile()
        finally:
            await provider.close()
        return pipeline

    pipeline = asyncio.run(go())
    outcomes = [r["outcome"] for r in pipeline.results()]
    assert outcomes == ["AMBIGUOUS", "SENT"]
    sent = pipeline.results()[-1]
    assert sent["reconciled"]
    assert len(emulator.deliveries(key=sent["idempotency_key"])) == 1
    assert [r["operation"] for r in emulator.requests()].count("sendMail") == 1


def run_pipeline(
    emulator: GraphEmulator,
    intents: list[dict[str, Any]],
    *,
    rounds: int = 0,
    step_ms: int = 31_000,
    settings_overrides: dict[str, Any] | None = None,
    real_time: bool = False,
) -> InMemoryPipeline:
    """Process ``intents`` in one batch, then run ``rounds`` reconciler ticks."""
    from sendonce.settings import Settings

    clock = [1_000_000]
    settings = Settings(partitions=12, retry_base_delay_s=0.0, **(settings_overrides or {}))

    async def go() -> InMemoryPipeline:
        provider = provider_for(emulator)
        pipeline = InMemoryPipeline(
            provider,
            settings=settings,
            clock=(lambda: int(time.time() * 1000)) if real_time else (lambda: clock[0]),
        )
        try:
            await pipeline.run([pipeline.intent_record(i) for i in intents])
            for _ in range(rounds):
                clock[0] += step_ms
                if real_time:
                    await asyncio.sleep(step_ms / 1000)
                await pipeline.reconcile()
        finally:
            await provider.close()
        return pipeline

    return asyncio.run(go())


@pytest.mark.parametrize(
    ("fault", "outcomes", "deliveries"),
    [
        ({"kind": "latency", "latency_ms": 50}, ["SENT"], 1),
        # Delivered although Graph answered an error: found by the lookup.
        ({"kind": "unavailable", "deliver": True}, ["AMBIGUOUS", "SENT"], 1),
        ({"kind": "gateway_timeout", "deliver": True}, ["AMBIGUOUS", "SENT"], 1),
        ({"kind": "throttle", "deliver": True}, ["AMBIGUOUS", "SENT"], 1),
        ({"kind": "timeout", "hang_ms": 5000}, ["AMBIGUOUS", "SENT"], 1),
        ({"kind": "reset"}, ["AMBIGUOUS", "SENT"], 1),
        # Not delivered and never visible: reviewed by an operator, never resent blind.
        ({"kind": "unavailable"}, ["AMBIGUOUS"], 0),
        ({"kind": "reset", "deliver": False}, ["AMBIGUOUS"], 0),
        # A transport duplicate is Graph's, not ours: one send, SENT.
        ({"kind": "duplicate"}, ["SENT"], 2),
    ],
)
def test_ledger_outcome_of_each_fault(
    emulator: GraphEmulator, fault: dict[str, Any], outcomes: list[str], deliveries: int
) -> None:
    emulator.add_fault({**fault, "operations": ["send"], "count": 1})
    pipeline = run_pipeline(
        emulator,
        [intent(1)],
        rounds=12,
        step_ms=400_000,
        settings_overrides={"graph_read_timeout_s": 1.0},
    )
    results = pipeline.results()
    assert [r["outcome"] for r in results] == outcomes
    key = results[0]["idempotency_key"]
    assert len(emulator.deliveries(key=key)) == deliveries
    sends = [r for r in emulator.requests() if r["path"].endswith("/sendMail")]
    assert len(sends) == 1  # whatever happened, one send request: nothing resent blind
    entry = pipeline.store.get(key, pipeline.fetcher.records.popitem()[0].partition)
    assert entry is not None
    if outcomes[-1] == "AMBIGUOUS":
        assert entry.review_required  # looked up until the deadline, then flagged
    if outcomes[-1] == "SENT" and len(outcomes) == 2:
        assert results[-1]["reconciled"]


def test_visibility_delay_is_reconciled_after_several_lookups(emulator: GraphEmulator) -> None:
    emulator.add_fault({"kind": "reset", "operations": ["send"], "count": 1})
    emulator.add_fault(
        {"kind": "visibility_delay", "operations": ["send"], "count": 1, "delay_ms": 2500}
    )
    pipeline = run_pipeline(
        emulator,
        [intent(1)],
        rounds=8,
        step_ms=1_000,
        real_time=True,
        settings_overrides={"reconcile_grace_s": 0.5, "reconcile_interval_s": 0.5},
    )
    assert [r["outcome"] for r in pipeline.results()] == ["AMBIGUOUS", "SENT"]
    lookups = [r for r in emulator.requests() if r["operation"] == "listMessages"]
    assert len(lookups) >= 2  # the first lookup(s) came too early and found nothing


def test_429_with_retry_after_then_one_eventual_delivery_under_resend_policy(
    emulator: GraphEmulator,
) -> None:
    emulator.add_fault({"kind": "throttle", "retry_after": 2, "operations": ["send"], "count": 1})
    pipeline = run_pipeline(
        emulator,
        [intent(1)],
        rounds=6,
        step_ms=700,
        real_time=True,
        settings_overrides={
            "reconcile_grace_s": 0.5,
            "reconcile_interval_s": 0.5,
            "reconcile_deadline_s": 1.0,
            "reconcile_on_deadline": "resend",
        },
    )
    outcomes = [r["outcome"] for r in pipeline.results()]
    assert outcomes[0] == "AMBIGUOUS" and outcomes[-1] == "SENT"
    key = pipeline.results()[0]["idempotency_key"]
    assert len(emulator.deliveries(key=key)) == 1
    requests = emulator.requests(mailbox=SENDER)
    throttled = next(r for r in requests if r["status"] == 429)
    later = [r for r in requests if r["start_ms"] > throttled["end_ms"]]
    assert later
    assert min(r["start_ms"] for r in later) >= throttled["end_ms"] + 2000


def test_200_concurrent_intents_over_3_mailboxes_through_the_ledger(
    emulator: GraphEmulator,
) -> None:
    emulator.add_fault({"kind": "latency", "latency_ms": 20})
    mailboxes = [f"sender{i}@contoso.example" for i in range(3)]
    intents = [{**intent(n), "sender": mailboxes[n % 3]} for n in range(200)]
    pipeline = run_pipeline(emulator, intents, settings_overrides={"send_concurrency": 64})
    assert [r["outcome"] for r in pipeline.results()] == ["SENT"] * 200
    seen = emulator.concurrency()
    assert max(seen["max_in_flight"].values()) <= 4
    assert not any(seen["throttled"].values())
    assert len(emulator.deliveries()) == 200


def test_unknown_and_disabled_mailboxes_are_rejected_without_retry() -> None:
    emulator = GraphEmulator(
        mailboxes=[SENDER, "off@contoso.example"], disabled_mailboxes=["off@contoso.example"]
    )
    with emulator.run_in_thread():
        unknown = send(emulator, outgoing(1, sender="ghost@contoso.example"))
        disabled = send(emulator, outgoing(2, sender="off@contoso.example"))
    assert unknown.status is SendStatus.REJECTED
    assert disabled.status is SendStatus.REJECTED
    assert unknown.error_code != disabled.error_code
