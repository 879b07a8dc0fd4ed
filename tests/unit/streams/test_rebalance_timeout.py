"""The worker app hands Faust the group's rebalance timeout from the settings.

The revoke wait (``SENDONCE_REVOKE_WAIT_S``) is validated below it; that only holds
if the timeout the consumer group actually uses is the configured one, not Faust's
default.
"""

from __future__ import annotations

from pathlib import Path

from sendonce.connectors.outbox import OutboxProvider
from sendonce.settings import Settings
from sendonce.streams.app import build_worker_app


def test_the_group_rebalance_timeout_is_the_configured_one(tmp_path: Path) -> None:
    settings = Settings(
        bootstrap_servers="127.0.0.1:1",
        data_dir=tmp_path / "worker",
        rebalance_timeout_s=90.0,
        revoke_wait_s=70.0,
    )
    worker = build_worker_app(settings, provider=OutboxProvider(tmp_path / "outbox"))
    assert worker.app.conf.broker_rebalance_timeout == 90.0
