"""Settings: environment parsing, validation, and the README table staying true."""

from __future__ import annotations

import dataclasses
from dataclasses import fields
from pathlib import Path

import pytest

from sendonce.settings import SETTINGS_DOC, Settings, SettingsError, settings_table_markdown

README = Path(__file__).resolve().parents[3] / "README.md"


def test_every_setting_is_documented_and_every_doc_is_a_setting() -> None:
    assert {f.name for f in fields(Settings)} == set(SETTINGS_DOC)
    assert all(var.startswith("SENDONCE_") for var, _ in SETTINGS_DOC.values())


def test_readme_carries_the_generated_table() -> None:
    assert settings_table_markdown() in README.read_text(), (
        "README's configuration table is stale; run `python -m sendonce.settings README.md`"
    )


def test_from_env_converts_types() -> None:
    s = Settings.from_env(
        {
            "SENDONCE_PARTITIONS": "3",
            "SENDONCE_BATCH_WITHIN_S": "0.2",
            "SENDONCE_DATA_DIR": "/var/lib/sendonce",
            "SENDONCE_TOPIC_PREFIX": "prod.",
        }
    )
    assert s.partitions == 3
    assert s.batch_within_s == 0.2
    assert s.data_dir == Path("/var/lib/sendonce")
    assert s.topics.intents == "prod.email.intents"
    assert s.ledger_changelog_topic == "sendonce-ledger-changelog"


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("SENDONCE_PARTITIONS", "many", "not a valid int"),
        ("SENDONCE_PARTITIONS", "0", "at least 1"),
        ("SENDONCE_PROVIDER", "carrier-pigeon", "not a known provider"),
        ("SENDONCE_LOG_LEVEL", "loud", "not a log level"),
        # The revoke wait must end well inside the group's rebalance timeout (60 s).
        ("SENDONCE_REVOKE_WAIT_S", "55", "SENDONCE_REBALANCE_TIMEOUT_S"),
        ("SENDONCE_REBALANCE_TIMEOUT_S", "40", "SENDONCE_REVOKE_WAIT_S"),
        ("SENDONCE_REVOKE_WAIT_S", "0", "above 0"),
        # A retry wait slept in a batch must end before a rebalance stops waiting.
        ("SENDONCE_RETRY_INLINE_MAX_S", "45", "below SENDONCE_REVOKE_WAIT_S"),
    ],
)
def test_bad_values_are_clear_errors(var: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env({var: value})


def test_to_env_round_trips_every_setting_but_the_process_name() -> None:
    s = Settings(
        partitions=3,
        data_dir=Path("/var/lib/sendonce"),
        webhook_replays_topic=True,
        batch_within_s=0.2,
        graph_client_secret="not-logged",
    )
    env = s.to_env()
    assert "SENDONCE_WORKER_ID" not in env
    again = Settings.from_env(env)
    assert dataclasses.replace(again, worker_id=s.worker_id) == s


def test_min_insync_replicas_is_read_and_bounded_by_the_replication_factor() -> None:
    s = Settings.from_env({"SENDONCE_REPLICATION_FACTOR": "3", "SENDONCE_MIN_INSYNC_REPLICAS": "2"})
    assert (s.replication_factor, s.min_insync_replicas) == (3, 2)
    assert Settings().min_insync_replicas == 1  # the single-node dev broker's
    # More in-sync copies than copies: every acks=all write would be refused.
    with pytest.raises(SettingsError, match="SENDONCE_MIN_INSYNC_REPLICAS=3 must be between 1"):
        Settings.from_env({"SENDONCE_REPLICATION_FACTOR": "2", "SENDONCE_MIN_INSYNC_REPLICAS": "3"})
    with pytest.raises(SettingsError, match="MIN_INSYNC_REPLICAS=0"):
        Settings.from_env({"SENDONCE_MIN_INSYNC_REPLICAS": "0"})


def test_a_draft_is_never_sent_again_within_the_read_timeout() -> None:
    # A send still in flight (the connector still reading its answer) would find its
    # draft still a draft: resending then could send the message twice.
    with pytest.raises(SettingsError, match="must be above SENDONCE_GRAPH_READ_TIMEOUT_S=30"):
        Settings.from_env({"SENDONCE_RECONCILE_DRAFT_RESEND_GRACE_S": "30"})
    Settings.from_env({"SENDONCE_RECONCILE_DRAFT_RESEND_GRACE_S": "31"})
