"""The worker's /metrics, /healthz and /readyz against the real broker, and its JSON logs."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.harness import (
    Pipeline,
    Samples,
    free_port,
    get,
    intent,
    scrape,
)

pytestmark = pytest.mark.integration


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of ``name``'s samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def poll(
    what: str, check: Callable[[], Any], alive: Callable[[], bool], timeout: float = 60
) -> Any:
    """Poll ``check`` until it returns something truthy; the counters are not events."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        assert alive(), f"the worker died while waiting for {what}"
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"{what}: not reached within {timeout}s (last: {last!r})")


def test_worker_metrics_health_and_json_logs(pipeline: Pipeline) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    worker = pipeline.start_worker(SENDONCE_METRICS_PORT=str(port), SENDONCE_LOG_FORMAT="json")
    settings = pipeline.settings

    # Liveness answers as soon as the worker listens, readiness once recovered.
    def answers() -> bool:
        try:
            return get(base + "/healthz")[0] == 200
        except OSError:
            return False

    poll("/healthz", answers, worker.alive, timeout=90)
    poll("/readyz 200", lambda: get(base + "/readyz")[0] == 200, worker.alive, timeout=120)

    # A first batch; scrape while it is under way (after its first result).
    first = [intent(n, tenant="metrics") for n in range(400)]
    first.append(intent(9999, tenant="metrics", idempotency_key="metrics-conflict"))
    pipeline.publish(first)
    pipeline.watcher.wait_for(1)
    during = scrape(base)
    sent_during = total(during, "sendonce_intents_total", outcome="SENT")
    assert 0 < sent_during <= len(first)
    pipeline.wait_results(len(first))

    # A batch with known outcomes: new, repeats, a key conflict, an undecodable record.
    new = [intent(1000 + n, tenant="metrics") for n in range(50)]
    repeats = first[:30]
    conflict = intent(9999, tenant="metrics", idempotency_key="metrics-conflict", subject="x")
    pipeline.publish([*new, *repeats, conflict])
    with pipeline.publisher() as publisher:
        publisher.publish_raw(b"metrics:garbage", b"\x00\x01 not avro")
    records = pipeline.wait_results(len(first) + len(new) + len(repeats) + 2)
    assert len(records) == len(first) + len(new) + len(repeats) + 2

    expected = {
        "SENT": len(first) + len(new),
        "DUPLICATE": len(repeats),
        "CONFLICT": 1,
        "AMBIGUOUS": 0,
        "FAILED": 0,
    }

    def counters_match() -> Samples | None:
        samples = scrape(base)
        got = {o: total(samples, "sendonce_intents_total", outcome=o) for o in expected}
        dead = total(samples, "sendonce_dead_letters_total", error_type="undecodable")
        return samples if got == expected and dead == 1 else None

    samples = poll("result counters", counters_match, worker.alive)

    # One latency observation per provider call: every send was accepted once.
    calls = len(pipeline.eml_files())
    assert calls == expected["SENT"]
    assert total(samples, "sendonce_provider_latency_seconds_count", provider="outbox") == calls
    assert (
        total(
            samples,
            "sendonce_provider_latency_seconds_count",
            provider="outbox",
            outcome_class="accepted",
        )
        == calls
    )
    assert total(samples, "sendonce_dead_letters_total") == 1
    assert total(samples, "sendonce_ambiguous_open") == 0
    assert total(samples, "sendonce_ledger_entries") > 0
    assert total(samples, "sendonce_batch_records_count", lane="intents") >= 2

    # Everything committed: no lag left on any intents partition (one worker owns all).
    def no_lag() -> Samples | None:
        samples = scrape(base)
        lags = {
            dict(ls)["partition"]: v
            for (n, ls), v in samples.items()
            if n == "sendonce_consumer_lag" and dict(ls)["topic"] == settings.topics.intents
        }
        if len(lags) == settings.partitions and not any(lags.values()):
            return samples
        return None

    poll("consumer lag 0 on the intents partitions", no_lag, worker.alive)
    assert get(base + "/readyz")[0] == 200

    worker.stop()
    lines = [line for line in worker.log_path.read_text().splitlines() if line.strip()]
    assert lines
    parsed = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"ts", "level", "logger", "message", "worker"} <= set(p) for p in parsed)
    assert {p["worker"] for p in parsed} == {"worker-0"}
    assert any(p["logger"] == "sendonce.metrics" for p in parsed)
    assert any("dead-lettered" in p["message"] for p in parsed)
