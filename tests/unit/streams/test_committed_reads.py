"""The worker's Faust consumer reads committed records only.

Ledger writes are transactional (streams.fencing). A crashed worker's last write can
be aborted by the next owner's take-over; the bulk restore and every tool read
``read_committed``, but Faust's own consumer read ``read_uncommitted``, and that
consumer keeps the standby replicas (and any recovery Faust does itself). Chaos
seed 344547155: a worker holding partition 7 as a standby applied the crashed
worker's SENT (aborted a moment later), took the partition over with that copy,
answered DUPLICATE for the key and never looked it up, while the changelog kept it
PENDING (``stranded=1``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from sendonce.connectors.outbox import OutboxProvider
from sendonce.settings import Settings
from sendonce.streams.app import build_worker_app


def test_the_worker_consumer_reads_committed_records_only(tmp_path: Path) -> None:
    settings = Settings(bootstrap_servers="127.0.0.1:1", data_dir=tmp_path / "worker")
    worker = build_worker_app(settings, provider=OutboxProvider(tmp_path / "outbox"))

    async def isolation_level() -> str:
        # aiokafka creates its client inside a running loop; nothing connects yet.
        thread = worker.app.consumer._new_consumer_thread()
        client = thread._create_worker_consumer(worker.app.transport)
        level: str = client._isolation_level
        return level

    assert asyncio.run(isolation_level()) == "read_committed"
