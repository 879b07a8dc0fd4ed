"""Draft-send against the real broker and the Graph emulator: every fault settles itself.

Issue 17: with the draft's immutable id in the ledger before its send, each fault on
the create or the send (429, 503, 504 with and without the work done, a reset, a
timeout) must end in exactly one delivery, with no key left for an operator. One
worker, one mailbox per fault, so the faults do not mask each other.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

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


def drafts_env(emulator: GraphEmulator, *, resend_grace_s: float) -> dict[str, str]:
    """A worker in draft-send mode with quick lookups, caps lifted."""
    return {
        **emulator.worker_env(),
        "SENDONCE_GRAPH_MODE": "draft-send",
        "SENDONCE_GRAPH_READ_TIMEOUT_S": str(READ_TIMEOUT_S),
        "SENDONCE_GRAPH_SENDS_PER_MINUTE": "0",
        "SENDONCE_RECONCILE_GRACE_S": "1",
        "SENDONCE_RECONCILE_INTERVAL_S": "1",
        "SENDONCE_RECONCILE_TICK_S": "0.2",
        "SENDONCE_RECONCILE_DRAFT_RESEND_GRACE_S": f"{resend_grace_s:g}",
    }


def test_every_fault_on_create_or_send_ends_in_one_delivery_and_no_review(
    pipeline: Pipeline, emulator: GraphEmulator
) -> None:
    intents = []
    for n, (operation, fault) in enumerate(FAULTS):
        mailbox = f"faulty{n}@acme.example"
        emulator.add_fault({**fault, "mailbox": mailbox, "operations": [operation], "count": 1})
        intents.append(intent(n, sender=mailbox))
    worker = pipeline.start_worker(**drafts_env(emulator, resend_grace_s=READ_TIMEOUT_S + 3))
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


def test_a_sent_draft_deleted_for_good_is_the_one_case_left_for_review(
    pipeline: Pipeline, emulator: GraphEmulator
) -> None:
    # The send goes out, the connection drops (AMBIGUOUS), and before the draft can be
    # read back someone deletes the message for good: the mailbox can no longer say
    # whether it was sent, so an operator decides. Nothing is sent again.
    mailbox = "purged@acme.example"
    emulator.add_fault(
        {"kind": "reset", "mailbox": mailbox, "operations": ["sendDraft"], "count": 1}
    )
    # Long enough for the test to delete the message before the draft's state counts.
    worker = pipeline.start_worker(**drafts_env(emulator, resend_grace_s=20))
    [key] = pipeline.publish([intent(1, sender=mailbox)])
    [ambiguous] = pipeline.wait_results(1, timeout=120)
    assert ambiguous.value["outcome"] == "AMBIGUOUS", worker.log()[-3000:]
    [delivery] = emulator.deliveries(key=key)
    assert emulator.purge_message(mailbox, delivery["immutable_id"])

    listed = review_list(pipeline, key)
    assert listed["review_required"] is True, listed
    assert listed["error_code"] == "draft_gone"
    assert len(emulator.deliveries(key=key)) == 1
    assert worker.alive()


def review_list(pipeline: Pipeline, key: str, timeout: float = 90) -> dict[str, Any]:
    """The key's row of `sendonce review list --json` once it is flagged for review."""
    env = pipeline.env(SENDONCE_BOOTSTRAP_SERVERS=pipeline.settings.bootstrap_servers)
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run(
            [sys.executable, "-m", "sendonce.cli", "review", "list", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        rows = [r for r in json.loads(done.stdout) if r["key"] == key]
        if (rows and rows[0]["review_required"]) or time.monotonic() > deadline:
            assert rows, done.stdout
            return dict(rows[0])
        time.sleep(1.0)  # paces the re-reads of the changelog; the state is re-read each time
