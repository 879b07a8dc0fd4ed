"""Unit tests for the local broker runner's pure parts (no JVM, no network beyond bind)."""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from sendonce.dev.kafka import (
    LocalKafka,
    LocalKafkaError,
    add_cli,
    ensure_jars,
    find_repo_root,
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


def test_find_repo_root_walks_up(tmp_path: Path) -> None:
    (tmp_path / "deploy" / "local-kafka").mkdir(parents=True)
    (tmp_path / "deploy" / "local-kafka" / "pom.xml").write_text("<project/>")
    nested = tmp_path / "a" / "b" / "c"
    nested.mkdir(parents=True)

    assert find_repo_root(nested) == tmp_path.resolve()
    assert find_repo_root(tmp_path) == tmp_path.resolve()


def test_find_repo_root_none_without_pom(tmp_path: Path) -> None:
    (tmp_path / "deploy" / "local-kafka").mkdir(parents=True)  # folder but no pom

    assert find_repo_root(tmp_path) is None


def test_find_repo_root_default_is_this_checkout() -> None:
    assert find_repo_root() == REPO
    assert (REPO / "deploy" / "local-kafka" / "pom.xml").is_file()


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


def test_ensure_jars_uses_existing_lib(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "kafka_2.13-4.1.1.jar").write_bytes(b"")

    def no_mvn(*args: object, **kwargs: object) -> None:
        raise AssertionError("mvn must not run when the jars are present")

    monkeypatch.setattr(subprocess, "run", no_mvn)
    assert ensure_jars(tmp_path) == tmp_path


def test_ensure_jars_explains_missing_mvn(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "mvn" else real_which(name))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    if real_which("java") is None:
        pytest.skip("needs java on PATH to reach the mvn check")

    with pytest.raises(LocalKafkaError, match=r"`mvn` not found.*apt-get install maven"):
        ensure_jars(tmp_path / "lib")
    assert not (tmp_path / "lib").exists()


def test_ensure_jars_explains_missing_java(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("JAVA_HOME", raising=False)

    with pytest.raises(LocalKafkaError, match=r"`java` not found.*openjdk-17"):
        ensure_jars(tmp_path / "lib")


def test_ensure_jars_refuses_foreign_files(tmp_path: Path) -> None:
    if shutil.which("mvn") is None or shutil.which("java") is None:
        pytest.skip("needs mvn and java on PATH to reach this check")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "notes.txt").write_text("mine")

    with pytest.raises(LocalKafkaError, match=r"holds no kafka_2\.13"):
        ensure_jars(tmp_path / "lib")
    assert (tmp_path / "lib" / "notes.txt").read_text() == "mine"


def test_ensure_jars_cleans_abandoned_resolve_and_renames_into_place(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if shutil.which("mvn") is None or shutil.which("java") is None:
        pytest.skip("needs mvn and java on PATH to reach this step")
    dead = subprocess.Popen(["true"])
    dead.wait()
    abandoned = tmp_path / f".lib.resolving-{dead.pid}-x"
    (abandoned / "half").mkdir(parents=True)
    calls: list[list[str]] = []

    def fake_mvn(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        # Stand-in for Maven: fill the output folder it was given.
        calls.append(cmd)
        out = Path(next(a for a in cmd if a.startswith("-DoutputDirectory=")).split("=", 1)[1])
        assert out.parent == tmp_path  # same filesystem as lib, so the rename is atomic
        assert not (tmp_path / "lib").exists()  # lib only appears when complete
        (out / "kafka_2.13-4.1.1.jar").write_bytes(b"")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_mvn)

    assert ensure_jars(tmp_path / "lib") == tmp_path / "lib"
    assert (tmp_path / "lib" / "kafka_2.13-4.1.1.jar").exists()
    assert len(calls) == 1
    assert "dependency:copy-dependencies" in calls[0]
    assert not abandoned.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["lib"]


def test_ensure_jars_failed_resolve_leaves_no_lib(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if shutil.which("mvn") is None or shutil.which("java") is None:
        pytest.skip("needs mvn and java on PATH to reach this step")

    def failing_mvn(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        out = Path(next(a for a in cmd if a.startswith("-DoutputDirectory=")).split("=", 1)[1])
        (out / "some-dep.jar").write_bytes(b"")  # partial output
        return subprocess.CompletedProcess(cmd, 1, "", "Could not resolve dependencies")

    monkeypatch.setattr(subprocess, "run", failing_mvn)

    with pytest.raises(LocalKafkaError, match="Could not resolve dependencies"):
        ensure_jars(tmp_path / "lib")
    assert list(tmp_path.iterdir()) == []


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


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sendonce dev")
    add_cli(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_registers_subcommands(tmp_path: Path) -> None:
    for sub in ("fetch", "start", "stop", "status"):
        extra = [] if sub == "fetch" else ["--home", str(tmp_path)]
        args = _parse(["kafka", sub, *extra])
        assert callable(args.func), sub

    start = _parse(["kafka", "start", "--home", str(tmp_path)])
    assert start.foreground is False  # detached by default
    assert _parse(["kafka", "start", "--foreground"]).foreground is True


def test_cli_status_exit_code_when_not_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _parse(["kafka", "status", "--home", str(tmp_path)])

    assert args.func(args) == 1
    assert "no Kafka broker running" in capsys.readouterr().err
