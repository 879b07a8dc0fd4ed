"""The worker on Microsoft Graph (the emulator over HTTPS, real MSAL) and the real broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors.graph.emulator import EmulatorThread, GraphEmulator
from tests.integration.harness import Pipeline, intent, pipeline_fixture

pytestmark = pytest.mark.integration

SENDER = "orders@acme.example"


@pytest.fixture(scope="module")
def served() -> Iterator[EmulatorThread]:
    thread = GraphEmulator().run_in_thread()
    try:
        yield thread
    finally:
        thread.stop()


@pytest.fixture
def emulator(served: EmulatorThread) -> GraphEmulator:
    served.emulator.reset()
    return served.emulator


@pytest.fixture
def pipeline(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Pipeline]:
    yield from pipeline_fixture(kafka_bootstrap, tmp_path)


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
