"""The ledger changelog a worker declares itself carries ``min.insync.replicas`` too."""

from __future__ import annotations

from pathlib import Path

from sendonce.settings import Settings
from sendonce.streams.app import build_worker_app


def test_worker_declared_ledger_changelog_has_min_insync_replicas(tmp_path: Path) -> None:
    settings = Settings(
        replication_factor=3, min_insync_replicas=2, data_dir=tmp_path, partitions=4
    )

    worker = build_worker_app(settings)

    changelog = worker.ledger.changelog_topic
    assert changelog.get_topic_name() == settings.ledger_changelog_topic
    assert changelog.config == {"min.insync.replicas": "2"}
    assert worker.app.conf.topic_replication_factor == 3
