"""The once-only pipeline against the real broker: worker processes, RocksDB, outbox."""

from __future__ import annotations

import collections
import hashlib
import random
import shutil
import signal
import time
import uuid

import pytest

from sendonce.keys import complete_intent, idempotency_key_for
from sendonce.ops.publish import IntentPublisher
from tests.integration.harness import Pipeline, intent

pytestmark = pytest.mark.integration


def test_1000_intents_with_300_repeats_send_700_emails(pipeline: Pipeline) -> None:
    rng = random.Random(20261123)
    originals = [intent(n, tenant=f"tenant{n % 7}") for n in range(700)]
    repeats = [dict(rng.choice(originals)) for _ in range(300)]
    batch = originals + repeats
    rng.shuffle(batch)
    worker = pipeline.start_worker()
    keys = pipeline.publish(batch)

    results = pipeline.wait_results(1000)

    assert len(pipeline.eml_files()) == 700
    outcomes = collections.Counter(r.value["outcome"] for r in results)
    assert outcomes == {"SENT": 700, "DUPLICATE": 300}
    sent = {r.value["idempotency_key"]: r.value for r in results if r.value["outcome"] == "SENT"}
    assert set(sent) == set(keys)
    for r in results:
        if r.value["outcome"] == "DUPLICATE":
            original = sent[r.value["idempotency_key"]]
            assert r.value["internet_message_id"] == original["internet_message_id"]
            assert r.value["original_result_id"] == original["result_id"]
            # the original is the key's first record in the partition
            assert r.value["intent_offset"] > original["intent_offset"]
    assert worker.alive()


def test_kill_after_provider_accepted_is_reconciled_not_resent(pipeline: Pipeline) -> None:
    batch = [intent(n) for n in range(5)]
    crashing = pipeline.start_worker(SENDONCE_OUTBOX_FAULT="kill-after-accept:1")
    keys = pipeline.publish(batch)
    assert crashing.wait_exit(120) == -signal.SIGKILL
    # The provider accepted at least the first message (sends of one batch run
    # concurrently, so others may have landed too) and the worker died before
    # recording SENT or producing any result.
    accepted = {p.name for p in pipeline.eml_files()}
    assert accepted
    assert pipeline.watcher.poll(timeout=1.0) == 0

    pipeline.start_worker()
    results = pipeline.wait_results(5)

    assert len(pipeline.eml_files()) == 5
    by_key = {r.value["idempotency_key"]: r.value for r in results}
    assert set(by_key) == set(keys)
    assert all(v["outcome"] == "SENT" for v in by_key.values())
    reconciled = {v["provider_message_id"] for v in by_key.values() if v["reconciled"]}
    # Exactly the keys accepted before the kill were resolved by looking them
    # up, not by sending again; the others were sent by the new worker.
    assert reconciled == accepted
    for v in by_key.values():
        if v["reconciled"]:
            assert v["attempt_count"] == 1
        else:
            # PENDING at the kill but never accepted: the lookup proved it, so
            # a second attempt was safe; or not started before the kill at all.
            assert v["attempt_count"] in (1, 2)


def test_bad_records_are_dead_lettered_and_the_worker_keeps_going(pipeline: Pipeline) -> None:
    worker = pipeline.start_worker()
    codec_publisher = pipeline.publisher()
    codec = codec_publisher.codec
    garbage = b"\x00\xfe\x01 not an avro record"
    wrong_schema = codec.encode(
        "DeadLetter",
        {
            "source_topic": "x",
            "source_partition": 0,
            "source_offset": 0,
            "reason": "r",
            "error_type": "t",
            "failed_at": 0,
        },
    )
    bad_address = codec.encode(
        "EmailIntent", complete_intent(intent(99, to=["not an address at all"]))
    )
    goods = [intent(n) for n in range(6)]
    with codec_publisher as publisher:
        keys = [publisher.publish(goods[0]).value, publisher.publish(goods[1]).value]
        publisher.publish_raw(b"acme:garbage", garbage)
        keys.append(publisher.publish(goods[2]).value)
        publisher.publish_raw(b"acme:wrong-schema", wrong_schema)
        keys.append(publisher.publish(goods[3]).value)
        publisher.publish_raw(b"acme:bad-address", bad_address)
        keys += [publisher.publish(goods[4]).value, publisher.publish(goods[5]).value]

    records = pipeline.wait_results(9)

    dead = [r.value for r in records if r.topic == pipeline.settings.topics.dlq]
    assert sorted(d["error_type"] for d in dead) == [
        "invalid_intent",
        "undecodable",
        "wrong_schema",
    ]
    by_type = {d["error_type"]: d for d in dead}
    assert by_type["undecodable"]["original_value"] == garbage
    assert by_type["wrong_schema"]["original_value"] == wrong_schema
    assert by_type["invalid_intent"]["original_value"] == bad_address
    assert all(d["reason"] and d["source_topic"] == pipeline.settings.topics.intents for d in dead)
    results = [r.value for r in records if r.topic != pipeline.settings.topics.dlq]
    assert sorted(r["idempotency_key"] for r in results) == sorted(keys)
    assert all(r["outcome"] == "SENT" for r in results)
    assert worker.alive()
    assert "Crashed reason" not in worker.log()  # an agent crash stays visible


