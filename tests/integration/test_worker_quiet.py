"""A worker is quiet and stoppable (issue 24, item 3), against a broker of its own.

The test stops its broker, so it starts a dedicated one instead of the session's: a
worker whose broker goes away must log a bounded number of lines (one rate-limited
"broker unreachable" line, not thousands of client retries), and SIGTERM must still
stop it within the documented bound, without a traceback.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from sendonce.dev.kafka import LocalKafka
from sendonce.streams.app import STOP_BOUND_S
from tests.integration.harness import WorkerProcess, make_pipeline

pytestmark = pytest.mark.integration

# sendonce's own line format (text): time, level, a sendonce logger, the message.
OWN_LINE = re.compile(r"^\S+ \S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) sendonce[.\w]*: ")
#: The most lines a worker may print while its broker is gone (a rate-limited report
#: every few seconds, and the lines of its own that say what it is doing).
MAX_OUTAGE_LINES = 50


def lines(worker: WorkerProcess) -> list[str]:
    return [line for line in worker.log_path.read_text(errors="replace").splitlines() if line]


def wait_for_line(worker: WorkerProcess, pattern: str, timeout: float, since: int = 0) -> str:
    """The first line from line ``since`` on matching ``pattern``; fails after ``timeout``."""
    found = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while True:
        seen = lines(worker)[since:]
        for line in seen:
            if found.search(line):
                return line
        if time.monotonic() > deadline or not worker.alive():
            tail = "\n".join(seen[-15:])
            raise AssertionError(
                f"no line matching {pattern!r} within {timeout:.0f}s (alive: {worker.alive()}); "
                f"{len(seen)} lines printed meanwhile, the last:\n{tail}"
            )
        time.sleep(0.2)  # polling the worker's log file for the line, not a guess


def test_a_worker_whose_broker_goes_away_is_quiet_and_stops_on_sigterm(tmp_path: Path) -> None:
    broker = LocalKafka(tmp_path / "kafka", heap="384m")
    bootstrap = broker.start(timeout=180)
    (tmp_path / "pipeline").mkdir()
    pipeline = make_pipeline(bootstrap, tmp_path / "pipeline")
    try:
        worker = pipeline.start_worker(SENDONCE_LOG_LEVEL="info")
        wait_for_line(worker, r"sendonce\.worker: ready", timeout=120)
        started = lines(worker)
        # A normal start prints sendonce's own lines only: no Faust, mode or client chatter.
        assert all(OWN_LINE.match(line) for line in started), "\n".join(started)
        assert any("started" in line and bootstrap in line for line in started), started
        assert any("partitions assigned" in line for line in started), started

        gone = time.monotonic()
        broker.stop()
        # The report repeats while the broker stays away: wait for one that says so
        # for 20 s or more, and count what the worker printed over that window.
        wait_for_line(
            worker,
            rf"broker unreachable at {re.escape(bootstrap)} for ([2-9]\d|\d{{3,}}) s",
            timeout=90,
            since=len(started),
        )
        outage = lines(worker)[len(started) :]
        assert len(outage) < MAX_OUTAGE_LINES, "\n".join(outage)
        assert time.monotonic() - gone >= 20

        asked = time.monotonic()
        worker.process.terminate()
        # The assertion is the wait: it raises if the worker outlives the bound.
        code = worker.wait_exit(timeout=STOP_BOUND_S + 10)
        took = time.monotonic() - asked
        text = worker.log_path.read_text(errors="replace")
        assert code == 0, text[-4000:]
        assert took < STOP_BOUND_S, f"stopped after {took:.1f}s"
        assert "Traceback" not in text, text[-4000:]
        assert "TimeoutError" not in text, text[-4000:]
        stopping = lines(worker)[len(started) + len(outage) :]
        assert all(OWN_LINE.match(line) for line in stopping), "\n".join(stopping)
    finally:
        pipeline.close()
        broker.stop()
