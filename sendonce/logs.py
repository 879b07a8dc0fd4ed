"""Log output: the usual text lines, or one JSON object per line (``SENDONCE_LOG_FORMAT``).

A JSON line holds ``ts`` (ISO 8601, UTC), ``level``, ``logger``, ``message``,
``worker`` (``SENDONCE_WORKER_ID``), the fields a caller passed with ``extra=``,
and ``exc_info`` / ``stack_info`` (formatted) when present.

The message is ``record.getMessage()``, exactly the text the text format prints:
the formatter adds no field of its own from the record's arguments, so whatever a
log call keeps out of its message (bodies, secrets, unmasked recipients) stays out
of the JSON too.

A worker shows its own lines only (:func:`worker_logging_config`): Faust, mode,
aiokafka and librdkafka log at INFO and above what is detail to sendonce's users
(startup banners, every rebalance step, a line per failed connection attempt, ten a
second while a broker is away), so :class:`WorkerLogFilter` turns their lines into
DEBUG lines. A traceback they log at ERROR is a crash and stays visible. Their lines
saying the broker cannot be reached feed :class:`BrokerOutage`, which reports the
outage itself in one line at growing intervals: bounded output, whatever the clients do.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sendonce.settings import Settings, SettingsError

__all__ = [
    "LIBRARY_LOGGERS",
    "TEXT_FORMAT",
    "WORKER_TEXT_FORMAT",
    "BrokerOutage",
    "JsonFormatter",
    "WorkerLogFilter",
    "configure_logging",
    "configure_logging_from_env",
    "worker_logging_config",
]

#: The text format of the command line tools (``logging.basicConfig``).
TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"
#: The worker's text format: a long-running process, so each line says when.
WORKER_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: The loggers of the libraries under the worker: their lines are DEBUG detail. mode
#: names a service's logger after its class's module, so Faust's lines about the
#: services sendonce subclasses (the app, its recovery, its stores) come from
#: ``sendonce.streams.*``; sendonce's own lines use names like ``sendonce.worker``.
LIBRARY_LOGGERS = ("faust", "mode", "aiokafka", "sendonce.streams")
#: What a client's line says when the broker cannot be reached (aiokafka, librdkafka).
UNREACHABLE = (
    "Unable connect to node",
    "Unable to update metadata",
    "Connection refused",
    "Connect to ",
    "KafkaConnectionError",
    "NodeNotReadyError",
    "Connection at ",
    "Disconnected",
    "all brokers are down",
    "brokers are down",
    "BrokerTransportFailure",
    "_TRANSPORT",
)

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """Formats each record as one line of JSON."""

    def __init__(self, worker: str = "") -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON object on one line."""
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "worker": self.worker,
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD and not name.startswith("_") and name not in data:
                data[name] = value
        if record.exc_info:
            data["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exc_info"] = record.exc_text
        if record.stack_info:
            data["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(data, default=str, ensure_ascii=False)


class BrokerOutage:
    """Turns a stream of failed connection attempts into a few report lines.

    :meth:`failed` is told of every failed attempt (``now`` in seconds, monotonic);
    it returns the line to log when one is due: once the broker has been unreachable
    for ``first_after_s`` (a client reconnecting within a moment is no news), then
    each time that duration has doubled, and at most ``max_every_s`` apart. An
    outage is over when no attempt failed for ``over_after_s`` (librdkafka waits up
    to 10 s between attempts); the next failure starts a new one. Thread-safe:
    clients fail in their own threads.
    """

    def __init__(
        self,
        broker: str,
        *,
        first_after_s: float = 5.0,
        max_every_s: float = 60.0,
        over_after_s: float = 15.0,
    ) -> None:
        self.broker = broker
        self.first_after_s = first_after_s
        self.max_every_s = max_every_s
        self.over_after_s = over_after_s
        self._lock = threading.Lock()
        self._since: float | None = None
        self._last = 0.0
        self._next_age = first_after_s

    def failed(self, now: float) -> str | None:
        """An attempt to reach the broker failed at ``now``: the line to log, if due."""
        with self._lock:
            if self._since is None or now - self._last > self.over_after_s:
                self._since, self._next_age = now, self.first_after_s
            self._last = now
            age = now - self._since
            if age < self._next_age:
                return None
            self._next_age = min(age * 2, age + self.max_every_s)
            return f"broker unreachable at {self.broker} for {age:.0f} s"


class WorkerLogFilter(logging.Filter):
    """A worker's handler filter: the libraries' lines become DEBUG lines.

    ``level`` is the worker's log level: a line turned into DEBUG is dropped unless
    that is DEBUG. A library's line that the broker is unreachable goes to
    ``outage``; when it says a report is due, the line becomes that report (a
    WARNING of ``sendonce.worker``). librdkafka's lines reach Python through
    sendonce's own ``sendonce.kafka.*`` loggers and are told apart by their form.
    """

    def __init__(
        self,
        level: int | str,
        outage: BrokerOutage,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.level = logging.getLevelName(level) if isinstance(level, str) else level
        self.outage = outage
        self.clock = clock

    def filter(self, record: logging.LogRecord) -> bool:
        if not _from_library(record):
            return True
        if record.exc_info and record.levelno >= logging.ERROR:
            return True  # a crash, not chatter
        text = record.getMessage()
        if any(marker in text for marker in UNREACHABLE):
            report = self.outage.failed(self.clock())
            if report is not None:
                record.name, record.msg, record.args = "sendonce.worker", report, ()
                record.levelno, record.levelname = logging.WARNING, "WARNING"
                return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return bool(self.level <= logging.DEBUG)


def _from_library(record: logging.LogRecord) -> bool:
    if any(record.name == n or record.name.startswith(n + ".") for n in LIBRARY_LOGGERS):
        return True
    # confluent-kafka logs librdkafka's lines as log(level, "%s [%s] %s", fac, name, text).
    args = record.args
    return (
        record.msg == "%s [%s] %s"
        and isinstance(args, tuple)
        and len(args) == 3
        and str(args[1]).startswith("rdkafka#")
    )


def _handler(log_format: str, worker: str) -> logging.Handler:
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter(worker))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    return handler


def configure_logging(
    level: int | str, log_format: str = "text", worker: str = "", *, force: bool = False
) -> None:
    """Point the root logger at stderr in ``log_format``.

    Like ``logging.basicConfig``: nothing happens when the root logger already has
    handlers (a test's capture, say), unless ``force`` replaces them.
    """
    root = logging.getLogger()
    if root.handlers and not force:
        return
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(_handler(log_format, worker))
    root.setLevel(level)


def configure_logging_from_env(level: int | str) -> None:
    """:func:`configure_logging` with the format and worker id of the environment.

    Settings that do not validate fall back to text: the command reading them
    reports the configuration error itself.
    """
    try:
        settings = Settings.from_env()
    except SettingsError:
        fmt = os.environ.get("SENDONCE_LOG_FORMAT", "text")
        configure_logging(level, "json" if fmt == "json" else "text")
        return
    configure_logging(level, settings.log_format, settings.worker_id)


def worker_logging_config(settings: Settings, outage: BrokerOutage | None = None) -> dict[str, Any]:
    """The worker's ``logging.config.dictConfig``: stderr, text or JSON, own lines only.

    Every line passes a :class:`WorkerLogFilter` (``outage`` is the worker's
    :class:`BrokerOutage`, one for the bootstrap servers unless given).
    """
    level = settings.log_level.upper()
    outage = outage or BrokerOutage(settings.bootstrap_servers)
    formatter: dict[str, Any] = (
        {"()": JsonFormatter, "worker": settings.worker_id}
        if settings.log_format == "json"
        else {"format": WORKER_TEXT_FORMAT}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "filters": {"worker": {"()": WorkerLogFilter, "level": level, "outage": outage}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "filters": ["worker"],
                "level": level,
            }
        },
        "root": {"level": level, "handlers": ["default"]},
    }
