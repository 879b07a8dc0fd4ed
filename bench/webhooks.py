"""Inbound webhooks: receiver requests/s and dedupe events/s, beside Kafka's own ceiling.

Run:  .venv/bin/python -m bench.webhooks [--requests 4000] [--events 20000]

Everything runs on this machine in one invocation: a local broker, the receiver
and a worker as subprocesses (so the load generator does not share their GIL),
and, side by side, the ceilings the same client stack reaches without sendonce:

* receiver: HTTP POSTs of one Graph notification each (concurrency 64), answered
  202 only after Kafka acked; ceiling: the same records produced straight to
  Kafka (acks=all, idempotent) by one producer;
* dedupe: the worker's dedupe agent over a raw topic with 50 % replays, from
  its first forward to its last record; ceiling: a plain consume -> produce
  passthrough of the same records with confluent-kafka.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from confluent_kafka import Consumer, Producer, TopicPartition

from sendonce.dev.kafka import LocalKafka, pick_free_ports
from sendonce.dev.kafka_jars import ensure_jars
from sendonce.kafka.clients import consumer_config, producer_config
from sendonce.kafka.follower import TopicFollower
from sendonce.kafka.topics import create_topics
from sendonce.schemas.codec import default_codec
from sendonce.settings import Settings

CLIENT_STATE = "bench-client-state"


def notification(n: int) -> dict[str, Any]:
    return {
        "id": f"bench-{n}",
        "subscriptionId": "bench-sub",
        "changeType": "created",
        "resource": f"users/bench/messages/{n}",
        "resourceData": {"id": str(n)},
        "clientState": CLIENT_STATE,
        "tenantId": "bench-tenant",
    }


def raw_event(dedupe_id: str) -> bytes:
    return default_codec().encode(
        "WebhookEvent",
        {
            "dedupe_id": dedupe_id,
            "source": "graph",
            "kind": "NOTIFICATION",
            "tenant_id": "bench-tenant",
            "subscription_id": "bench-sub",
            "change_type": "created",
            "resource": "users/bench/messages/x",
            "resource_id": "x",
            "lifecycle_event": None,
            "client_state_verified": True,
            "received_at": int(time.time() * 1000),
            "payload": json.dumps({"id": dedupe_id}),
            "headers": {},
        },
    )


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        **settings.to_env(),
        "SENDONCE_LOG_LEVEL": "warning",
        "SENDONCE_METRICS_PORT": "0",
        **extra,
    }


async def _post_all(url: str, requests: int, concurrency: int) -> float:
    sem = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(n: int) -> None:
            async with sem:
                body = {"value": [notification(n)]}
                async with session.post(f"{url}/graph/notifications", json=body) as resp:
                    if resp.status != 202:
                        raise RuntimeError(f"receiver answered {resp.status}")

        await one(-1)  # warm up: producer connected
        started = time.perf_counter()
        await asyncio.gather(*(one(n) for n in range(requests)))
        return time.perf_counter() - started


def bench_receiver(settings: Settings, work: Path, requests: int) -> dict[str, float]:
    [port] = pick_free_ports(1)
    env = env_for(
        settings,
        SENDONCE_RECEIVER_PORT=str(port),
        SENDONCE_RECEIVER_CLIENT_STATES=f"bench-sub={CLIENT_STATE}",
    )
    log = open(work / "receiver.log", "wb")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "sendonce.cli", "receiver"], env=env, stdout=log, stderr=log
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_http(f"{url}/healthz", proc)
        seconds = asyncio.run(_post_all(url, requests, 64))
    finally:
        proc.terminate()
        proc.wait(30)
    # Ceiling: the same number of records straight into Kafka, same guarantees.
    producer = Producer(producer_config(settings.bootstrap_servers))
    records = [(f"ceiling-{n}".encode(), raw_event(f"ceiling-{n}")) for n in range(requests)]
    started = time.perf_counter()
    for key, value in records:
        while True:
            try:
                # A topic this benchmark does not watch.
                producer.produce(settings.topics.results_failed, value=value, key=key)
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(60)
    ceiling = time.perf_counter() - started
    return {"receiver_rps": requests / seconds, "kafka_produce_rps": requests / ceiling}


def bench_dedupe(settings: Settings, work: Path, events: int) -> dict[str, float]:
    producer = Producer(producer_config(settings.bootstrap_servers))
    distinct = events // 2
    for n in range(events):
        dedupe_id = f"dedupe-{n % distinct}"  # every id twice: 50 % replays
        producer.produce(settings.topics.webhooks_raw, value=raw_event(dedupe_id), key=dedupe_id)
        if n % 5000 == 0:
            producer.poll(0)
    producer.flush(120)

    # Ceiling: plain consume -> produce passthrough of the same raw records.
    started = time.perf_counter()
    # Into a topic this benchmark does not watch.
    _passthrough(settings, settings.topics.webhooks_raw, settings.topics.results_sent, events)
    passthrough = time.perf_counter() - started

    log = open(work / "worker.log", "wb")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "sendonce.cli", "worker"],
        env=env_for(settings, SENDONCE_WEBHOOK_REPLAYS_TOPIC="true"),
        stdout=log,
        stderr=log,
    )
    try:
        outputs = [settings.topics.webhooks_deduped, settings.topics.webhooks_replays]
        first, last = _watch_counts(settings, outputs, events, proc)
    finally:
        proc.terminate()
        proc.wait(60)
    return {
        "dedupe_events_per_s": events / (last - first),
        "passthrough_events_per_s": events / passthrough,
    }


def _passthrough(settings: Settings, source: str, target: str, count: int) -> None:
    consumer = Consumer(consumer_config(settings.bootstrap_servers, group="bench-passthrough"))
    producer = Producer(
        {"bootstrap.servers": settings.bootstrap_servers, "acks": "all", "linger.ms": 5}
    )
    # Assigned, not subscribed: a group join would add seconds no worker pays twice.
    metadata = consumer.list_topics(source, timeout=30)
    consumer.assign([TopicPartition(source, p, 0) for p in metadata.topics[source].partitions])
    seen = 0
    while seen < count:
        for msg in consumer.consume(500, timeout=1.0):
            if msg.error():
                continue
            producer.produce(target, value=msg.value(), key=msg.key())
            seen += 1
        producer.poll(0)
    producer.flush(60)
    consumer.close()


def _watch_counts(
    settings: Settings, topics: list[str], expected: int, proc: subprocess.Popen[bytes]
) -> tuple[float, float]:
    follower = TopicFollower(settings.bootstrap_servers, topics, group="bench-watch")
    seen = 0
    first = last = 0.0
    deadline = time.monotonic() + 600
    while seen < expected:
        if proc.poll() is not None:
            raise RuntimeError("worker exited during the benchmark")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{seen} of {expected} events after 600 s")
        batch = [m for m in follower.consume(1000, 0.5) if not m.error()]
        if batch:
            now = time.perf_counter()
            first = first or now
            last = now
            seen += len(batch)
    follower.close()
    return first, last


def _wait_http(url: str, proc: subprocess.Popen[bytes]) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError("receiver exited on startup")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("receiver did not become healthy")
        time.sleep(0.2)  # polling a health endpoint: nothing to await


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--events", type=int, default=20000)
    args = parser.parse_args(argv)
    ensure_jars()
    with tempfile.TemporaryDirectory(prefix="sendonce-bench-") as tmp:
        work = Path(tmp)
        kafka = LocalKafka(work / "kafka", heap="1g")
        bootstrap = kafka.start()
        try:
            tag = uuid.uuid4().hex[:6]
            settings = Settings(
                bootstrap_servers=bootstrap,
                app_id=f"bench-{tag}",
                topic_prefix=f"bench{tag}.",
                data_dir=work / "worker",
            )
            create_topics(settings)
            receiver = bench_receiver(settings, work, args.requests)
            dedupe = bench_dedupe(settings, work, args.events)
        finally:
            kafka.stop()
    command = f"python -m bench.webhooks --requests {args.requests} --events {args.events}"
    rows = [
        ("receiver (HTTP -> raw topic, acked)", receiver["receiver_rps"], "requests/s"),
        ("  ceiling: direct Kafka produce", receiver["kafka_produce_rps"], "records/s"),
        ("dedupe agent (raw -> deduped/replays)", dedupe["dedupe_events_per_s"], "events/s"),
        (
            "  ceiling: consume -> produce passthrough",
            dedupe["passthrough_events_per_s"],
            "events/s",
        ),
    ]
    print(f"\n{'configuration':<44}{'rate':>12}  unit")
    for name, rate, unit in rows:
        print(f"{name:<44}{rate:>12,.0f}  {unit}")
    print(
        f"\nratios: receiver/ceiling {receiver['receiver_rps'] / receiver['kafka_produce_rps']:.2f}"
        f", dedupe/passthrough "
        f"{dedupe['dedupe_events_per_s'] / dedupe['passthrough_events_per_s']:.2f}"
    )
    print(f"reproduce: {command}")
    print(json.dumps({"receiver": receiver, "dedupe": dedupe, "command": command}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
