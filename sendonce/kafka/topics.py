"""Create the topics of design.md, idempotently.

Every topic gets ``min.insync.replicas`` from the settings: the worker, the receiver and
the publishers all write with ``acks=all``, and with replication factor 3 and a minimum
of 2 in-sync copies an acknowledged record (a ledger entry, a result, an intent) is on
two brokers before anyone relies on it, so losing one broker loses nothing.  The issue
that asked for it named the ledger changelog and the result topics; an acknowledged
intent, deferred intent, operator command or dead letter is as much a promise, so the
setting applies to them all.  (It overrides the broker's default for these topics.)
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from sendonce.kafka.clients import admin_config
from sendonce.settings import Settings


@dataclass(frozen=True)
class TopicSpec:
    """One topic to create."""

    name: str
    partitions: int
    config: dict[str, str]


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic a sendonce deployment uses, with its partitions and config."""
    durable = {"min.insync.replicas": str(settings.min_insync_replicas)}
    return [
        TopicSpec(spec.name, spec.partitions, {**spec.config, **durable})
        for spec in _topics(settings)
    ]


def _topics(settings: Settings) -> list[TopicSpec]:
    t = settings.topics
    n = settings.partitions
    compact = {"cleanup.policy": "compact"}
    return [
        TopicSpec(t.intents, n, {}),
        TopicSpec(t.intents_deferred, n, {}),
        TopicSpec(t.results_sent, n, {}),
        TopicSpec(t.results_ambiguous, n, {}),
        TopicSpec(t.results_failed, n, {}),
        TopicSpec(t.dlq, n, {}),
        # Co-partitioned with the intents: the worker that owns a key's intents
        # partition applies the operator commands for that key.
        TopicSpec(t.commands, n, {}),
        TopicSpec(t.webhooks_raw, n, {}),
        TopicSpec(t.webhooks_deduped, n, {}),
        TopicSpec(t.webhooks_replays, n, {}),
        # The sighting markers: compacted, and deleted after the dedupe TTL so
        # the changelog does not grow forever (an expired marker is a new sighting).
        TopicSpec(
            settings.webhook_sightings_changelog_topic,
            n,
            {
                "cleanup.policy": "compact,delete",
                "retention.ms": str(int(settings.webhook_dedupe_ttl_s * 1000)),
            },
        ),
        # Faust would create this one too; creating it here makes its partition
        # count match the intents topic even if the worker starts second.
        TopicSpec(settings.ledger_changelog_topic, n, compact),
    ]


@dataclass(frozen=True)
class TopicReport:
    """What happened to one topic."""

    name: str
    status: str  # "created" | "exists" | "exists-mismatch"
    detail: str = ""


def create_topics(settings: Settings, timeout: float = 30.0) -> list[TopicReport]:
    """Create missing topics; report existing ones whose partition count differs."""
    admin = AdminClient(admin_config(settings.bootstrap_servers, logger="sendonce.kafka.admin"))
    specs = topic_specs(settings)
    existing = admin.list_topics(timeout=timeout).topics
    reports: list[TopicReport] = []
    new = [
        NewTopic(s.name, s.partitions, settings.replication_factor, config=s.config)
        for s in specs
        if s.name not in existing
    ]
    futures = admin.create_topics(new, request_timeout=timeout) if new else {}
    for spec in specs:
        if spec.name in futures:
            try:
                futures[spec.name].result(timeout)
                reports.append(TopicReport(spec.name, "created"))
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
                reports.append(TopicReport(spec.name, "exists"))
            continue
        have = len(existing[spec.name].partitions)
        if have != spec.partitions:
            reports.append(
                TopicReport(
                    spec.name,
                    "exists-mismatch",
                    f"has {have} partitions, configuration says {spec.partitions}",
                )
            )
        else:
            reports.append(TopicReport(spec.name, "exists"))
    return reports
