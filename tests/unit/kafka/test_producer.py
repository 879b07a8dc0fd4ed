"""DurableProducer without a broker: nothing starts before the first send."""

from __future__ import annotations

import os
import time

from sendonce.kafka.producer import DurableProducer


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
