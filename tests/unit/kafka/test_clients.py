"""The librdkafka configurations every short-lived client is built from."""

from __future__ import annotations

import logging
import time

import pytest

from sendonce.kafka.clients import consumer_config, producer_config


def test_producers_are_idempotent_acks_all_and_murmur2() -> None:
    config = producer_config("b:9092", logger="sendonce.kafka.test")
    assert config["bootstrap.servers"] == "b:9092"
    assert config["enable.idempotence"] is True
    assert config["acks"] == "all"
    assert config["partitioner"] == "murmur2_random"
    assert config["logger"] is logging.getLogger("sendonce.kafka.test")


def test_overrides_come_last() -> None:
    config = producer_config("b:9092", linger_ms=0, overrides={"linger.ms": 7, "x": 1})
    assert config["linger.ms"] == 7 and config["x"] == 1
    assert "logger" not in producer_config("b:9092")


def test_every_reader_has_a_group_of_its_own_that_never_commits() -> None:
    one = consumer_config("b:9092", group="sendonce-reader")
    two = consumer_config("b:9092", group="sendonce-reader")
    assert one["group.id"].startswith("sendonce-reader-")
    assert one["group.id"] != two["group.id"]
    assert one["enable.auto.commit"] is False
    assert one["auto.offset.reset"] == "earliest"


def test_the_fresh_broker_pid_retry_is_not_shown_to_users(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Issue 24: "Coordinator load in progress" on a fresh broker is expected and retried
    # by librdkafka; users saw it as a WARNING from `sendonce publish`.
    config = producer_config("127.0.0.1:1", logger="sendonce.kafka.test-retries")
    logger = config["logger"]
    with caplog.at_level(logging.INFO, logger="sendonce.kafka.test-retries"):
        logger.warning(
            "GETPID [rdkafka#producer-1] [thrd:main]: Failed to acquire idempotence PID "
            "from broker 127.0.0.1:1/1: Broker: Coordinator load in progress: retrying"
        )
        logger.warning("FAIL [rdkafka#producer-1]: Connect to 127.0.0.1:1 failed")
    assert [r.getMessage()[:4] for r in caplog.records] == ["FAIL"]
    with caplog.at_level(logging.DEBUG, logger="sendonce.kafka.test-retries"):
        caplog.clear()
        logger.warning("GETPID ...: Coordinator load in progress: retrying")
    assert [r.levelname for r in caplog.records] == ["DEBUG"]


def test_librdkafka_lines_are_marked_so_a_tool_can_hide_them() -> None:
    # A real client at an address nobody serves: librdkafka logs its refused connects
    # through the configured logger, marked; the tool's own lines are not.
    from confluent_kafka import Producer

    from sendonce.kafka.clients import HideLibrdkafka, is_librdkafka_line

    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    handler = Keep()
    loggers = [logging.getLogger(f"sendonce.kafka.test-{n}") for n in ("rdkafka", "tool")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        producer = Producer(producer_config("127.0.0.1:1", logger="sendonce.kafka.test-rdkafka"))
        deadline = time.monotonic() + 10
        # Served by poll(); the first refused connect comes within milliseconds.
        while not seen and time.monotonic() < deadline:
            producer.poll(0.2)
        loggers[1].error("the tool's own line")
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    from_librdkafka = [r for r in seen if is_librdkafka_line(r)]
    assert any("127.0.0.1:1" in r.getMessage() for r in from_librdkafka), seen
    hide = HideLibrdkafka()
    assert [r.getMessage() for r in seen if hide.filter(r)] == ["the tool's own line"]
