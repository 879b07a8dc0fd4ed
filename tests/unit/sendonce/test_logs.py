"""JSON log lines (SENDONCE_LOG_FORMAT=json): fields, extras, tracebacks, no raw args."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import datetime

import pytest
from mode.utils.logging import setup_logging

from sendonce.logs import JsonFormatter, configure_logging, worker_logging_config
from sendonce.settings import Settings, SettingsError


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Restore the root logger (pytest's capture handlers included) afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    # The worker's own loggers inherit the configured level, as in a fresh process
    # (another test may have left one at WARNING).
    ours = [logging.getLogger(name) for name in ("sendonce", "sendonce.worker")]
    levels = [logger.level for logger in ours]
    for logger in ours:
        logger.setLevel(logging.NOTSET)
    try:
        yield
    finally:
        for logger, old in zip(ours, levels, strict=True):
            logger.setLevel(old)
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


def record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("sendonce.worker", logging.WARNING, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


def test_a_json_line_has_the_fields_and_extras() -> None:
    line = JsonFormatter(worker="w-1").format(
        record("dead-lettered record %s[%d]", "email.intents", 3, error_type="undecodable")
    )
    assert "\n" not in line
    data = json.loads(line)
    assert data["level"] == "WARNING"
    assert data["logger"] == "sendonce.worker"
    assert data["message"] == "dead-lettered record email.intents[3]"
    assert data["worker"] == "w-1"
    assert data["error_type"] == "undecodable"
    assert data["ts"].endswith("Z")
    assert datetime.fromisoformat(data["ts"]).utcoffset() is not None


def test_record_args_appear_only_through_the_message() -> None:
    # A call that keeps something out of its message must not see it come back as a
    # field: the formatter takes getMessage(), never the raw args or the template.
    data = json.loads(JsonFormatter().format(record("sent %d messages", 2)))
    assert set(data) == {"ts", "level", "logger", "message", "worker"}
    assert data["message"] == "sent 2 messages"


def test_an_exception_traceback_is_a_field() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(worker="w-2"))
    logger = logging.getLogger("sendonce.test-logs")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("batch failed")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    [line] = stream.getvalue().splitlines()
    data = json.loads(line)
    assert data["message"] == "batch failed"
    assert data["level"] == "ERROR"
    assert data["exc_info"].startswith("Traceback (most recent call last):")
    assert "ValueError: boom" in data["exc_info"]


def test_the_worker_logs_json_lines_through_modes_logging_setup(
    root_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(log_format="json", worker_id="worker-7", log_level="info")
    config = worker_logging_config(settings)
    assert config is not None
    # What faust.Worker(logging_config=...) does when the worker starts.
    setup_logging(loglevel="INFO", logging_config=config)
    logging.getLogger("sendonce.worker").info("%d ambiguous sends awaiting reconciliation", 4)
    logging.getLogger("sendonce.worker").debug("not at info")
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    [data] = [json.loads(line) for line in lines]
    assert data["message"] == "4 ambiguous sends awaiting reconciliation"
    assert data["worker"] == "worker-7"
    assert data["logger"] == "sendonce.worker"
    assert data["level"] == "INFO"


def test_text_format_leaves_the_worker_to_mode() -> None:
    assert worker_logging_config(Settings()) is None


def test_configure_logging_json_and_like_basic_config(
    root_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(logging.INFO, "json", "cli-1", force=True)
    logging.getLogger("sendonce.receiver").info("listening on %s", "http://127.0.0.1:8080")
    before = list(logging.getLogger().handlers)
    configure_logging(logging.INFO, "text")  # handlers present: no change, as basicConfig
    assert logging.getLogger().handlers == before
    [line] = capsys.readouterr().err.splitlines()
    data = json.loads(line)
    assert (data["worker"], data["message"]) == ("cli-1", "listening on http://127.0.0.1:8080")


def test_log_format_is_validated() -> None:
    with pytest.raises(SettingsError):
        Settings.from_env({"SENDONCE_LOG_FORMAT": "xml"})
    assert Settings.from_env({"SENDONCE_LOG_FORMAT": "json"}).log_format == "json"
    with pytest.raises(SettingsError):
        Settings.from_env({"SENDONCE_METRICS_PORT": "70000"})
