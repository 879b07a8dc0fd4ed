"""Log output: the usual text lines, or one JSON object per line (``SENDONCE_LOG_FORMAT``).

A JSON line holds ``ts`` (ISO 8601, UTC), ``level``, ``logger``, ``message``,
``worker`` (``SENDONCE_WORKER_ID``), the fields a caller passed with ``extra=``,
and ``exc_info`` / ``stack_info`` (formatted) when present.

The message is ``record.getMessage()``, exactly the text the text format prints:
the formatter adds no field of its own from the record's arguments, so whatever a
log call keeps out of its message (bodies, secrets, unmasked recipients) stays out
of the JSON too.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from typing import Any

from sendonce.settings import Settings, SettingsError

__all__ = [
    "TEXT_FORMAT",
    "JsonFormatter",
    "configure_logging",
    "configure_logging_from_env",
    "worker_logging_config",
]

#: The text format of the command line tools (``logging.basicConfig``).
TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"

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


def worker_logging_config(settings: Settings) -> dict[str, Any] | None:
    """A ``logging.config.dictConfig`` for mode's Worker, or None for its own (text).

    Passed as ``faust.Worker(logging_config=...)``: mode configures logging itself
    when the worker starts, replacing the root handlers.
    """
    if settings.log_format != "json":
        return None
    level = settings.log_level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter, "worker": settings.worker_id}},
        "handlers": {
            "default": {"class": "logging.StreamHandler", "formatter": "json", "level": level}
        },
        "root": {"level": level, "handlers": ["default"]},
    }