def test_a_record_too_large_to_dead_letter_whole_does_not_stop_its_partition(
    pipeline: Pipeline,
) -> None:
    # Issue 16: a record near the broker's limit cannot be wrapped whole in a DeadLetter
    # (librdkafka refuses it with MSG_SIZE_TOO_LARGE); that used to fail the batch, and
    # every owner of the partition crash-looped on it.
    worker = pipeline.start_worker()
    huge = b"\x00\xfe" + bytes(range(256)) * 4000  # ~1 MB: accepted by the broker
    goods = [intent(n) for n in range(4)]
    big_publisher = IntentPublisher(
        pipeline.settings.bootstrap_servers,
        pipeline.settings.topics.intents,
        extra_config={"message.max.bytes": 1_040_000},
    )
    with big_publisher as publisher:
        keys = [publisher.publish(goods[0]).value]
        publisher.publish_raw(b"acme:huge", huge, headers=[("trace", b"t-1")])
        keys += [publisher.publish(g).value for g in goods[1:]]

    records = pipeline.wait_results(5, timeout=120)

    [dead] = [r.value for r in records if r.topic == pipeline.settings.topics.dlq]
    assert dead["error_type"] == "oversize"
    assert dead["original_key"] == b"acme:huge"
    assert dead["original_headers"] == [{"key": "trace", "value": b"t-1"}]
    assert huge.startswith(dead["original_value"]) and 0 < len(dead["original_value"]) < len(huge)
    assert hashlib.sha256(huge).hexdigest() in dead["reason"]
    assert str(len(huge)) in dead["reason"]
    results = [r.value for r in records if r.topic != pipeline.settings.topics.dlq]
    assert sorted(r["idempotency_key"] for r in results) == sorted(keys)
    assert all(r["outcome"] == "SENT" for r in results)
    assert worker.alive()


def test_poison_on_the_deferred_topic_is_dead_lettered_and_the_worker_goes_on(
    pipeline: Pipeline,
) -> None:
    # Issue 16: a malformed sendonce-origin header on the deferred topic raised a
    # ValueError that failed the deferred lane's batch (and the worker with it).
    worker = pipeline.start_worker()
    poisoned, good = intent(1), intent(2)
    with pipeline.publisher() as publisher:
        value = publisher.codec.encode("EmailIntent", complete_intent(poisoned))
        key = idempotency_key_for(complete_intent(poisoned)).value.encode()
    deferred = IntentPublisher(
        pipeline.settings.bootstrap_servers, pipeline.settings.topics.intents_deferred
    )
    with deferred:
        deferred.publish_raw(key, value, headers=[("sendonce-origin", b"not:an-origin")])
    [good_key] = pipeline.publish([good])

    records = pipeline.wait_results(2, timeout=120)

    [dead] = [r.value for r in records if r.topic == pipeline.settings.topics.dlq]
    assert dead["error_type"] == "misrouted"
    assert "sendonce-origin" in dead["reason"]
    assert dead["source_topic"] == pipeline.settings.topics.intents_deferred
    [result] = [r.value for r in records if r.topic != pipeline.settings.topics.dlq]
    assert (result["idempotency_key"], result["outcome"]) == (good_key, "SENT")
    assert worker.alive()
    assert "Crashed reason" not in worker.log()  # an agent crash stays visible


