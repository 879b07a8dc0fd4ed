"""DurableProducer without a broker: nothing starts before the first send."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from sendonce.kafka.producer import DeliveryError, DurableProducer


def _librdkafka_threads() -> int:
    count = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as comm:
                count += comm.read().startswith("rdk:")
        except OSError:
            continue  # the thread ended while we looked
    return count


def test_building_a_producer_opens_no_client_until_the_first_send() -> None:
    before = _librdkafka_threads()
    producer = DurableProducer("127.0.0.1:1")
    assert _librdkafka_threads() == before, "a librdkafka client started without any send"
    started = time.monotonic()
    producer.close()
    assert time.monotonic() - started < 5, "closing an unused producer waited for a flush"


def test_a_write_calls_its_enqueued_hook_while_librdkafka_holds_the_record() -> None:
    # The pause point ``pending-produced`` stops the worker from this hook: the
    # record must be in librdkafka's local queue then (no broker listens here, so it
    # cannot have left). Purging that queue from the hook fails exactly this record;
    # a hook called before the hand-over would find nothing to purge, and the write
    # would time out instead.
    producer = DurableProducer("127.0.0.1:1", extra={"message.timeout.ms": 3000, "log_level": 0})

    def enqueued() -> None:
        producer._client().purge(in_queue=True, in_flight=True)

    async def write() -> None:
        await producer.write("ledger", b"k", b"v", 0, enqueued=enqueued)

    try:
        with pytest.raises(DeliveryError, match="Purged in queue"):
            asyncio.run(write())
    finally:
        producer.close(timeout=2)
