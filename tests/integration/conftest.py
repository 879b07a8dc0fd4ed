"""Session fixtures for integration tests: one real Kafka broker for the whole run.

Set ``SENDONCE_TEST_BOOTSTRAP=host:port`` to run against an external broker instead;
then ``kafka`` is None and tests that need to control the broker process skip.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sendonce.dev.kafka import LocalKafka
from sendonce.emulator import EmulatorThread, GraphEmulator
from tests.integration.harness import Pipeline, pipeline_fixture


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka | None]:
    """The session's local broker (None when SENDONCE_TEST_BOOTSTRAP is set)."""
    if os.environ.get("SENDONCE_TEST_BOOTSTRAP"):
        yield None
        return
    broker = LocalKafka(tmp_path_factory.mktemp("kafka"), heap="512m")
    # Generous timeout: the first run may resolve the jars from Maven Central.
    broker.start(timeout=180)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka: LocalKafka | None) -> str:
    """``host:port`` of the broker the integration tests talk to."""
    external = os.environ.get("SENDONCE_TEST_BOOTSTRAP")
    if external:
        return external
    assert kafka is not None
    return kafka.bootstrap


@pytest.fixture
def pipeline(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Pipeline]:
    """This test's own topics, consumer group, ledger and outbox (6 partitions)."""
    yield from pipeline_fixture(kafka_bootstrap, tmp_path)


@pytest.fixture(scope="module")
def served() -> Iterator[EmulatorThread]:
    """One Graph emulator (HTTPS, test CA) per test module, without a send-rate cap.

    The tests that use it lift the workers' per-minute cap too, to send bursts; the
    test of the limits themselves (test_mailbox_limits.py) starts its own emulator.
    """
    thread = GraphEmulator(sends_per_minute=0).run_in_thread()
    try:
        yield thread
    finally:
        thread.stop()


@pytest.fixture
def emulator(served: EmulatorThread) -> GraphEmulator:
    """The module's emulator, reset (no faults, no deliveries) for this test."""
    served.emulator.reset()
    return served.emulator
