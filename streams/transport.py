"""Faust's Kafka transport, with a consumer that reads committed records only.

Ledger writes are transactional (:mod:`streams.fencing`): the last write of a
worker that crashed or was fenced may be aborted by the next owner's take-over. The
bulk restore, the record fetcher and the operators' tools read ``read_committed``;
Faust's own consumer reads ``read_uncommitted`` unless Faust runs its exactly-once
mode, and that consumer feeds the standby replicas and any recovery Faust does
itself. A standby that applied an aborted SENT took the partition over believing
the key sent while the changelog kept it PENDING (chaos seed 344547155). Records
of producers that use no transactions (intents, commands) read the same either way.
"""

from __future__ import annotations

from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka

__all__ = ["CommittedReadsTransport"]


class _CommittedConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):  # type: ignore[misc]
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka hands this to its fetcher when the consumer starts.
        consumer._isolation_level = "read_committed"
        return consumer


class _CommittedReadsConsumer(faust_aiokafka.Consumer):  # type: ignore[misc]
    def _new_consumer_thread(self) -> _CommittedConsumerThread:
        return _CommittedConsumerThread(self, loop=self.loop, beacon=self.beacon)


class CommittedReadsTransport(faust_aiokafka.Transport):  # type: ignore[misc]
    """The ``kafka://`` transport whose group consumer reads ``read_committed``."""

    Consumer = _CommittedReadsConsumer
