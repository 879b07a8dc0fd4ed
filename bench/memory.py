"""Memory and recovery: a worker's RSS with N keys in its ledger, and its restore rate.

Writing millions of keys through a worker would take most of an hour, so the
ledger's changelog (``<app_id>-ledger-changelog``) is filled directly with valid
SENT entries, each on the partition its key hashes to (Kafka's murmur2, as the
worker's own writes land), shaped like the entries a null-provider worker writes.
Then a worker starts with an empty data directory, so it restores every key from
the changelog into RocksDB, and the benchmark reads the worker's log for the
restore's start and end and ``/proc`` for its memory.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from sendonce.bench.procs import Proc, log_event_times, start_worker
from sendonce.settings import Settings
from sendonce.streams.ledger import AttemptRecord, IntentRef, LedgerEntry, LedgerStatus

# Placeholders spliced out of a real entry's JSON to make a byte template.
_KEY_MARK = "K" * 32
_EVENT_MARK = "E" * 12


def ledger_template(settings: Settings) -> bytes:
    """A SENT entry of a null-provider send as a ``%``-template over (key, event number)."""
    now = int(time.time() * 1000)
    key = f"bench:{_KEY_MARK}"
    attempt = "a" * 32
    message_id = f"sendonce.{'b' * 40}@bench.example"
    entry = LedgerEntry(
        key=key,
        status=LedgerStatus.SENT,
        content_fingerprint="c" * 64,
        tenant_id="bench",
        source_event_id=f"order-{_EVENT_MARK}:shipped",
        action_type="receipt",
        origin=IntentRef(settings.topics.intents, 0, 0),
        attempt_id=attempt,
        attempt_count=1,
        worker="bench-worker",
        created_at_ms=now,
        updated_at_ms=now,
        provider="null",
        provider_request_id=attempt,
        provider_message_id=message_id,
        internet_message_id=f"<{message_id}>",
        accepted_at_ms=now,
        attempts=(
            AttemptRecord(
                attempt,
                1,
                "bench-worker",
                now,
                finished_at_ms=now,
                status="accepted",
                provider_request_id=attempt,
            ),
        ),
        sender="orders1@bench.example",
    )
    raw = entry.to_bytes().replace(b"%", b"%%")
    return raw.replace(_KEY_MARK.encode(), b"%s", 1).replace(_EVENT_MARK.encode(), b"%012d", 1)


def fill_ledger(settings: Settings, start: int, count: int) -> float:
    """Produce ``count`` ledger entries (keys ``start`` ...) to the changelog; returns seconds."""
    template = ledger_template(settings)
    topic = settings.ledger_changelog_topic
    errors: list[str] = []

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    producer = Producer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "acks": "all",
            # The worker's changelog writes land on murmur2(key) % partitions.
            "partitioner": "murmur2_random",
            "linger.ms": 50,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 500_000,
            "logger": logging.getLogger("bench.ledger-fill"),
        }
    )
    started = time.perf_counter()
    for n in range(start, start + count):
        hexkey = b"%032x" % n
        value = template % (hexkey, n)
        while True:
            try:
                producer.produce(topic, value, b"bench:" + hexkey, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        if n % 10_000 == 0:
            producer.poll(0)
            if errors:
                raise RuntimeError(f"ledger fill failed: {errors[0]}")
    left = producer.flush(600)
    if left or errors:
        raise RuntimeError(f"ledger fill: {left} unacknowledged, errors: {errors[:3]}")
    return time.perf_counter() - started


@dataclass(frozen=True)
class RestoreFigures:
    """One restore of ``keys`` keys from the changelog into an empty data dir."""

    keys: int
    fill_seconds: float
    start_to_ready_s: float
    restore_s: float | None
    restore_keys_per_s: float | None
    rss_mb: float | None
    peak_rss_mb: float | None

    def to_json(self) -> dict[str, Any]:
        """The figures as a JSON object."""
        return dict(self.__dict__)


# The restore starts with the bulk restore (streams.restore) or, when that is off
# or had nothing to do, with Faust's own recovery; it ends when the worker is
# ready: every table recovered (Faust's recovery, if any, finished too) and the
# streams resumed. Faust logs "Restore complete!" only when it read records itself.
_EVENTS = {
    "bulk_restore": "bulk restore started",
    "restoring": "restoring state from changelog topics",
    "ready": "sendonce.worker: ready",
}


def measure_restore(
    settings: Settings, keys: int, fill_seconds: float, log_path: Path, settle_s: float = 5.0
) -> RestoreFigures:
    """Start a worker on an empty data dir; time its restore and read its memory."""
    shutil.rmtree(settings.data_dir, ignore_errors=True)
    started = time.time()
    worker = start_worker(settings, log_path, SENDONCE_PROVIDER="null", SENDONCE_LOG_LEVEL="info")
    try:
        # Generous: a slow restore is a finding, not a reason to give up.
        deadline = time.monotonic() + 300 + keys / 3_000
        events: dict[str, float] = {}
        while "ready" not in events:
            _check(worker, deadline)
            time.sleep(0.5)  # polling the worker's log file
            events = log_event_times(log_path, _EVENTS)
        # Let what follows readiness (first commits, timers) settle before reading RSS.
        time.sleep(settle_s)
        memory = worker.memory_kb()
    finally:
        worker.stop()
    restore_s: float | None = None
    starts = [events[name] for name in ("bulk_restore", "restoring") if name in events]
    if starts:
        restore_s = max(events["ready"] - min(starts), 0.001)
    return RestoreFigures(
        keys=keys,
        fill_seconds=fill_seconds,
        start_to_ready_s=events["ready"] - started,
        restore_s=restore_s,
        restore_keys_per_s=keys / restore_s if restore_s else None,
        rss_mb=memory["VmRSS"] / 1024 if "VmRSS" in memory else None,
        peak_rss_mb=memory["VmHWM"] / 1024 if "VmHWM" in memory else None,
    )


def _check(worker: Proc, deadline: float) -> None:
    if not worker.alive():
        raise RuntimeError(f"the worker exited during restore:\n{worker.log_tail()}")
    if time.monotonic() > deadline:
        raise TimeoutError(f"the worker was not ready in time:\n{worker.log_tail()}")
