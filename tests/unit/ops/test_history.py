"""TopicReader's handling of transient broker errors (no broker needed)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from confluent_kafka import KafkaError, KafkaException

from sendonce.ops.history import StoredRecord, TopicReader


@pytest.fixture
def reader() -> Iterator[TopicReader]:
    # Nothing listens on port 1; the client connects only when asked something.
    r = TopicReader("127.0.0.1:1", timeout_s=5.0)
    try:
        yield r
    finally:
        r.close()


def test_a_moving_leader_is_asked_again(reader: TopicReader) -> None:
    calls = []

    def flaky() -> tuple[int, int]:
        calls.append(1)
        if len(calls) < 3:
            raise KafkaException(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION))
        return (0, 7)

    assert reader._retrying(flaky) == (0, 7)
    assert len(calls) == 3


def test_other_errors_are_not_retried(reader: TopicReader) -> None:
    calls = []

    def broken() -> None:
        calls.append(1)
        raise KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))

    with pytest.raises(KafkaException):
        reader._retrying(broken)
    assert len(calls) == 1


def test_stored_record_header_is_the_last_value() -> None:
    record = StoredRecord("t", 0, 1, None, b"k", b"v", (("a", b"1"), ("b", None), ("a", b"2")))
    assert record.header("a") == b"2"
    assert record.header("b") is None
    assert record.header("c") is None
