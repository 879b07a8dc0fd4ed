"""The command line against a real broker: a missing topic, a bad file, publish's words.

The no-broker and bad-setting cases need no broker (``tests/unit/cli/
test_user_errors.py``); these need one that answers, without the topics, or with them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from sendonce.kafka.topics import create_topics
from sendonce.settings import Settings
from tests.integration.harness import intent

#: Only a hang fails this bound.
HANG_S = 60

#: Every one-shot command that reads or writes topics ({intents}: a JSON-lines file).
TOPIC_COMMANDS: list[list[str]] = [
    ["publish", "{intents}"],
    ["results"],
    ["replay", "--from", "earliest", "--dry-run"],
    ["trace", "acme:k"],
    ["review", "list"],
    ["review", "resolve", "acme:k", "--as", "cancel", "--reason", "test", "--no-wait"],
]


def _run(
    argv: list[str], tmp_path: Path, bootstrap: str, prefix: str
) -> subprocess.CompletedProcess[str]:
    intents = tmp_path / "intents.jsonl"
    if not intents.exists():
        intents.write_text(json.dumps(intent(1)) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENDONCE_")}
    env.update(
        SENDONCE_BOOTSTRAP_SERVERS=bootstrap,
        SENDONCE_TOPIC_PREFIX=prefix,
        SENDONCE_APP_ID=f"{prefix}app",
        SENDONCE_PARTITIONS="2",
        SENDONCE_KAFKA_HOME=str(tmp_path / "kafka-home"),
        PYTHONPATH=str(Path(__file__).resolve().parents[2]),
    )
    return subprocess.run(
        [sys.executable, "-m", "sendonce.cli", *(a.format(intents=intents) for a in argv)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=HANG_S,
        check=False,
    )


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}."


@pytest.mark.parametrize("argv", TOPIC_COMMANDS, ids=[" ".join(a[:2]) for a in TOPIC_COMMANDS])
def test_missing_topic_is_one_line_and_exit_2(
    argv: list[str], kafka_bootstrap: str, tmp_path: Path
) -> None:
    prefix = _prefix()  # no topics were created under it
    done = _run(argv, tmp_path, kafka_bootstrap, prefix)

    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr[:2000]
    assert f"topic {prefix}" in lines[0]
    assert "does not exist" in lines[0]
    assert "sendonce topics create" in lines[0]
    assert done.returncode == 2


def test_publish_reports_file_lines_in_words(kafka_bootstrap: str, tmp_path: Path) -> None:
    prefix = _prefix()
    settings = Settings(bootstrap_servers=kafka_bootstrap, topic_prefix=prefix, partitions=2)
    create_topics(settings)
    good = json.dumps(intent(1))
    (tmp_path / "intents.jsonl").write_text(f'{good}\n{{"tenant_id": "acme",,}}\n[1, 2]\n')

    done = _run(["publish", "{intents}"], tmp_path, kafka_bootstrap, prefix)

    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        "line 2: not published: not JSON: Expecting property name enclosed in double "
        "quotes at column 22",
        "line 3: not published: not a JSON object but a JSON list",
        "published 1 intent; 2 lines were not published",
    ]
    assert done.returncode == 2


def test_publish_a_binary_file_is_one_line(kafka_bootstrap: str, tmp_path: Path) -> None:
    prefix = _prefix()
    create_topics(Settings(bootstrap_servers=kafka_bootstrap, topic_prefix=prefix, partitions=2))
    (tmp_path / "binary.jsonl").write_bytes(b"\xff\xfe\x00garbage\n")

    done = _run(["publish", "binary.jsonl"], tmp_path, kafka_bootstrap, prefix)

    assert "Traceback" not in done.stderr
    assert done.stderr.strip() == "sendonce: cannot read binary.jsonl: not UTF-8 text"
    assert done.returncode == 2
