"""``sendonce review``: operator resolutions applied by the real worker on the real broker.

The provider is the Graph emulator (HTTPS, real MSAL). Two mailboxes lose their
request and never answer (a timeout that delivered nothing): their sends are
AMBIGUOUS. Reconciliation is pushed past the test (a long grace period), so only
the operator settles them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from sendonce.emulator import GraphEmulator
from sendonce.ops.history import TopicReader, ledger_entry
from tests.integration.harness import Pipeline, intent

pytestmark = pytest.mark.integration

LOST = ("lost-one@acme.example", "lost-two@acme.example")
FINE = "orders@acme.example"


def review(pipeline: Pipeline, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sendonce.cli", "review", *args],
        env=pipeline.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def outcomes_for(pipeline: Pipeline, key: str) -> list[tuple[str, Any]]:
    return [
        (str(r.value["outcome"]), r.value["reconciled"])
        for r in pipeline.watcher.records
        if r.value.get("idempotency_key") == key
    ]


def test_resend_sends_once_sent_sends_nothing_and_a_settled_key_is_refused(
    pipeline: Pipeline, emulator: GraphEmulator
) -> None:
    for mailbox in LOST:
        emulator.add_fault(
            {"kind": "timeout", "mailbox": mailbox, "operations": ["send"], "count": 1,
             "deliver": False}
        )  # fmt: skip
    pipeline.start_worker(
        **emulator.worker_env(),
        SENDONCE_GRAPH_READ_TIMEOUT_S="2",
        SENDONCE_GRAPH_SENDS_PER_MINUTE="0",
        SENDONCE_RECONCILE_GRACE_S="3600",
    )
    keys = pipeline.publish(
        [intent(1, sender=LOST[0]), intent(2, sender=LOST[1]), intent(3, sender=FINE)]
    )
    resend_key, sent_key, settled_key = keys
    records = pipeline.wait_results(3)
    assert sorted(str(r.value["outcome"]) for r in records) == ["AMBIGUOUS", "AMBIGUOUS", "SENT"]
    assert emulator.deliveries(key=resend_key) == emulator.deliveries(key=sent_key) == []

    listed = review(pipeline, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    open_keys = {e["key"] for e in json.loads(listed.stdout)}
    assert open_keys == {resend_key, sent_key}
    text = review(pipeline, "list").stdout
    assert resend_key in text and sent_key in text and settled_key not in text

    # Resend: exactly one new delivery, recorded with who and why.
    done = review(
        pipeline, "resolve", resend_key, "--as", "resend", "--reason", "mailbox owner saw nothing",
        "--operator", "dana@ops",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "resend approved" in done.stdout
    pipeline.wait_results(4)
    assert len(emulator.deliveries(key=resend_key)) == 1
    assert outcomes_for(pipeline, resend_key) == [("AMBIGUOUS", False), ("SENT", False)]

    # Sent: settled without a provider call.
    done = review(
        pipeline, "resolve", sent_key, "--as", "sent", "--reason", "found in the recipient's inbox",
        "--operator", "dana@ops",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    pipeline.wait_results(5)
    assert emulator.deliveries(key=sent_key) == []
    assert outcomes_for(pipeline, sent_key) == [("AMBIGUOUS", False), ("SENT", False)]

    # Not ambiguous: refused with a clear message, nothing published.
    refused = review(pipeline, "resolve", settled_key, "--as", "resend", "--reason", "try again")
    assert refused.returncode == 1
    assert f"{settled_key} is SENT, not AMBIGUOUS" in refused.stderr
    unknown = review(pipeline, "resolve", "acme:nope", "--as", "cancel", "--reason", "typo")
    assert unknown.returncode == 1 and "no entry" in unknown.stderr
    with TopicReader(pipeline.settings.bootstrap_servers) as reader:
        commands = [
            r.key
            for p in reader.partitions(pipeline.settings.topics.commands)
            for r in reader.scan(pipeline.settings.topics.commands, p)
        ]
        assert sorted(commands) == sorted([resend_key.encode(), sent_key.encode()])
        # The audit history, from the ledger's changelog.
        for key, action in ((resend_key, "resend"), (sent_key, "sent")):
            entry = ledger_entry(reader, pipeline.settings, key)
            assert entry is not None and entry.status.value == "SENT"
            [audit] = entry.audit
            assert (audit.action, audit.operator, audit.outcome) == (action, "dana@ops", "applied")
    assert len(emulator.deliveries()) == 2  # the fine one and the approved resend
    assert json.loads(review(pipeline, "list", "--json").stdout) == []
    assert all(w.alive() for w in pipeline.workers)
