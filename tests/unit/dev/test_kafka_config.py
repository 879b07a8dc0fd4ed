"""Unit tests for the local broker runner's pure parts (no JVM, no network beyond bind)."""

from __future__ import annotations

import base64
import os
import socket
from pathlib import Path

import pytest

from sendonce.dev.kafka import (
    LocalKafka,
    new_cluster_id,
    pick_free_ports,
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
