"""The worker on Microsoft Graph (the emulator over HTTPS, real MSAL) and the real broker."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest

from sendonce.emulator import GraphEmulator
from tests.integration.harness import Pipeline, free_port, intent, scrape

pytestmark = pytest.mark.integration

SENDER = "orders@acme.example"


def graph_env(emulator: GraphEmulator) -> dict[str, str]:
    return {
        **emulator.worker_env(),
        "SENDONCE_GRAPH_READ_TIMEOUT_S": "2",
        "SENDONCE_GRAPH_SENDS_PER_MINUTE": "0",
        "SENDONCE_RECONCILE_GRACE_S": "1",
        "SENDONCE_RECONCILE_INTERVAL_S": "1",
        "SENDONCE_RECONCILE_TICK_S": "0.2",
    }


def test_graph_worker_sends_once_and_reconciles_accept_then_reset(
    pipeline: Pipeline, emulator: GraphEmulator
) -> None:
    # The provider accepts the unlucky mailbox's message, then drops the connection.
    unlucky = "alerts@acme.example"
    emulator.add_fault({"kind": "reset", "mailbox": unlucky, "operations": ["send"], "count": 1})
    batch = [intent(n, sender=SENDER) for n in range(19)] + [intent(99, sender=unlucky)]
    worker = pipeline.start_worker(**graph_env(emulator))
    keys = pipeline.publish(batch + batch[:5])

    # 25 intents: 20 firsts and 5 repeats, plus one later SENT for the reset one.
    records = pipeline.wait_results(26, timeout=120)

    by_outcome: dict[str, list[dict[str, object]]] = {}
    for r in records:
        by_outcome.setdefault(str(r.value["outcome"]), []).append(r.value)
    assert len(by_outcome["AMBIGUOUS"]) == 1
    [ambiguous] = by_outcome["AMBIGUOUS"]
    reconciled = [v for v in by_outcome["SENT"] if v["reconciled"]]
    assert [v["idempotency_key"] for v in reconciled] == [ambiguous["idempotency_key"]]
    assert len(by_outcome["SENT"]) == 20
    assert len(by_outcome["DUPLICATE"]) == 5
    assert (
        emulator.deliveries(mailbox=unlucky)[0]["idempotency_key"] == ambiguous["idempotency_key"]
    )
    for key in set(keys):
        assert len(emulator.deliveries(key=key)) == 1, key
    assert len(emulator.deliveries()) == 20
    assert worker.alive()
    assert emulator.client_secret and emulator.client_secret not in worker.log()


def test_a_saturated_mailbox_does_not_stall_another(
    pipeline: Pipeline, emulator: GraphEmulator
) -> None:
    slow, fast = "newsletter@acme.example", "support@acme.example"
    env = {
        **graph_env(emulator),
        "SENDONCE_GRAPH_SENDS_PER_MINUTE": "6",
        "SENDONCE_DEFER_AFTER_S": "2",
    }
    worker = pipeline.start_worker(**env)

    def sent_by(sender: str) -> int:
        return len(emulator.deliveries(mailbox=sender))

    def wait_until(condition: Callable[[], bool], seconds: float, why: str) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            assert time.monotonic() < deadline, why
            pipeline.watcher.poll(timeout=0.2)

    pipeline.publish([intent(n, sender=slow) for n in range(12)])
    wait_until(lambda: sent_by(slow) == 6, 60, "the slow mailbox never reached its cap")
    # The slow mailbox's next send is a minute away. Its remaining intents wait
    # in the deferred lane, not in the batch, so a later intent for another
    # mailbox goes out at once.
    pipeline.publish([intent(100 + n, sender=fast) for n in range(5)])
    wait_until(lambda: sent_by(fast) == 5, 20, "the fast mailbox was stalled by the slow one")
    assert sent_by(slow) == 6

    records = pipeline.wait_results(17, timeout=180)
    assert sorted(r.value["outcome"] for r in records) == ["SENT"] * 17
    assert sent_by(slow) == 12 and sent_by(fast) == 5
    for r in records:
        assert r.value["intent_topic"] == pipeline.settings.topics.intents
        assert len(emulator.deliveries(key=str(r.value["idempotency_key"]))) == 1
    assert worker.alive()


def test_a_graceful_stop_mid_batch_finishes_the_sends_in_flight(
    pipeline: Pipeline, emulator: GraphEmulator
) -> None:
    # A SIGTERM while sends are in flight: the worker lets them finish before it
    # gives up its partitions (issue 24: a cancelled send left a PENDING key its next
    # owner could only report AMBIGUOUS, never delivered). Every intent ends SENT,
    # delivered once.
    # Slow sends, within the read timeout: each one is accepted if given the time.
    emulator.add_fault({"kind": "latency", "latency_ms": 3000, "operations": ["send"]})
    env = {**graph_env(emulator), "SENDONCE_GRAPH_READ_TIMEOUT_S": "30"}
    worker = pipeline.start_worker(**env)
    refs = pipeline.publish([intent(n, sender=SENDER) for n in range(12)])

    deadline = time.monotonic() + 60
    while not emulator.concurrency()["in_flight"]:
        assert time.monotonic() < deadline, "no send ever started"
        pipeline.watcher.poll(timeout=0.2)
    worker.stop(timeout=90)  # SIGTERM while the batch's sends are in flight
    assert worker.process.returncode == 0, worker.log()

    emulator.clear_faults()
    pipeline.start_worker(**env)
    records = pipeline.wait_results(12, timeout=120)
    keys = {str(r.value["idempotency_key"]) for r in records}
    assert keys == set(refs)  # every intent has a result
    in_flight_at_stop = [r for r in records if r.value["worker"] == "worker-0"]
    assert in_flight_at_stop, "the stopping worker finished none of its sends"
    assert {r.value["outcome"] for r in records} == {"SENT"}
    for key in keys:
        assert len(emulator.deliveries(key=key)) == 1


def test_a_kill_while_a_mailbox_is_saturated_leaves_no_backlog_of_ambiguous_sends(
    pipeline: Pipeline, emulator: GraphEmulator
) -> None:
    # Issue 16, item 2: keys waiting for a saturated mailbox are not PENDING. The
    # worker sends the mailbox's per-minute cap, moves the rest to the deferred lane,
    # and is SIGKILLed while that backlog waits for the mailbox's permit. Its
    # successor finds at most the mailbox's concurrency of interrupted attempts
    # (here none: the cap was reached, so no send could start), not the backlog.
    port = free_port()
    env = {
        **graph_env(emulator),
        "SENDONCE_GRAPH_SENDS_PER_MINUTE": "6",
        "SENDONCE_DEFER_AFTER_S": "2",
    }
    first = pipeline.start_worker(**env, SENDONCE_METRICS_PORT=str(port))
    refs = pipeline.publish([intent(n, sender=SENDER) for n in range(30)])

    def waiting() -> float:
        try:
            samples = scrape(f"http://127.0.0.1:{port}")
        except OSError:
            return 0.0  # not serving yet
        return samples.get(("sendonce_sends_waiting", (("provider", "graph"),)), 0.0)

    deadline = time.monotonic() + 90
    while not (len(emulator.deliveries()) == 6 and waiting() >= 20):
        assert time.monotonic() < deadline, f"the backlog never queued: {waiting()}"
        assert first.alive(), first.log()
        pipeline.watcher.poll(timeout=0.2)
    os.kill(first.pid, signal.SIGKILL)
    first.wait_exit(30)

    # No cap now: every remaining intent can go out at once.
    pipeline.start_worker(**{**env, "SENDONCE_GRAPH_SENDS_PER_MINUTE": "0"})
    records = pipeline.wait_results(30, timeout=180)
    outcomes = [str(r.value["outcome"]) for r in records]
    assert {str(r.value["idempotency_key"]) for r in records} == set(refs)
    assert outcomes.count("AMBIGUOUS") <= 4, outcomes  # Graph's concurrency per mailbox
    for key in set(refs):
        assert len(emulator.deliveries(key=key)) <= 1, key
    assert len(emulator.deliveries()) == 30 - outcomes.count("AMBIGUOUS")


def test_a_deadline_resend_interrupted_after_its_pending_write_still_ends(
    pipeline: Pipeline, emulator: GraphEmulator
) -> None:
    # Issue 16, item 1: the reconciler's deadline resend runs long after the intent's
    # offset was committed, so no redelivery comes back for it. The worker dies right
    # after that attempt's PENDING write; its successor recovers the partition, looks
    # the key up (the provider has nothing: AMBIGUOUS again, never a blind send), and
    # the next deadline resend sends it once. Before: PENDING forever, no result.
    lost = "lost@acme.example"
    emulator.add_fault(
        {"kind": "timeout", "mailbox": lost, "operations": ["send"], "count": 1, "deliver": False}
    )
    env = {
        **graph_env(emulator),
        "SENDONCE_RECONCILE_DEADLINE_S": "3",
        "SENDONCE_RECONCILE_ON_DEADLINE": "resend",
    }
    # The first PENDING is the original attempt, the second the deadline resend.
    first = pipeline.start_worker(**env, SENDONCE_CRASH_AT="after-pending:2")
    [key] = pipeline.publish([intent(1, sender=lost)])
    assert first.wait_exit(120) == -signal.SIGKILL, first.log()
    assert "crash point after-pending reached (occurrence 2)" in first.log()
    assert emulator.deliveries(key=key) == []

    pipeline.start_worker(**env)
    deadline = time.monotonic() + 120
    while "SENT" not in [str(r.value["outcome"]) for r in pipeline.watcher.records]:
        assert time.monotonic() < deadline, [r.value["outcome"] for r in pipeline.watcher.records]
        pipeline.watcher.poll(timeout=0.5)
    outcomes = [str(r.value["outcome"]) for r in pipeline.watcher.records]
    assert outcomes[0] == "AMBIGUOUS" and outcomes[-1] == "SENT", outcomes
    assert len(emulator.deliveries(key=key)) == 1
