"""The acking producer without a broker: failures resolve as errors, never as acks."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import pytest

from sendonce.connectors.webhooks.producer import KafkaEventSink, ProduceError, _RepeatFilter


def closed_port() -> int:
    # Bind and release: nothing listens there afterwards.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_broker_fails_the_batch_within_the_timeout() -> None:
    producer = KafkaEventSink(f"127.0.0.1:{closed_port()}", timeout_s=0.5)

    async def main() -> None:
        started = time.monotonic()
        with pytest.raises(ProduceError, match="timed out"):
            await producer.send_all("email.webhooks.raw", [(b"k1", b"v1"), (b"k2", b"v2")])
        # Resolved by librdkafka's delivery report at message.timeout.ms, not by
        # the safety net 5 s later.
        assert time.monotonic() - started < 4.0
        assert await producer.healthy("email.webhooks.raw") is False

    try:
        asyncio.run(main())
    finally:
        producer.close(timeout=1)


def test_an_empty_batch_needs_no_broker() -> None:
    producer = KafkaEventSink(f"127.0.0.1:{closed_port()}", timeout_s=0.5)
    try:
        asyncio.run(producer.send_all("t", []))
    finally:
        producer.close(timeout=1)


def test_repeat_filter_passes_each_distinct_line_once_per_window() -> None:
    f = _RepeatFilter(window_s=60)

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("x", logging.ERROR, __file__, 1, message, None, None)

    assert f.filter(record("Connect to 127.0.0.1:9 failed (after 0ms)"))
    assert not f.filter(record("Connect to 127.0.0.1:9 failed (after 2ms)"))
    assert f.filter(record("1/1 brokers are down"))
    f.window_s = 0
    assert f.filter(record("1/1 brokers are down"))
