"""Session fixtures for integration tests: one real Kafka broker for the whole run.

Set ``SENDONCE_TEST_BOOTSTRAP=host:port`` to run against an external broker instead;
then ``kafka`` is None and tests that need to control the broker process skip.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from sendonce.dev.kafka import LocalKafka


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
