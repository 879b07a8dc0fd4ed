"""Every command meets a user's mistake with one line and an exit code, never a traceback.

The real entry point runs in a child process (``python -m sendonce.cli``) against a
loopback port where nothing listens, with a bad setting, with a file that cannot be
read, and with a recorded local broker (discovery). The subprocess timeout only
catches a hang: the probe answers in a few seconds, the timeout is generous.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
INTENT = {
    "tenant_id": "acme",
    "source_event_id": "order-1:shipped",
    "action_type": "receipt",
    "sender": "orders@acme.example",
    "to": ["bob@example.com"],
    "subject": "Shipped",
    "text_body": "On its way.",
}
#: Only a hang fails this bound; a no-broker answer takes a few seconds.
HANG_S = 25

#: Every one-shot command that talks to Kafka ({intents} is a JSON-lines file).
KAFKA_COMMANDS: list[list[str]] = [
    ["topics", "create"],
    ["publish", "{intents}"],
    ["results"],
    ["replay", "--from", "earliest", "--dry-run"],
    ["trace", "acme:k"],
    ["review", "list"],
    ["review", "resolve", "acme:k", "--as", "cancel", "--reason", "test", "--no-wait"],
]
#: The services read their settings too (and stop at a bad one before serving).
ALL_COMMANDS = [*KAFKA_COMMANDS, ["worker"], ["receiver"]]


def _ids(commands: list[list[str]]) -> list[str]:
    return [" ".join(a for a in argv if not a.startswith("{")) for argv in commands]


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A loopback port nothing listens on (bound without listen() while the test runs)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Bound but not listening: connects are refused, and no one else gets the port.
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENDONCE_")}
    env["PYTHONPATH"] = str(REPO)
    # No recorded local broker unless a test writes one.
    env["SENDONCE_KAFKA_HOME"] = str(tmp_path / "kafka-home")
    env["SENDONCE_DATA_DIR"] = str(tmp_path / "worker")
    env.update(extra)
    return env


def _run(argv: list[str], tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    intents = tmp_path / "intents.jsonl"
    intents.write_text(json.dumps(INTENT) + "\n")
    argv = [a.format(intents=intents) for a in argv]
    return subprocess.run(
        [sys.executable, "-m", "sendonce.cli", *argv],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=HANG_S,
        check=False,
    )


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _assert_one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in done.stderr + done.stdout
    assert "rdkafka" not in done.stderr, done.stderr[:2000]
    lines = _lines(done.stderr)
    assert len(lines) == 1, done.stderr[:2000]
    return lines[0]


@pytest.mark.parametrize("argv", KAFKA_COMMANDS, ids=_ids(KAFKA_COMMANDS))
def test_no_broker_is_one_line_and_exit_2(argv: list[str], tmp_path: Path, dead_port: int) -> None:
    address = f"127.0.0.1:{dead_port}"
    done = _run(argv, tmp_path, _env(tmp_path, SENDONCE_BOOTSTRAP_SERVERS=address))

    line = _assert_one_line(done)
    assert done.returncode == 2, line
    assert f"no Kafka broker answers at {address}" in line
    assert "SENDONCE_BOOTSTRAP_SERVERS" in line
    assert "sendonce dev kafka start" in line


@pytest.mark.parametrize("argv", ALL_COMMANDS, ids=_ids(ALL_COMMANDS))
@pytest.mark.parametrize(
    ("variable", "value"),
    [("SENDONCE_PARTITIONS", "many"), ("SENDONCE_BOOTSTRAP_SERVERS", " ")],
)
def test_bad_setting_is_one_line_naming_it(
    argv: list[str], variable: str, value: str, tmp_path: Path
) -> None:
    done = _run(argv, tmp_path, _env(tmp_path, **{variable: value}))

    line = _assert_one_line(done)
    assert done.returncode == 2, line
    assert variable in line


@pytest.mark.parametrize("name", ["does-not-exist.jsonl", "a-directory"])
def test_publish_unreadable_file_is_one_line(name: str, tmp_path: Path, dead_port: int) -> None:
    (tmp_path / "a-directory").mkdir()
    env = _env(tmp_path, SENDONCE_BOOTSTRAP_SERVERS=f"127.0.0.1:{dead_port}")
    done = _run(["publish", name], tmp_path, env)

    line = _assert_one_line(done)
    assert done.returncode == 2, line
    assert name in line
    # The file is looked at before Kafka: its error, not the broker's.
    assert "Kafka" not in line


def test_recorded_local_broker_is_used_and_said(tmp_path: Path, dead_port: int) -> None:
    # A "broker" process as `dev kafka start` records one: alive, started with the
    # home's server.properties. Nothing answers on its port, so the command then
    # fails fast naming the address it took from the record.
    home = tmp_path / "kafka-home"
    home.mkdir()
    config = home / "server.properties"
    config.write_text("# test\n")
    stand_in = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()", str(config)],
        stdin=subprocess.PIPE,
    )
    try:
        address = f"127.0.0.1:{dead_port}"
        state = {"pid": stand_in.pid, "port": dead_port, "bootstrap": address}
        (home / "state.json").write_text(json.dumps(state))
        done = _run(["results"], tmp_path, _env(tmp_path))
    finally:
        assert stand_in.stdin is not None
        stand_in.stdin.close()
        stand_in.wait(10)

    assert "Traceback" not in done.stderr
    assert "rdkafka" not in done.stderr
    used, failed = _lines(done.stderr)
    assert f"using the local broker at {address}" in used
    assert "kafka-home/state.json" in used  # relative to the working directory
    assert "SENDONCE_BOOTSTRAP_SERVERS" in used
    assert f"no Kafka broker answers at {address}" in failed
    assert done.returncode == 2


def test_a_set_variable_wins_over_the_record(tmp_path: Path, dead_port: int) -> None:
    home = tmp_path / "kafka-home"
    home.mkdir()
    (home / "state.json").write_text(
        json.dumps({"pid": os.getpid(), "port": 1, "bootstrap": "127.0.0.1:1"})
    )
    address = f"127.0.0.1:{dead_port}"
    done = _run(["results"], tmp_path, _env(tmp_path, SENDONCE_BOOTSTRAP_SERVERS=address))

    line = _assert_one_line(done)
    assert "using the local broker" not in done.stderr
    assert address in line
