"""Draft-send against the real broker and the Graph emulator: every fault settles itself.

Issue 17: with the draft's immutable id in the ledger before its send, each fault on
the create or the send (429, 503, 504 with and without the work done, a reset, a
timeout) must end in exactly one delivery, with no key left for an operator. One
worker, one mailbox per fault, so the faults do not mask each other.
"""

from __future__ import annotations

import pytest

from sendonce.emulator import GraphEmulator
from tests.integration.harness import Pipeline, intent

pytestmark = pytest.mark.integration

READ_TIMEOUT_S = 2

#: (operation, fault) pairs: each fault once, on its own mailbox.
FAULTS = [
    (operation, {"kind": kind, "deliver": deliver, **extra})
    for operation in ("createMessage", "sendDraft")
    for kind, extra in (
        ("throttle", {"retry_after": 1}),
        ("unavailable", {"retry_after": 1}),
        ("gateway_timeout", {}),
        ("reset", {}),
        ("timeout", {"hang_ms": (READ_TIMEOUT_S + 3) * 1000}),
    )
    for deliver in (True, False)
]


def test_every_fault_on_create_or_send_ends_in_one_delivery_and_no_review(
    pipeline: Pipeline, emulator: GraphEmulator
) -> None:
    intents = []
    for n, (operation, fault) in enumerate(FAULTS):
        mailbox = f"faulty{n}@acme.example"
        emulator.add_fault({**fault, "mailbox": mailbox, "operations": [operation], "count": 1})
        intents.append(intent(n, sender=mailbox))
    worker = pipeline.start_worker(
        **emulator.worker_env(),
        SENDONCE_GRAPH_MODE="draft-send",
        SENDONCE_GRAPH_READ_TIMEOUT_S=str(READ_TIMEOUT_S),
        SENDONCE_GRAPH_SENDS_PER_MINUTE="0",
        SENDONCE_RECONCILE_GRACE_S="1",
        SENDONCE_RECONCILE_INTERVAL_S="1",
        SENDONCE_RECONCILE_TICK_S="0.2",
        SENDONCE_RECONCILE_DRAFT_RESEND_GRACE_S=str(READ_TIMEOUT_S + 3),
    )
    keys = pipeline.publish(intents)

    # A create fault ends in SENT alone (nothing can have gone out before the draft
    # was found or made again); a send fault in AMBIGUOUS, then SENT.
    create_faults = sum(1 for operation, _ in FAULTS if operation == "createMessage")
    expected = create_faults + 2 * (len(FAULTS) - create_faults)
    records = pipeline.wait_results(expected, timeout=240)
    outcomes: dict[str, list[str]] = {}
    for record in records:
        outcomes.setdefault(str(record.value["idempotency_key"]), []).append(
            str(record.value["outcome"])
        )
    for key, (operation, fault) in zip(keys, FAULTS, strict=True):
        case = f"{operation} {fault['kind']} deliver={fault['deliver']}"
        expect = ["SENT"] if operation == "createMessage" else ["AMBIGUOUS", "SENT"]
        assert outcomes.get(key) == expect, (case, outcomes.get(key), worker.log()[-3000:])
        delivered = emulator.deliveries(key=key)
        assert len(delivered) == 1, case
        # One draft per key, the delivered one: no second create left another behind.
        left = emulator.drafts(delivered[0]["mailbox"])
        assert [d for d in left if key in d["extended_properties"].values()] == [], case
    assert worker.alive()
