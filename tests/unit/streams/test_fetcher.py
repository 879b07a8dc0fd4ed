"""Reading one intent record back: a moving partition leader is waited out, not fatal."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from sendonce.streams.fetcher import KafkaRecordFetcher
from sendonce.streams.ledger import IntentRef

REF = IntentRef("email.intents", 3, 7)


class _Message:
    def error(self) -> None:
        return None

    def offset(self) -> int:
        return REF.offset

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return b"v"

    def timestamp(self) -> tuple[int, int]:
        return (1, 1234)

    def headers(self) -> list[tuple[str, bytes]]:
        return []


class _Consumer:
    """librdkafka's answers while a leader moves: unknown partition, then the record."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.closed = 0

    def get_watermark_offsets(self, tp: Any, timeout: float) -> tuple[int, int]:
        if self.failures:
            self.failures -= 1
            raise KafkaException(KafkaError(KafkaError._UNKNOWN_PARTITION))
        return (0, 100)

    def assign(self, tps: Any) -> None:
        return None

    def poll(self, timeout: float) -> _Message:
        return _Message()

    def close(self) -> None:
        self.closed += 1


def _fetcher(consumer: _Consumer, retry_s: float) -> KafkaRecordFetcher:
    fetcher = KafkaRecordFetcher("127.0.0.1:1", retry_s=retry_s, backoff_s=0.0)
    fetcher._consumer.close()
    fetcher._consumer = consumer  # type: ignore[assignment]
    return fetcher


def test_a_transient_broker_error_is_retried_until_the_record_is_read() -> None:
    # Torture (seed 1640455787): a leader kill made the commands lane's read raise
    # _UNKNOWN_PARTITION, and the worker stopped ("batch failed, stopping worker").
    fetcher = _fetcher(_Consumer(failures=3), retry_s=30)
    record = asyncio.run(fetcher.fetch(REF))
    assert record is not None and record.value == b"v" and record.timestamp_ms == 1234


def test_an_error_that_outlasts_the_retry_window_is_raised() -> None:
    fetcher = _fetcher(_Consumer(failures=10**6), retry_s=0.05)
    with pytest.raises(KafkaException):
        asyncio.run(fetcher.fetch(REF))


def test_closing_twice_closes_once() -> None:
    consumer = _Consumer(failures=0)
    fetcher = _fetcher(consumer, retry_s=1)
    fetcher.close()
    fetcher.close()
    assert consumer.closed == 1
