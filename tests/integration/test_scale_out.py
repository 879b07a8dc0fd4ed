"""Scale-out, shown: three worker processes in one group over 12 partitions.

One worker is stopped mid-run and another one joins; the partitions move, the
ledger partitions are recovered on their new owners (standby replicas keep a
warm copy), and every key is still delivered exactly once. The provider is the
Graph emulator (HTTPS, real MSAL), whose delivery log counts real sends per key,
so a key sent twice cannot hide behind an idempotent outbox file.
"""

from __future__ import annotations

import time
import urllib.error
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sendonce.emulator import GraphEmulator
from tests.integration.harness import (
    Pipeline,
    WorkerProcess,
    free_port,
    get,
    intent,
    make_pipeline,
    scrape,
)

pytestmark = pytest.mark.integration

PARTITIONS = 12
MAILBOXES = 24


@pytest.fixture
def pipeline(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Pipeline]:
    pipeline = make_pipeline(kafka_bootstrap, tmp_path, partitions=PARTITIONS)
    try:
        yield pipeline
    finally:
        pipeline.close()


def batch(first: int, count: int) -> list[dict[str, Any]]:
    return [
        intent(n, sender=f"mailbox{n % MAILBOXES}@acme.example")
        for n in range(first, first + count)
    ]


def owned_intents_partitions(base: str, topic: str) -> set[int] | None:
    """The intents partitions a worker owns now, or None while it is not ready.

    The consumer-lag gauge is rebuilt on each scrape from the worker's current
    assignment, so its series are exactly the partitions the worker owns.
    """
    try:
        if get(base + "/readyz")[0] != 200:
            return None
        samples = scrape(base)
    except urllib.error.URLError:
        return None  # not listening yet
    return {
        int(dict(labels)["partition"])
        for (name, labels), _ in samples.items()
        if name == "sendonce_consumer_lag" and dict(labels).get("topic") == topic
    }


def wait_for_spread(bases: list[str], topic: str, workers: list[WorkerProcess]) -> None:
    """Until every worker is ready and owns its share of all 12 partitions, disjointly.

    The group's assignment is not an event a test can subscribe to; polling the
    workers' own view of it with a deadline is the honest wait.
    """
    deadline = time.monotonic() + 120
    last: list[set[int] | None] = []
    while time.monotonic() < deadline:
        for worker in workers:
            assert worker.alive(), worker.log()
        last = [owned_intents_partitions(base, topic) for base in bases]
        owned = [o for o in last if o]
        spread = len(owned) == len(bases) and sum(map(len, owned)) == PARTITIONS
        if spread and set().union(*owned) == set(range(PARTITIONS)):
            return
        time.sleep(0.3)
    raise AssertionError(f"partitions never spread over the workers: {last}")


@pytest.mark.timeout(600)
def test_three_workers_one_stopped_one_added_every_key_sent_once(
    pipeline: Pipeline, emulator: GraphEmulator
) -> None:
    env = {
        **emulator.worker_env(),
        "SENDONCE_GRAPH_SENDS_PER_MINUTE": "0",
        # Graph allows 4 requests in flight per mailbox across all workers, and the
        # limiter is per worker: 1 each keeps up to 4 live workers within it (a 429 on
        # sendMail counts as ambiguous, so exceeding it would leave keys for review).
        "SENDONCE_GRAPH_MAILBOX_CONCURRENCY": "1",
        # A warm copy of each ledger partition on another worker: a moved partition
        # is caught up from its standby, not replayed from the changelog's start.
        "SENDONCE_STANDBY_REPLICAS": "1",
    }

    bases: dict[int, str] = {}

    def start(n: int) -> WorkerProcess:
        port = free_port()
        bases[n] = f"http://127.0.0.1:{port}"
        # Each worker its own RocksDB directory, as each pod its own volume.
        return pipeline.start_worker(
            **env,
            SENDONCE_DATA_DIR=str(pipeline.root / f"data-{n}"),
            SENDONCE_METRICS_PORT=str(port),
        )

    topic = pipeline.settings.topics.intents
    workers = [start(n) for n in range(3)]
    wait_for_spread([bases[n] for n in range(3)], topic, workers)

    first = batch(0, 600)
    keys = set(pipeline.publish(first))
    pipeline.wait_results(600, timeout=240)

    # Mid-run: publish new intents and repeats, stop one worker while they are
    # being processed, and add a fourth.
    second = batch(600, 600) + first[:200]
    keys |= set(pipeline.publish(second))
    pipeline.wait_results(700, timeout=240)
    leaving = workers[1]
    leaving.stop()  # SIGTERM: its partitions move to the others
    assert leaving.process.returncode is not None
    joining = start(3)
    records = pipeline.wait_results(1400, timeout=300)
    live = [workers[0], workers[2], joining]
    wait_for_spread([bases[0], bases[2], bases[3]], topic, live)

    # Every key of the first two batches is handled by now; replaying all of them
    # must cost nothing, wherever their partitions went.
    third = first + batch(600, 600)
    pipeline.publish(third)
    records = pipeline.wait_results(2600, timeout=300)

    assert len(keys) == 1200
    per_key = Counter(d["idempotency_key"] for d in emulator.deliveries())
    assert set(per_key) == keys, "every key delivered"
    assert max(per_key.values()) == 1, [k for k, n in per_key.items() if n > 1]

    outcomes = Counter(str(r.value["outcome"]) for r in records)
    # All three first workers took part (the group spread the 12 partitions).
    assert {"worker-0", "worker-1", "worker-2"} <= {r.value["worker"] for r in records}
    assert outcomes == {"SENT": 1200, "DUPLICATE": 1400}, outcomes
    # The worker that joined owns partitions now and answered repeats of keys other
    # workers had sent: only its recovered copy of their ledger could tell it.
    joined_duplicates = [
        r for r in records if r.value["outcome"] == "DUPLICATE" and r.value["worker"] == "worker-3"
    ]
    assert joined_duplicates, "the new worker answered no repeat"
    sent_by = {
        str(r.value["idempotency_key"]): r.value["worker"]
        for r in records
        if r.value["outcome"] == "SENT"
    }
    assert any(sent_by[str(r.value["idempotency_key"])] != "worker-3" for r in joined_duplicates)
    for worker in (workers[0], workers[2], joining):
        assert worker.alive(), worker.log()
