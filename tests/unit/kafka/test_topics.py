"""``topics create``: the topic specs and what is asked of the broker (a fake admin client)."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka.admin import NewTopic

from sendonce.kafka import topics
from sendonce.kafka.topics import create_topics, topic_specs
from sendonce.settings import Settings


def test_every_topic_carries_min_insync_replicas_from_the_setting() -> None:
    settings = Settings(replication_factor=3, min_insync_replicas=2)

    specs = {s.name: s for s in topic_specs(settings)}

    # The ones the issue names, and every other topic a worker or publisher writes
    # with acks=all: an acknowledged record must survive one broker's loss.
    assert specs[settings.ledger_changelog_topic].config["min.insync.replicas"] == "2"
    for name in (
        settings.topics.results_sent,
        settings.topics.results_ambiguous,
        settings.topics.results_failed,
    ):
        assert specs[name].config["min.insync.replicas"] == "2", name
    assert all(s.config["min.insync.replicas"] == "2" for s in specs.values())
    # The rest of a topic's config stays.
    assert specs[settings.ledger_changelog_topic].config["cleanup.policy"] == "compact"


class _Future:
    def result(self, timeout: float | None = None) -> None:
        return None


class _Metadata:
    topics: dict[str, Any] = {}


class _RecordingAdmin:
    """Stands in for the broker's admin API (not the code under test): records requests."""

    created: list[NewTopic] = []

    def __init__(self, config: dict[str, Any]) -> None:
        pass

    def list_topics(self, timeout: float) -> _Metadata:
        return _Metadata()

    def create_topics(self, new: list[NewTopic], request_timeout: float) -> dict[str, _Future]:
        _RecordingAdmin.created = list(new)
        return {t.topic: _Future() for t in new}


def test_create_topics_asks_for_replication_and_min_insync_replicas(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(topics, "AdminClient", _RecordingAdmin)
    settings = Settings(replication_factor=3, min_insync_replicas=2, partitions=6)

    reports = create_topics(settings)

    assert {r.status for r in reports} == {"created"}
    asked = {t.topic: t for t in _RecordingAdmin.created}
    changelog = asked[settings.ledger_changelog_topic]
    assert changelog.replication_factor == 3
    assert changelog.num_partitions == 6
    assert changelog.config == {"cleanup.policy": "compact", "min.insync.replicas": "2"}
    sent = asked[settings.topics.results_sent]
    assert sent.replication_factor == 3
    assert sent.config == {"min.insync.replicas": "2"}
