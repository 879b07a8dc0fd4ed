"""``sendonce trace`` against the real broker, a real worker and the Graph emulator.

One key goes through a throttled first attempt (provably not sent), an
accept-then-reset second attempt (AMBIGUOUS) and a reconciliation lookup that
finds it (SENT, reconciled); the trace must show all of it with the ids the
emulator itself recorded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from sendonce.connectors.graph.message import client_request_id
from sendonce.emulator import GraphEmulator
from sendonce.streams.ledger import attempt_id_for
from sendonce.streams.processor import partition_for_key
from tests.integration.harness import Pipeline, intent

pytestmark = pytest.mark.integration

UNLUCKY = "alerts@acme.example"


def graph_env(emulator: GraphEmulator) -> dict[str, str]:
    return {
        **emulator.worker_env(),
        # Draft + send: the ledger records the draft before its send, and the draft's
        # own state settles an unclear answer (issue 17).
        "SENDONCE_GRAPH_MODE": "draft-send",
        "SENDONCE_GRAPH_READ_TIMEOUT_S": "2",
        "SENDONCE_GRAPH_SENDS_PER_MINUTE": "0",
        "SENDONCE_RECONCILE_GRACE_S": "1",
        "SENDONCE_RECONCILE_INTERVAL_S": "1",
        "SENDONCE_RECONCILE_TICK_S": "0.2",
    }


def trace(pipeline: Pipeline, *args: str) -> subprocess.CompletedProcess[str]:
    env = pipeline.env(SENDONCE_BOOTSTRAP_SERVERS=pipeline.settings.bootstrap_servers)
    return subprocess.run(
        [sys.executable, "-m", "sendonce.cli", "trace", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_trace_shows_both_attempts_the_lookups_the_draft_the_intent_and_both_results(
    pipeline: Pipeline, emulator: GraphEmulator
) -> None:
    # Attempt 1: the draft create is throttled (429): it may have been processed, so
    # the key's draft is looked for; there is none, so a second create is safe.
    # Attempt 2: the draft is created and recorded; its send is delivered, then the
    # connection drops: AMBIGUOUS, settled by reading the draft (no longer a draft).
    emulator.add_fault(
        {
            "kind": "throttle",
            "mailbox": UNLUCKY,
            "operations": ["createMessage"],
            "count": 1,
            "retry_after": 1,
        }
    )
    emulator.add_fault(
        {"kind": "reset", "mailbox": UNLUCKY, "operations": ["sendDraft"], "count": 1}
    )
    worker = pipeline.start_worker(**graph_env(emulator))
    the_intent = intent(7, sender=UNLUCKY)
    [key] = pipeline.publish([the_intent])

    # AMBIGUOUS at once, then SENT (reconciled) once the draft's state is read.
    records = pipeline.wait_results(2, timeout=120)
    assert [r.value["outcome"] for r in records] == ["AMBIGUOUS", "SENT"], worker.log()
    assert records[1].value["reconciled"] is True
    assert len(emulator.deliveries(key=key)) == 1

    done = trace(pipeline, key, "--json")
    assert done.returncode == 0, done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    assert doc["key"] == key and doc["found"] is True

    ledger = doc["ledger"]
    assert ledger["status"] == "SENT"
    assert ledger["reconciled"] is True and ledger["review_required"] is False
    assert ledger["attempt_count"] == 2
    assert ledger["provider"] == "graph"

    # What the emulator saw for the mailbox, oldest first.
    seen = emulator.requests(mailbox=UNLUCKY)
    creates = [r for r in seen if r["operation"] == "createMessage"]
    sends_seen = [r for r in seen if r["operation"] == "sendDraft"]
    lists = [r for r in seen if r["operation"] == "listMessages"]
    reads = [r for r in seen if r["operation"] == "getMessage"]
    assert [r["status"] for r in creates] == [429, 201]
    assert [r["outcome"] for r in sends_seen] == ["reset"]
    # One draft, recorded, and the one delivered: the result and the ledger name it.
    [delivery] = emulator.deliveries(key=key)
    assert ledger["draft_id"] == delivery["immutable_id"]
    assert ledger["provider_message_id"] == delivery["immutable_id"]
    assert records[1].value["provider_message_id"] == delivery["immutable_id"]

    calls = [a for a in doc["attempts"] if a["kind"] in ("create", "send")]
    assert [(a["kind"], a["number"], a["status"]) for a in calls] == [
        ("create", 1, "ambiguous"),
        ("create", 2, "accepted"),
        ("send", 2, "ambiguous"),
    ]
    first, made, second = calls
    assert [first["attempt_id"], second["attempt_id"]] == [
        attempt_id_for(key, 1),
        attempt_id_for(key, 2),
    ]
    # Attempt 1: the throttled create, with the emulator's own request-id.
    assert first["client_request_id"] == creates[0]["client_request_id"]
    assert first["client_request_id"] == client_request_id(
        key, attempt_id_for(key, 1), step="create"
    )
    assert first["request_id"] == creates[0]["request_id"]
    assert first["date"] and first["x_ms_ags_diagnostic"]
    assert first["provider"] == "graph" and first["worker"] == "worker-0"
    assert made["client_request_id"] == creates[1]["client_request_id"]
    # Attempt 2's send: delivered and then reset (no response, no request-id).
    assert second["client_request_id"] == sends_seen[0]["client_request_id"]
    assert second["client_request_id"] == client_request_id(
        key, attempt_id_for(key, 2), step="send"
    )
    assert second["client_request_id"] != first["client_request_id"]

    lookups = [a for a in doc["attempts"] if a["kind"] == "lookup"]
    assert lookups and all(a["reconciliation"] for a in lookups)
    # The draft search after the unclear create: nothing in Drafts or Sent Items.
    searched = lookups[0]
    assert searched["attempt_id"] == first["attempt_id"]
    assert searched["status"] == "not_found_definitive"
    assert searched["request_id"] in {r["request_id"] for r in lists}
    # The read of the recorded draft after the unclear send: no longer a draft.
    found = lookups[-1]
    assert found["status"] == "found"
    assert found["attempt_id"] == second["attempt_id"]
    assert "no longer a draft" in found["detail"]
    assert found["request_id"] in {r["request_id"] for r in reads}
    [looked_up] = [r for r in reads if r["request_id"] == found["request_id"]]
    assert found["client_request_id"] == looked_up["client_request_id"]
    assert found["date"]
    # The AMBIGUOUS result names no request id: the send got no response, and
    # an earlier request's id would send support after the wrong request.
    assert doc["results"][0]["provider_request_id"] is None
    assert doc["audit"] == []

    # Each state the key went through, from the ledger's changelog.
    states = [s["status"] for s in doc["states"]]
    assert states[0] == "PENDING" and states[-1] == "SENT"
    assert "DRAFTED" in states and "AMBIGUOUS" in states
    assert states.index("DRAFTED") < states.index("AMBIGUOUS")
    drafted = next(s for s in doc["states"] if s["status"] == "DRAFTED")
    assert drafted["draft_id"] == delivery["immutable_id"] and drafted["attempt"] == 2

    # The intent record, where it sits.
    topics = pipeline.settings.topics
    [record] = doc["intents"]
    assert record["lane"] == "intents"
    assert record["topic"] == topics.intents
    assert record["partition"] == partition_for_key(key.encode(), pipeline.settings.partitions)
    assert record["offset"] == records[0].value["intent_offset"]
    assert record["tenant_id"] == "acme" and record["source_event_id"] == "evt-7"
    assert ledger["origin"] == {k: record[k] for k in ("topic", "partition", "offset")}

    # Both results, in order, pointing at that record.
    assert [r["outcome"] for r in doc["results"]] == ["AMBIGUOUS", "SENT"]
    assert [r["reconciled"] for r in doc["results"]] == [False, True]
    assert [r["topic"] for r in doc["results"]] == [
        topics.results_ambiguous,
        topics.results_sent,
    ]
    assert [r["result_id"] for r in doc["results"]] == [r.value["result_id"] for r in records]
    for result in doc["results"]:
        assert result["intent"] == ledger["origin"]

    # Nothing personal: recipients only masked, no subject, no body.
    for text in (done.stdout,):
        assert "user7@example.com" not in text
        assert the_intent["subject"] not in text
        assert the_intent["text_body"] not in text
    assert record["recipients"][0].startswith("u***@example.com#")

    # The text form carries the same ids.
    text = trace(pipeline, key)
    assert text.returncode == 0, text.stderr
    out = text.stdout
    for value in (
        first["request_id"],
        first["client_request_id"],
        second["client_request_id"],
        found["request_id"],
        delivery["immutable_id"],
        records[0].value["result_id"],
        records[1].value["result_id"],
    ):
        assert value in out
    assert "request-id, client-request-id and Date" in out.splitlines()[1]
    assert "user7@example.com" not in out and the_intent["subject"] not in out
    print(out)  # the README's example (pytest -s)

    # By source event: the same key.
    by_event = trace(pipeline, "--source-event", "evt-7", "--tenant", "acme", "--json")
    assert by_event.returncode == 0, by_event.stderr
    found_doc = json.loads(by_event.stdout)
    assert found_doc["keys"] == [key]
    assert found_doc["traces"][0]["ledger"]["status"] == "SENT"

    # Unknown: a clear message and exit 1.
    none = trace(pipeline, "--source-event", "evt-404", "--tenant", "acme")
    assert none.returncode == 1
    assert "no intent record" in none.stderr
    unknown = trace(pipeline, "acme:p:never-published")
    assert unknown.returncode == 1
    assert "no ledger entry and no intent record for key acme:p:never-published" in (unknown.stderr)
    assert worker.alive()
