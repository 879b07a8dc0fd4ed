"""Three workers, one mailbox, Exchange's limits: the group stays inside them (issue 17).

Graph allows 4 requests in flight per mailbox and Exchange 30 messages a minute, across
every client. The emulator enforces both (429 over either, refused undelivered), the
workers keep their real limits (no SENDONCE_GRAPH_SENDS_PER_MINUTE=0 here), and enough
intents from ONE mailbox keep it saturated for about three minutes, with 150 ms of
latency on every Graph call so that concurrency matters. Each worker learns that the
group has three members and keeps to a third of each limit; without that, each would
send 30 a minute with 4 in flight and the emulator would answer 429 at once.

The emulator's request log is checked while the run goes on, so the test fails at the
first 429 instead of after the whole run.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from sendonce.emulator import EmulatorThread, GraphEmulator
from tests.integration.harness import Pipeline, WorkerProcess, intent, make_pipeline

pytestmark = pytest.mark.integration

SENDER = "orders@acme.example"
WORKERS = 3
#: 30 a minute: 30 at once, then 30 a window later, twice, then the last 10: the
#: mailbox is saturated for three windows (about 3 x 62 s, the workers' minute).
INTENTS = 100


@pytest.fixture
def pipeline(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Pipeline]:
    pipeline = make_pipeline(kafka_bootstrap, tmp_path)
    try:
        yield pipeline
    finally:
        pipeline.close()


@pytest.fixture
def limited() -> Iterator[GraphEmulator]:
    """An emulator at Exchange's limits: 4 in flight, 30 sends a minute per mailbox."""
    thread: EmulatorThread = GraphEmulator(max_concurrency=4, sends_per_minute=30).run_in_thread()
    try:
        yield thread.emulator
    finally:
        thread.stop()


def throttled(emulator: GraphEmulator) -> list[dict[str, object]]:
    return [r for r in emulator.requests(mailbox=SENDER) if r["status"] == 429]


def wait_for_group(workers: list[WorkerProcess], timeout: float = 180) -> None:
    """Until every worker has said it shares the mailbox limits with all three.

    The worker logs the share it takes after each rebalance; the group's final
    membership is not an event the test can subscribe to, so it polls the logs.
    """
    said = f"mailbox limits shared by {WORKERS} workers"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for worker in workers:
            assert worker.alive(), worker.log()
        if all(said in worker.log() for worker in workers):
            return
        time.sleep(0.5)
    raise AssertionError("the workers never took their share: " + workers[0].log()[-3000:])


@pytest.mark.timeout(480)
def test_three_workers_saturating_one_mailbox_get_no_429(
    pipeline: Pipeline, limited: GraphEmulator
) -> None:
    limited.add_fault({"kind": "latency", "latency_ms": 150, "mailbox": SENDER})
    env = limited.worker_env()
    workers = [
        pipeline.start_worker(**env, SENDONCE_DATA_DIR=str(pipeline.root / f"data-{n}"))
        for n in range(WORKERS)
    ]
    wait_for_group(workers)

    started = time.monotonic()
    keys = set(pipeline.publish([intent(n, sender=SENDER) for n in range(INTENTS)]))
    assert len(keys) == INTENTS

    def running_clean() -> bool:
        # Fail at the first 429, whichever limit it is for.
        over = throttled(limited)
        assert not over, (over[:3], limited.concurrency())
        return pipeline._any_worker_alive()

    records = pipeline.watcher.wait_for_distinct(INTENTS, timeout=300, alive=running_clean)
    elapsed = time.monotonic() - started

    assert throttled(limited) == []
    stats = limited.concurrency()
    assert stats["throttled"] == {} and stats["rate_throttled"] == {}, stats
    assert stats["max_in_flight"][SENDER] <= 4
    outcomes = Counter(str(r.value["outcome"]) for r in records)
    assert outcomes == {"SENT": INTENTS}, outcomes
    per_key = Counter(d["idempotency_key"] for d in limited.deliveries(mailbox=SENDER))
    assert set(per_key) == keys
    assert max(per_key.values()) == 1
    # All three took part, and the mailbox was the bottleneck: 30 a minute.
    assert {r.value["worker"] for r in records} == {f"worker-{n}" for n in range(WORKERS)}
    assert elapsed >= 3 * 60, elapsed
    print(f"{INTENTS} intents from one mailbox by {WORKERS} workers in {elapsed:.0f} s")
