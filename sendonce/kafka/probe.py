"""Is the cluster there? One metadata round trip before a tool does any work.

Without it a tool meets an absent broker deep inside its first real request: librdkafka
retries the connection until that request's own timeout (15 to 60 s), logging every
refused connect, and the tool ends in a traceback. :func:`probe_cluster` asks for the
cluster's metadata once, with a short timeout, and raises :class:`BrokerUnreachable`
(nothing answers at the address) or :class:`TopicMissing` (a topic the tool needs was
never created): errors a command line turns into one line and an exit code.
"""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]

from sendonce.kafka.clients import admin_config

__all__ = [
    "PROBE_TIMEOUT_S",
    "BrokerUnreachable",
    "ClusterUnavailable",
    "TopicMissing",
    "probe_cluster",
]

#: How long the probe waits for a broker to answer. A broker on the same network
#: answers a metadata request in milliseconds; a refused or silent address costs this.
PROBE_TIMEOUT_S = 3.0

#: The logger librdkafka's lines of the probe go to (a refused connect is one).
_LOGGER = "sendonce.kafka.probe"


class ClusterUnavailable(RuntimeError):
    """The cluster cannot serve a tool: no broker answers, or a topic is missing."""

    def __init__(self, message: str, bootstrap_servers: str) -> None:
        super().__init__(message)
        self.bootstrap_servers = bootstrap_servers


class BrokerUnreachable(ClusterUnavailable):
    """No broker answered a metadata request at the bootstrap address in time."""


class TopicMissing(ClusterUnavailable):
    """The broker answers, but a topic the tool reads or writes does not exist."""

    def __init__(self, topic: str, bootstrap_servers: str) -> None:
        super().__init__(f"topic {topic} does not exist at {bootstrap_servers}", bootstrap_servers)
        self.topic = topic


def probe_cluster(
    bootstrap_servers: str, topics: Iterable[str] = (), *, timeout_s: float = PROBE_TIMEOUT_S
) -> None:
    """Return once a broker at ``bootstrap_servers`` answers and every one of ``topics`` exists.

    Raises :class:`BrokerUnreachable` after ``timeout_s`` seconds without an answer and
    :class:`TopicMissing` for the first topic (in the given order) the cluster lacks.
    """
    unreachable = BrokerUnreachable(
        f"no Kafka broker answers at {bootstrap_servers}", bootstrap_servers
    )
    try:
        admin = AdminClient(admin_config(bootstrap_servers, logger=_LOGGER))
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise unreachable from exc
    if not metadata.brokers:
        raise unreachable
    for topic in topics:
        info = metadata.topics.get(topic)
        if info is None or info.error is not None:
            raise TopicMissing(topic, bootstrap_servers)
