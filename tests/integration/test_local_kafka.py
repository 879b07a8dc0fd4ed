"""The local broker runner against a real Kafka broker (no mocks)."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from sendonce.dev.kafka import BrokerAlreadyRunning, LocalKafka
from sendonce.kafka.topics import create_topics
from sendonce.settings import Settings

pytestmark = pytest.mark.integration


def _pid_gone(pid: int) -> bool:
    """True once ``pid`` has fully exited (a zombie awaiting its reaper counts as gone).

    A thread-group leader in state Z whose other threads still run (a JVM shutting down)
    is *not* gone, hence the per-thread check.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return True
    for tid in tids:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
            return False
    return True


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not _pid_gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _create_topic(bootstrap: str, **config: str) -> str:
    name = f"t-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(name, 1, 1, config=config)], operation_timeout=30)
    futures[name].result(timeout=30)
    return name


def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(err)

    for key, value in records:
        producer.produce(topic, value, key, on_delivery=on_delivery)
    assert producer.flush(30) == 0, "messages still in flight after 30 s"
    assert errors == []


def _consume_all(bootstrap: str, topic: str, expected: int, timeout: float = 30) -> list[bytes]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"g-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    values: list[bytes] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout
        while len(values) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            value = msg.value()
            assert value is not None
            values.append(value)
    finally:
        consumer.close()
    return values


def test_broker_answers_metadata(kafka_bootstrap: str) -> None:
    metadata = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10)

    assert len(metadata.brokers) == 1


def test_produce_consume_round_trip(kafka_bootstrap: str) -> None:
    topic = _create_topic(kafka_bootstrap)
    records = [(f"k{i}".encode(), f"v{i}".encode()) for i in range(10)]

    _produce(kafka_bootstrap, topic, records)

    assert _consume_all(kafka_bootstrap, topic, expected=10) == [v for _, v in records]


def test_auto_topic_creation_is_off(kafka_bootstrap: str) -> None:
    name = f"missing-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})

    metadata = admin.list_topics(topic=name, timeout=10)  # would auto-create if enabled

    assert metadata.topics[name].error is not None
    assert name not in admin.list_topics(timeout=10).topics


def test_restart_keeps_address_and_data(kafka: LocalKafka | None) -> None:
    if kafka is None:
        pytest.skip("external broker (SENDONCE_TEST_BOOTSTRAP): cannot restart it")
    bootstrap = kafka.bootstrap
    old_pid = kafka.pid
    topic = _create_topic(bootstrap)
    _produce(bootstrap, topic, [(b"k", b"before-restart")])

    assert kafka.restart() == bootstrap

    assert kafka.pid is not None and kafka.pid != old_pid
    assert old_pid is not None and _pid_gone(old_pid)
    _produce(bootstrap, topic, [(b"k", b"after-restart")])
    assert _consume_all(bootstrap, topic, expected=2) == [b"before-restart", b"after-restart"]


def test_kill_then_start_recovers(kafka: LocalKafka | None) -> None:
    if kafka is None:
        pytest.skip("external broker (SENDONCE_TEST_BOOTSTRAP): cannot kill it")
    bootstrap = kafka.bootstrap
    topic = _create_topic(bootstrap)
    _produce(bootstrap, topic, [(b"k", b"before-crash")])
    pid = kafka.pid
    assert pid is not None

    kafka.kill()

    assert _pid_gone(pid)
    assert not kafka.is_running()
    assert kafka.start() == bootstrap
    assert _consume_all(bootstrap, topic, expected=1) == [b"before-crash"]


_CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from sendonce.dev.kafka import LocalKafka

    broker = LocalKafka(Path(sys.argv[1]))
    broker.start(timeout=120)
    print(broker.pid, flush=True)
    sys.stdin.read()  # block until the test kills us
    """
)


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise AssertionError(f"child printed nothing within {timeout} s")
    return proc.stdout.readline()


def test_broker_dies_when_its_parent_is_killed(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tmp_path / "home")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    broker_pid: int | None = None
    try:
        line = _read_line(child, timeout=150)
        assert line.strip().isdigit(), f"child did not report a broker pid: {line!r}"
        broker_pid = int(line)
        assert not _pid_gone(broker_pid)

        child.send_signal(signal.SIGKILL)  # no atexit, no cleanup: only PDEATHSIG helps
        child.wait(10)

        assert _wait_gone(broker_pid, timeout=15), "broker outlived its parent"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if broker_pid is not None and not _pid_gone(broker_pid):
            os.kill(broker_pid, signal.SIGKILL)  # don't leak a JVM when the test fails


def test_detached_start_then_stop_from_another_handle(tmp_path: Path) -> None:
    home = tmp_path / "home"
    starter = LocalKafka(home)
    bootstrap = starter.start(detach=True, timeout=120)
    pid = starter.pid
    assert pid is not None
    try:
        state = json.loads((home / "state.json").read_text())
        assert state["pid"] == pid
        assert state["bootstrap"] == bootstrap
        assert state["detached"] is True

        other = LocalKafka(home)
        status = other.status()
        assert status is not None
        assert status["bootstrap"] == bootstrap
        assert other.is_running()
        assert other.pid == pid
        assert other.bootstrap == bootstrap
        assert (
            len(AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).brokers) == 1
        )

        with pytest.raises(BrokerAlreadyRunning) as already:
            other.start()
        assert already.value.bootstrap == bootstrap

        other.stop()

        assert _pid_gone(pid)
        assert not (home / "state.json").exists()
        assert other.status() is None
        assert not starter.is_running()
    finally:
        if not _pid_gone(pid):
            os.kill(pid, signal.SIGKILL)


def _describe_min_isr(admin: AdminClient, topic: str, timeout: float = 30) -> str:
    resource = ConfigResource(ResourceType.TOPIC, topic)
    deadline = time.monotonic() + timeout
    while True:
        try:
            configs = admin.describe_configs([resource])[resource].result(timeout)
        except KafkaException as exc:
            # A new topic reaches each broker's metadata a moment after the controller
            # created it, and the request may land on one that does not know it yet.
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)  # polling with a deadline: no event says "propagated"
            continue
        return str(configs["min.insync.replicas"].value)


def test_three_node_cluster_survives_the_loss_of_a_partition_leader(tmp_path: Path) -> None:
    """Issue 15, item 4: replication 3 / min ISR 2 topics keep taking acks=all writes
    and serving reads while the broker leading their partition is dead."""
    cluster = LocalKafka(tmp_path / "cluster", heap="320m", brokers=3)
    bootstrap = cluster.start(timeout=240)
    try:
        assert len(bootstrap.split(",")) == 3
        admin = AdminClient({"bootstrap.servers": bootstrap})
        assert sorted(admin.list_topics(timeout=10).brokers) == [1, 2, 3]
        settings = Settings(
            bootstrap_servers=bootstrap,
            topic_prefix=f"c{uuid.uuid4().hex[:6]}.",
            app_id=f"c{uuid.uuid4().hex[:6]}",
            partitions=1,
            replication_factor=3,
            min_insync_replicas=2,
        )
        assert {r.status for r in create_topics(settings)} == {"created"}
        ledger = settings.ledger_changelog_topic
        result = settings.topics.results_sent
        for topic in (ledger, result):
            assert _describe_min_isr(admin, topic) == "2", topic
            partition = admin.list_topics(topic=topic, timeout=10).topics[topic].partitions[0]
            assert sorted(partition.replicas) == [1, 2, 3], topic
        _produce(bootstrap, ledger, [(b"k1", b"before")])

        leader = cluster.leader_of(ledger, 0)
        assert leader in (1, 2, 3)
        leader_pid = cluster.node_pid(leader)
        assert leader_pid is not None

        cluster.kill_node(leader)

        assert _pid_gone(leader_pid)
        state = cluster.status()
        assert state is not None and state["down"] == [leader]
        # acks=all with 2 of 3 copies left: accepted (min.insync.replicas=2 is met).
        _produce(bootstrap, ledger, [(b"k2", b"leader-dead")])
        _produce(bootstrap, result, [(b"k2", b"result")])
        assert cluster.leader_of(ledger, 0) not in (leader, -1)
        assert _consume_all(bootstrap, ledger, expected=2) == [b"before", b"leader-dead"]

        cluster.start_node(leader, timeout=120)

        assert cluster.node_pid(leader) not in (None, leader_pid)
        assert sorted(admin.list_topics(timeout=10).brokers) == [1, 2, 3]
        _produce(bootstrap, ledger, [(b"k3", b"after")])
        assert _consume_all(bootstrap, ledger, expected=3) == [b"before", b"leader-dead", b"after"]
    finally:
        cluster.stop()
    assert cluster.status() is None
