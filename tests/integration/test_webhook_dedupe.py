"""The inbound dedupe stream against the real broker: first sightings only, replays counted."""

from __future__ import annotations

import dataclasses
import json
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from sendonce.connectors.webhooks.receiver import ReceiverConfig, ReceiverThread
from sendonce.ops.publish import IntentPublisher
from sendonce.ops.results import ResultWatcher
from sendonce.schemas.codec import default_codec
from tests.integration.harness import Pipeline

pytestmark = pytest.mark.integration


def raw_event(dedupe_id: str) -> bytes:
    notification = {"id": dedupe_id, "subscriptionId": "sub-1", "changeType": "created"}
    return default_codec().encode(
        "WebhookEvent",
        {
            "dedupe_id": dedupe_id,
            "source": "graph",
            "kind": "NOTIFICATION",
            "tenant_id": "tenant-1",
            "subscription_id": "sub-1",
            "change_type": "created",
            "resource": "users/a/messages/b",
            "resource_id": "b",
            "lifecycle_event": None,
            "client_state_verified": True,
            "received_at": int(time.time() * 1000),
            "payload": json.dumps(notification),
            "headers": {},
        },
    )


def post(pipeline: Pipeline, dedupe_id: str, times: int) -> None:
    """What the receiver does for each delivery: one raw record keyed by dedupe id."""
    s = pipeline.settings
    with IntentPublisher(s.bootstrap_servers, s.topics.webhooks_raw) as publisher:
        for _ in range(times):
            publisher.publish_raw(dedupe_id.encode(), raw_event(dedupe_id))


def watch(pipeline: Pipeline) -> ResultWatcher:
    t = pipeline.settings.topics
    return ResultWatcher(
        pipeline.settings.bootstrap_servers, [t.webhooks_deduped, t.webhooks_replays]
    )


def count(watcher: ResultWatcher, topic: str) -> int:
    return sum(1 for r in watcher.records if r.topic == topic)


def post_http(pipeline: Pipeline, notification_id: str, times: int) -> None:
    """POST one Graph notification ``times`` times through the real receiver."""
    settings = dataclasses.replace(
        pipeline.settings, receiver_port=0, receiver_client_states="sub-1=the-client-state"
    )
    body = json.dumps(
        {
            "value": [
                {
                    "id": notification_id,
                    "subscriptionId": "sub-1",
                    "changeType": "created",
                    "resource": "users/a/messages/b",
                    "resourceData": {"id": "b"},
                    "clientState": "the-client-state",
                    "tenantId": "tenant-1",
                }
            ]
        }
    ).encode()
    with ReceiverThread(ReceiverConfig.from_settings(settings)) as receiver:
        for _ in range(times):
            request = urllib.request.Request(
                f"{receiver.url}/graph/notifications",
                data=body,
                headers={"Content-Type": "application/json"},
                method="POST",
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                assert response.status == 202


def test_five_deliveries_then_a_replay_by_a_fresh_group_forward_exactly_once(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    t = pipeline.settings.topics
    audit = {"SENDONCE_WEBHOOK_REPLAYS_TOPIC": "true"}
    first = pipeline.start_worker(**audit)
    post_http(pipeline, "notification-1", 5)
    watcher = watch(pipeline)
    watcher.wait_for(5, timeout=120)  # 1 forwarded + 4 replays
    assert count(watcher, t.webhooks_deduped) == 1
    assert count(watcher, t.webhooks_replays) == 4
    first.stop()

    # A fresh consumer group with no local state re-consumes the raw topic from 0.
    second = pipeline.start_worker(
        SENDONCE_APP_ID=pipeline.settings.app_id + "-replay",
        SENDONCE_DATA_DIR=str(tmp_path / "fresh-worker"),
        **audit,
    )
    watcher.wait_for(10, timeout=120)  # 5 more replays
    watcher.poll(timeout=1.0)
    assert count(watcher, t.webhooks_deduped) == 1
    assert count(watcher, t.webhooks_replays) == 9
    [forwarded] = [r for r in watcher.records if r.topic == t.webhooks_deduped]
    assert forwarded.key == b"graph:notification-1"
    assert forwarded.value["dedupe_id"] == "graph:notification-1"
    assert second.alive()
    watcher.close()


def test_kill_between_marking_and_forwarding_forwards_exactly_once(pipeline: Pipeline) -> None:
    t = pipeline.settings.topics
    crashing = pipeline.start_worker(SENDONCE_WEBHOOK_FAULT="kill-after-mark:1")
    post(pipeline, "notification-2", 1)
    assert crashing.wait_exit(120) == -signal.SIGKILL
    watcher = watch(pipeline)
    watcher.poll(timeout=1.0)
    assert count(watcher, t.webhooks_deduped) == 0  # marked, never forwarded

    pipeline.start_worker()
    post(pipeline, "notification-2", 2)  # the provider retries meanwhile
    watcher.wait_for(1, timeout=120)
    # The redelivered record and both retries are all processed once the
    # retries' offsets are; wait for the worker to get past them.
    deadline = time.monotonic() + 60
    while "replays dropped (2 in total)" not in pipeline.workers[-1].log():
        assert time.monotonic() < deadline, pipeline.workers[-1].log()
        watcher.poll(timeout=0.5)
    watcher.poll(timeout=1.0)
    assert count(watcher, t.webhooks_deduped) == 1
    watcher.close()
