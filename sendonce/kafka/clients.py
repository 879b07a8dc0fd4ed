"""librdkafka client configurations: the one place that says how sendonce talks to Kafka.

Every producer that writes records a consumer must find by key (intents, commands,
results, raw webhooks) uses :func:`producer_config`: idempotent, acks=all and Kafka's
murmur2 partitioner, the partition Java clients, aiokafka and Faust pick for a key, so
every writer in any language puts a key on the partition its one owner reads. Readers
that assign partitions themselves (tools, tests, benchmarks) use :func:`consumer_config`:
a group of their own that never commits, so they neither join nor disturb the workers'
group.

Both route librdkafka's own log lines to a named Python logger when given one, so they
reach the process's log handlers instead of stderr; each such line is marked
(:func:`is_librdkafka_line`), so a command line tool can keep librdkafka's chatter
about connections it retries off the terminal (:class:`HideLibrdkafka`) and say
what went wrong in one line of its own.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

__all__ = [
    "HideLibrdkafka",
    "admin_config",
    "consumer_config",
    "is_librdkafka_line",
    "producer_config",
]

#: librdkafka lines that describe a retry it makes by itself on a healthy cluster, and
#: that users should not take for a problem: a fresh broker answers an idempotent
#: producer's first PID request with "Coordinator load in progress" while it loads
#: its transaction state, and librdkafka asks again.
EXPECTED_RETRIES = ("Coordinator load in progress",)


class ExpectedRetryFilter(logging.Filter):
    """Turns librdkafka's self-healing retry warnings into DEBUG lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG and any(
            text in record.getMessage() for text in EXPECTED_RETRIES
        ):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


#: The attribute that marks a log record as one of librdkafka's lines; the leading
#: underscore keeps it out of JSON log lines (:class:`sendonce.logs.JsonFormatter`).
_MARK = "_librdkafka"


class _MarkLibrdkafka(logging.Filter):
    # On the logger librdkafka writes to: every record there is librdkafka's.
    def filter(self, record: logging.LogRecord) -> bool:
        setattr(record, _MARK, True)
        return True


def is_librdkafka_line(record: logging.LogRecord) -> bool:
    """True if ``record`` is a line librdkafka logged (through a configured logger)."""
    return bool(getattr(record, _MARK, False))


class HideLibrdkafka(logging.Filter):
    """A handler filter that drops librdkafka's lines (for tools not run at debug level).

    A tool probes the cluster first and says in one line when it cannot be reached;
    librdkafka's own lines (a "Connection refused" per retry) only bury that line.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not is_librdkafka_line(record)


def _librdkafka_logger(name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    if not any(isinstance(f, _MarkLibrdkafka) for f in logger.filters):
        logger.addFilter(_MarkLibrdkafka())
    if not any(isinstance(f, ExpectedRetryFilter) for f in logger.filters):
        logger.addFilter(ExpectedRetryFilter())
    return logger


def admin_config(bootstrap_servers: str, *, logger: str) -> dict[str, Any]:
    """An admin client's configuration, its librdkafka lines going to ``logger``."""
    return {"bootstrap.servers": bootstrap_servers, "logger": _librdkafka_logger(logger)}


def producer_config(
    bootstrap_servers: str,
    *,
    logger: str | None = None,
    linger_ms: float = 5,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An idempotent, acks=all, murmur2-partitioned producer's configuration.

    ``logger`` names the Python logger librdkafka's lines go to; ``overrides``
    (librdkafka property names) are applied last.
    """
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers,
        "enable.idempotence": True,
        "acks": "all",
        # Java's, aiokafka's and Faust's default: the worker checks that records sit
        # on the partition this picks, and the dedupe stream relies on one owner per id.
        "partitioner": "murmur2_random",
        "linger.ms": linger_ms,
    }
    if logger is not None:
        config["logger"] = _librdkafka_logger(logger)
    config.update(overrides or {})
    return config


def consumer_config(
    bootstrap_servers: str,
    *,
    group: str,
    logger: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A reader's configuration: a private group ``<group>-<uuid>`` that never commits.

    librdkafka requires a group id even for assigned partitions; a fresh one per
    client means nothing is shared with another reader or with the workers.
    ``auto.offset.reset`` is ``earliest``: a reader assigned an offset that is gone
    starts at the first record still stored rather than skipping to the end.
    """
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers,
        "group.id": f"{group}-{uuid.uuid4()}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    }
    if logger is not None:
        config["logger"] = _librdkafka_logger(logger)
    config.update(overrides or {})
    return config