def test_same_key_with_a_different_body_is_a_conflict_and_sends_nothing(
    pipeline: Pipeline,
) -> None:
    pipeline.start_worker()
    first = intent(1, idempotency_key="ticket-7-reply")
    second = intent(1, idempotency_key="ticket-7-reply", text_body="Regenerated, different text")
    keys = pipeline.publish([first, second])
    assert keys[0] == keys[1]

    results = pipeline.wait_results(2)

    outcomes = sorted(r.value["outcome"] for r in results)
    assert outcomes == ["CONFLICT", "SENT"]
    [conflict] = [r for r in results if r.value["outcome"] == "CONFLICT"]
    assert conflict.topic == pipeline.settings.topics.results_failed
    assert conflict.value["error_code"] == "key_conflict"
    assert len(pipeline.eml_files()) == 1


def test_worker_refuses_to_start_when_partitions_disagree(pipeline: Pipeline) -> None:
    wrong = str(pipeline.settings.partitions + 1)
    worker = pipeline.start_worker(SENDONCE_PARTITIONS=wrong)
    assert worker.wait_exit(60) == 2
    assert "must match" in worker.log()


def _changelog_records(bootstrap: str, topic: str) -> list[tuple[bytes | None, int]]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"changelog-reader-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        assign = []
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            if high > low:
                assign.append(TopicPartition(topic, p, low))
        consumer.assign(assign)
        records: list[tuple[bytes | None, int]] = []
        open_partitions = {tp.partition for tp in assign}
        while open_partitions:
            msg = consumer.poll(5)
            assert msg is not None, "changelog read stalled"
            if msg.error():
                open_partitions.discard(msg.partition())
                continue
            records.append((msg.key(), msg.partition() or 0))
        return records
    finally:
        consumer.close()


def test_ledger_restores_from_a_compacted_changelog_after_local_state_is_lost(
    pipeline: Pipeline,
) -> None:
    from confluent_kafka.admin import (
        AdminClient,
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
    )

    bootstrap = pipeline.settings.bootstrap_servers
    changelog = pipeline.settings.ledger_changelog_topic
    admin = AdminClient({"bootstrap.servers": bootstrap})
    # Incremental: the legacy AlterConfigs call would replace the whole topic
    # config and silently drop cleanup.policy=compact.
    small_segments = {
        "segment.ms": "100",
        "min.cleanable.dirty.ratio": "0.01",
        "delete.retention.ms": "100",
    }
    resource = ConfigResource(
        ConfigResource.Type.TOPIC,
        changelog,
        incremental_configs=[
            ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET)
            for k, v in small_segments.items()
        ],
    )
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(30)

    first = [intent(n) for n in range(200)]
    worker = pipeline.start_worker()
    pipeline.publish(first)
    pipeline.wait_results(200)
    # Every key was written twice (PENDING, then SENT). New writes roll the
    # old segments so the cleaner can compact them; wait until it has.
    second = [intent(n) for n in range(200, 260)]
    compacted = False
    deadline = time.monotonic() + 120
    sent_batches = 0
    while not compacted:
        assert time.monotonic() < deadline, "the changelog was never compacted"
        batch = second[sent_batches * 10 : (sent_batches + 1) * 10]
        if batch:
            pipeline.publish(batch)
            sent_batches += 1
            pipeline.wait_results(200 + 10 * sent_batches)
        records = _changelog_records(bootstrap, changelog)
        keys = [k for k, _ in records]
        compacted = len(keys) < 2 * len(set(keys))
    total = 200 + 10 * sent_batches
    emails = len(pipeline.eml_files())
    assert emails == total

    worker.stop()
    shutil.rmtree(pipeline.settings.data_dir)
    pipeline.start_worker()
    pipeline.publish(first + second[: 10 * sent_batches])

    results = pipeline.wait_results(2 * total)

    assert len(pipeline.eml_files()) == emails
    outcomes = collections.Counter(r.value["outcome"] for r in results)
    # Without the restored ledger the replay would come back SENT (the outbox
    # finding its file), not DUPLICATE.
    assert outcomes == {"SENT": total, "DUPLICATE": total}, outcomes
