"""GraphProvider as a DraftingProvider (issue 17), with the real MSAL against the emulator.

Each fault on the draft create and on the draft send, how the provider classifies it,
and what the mailbox then says about the key (find_draft) or the draft (draft_state):
every ambiguous answer is settled by a read that proves sent or not sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

from sendonce.connectors.base import LookupStatus, SendStatus, drafting
from sendonce.connectors.graph.message import client_request_id
from sendonce.connectors.graph.provider import GraphProvider
from sendonce.emulator import EmulatorThread, GraphEmulator
from sendonce.emulator.store import new_immutable_id
from tests.unit.connectors.graph.test_provider import SENDER, outgoing, provider_for

T = TypeVar("T")


@pytest.fixture(scope="module")
def served() -> Iterator[EmulatorThread]:
    emulator = GraphEmulator(token_lifetime=3599)
    thread = emulator.run_in_thread()
    try:
        yield thread
    finally:
        thread.stop()


@pytest.fixture
def emulator(served: EmulatorThread) -> GraphEmulator:
    served.emulator.reset()
    return served.emulator


#: What can go wrong with a read (a listing, a message by id), each once.
READ_FAULTS: list[dict[str, Any]] = [
    {"kind": "unavailable"},
    {"kind": "gateway_timeout"},
    {"kind": "throttle"},
    {"kind": "timeout", "hang_ms": 5000},
    {"kind": "reset"},
]


def using(
    emulator: GraphEmulator, body: Callable[[GraphProvider], Awaitable[T]], **settings: Any
) -> T:
    """Run ``body`` with one provider (short read timeout) and close it afterwards."""

    async def go() -> T:
        provider = provider_for(emulator, **{"read_timeout_s": 0.5, **settings})
        try:
            return await body(provider)
        finally:
            await provider.close()

    return asyncio.run(go())


def _count(fault: dict[str, Any]) -> int:
    # aiohttp retries an idempotent request (GET) once on a dropped connection, so a
    # read fails for good only when both tries are reset.
    return 2 if fault["kind"] == "reset" else 1


def operations(emulator: GraphEmulator, name: str) -> list[dict[str, Any]]:
    return [r for r in emulator.requests() if r["operation"] == name]


@pytest.mark.parametrize(("mode", "first"), [("draft-send", True), ("sendmail", False)])
def test_the_provider_drafts_in_either_mode_and_drafts_first_in_draft_send(
    emulator: GraphEmulator, mode: str, first: bool
) -> None:
    email = outgoing(1)

    async def body(provider: GraphProvider) -> Any:
        assert drafting(provider) is provider
        assert provider.drafts_first is first
        created = await provider.create_draft(email)
        assert created.status is SendStatus.ACCEPTED, created.error_message
        assert created.provider_message_id is not None
        return created, await provider.send_draft(email, created.provider_message_id)

    created, sent = using(emulator, body, mode=mode)
    [delivery] = emulator.deliveries(key=email.idempotency_key)
    # The immutable id, kept from the create through the move to Sent Items.
    assert created.provider_message_id == delivery["immutable_id"]
    assert created.internet_message_id == f"<{email.message_id}>"
    assert created.evidence["client-request-id"] == client_request_id(
        email.idempotency_key, email.attempt_id, step="create"
    )
    assert sent.status is SendStatus.ACCEPTED
    assert sent.provider_message_id == created.provider_message_id
    assert sent.internet_message_id == delivery["internet_message_id"]
    assert sent.evidence["draft_id"] == created.provider_message_id
    [send_request] = operations(emulator, "sendDraft")
    assert sent.evidence["client-request-id"] == send_request["client_request_id"]
    assert sent.evidence["client-request-id"] == client_request_id(
        email.idempotency_key, email.attempt_id, step="send"
    )
    [create_request] = operations(emulator, "createMessage")
    assert created.provider_request_id == create_request["request_id"]


# Faults on the create: (fault, whether the draft then exists). A throttle or 503
# refused before processing leaves nothing; one that "delivers", a reset and a
# timeout leave the draft. Either way, never a delivery.
CREATE_FAULTS = [
    ({"kind": "throttle", "retry_after": 1}, False),
    ({"kind": "throttle", "retry_after": 1, "deliver": True}, True),
    ({"kind": "unavailable", "retry_after": 1}, False),
    ({"kind": "unavailable", "retry_after": 1, "deliver": True}, True),
    ({"kind": "gateway_timeout"}, False),
    ({"kind": "gateway_timeout", "deliver": True}, True),
    ({"kind": "reset"}, True),
    ({"kind": "reset", "deliver": False}, False),
    ({"kind": "timeout", "hang_ms": 5000}, True),
]


def _fault_id(value: Any) -> str:
    if isinstance(value, dict):
        deliver = value.get("deliver")
        return f"{value['kind']}-{ {True: 'deliver', False: 'lost'}.get(deliver, 'default') }"
    return "exists" if value else "none"


@pytest.mark.parametrize(("fault", "exists"), CREATE_FAULTS, ids=_fault_id)
def test_a_create_that_may_have_been_processed_is_ambiguous_and_find_draft_settles_it(
    emulator: GraphEmulator, fault: dict[str, Any], exists: bool
) -> None:
    emulator.add_fault({**fault, "operations": ["createMessage"], "count": 1})
    email = outgoing(2)

    async def body(provider: GraphProvider) -> Any:
        created = await provider.create_draft(email)
        found = await provider.find_draft(email.idempotency_key, email.sender)
        return created, found

    created, found = using(emulator, body)
    assert created.status is SendStatus.AMBIGUOUS, created.error_message
    assert created.error_code
    if fault["kind"] in ("throttle", "unavailable"):
        assert created.retry_after_s == 1.0
    assert emulator.deliveries() == []
    if exists:
        assert found.status is LookupStatus.DRAFT, found.detail
        assert found.provider_message_id and found.provider_message_id.startswith("AAkALg")
        assert found.internet_message_id == f"<{email.message_id}>"
    else:
        assert found.status is LookupStatus.NOT_FOUND_DEFINITIVE, found.detail


@pytest.mark.parametrize(("fault", "exists"), CREATE_FAULTS[:6], ids=_fault_id)
def test_one_call_draft_send_reports_a_create_that_may_have_been_processed_as_ambiguous(
    emulator: GraphEmulator, fault: dict[str, Any], exists: bool
) -> None:
    # send() in draft-send mode is create_draft then send_draft: the create's AMBIGUOUS
    # is its answer, and it never goes on to create a second draft or send one.
    emulator.add_fault({**fault, "operations": ["createMessage"], "count": 1})
    outcome = using(emulator, lambda p: p.send(outgoing(3)), mode="draft-send")
    assert outcome.status is SendStatus.AMBIGUOUS, outcome.error_message
    assert len(operations(emulator, "createMessage")) == 1
    assert operations(emulator, "sendDraft") == []


def test_refused_creates_stay_rejected_and_nothing_is_drafted(emulator: GraphEmulator) -> None:
    outcome = using(emulator, lambda p: p.create_draft(outgoing(4, to=("not-an-address",))))
    assert outcome.status is SendStatus.REJECTED
    assert outcome.error_code == "ErrorInvalidRecipients"


# Faults on the send of a draft: (fault, whether it was delivered). The create's
# faults, whose work (the draft, here the delivery) is done alike, and a timeout
# that loses the request.
SEND_FAULTS = [*CREATE_FAULTS, ({"kind": "timeout", "hang_ms": 5000, "deliver": False}, False)]


@pytest.mark.parametrize(("fault", "delivered"), SEND_FAULTS, ids=_fault_id)
def test_an_ambiguous_draft_send_is_settled_by_the_drafts_state(
    emulator: GraphEmulator, fault: dict[str, Any], delivered: bool
) -> None:
    emulator.add_fault({**fault, "operations": ["sendDraft"], "count": 1})
    email = outgoing(5)

    async def body(provider: GraphProvider) -> Any:
        created = await provider.create_draft(email)
        assert created.provider_message_id is not None
        draft_id = created.provider_message_id
        sent = await provider.send_draft(email, draft_id)
        state = await provider.draft_state(draft_id, email.sender)
        again = None
        if state.status is LookupStatus.DRAFT:
            again = await provider.send_draft(email, draft_id)  # provably not sent
        return draft_id, sent, state, again

    draft_id, sent, state, again = using(emulator, body)
    assert sent.status is SendStatus.AMBIGUOUS, sent.error_message
    assert sent.evidence["draft_id"] == draft_id
    assert (
        sent.evidence["client-request-id"]
        == operations(emulator, "sendDraft")[0]["client_request_id"]
    )
    if fault["kind"] in ("throttle", "unavailable"):
        assert sent.retry_after_s == 1.0
    if delivered:
        assert state.status is LookupStatus.FOUND, state.detail
        assert state.detail == "sent: no longer a draft"
        assert state.provider_message_id == draft_id
        assert state.internet_message_id == f"<{email.message_id}>"
        assert state.accepted_at_ms is not None
        assert again is None
    else:
        assert state.status is LookupStatus.DRAFT, state.detail
        assert state.provider_message_id == draft_id
        assert again is not None and again.status is SendStatus.ACCEPTED
    assert len(emulator.deliveries(key=email.idempotency_key)) == 1


def test_sending_a_draft_that_was_already_sent_is_ambiguous_not_rejected(
    emulator: GraphEmulator,
) -> None:
    email = outgoing(6)

    async def body(provider: GraphProvider) -> Any:
        created = await provider.create_draft(email)
        assert created.provider_message_id is not None
        first = await provider.send_draft(email, created.provider_message_id)
        second = await provider.send_draft(email, created.provider_message_id)
        state = await provider.draft_state(created.provider_message_id, email.sender)
        return first, second, state

    first, second, state = using(emulator, body)
    assert first.status is SendStatus.ACCEPTED
    assert second.status is SendStatus.AMBIGUOUS
    assert second.error_code == "ErrorItemNotFound"
    assert state.status is LookupStatus.FOUND
    assert len(emulator.deliveries(key=email.idempotency_key)) == 1


def test_a_draft_send_from_an_unknown_mailbox_stays_rejected() -> None:
    emulator = GraphEmulator(mailboxes=[SENDER])
    with emulator.run_in_thread():
        outcome = using(
            emulator,
            lambda p: p.send_draft(outgoing(7, sender="ghost@contoso.example"), new_immutable_id()),
        )
    assert outcome.status is SendStatus.REJECTED
    assert outcome.error_code == "ErrorInvalidUser"


def test_find_draft_picks_the_oldest_of_several_drafts_and_says_how_many(
    emulator: GraphEmulator,
) -> None:
    email = outgoing(8)

    async def body(provider: GraphProvider) -> Any:
        first = await provider.create_draft(email)
        await provider.create_draft(email)
        await provider.create_draft(email)
        return first, await provider.find_draft(email.idempotency_key, email.sender)

    first, found = using(emulator, body)
    assert found.status is LookupStatus.DRAFT
    assert found.provider_message_id == first.provider_message_id
    assert found.detail is not None and found.detail.startswith("3 drafts")
    [listing] = operations(emulator, "listMessages")
    assert found.provider_request_id == listing["request_id"]
    assert found.evidence["client-request-id"] == listing["client_request_id"]


def test_find_draft_finds_a_sent_message_in_sent_items(emulator: GraphEmulator) -> None:
    email = outgoing(9)
    sent = using(emulator, lambda p: p.send(email), mode="draft-send")
    assert sent.status is SendStatus.ACCEPTED
    found = using(emulator, lambda p: p.find_draft(email.idempotency_key, email.sender))
    assert found.status is LookupStatus.FOUND, found.detail
    assert found.provider_message_id == sent.provider_message_id  # the immutable id
    assert found.internet_message_id == f"<{email.message_id}>"
    lists = operations(emulator, "listMessages")
    assert [r["path"].split("/")[-2].lower() for r in lists] == ["drafts", "sentitems"]


def test_find_draft_with_nothing_anywhere_is_definitive(emulator: GraphEmulator) -> None:
    found = using(emulator, lambda p: p.find_draft("contoso:never", SENDER))
    assert found.status is LookupStatus.NOT_FOUND_DEFINITIVE, found.detail


@pytest.mark.parametrize("fault", READ_FAULTS, ids=lambda f: f["kind"])
def test_find_draft_that_cannot_ask_is_unknown(
    emulator: GraphEmulator, fault: dict[str, Any]
) -> None:
    # The Drafts listing fails: nothing may be concluded, not even from Sent Items.
    emulator.add_fault({**fault, "operations": ["listMessages"], "count": _count(fault)})
    found = using(emulator, lambda p: p.find_draft("contoso:key10", SENDER))
    assert found.status is LookupStatus.UNKNOWN, found.detail
    assert found.detail
    assert len(operations(emulator, "listMessages")) == _count(fault)


def test_draft_state_of_a_draft_a_sent_message_and_a_missing_one(
    emulator: GraphEmulator,
) -> None:
    email = outgoing(11)

    async def body(provider: GraphProvider) -> Any:
        created = await provider.create_draft(email)
        assert created.provider_message_id is not None
        draft_id = created.provider_message_id
        before = await provider.draft_state(draft_id, email.sender)
        await provider.send_draft(email, draft_id)
        after = await provider.draft_state(draft_id, email.sender)
        gone = await provider.draft_state(new_immutable_id(), email.sender)
        return draft_id, before, after, gone

    draft_id, before, after, gone = using(emulator, body)
    assert before.status is LookupStatus.DRAFT
    assert before.provider_message_id == draft_id
    assert after.status is LookupStatus.FOUND
    assert (after.provider_message_id, after.internet_message_id) == (
        draft_id,
        f"<{email.message_id}>",
    )
    assert after.accepted_at_ms is not None
    assert gone.status is LookupStatus.GONE
    assert gone.error_code == "ErrorItemNotFound"
    reads = operations(emulator, "getMessage")
    assert len(reads) == 3
    assert after.provider_request_id == reads[1]["request_id"]


@pytest.mark.parametrize("fault", READ_FAULTS, ids=lambda f: f["kind"])
def test_draft_state_that_cannot_read_is_unknown(
    emulator: GraphEmulator, fault: dict[str, Any]
) -> None:
    email = outgoing(12)
    emulator.add_fault({**fault, "operations": ["getMessage"], "count": _count(fault)})

    async def body(provider: GraphProvider) -> Any:
        created = await provider.create_draft(email)
        assert created.provider_message_id is not None
        return await provider.draft_state(created.provider_message_id, email.sender)

    state = using(emulator, body)
    assert state.status is LookupStatus.UNKNOWN, state.detail
    assert state.detail
