"""JSON log lines (SENDONCE_LOG_FORMAT=json): fields, extras, tracebacks, no raw args."""

from __future__ import annotations

import io
import json
import logging
import logging.config
from collections.abc import Iterator
from datetime import datetime

import pytest
from mode.utils.logging import setup_logging

from sendonce.logs import BrokerOutage, JsonFormatter, configure_logging, worker_logging_config
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


def library_record(name: str, level: int, msg: str, *args: object) -> logging.LogRecord:
    return logging.getLogger(name).makeRecord(name, level, __file__, 1, msg, args, None)


#: What the libraries under a worker log at INFO and above on a start and a lost broker.
CHATTER = [
    ("mode.worker", logging.INFO, "[^Worker]: Starting... "),
    ("faust.tables.recovery", logging.INFO, "[^---Recovery]: Worker ready"),
    # Faust's own line about a service sendonce subclasses: mode names it by module.
    ("sendonce.streams.restore", logging.INFO, "[^---BulkRecovery]: Starting..."),
    ("aiokafka.consumer.group_coordinator", logging.INFO, "Joined group 'g' (generation 1)"),
    ("aiokafka.consumer.group_coordinator", logging.WARNING, "Heartbeat failed for group g"),
    ("faust.transport.drivers.aiokafka", logging.WARNING, "Topic t has no partitions"),
    ("aiokafka.conn", logging.ERROR, "Unable connect to node with id 1: [Errno 111] refused"),
]


def librdkafka_line(text: str) -> logging.LogRecord:
    """A librdkafka line as confluent-kafka logs it through sendonce's logger."""
    return library_record(
        "sendonce.kafka.fetcher", logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#consumer-3", text
    )


def test_a_worker_at_info_shows_its_own_lines_only(
    root_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    logging.config.dictConfig(worker_logging_config(Settings(log_level="info")))
    for name, level, msg in CHATTER:
        logging.getLogger(name).handle(library_record(name, level, msg))
    logging.getLogger("sendonce.kafka.fetcher").handle(
        librdkafka_line("127.0.0.1:9/bootstrap: Connect to ipv4#127.0.0.1:9 failed")
    )
    logging.getLogger("sendonce.worker").info("ready: 6 partitions")
    logging.getLogger("sendonce.worker").warning("mending dropped records failed")
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" ", 2)[2] for line in lines] == [
        "INFO sendonce.worker: ready: 6 partitions",
        "WARNING sendonce.worker: mending dropped records failed",
    ]


def test_at_debug_the_libraries_lines_are_kept_as_debug_lines(
    root_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    logging.config.dictConfig(worker_logging_config(Settings(log_level="debug")))
    name, level, msg = CHATTER[3]
    logging.getLogger(name).handle(library_record(name, level, msg))
    [line] = capsys.readouterr().err.splitlines()
    assert line.endswith(f"DEBUG {name}: {msg}")


def test_a_library_crash_stays_visible(
    root_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    logging.config.dictConfig(worker_logging_config(Settings(log_level="info")))
    try:
        raise RuntimeError("agent crashed")
    except RuntimeError:
        logging.getLogger("mode.services").exception("[^Agent]: Crashed reason=%r", "x")
    err = capsys.readouterr().err
    assert "ERROR mode.services: [^Agent]: Crashed" in err
    assert "RuntimeError: agent crashed" in err


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_lost_broker_is_reported_in_a_few_lines_not_one_per_attempt(
    root_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # aiokafka logs about ten failed attempts a second, librdkafka a burst on close:
    # 30 s of that (3,000 lines) become three report lines.
    clock = FakeClock()
    outage = BrokerOutage("127.0.0.1:9092")
    config = worker_logging_config(Settings(log_level="info"), outage)
    config["filters"]["worker"]["clock"] = clock
    logging.config.dictConfig(config)
    conn = logging.getLogger("aiokafka.conn")
    for _ in range(3000):
        conn.error("Unable connect to node with id 1: [Errno 111] Connection refused")
        clock.now += 0.01
    logging.getLogger("sendonce.kafka.fetcher").handle(
        librdkafka_line("Connect to ipv4#127.0.0.1:9092 failed: Connection refused")
    )
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" ", 2)[2] for line in lines] == [
        f"WARNING sendonce.worker: broker unreachable at 127.0.0.1:9092 for {n} s"
        for n in (5, 10, 20)
    ]


def test_outage_reports_double_their_spacing_up_to_a_minute_and_restart_after_a_gap() -> None:
    outage = BrokerOutage("b:1", first_after_s=5, max_every_s=60, over_after_s=15)
    reports = [(t, line) for t in range(400) if (line := outage.failed(1000 + t)) is not None]
    assert [t for t, _ in reports] == [5, 10, 20, 40, 80, 140, 200, 260, 320, 380]
    assert reports[0][1] == "broker unreachable at b:1 for 5 s"
    # 15 s without a failed attempt: the broker was back; a new outage starts afresh.
    assert outage.failed(1000 + 399 + 16) is None
    assert outage.failed(1000 + 399 + 21) == "broker unreachable at b:1 for 5 s"


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
