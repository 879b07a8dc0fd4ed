"""Unit tests for the local broker runner's pure parts (no JVM, no network beyond bind)."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sendonce.dev.kafka import (
    LocalKafka,
    LocalKafkaError,
    cluster_replication,
    new_cluster_id,
    pick_free_ports,
    quorum_voters,
    render_server_properties,
)

REPO = Path(__file__).resolve().parents[3]


def _props(text: str) -> dict[str, str]:
    return dict(
        line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#")
    )


def test_server_properties_ports_and_log_dir(tmp_path: Path) -> None:
    props = _props(render_server_properties(41001, 41002, tmp_path / "data"))

    assert props["listeners"] == "PLAINTEXT://127.0.0.1:41001,CONTROLLER://127.0.0.1:41002"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:41001"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:41002"
    assert props["log.dirs"] == str(tmp_path / "data")
    assert props["process.roles"] == "broker,controller"
    assert props["controller.listener.names"] == "CONTROLLER"


def test_server_properties_single_node_settings(tmp_path: Path) -> None:
    props = _props(render_server_properties(1, 2, tmp_path))

    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "share.coordinator.state.topic.replication.factor",
        "share.coordinator.state.topic.min.isr",
        "num.partitions",
    ):
        assert props[key] == "1", key
    assert props["auto.create.topics.enable"] == "false"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["log.cleaner.backoff.ms"] == "1000"
    # Short enough that a crash-restart does not wait ~9 s to re-register.
    assert int(props["broker.session.timeout.ms"]) <= 3000
    assert int(props["broker.heartbeat.interval.ms"]) < int(props["broker.session.timeout.ms"])


def test_server_properties_overrides(tmp_path: Path) -> None:
    text = render_server_properties(
        1, 2, tmp_path, {"num.partitions": "3", "log.segment.bytes": "1048576"}
    )
    props = _props(text)

    assert props["num.partitions"] == "3"
    assert props["log.segment.bytes"] == "1048576"
    assert text.count("num.partitions=") == 1


def test_pick_free_ports_distinct_and_bindable() -> None:
    ports = pick_free_ports(3)

    assert len(set(ports)) == 3
    for port in ports:
        assert 0 < port < 65536
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))


def test_pick_free_ports_avoids_a_port_in_use() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        for _ in range(20):
            assert taken not in pick_free_ports(2)


def test_default_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SENDONCE_KAFKA_HOME", raising=False)
    assert LocalKafka().home == REPO / ".sendonce" / "kafka"

    monkeypatch.setenv("SENDONCE_KAFKA_HOME", str(tmp_path / "h"))
    broker = LocalKafka()
    assert broker.home == tmp_path / "h"
    assert broker.data_dir == tmp_path / "h" / "data"
    assert broker.config_path == tmp_path / "h" / "server.properties"


def test_cluster_id_format() -> None:
    ids = {new_cluster_id() for _ in range(200)}

    assert len(ids) == 200
    for cid in ids:
        assert len(cid) == 22
        assert not cid.startswith("-")
        assert len(base64.urlsafe_b64decode(cid + "==")) == 16


def test_status_ignores_state_of_a_foreign_pid(tmp_path: Path) -> None:
    # A stale state.json whose pid now belongs to some other live process (here: us)
    # must not make the home look running.
    broker = LocalKafka(tmp_path)
    broker.state_path.write_text(
        f'{{"pid": {os.getpid()}, "port": 1, "controller_port": 2, '
        f'"bootstrap": "127.0.0.1:1", "detached": true}}'
    )

    assert broker.status() is None
    assert not broker.is_running()
    assert broker.pid is None
    assert not broker.state_path.exists()


def test_stop_without_broker_is_noop(tmp_path: Path) -> None:
    broker = LocalKafka(tmp_path)
    broker.stop()
    broker.kill()
    assert not broker.is_running()


# --------------------------------------------------------------------------- clusters


def test_quorum_voters_lists_every_node_in_id_order() -> None:
    assert quorum_voters({3: 9003, 1: 9001, 2: 9002}) == (
        "1@127.0.0.1:9001,2@127.0.0.1:9002,3@127.0.0.1:9003"
    )


def test_server_properties_of_each_node_of_a_three_node_cluster(tmp_path: Path) -> None:
    ports = {1: (41001, 41002), 2: (41003, 41004), 3: (41005, 41006)}
    voters = {node: cport for node, (_port, cport) in ports.items()}
    rendered = {
        node: _props(
            render_server_properties(
                port, cport, tmp_path / f"n{node}", node_id=node, voters=voters
            )
        )
        for node, (port, cport) in ports.items()
    }

    for node, props in rendered.items():
        port, cport = ports[node]
        assert props["node.id"] == str(node)
        assert props["process.roles"] == "broker,controller"
        assert props["controller.quorum.voters"] == (
            "1@127.0.0.1:41002,2@127.0.0.1:41004,3@127.0.0.1:41006"
        )
        assert props["listeners"] == (
            f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}"
        )
        assert props["advertised.listeners"] == f"PLAINTEXT://127.0.0.1:{port}"
        assert props["log.dirs"] == str(tmp_path / f"n{node}")
        # What production uses: one broker may go without losing an acks=all write.
        assert props["offsets.topic.replication.factor"] == "3"
        assert props["transaction.state.log.replication.factor"] == "3"
        assert props["transaction.state.log.min.isr"] == "2"
        assert props["share.coordinator.state.topic.replication.factor"] == "3"
        assert props["share.coordinator.state.topic.min.isr"] == "2"
        assert props["auto.create.topics.enable"] == "false"


def test_a_node_must_be_one_of_the_voters(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="node 2 must be a voter"):
        render_server_properties(1, 2, tmp_path, node_id=2, voters={1: 2, 3: 4})


def test_cluster_replication_by_size() -> None:
    assert cluster_replication(1) == (1, 1)
    assert cluster_replication(2) == (2, 1)
    assert cluster_replication(3) == (3, 2)
    assert cluster_replication(5) == (3, 2)


def test_cluster_nodes_have_their_own_directories(tmp_path: Path) -> None:
    single = LocalKafka(tmp_path / "one")
    cluster = LocalKafka(tmp_path / "three", brokers=3)

    assert single.node_dir(1) == tmp_path / "one"
    assert cluster.node_ids == [1, 2, 3]
    assert [cluster.node_dir(i) for i in (1, 2, 3)] == [
        tmp_path / "three" / f"node-{i}" for i in (1, 2, 3)
    ]
    assert cluster.state_path == tmp_path / "three" / "state.json"
    with pytest.raises(LocalKafkaError, match="at least one broker"):
        LocalKafka(tmp_path, brokers=0)


def test_cluster_ports_are_distinct_and_kept_across_starts(tmp_path: Path) -> None:
    first = LocalKafka(tmp_path, brokers=3)
    first._ports = first._choose_ports()
    first._render_configs()
    ports = first._ports
    flat = [p for pair in ports.values() for p in pair]
    assert sorted(ports) == [1, 2, 3]
    assert len(set(flat)) == 6

    # A later start of the same home (any handle) reuses the free addresses.
    again = LocalKafka(tmp_path, brokers=3)
    assert again._choose_ports() == ports
    voters = _props((tmp_path / "node-2" / "server.properties").read_text())
    assert voters["controller.quorum.voters"] == quorum_voters(
        {node: cport for node, (_port, cport) in ports.items()}
    )


def _fake_node(config: Path) -> subprocess.Popen[bytes]:
    # A stand-in process whose command line names the node's config, as a broker's does
    # (the runner recognises its brokers by that); it exits on SIGTERM like one.
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("")
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", str(config)],
    )


def test_status_and_stop_of_a_cluster_recorded_by_another_process(tmp_path: Path) -> None:
    cluster = LocalKafka(tmp_path, brokers=3)
    procs = {i: _fake_node(cluster.node_dir(i) / "server.properties") for i in (1, 2, 3)}
    try:
        procs[2].kill()
        procs[2].wait()
        cluster._write_state(
            {
                "pid": procs[1].pid,
                "port": 1,
                "controller_port": 2,
                "bootstrap": "127.0.0.1:1,127.0.0.1:3,127.0.0.1:5",
                "detached": True,
                "brokers": 3,
                "nodes": [
                    {
                        "node_id": i,
                        "pid": procs[i].pid,
                        "port": 2 * i - 1,
                        "controller_port": 2 * i,
                        "config": str(cluster.node_dir(i) / "server.properties"),
                    }
                    for i in (1, 2, 3)
                ],
            }
        )
        # A handle that knows nothing of the cluster (the CLI's `status`, `stop`).
        other = LocalKafka(tmp_path)

        state = other.status()
        assert state is not None
        assert state["bootstrap"] == "127.0.0.1:1,127.0.0.1:3,127.0.0.1:5"
        assert state["pids"] == [procs[1].pid, procs[3].pid]
        assert state["down"] == [2]
        assert other.pids == [procs[1].pid, procs[3].pid]
        assert other.node_pid(3) == procs[3].pid
        assert other.node_pid(2) is None

        other.stop(timeout=10)

        assert procs[1].wait(10) is not None
        assert procs[3].wait(10) is not None
        assert other.status() is None
        assert not cluster.state_path.exists()
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
