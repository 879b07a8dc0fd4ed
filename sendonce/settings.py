"""One typed settings object, read from ``SENDONCE_*`` environment variables.

The README's configuration table is generated from :data:`SETTINGS_DOC`, which
is checked against this dataclass by a test so the two cannot drift apart.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from sendonce.faults import CRASH_POINTS, PAUSE_POINTS, parse_crash_spec, parse_pause_spec
from sendonce.keys import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_RECORD_BYTES
from sendonce.providers import PROVIDERS


class SettingsError(ValueError):
    """A ``SENDONCE_*`` variable holds a value that cannot be used."""


#: The smallest record limit that still holds a DeadLetter with a useful prefix.
MIN_RECORD_BYTES = 64 * 1024
#: What a revocation leaves of the rebalance timeout after its wait for the batches in
#: flight: abandoning the ones still running, Faust's own revocation work, the rejoin.
REVOKE_MARGIN_S = 10.0


@dataclass(frozen=True)
class TopicNames:
    """The Kafka topics of design.md, with the configured prefix applied."""

    prefix: str = ""

    def _name(self, base: str) -> str:
        return f"{self.prefix}{base}"

    @property
    def intents(self) -> str:
        """Email intents, keyed by idempotency key."""
        return self._name("email.intents")

    @property
    def results_sent(self) -> str:
        """SENT and DUPLICATE results."""
        return self._name("email.results.sent")

    @property
    def results_ambiguous(self) -> str:
        """Ambiguous sends awaiting reconciliation or review."""
        return self._name("email.results.ambiguous")

    @property
    def results_failed(self) -> str:
        """Permanent failures and key conflicts."""
        return self._name("email.results.failed")

    @property
    def intents_deferred(self) -> str:
        """Intents moved out of a batch because their sender mailbox is saturated."""
        return self._name("email.intents.deferred")

    @property
    def dlq(self) -> str:
        """Dead letters: original bytes plus a reason."""
        return self._name("email.intents.dlq")

    @property
    def webhooks_raw(self) -> str:
        """Inbound webhook events as received."""
        return self._name("email.webhooks.raw")

    @property
    def webhooks_deduped(self) -> str:
        """First sighting of each inbound webhook event."""
        return self._name("email.webhooks.deduped")

    @property
    def webhooks_replays(self) -> str:
        """Replayed inbound events, for audit (when enabled)."""
        return self._name("email.webhooks.replays")

    @property
    def commands(self) -> str:
        """Operator commands (review resolutions), keyed by idempotency key."""
        return self._name("email.commands")

    def results(self) -> tuple[str, str, str]:
        """All result topics."""
        return (self.results_sent, self.results_ambiguous, self.results_failed)


def _provider_names_doc() -> str:
    # "`outbox` (default), `graph` or `null`": PROVIDERS names the default first.
    names = [f"`{name}`" for name in PROVIDERS]
    names[0] += " (default)"
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


# name -> (environment variable, description). Kept next to the dataclass so a
# new setting cannot be added without its documentation (a test checks both).
SETTINGS_DOC: dict[str, tuple[str, str]] = {
    "bootstrap_servers": (
        "SENDONCE_BOOTSTRAP_SERVERS",
        "Kafka bootstrap servers, comma separated. Unset: the commands use the local "
        "broker `sendonce dev kafka start` recorded, if it runs (and say so).",
    ),
    "app_id": (
        "SENDONCE_APP_ID",
        "Faust application id: consumer group and changelog topic prefix.",
    ),
    "topic_prefix": ("SENDONCE_TOPIC_PREFIX", "Prefix applied to every topic name."),
    "partitions": (
        "SENDONCE_PARTITIONS",
        "Partitions of the intents and results topics and of the ledger changelog.",
    ),
    "replication_factor": ("SENDONCE_REPLICATION_FACTOR", "Replication factor of new topics."),
    "min_insync_replicas": (
        "SENDONCE_MIN_INSYNC_REPLICAS",
        "`min.insync.replicas` of the topics `topics create` makes: how many copies an "
        "`acks=all` write needs before it is acknowledged. 2 with replication factor 3 in "
        "production; at most the replication factor.",
    ),
    "data_dir": ("SENDONCE_DATA_DIR", "Worker state directory (RocksDB ledger)."),
    "provider": ("SENDONCE_PROVIDER", f"Email provider: {_provider_names_doc()}."),
    "outbox_dir": ("SENDONCE_OUTBOX_DIR", "Folder the outbox provider writes `.eml` files to."),
    "outbox_fault": (
        "SENDONCE_OUTBOX_FAULT",
        "Test hook: `kill-after-accept:N` SIGKILLs the worker right after its Nth accepted send.",
    ),
    "graph_tenant_id": ("SENDONCE_GRAPH_TENANT_ID", "Entra ID tenant of the Graph app."),
    "graph_client_id": ("SENDONCE_GRAPH_CLIENT_ID", "Application (client) id of the Graph app."),
    "graph_client_secret": (
        "SENDONCE_GRAPH_CLIENT_SECRET",
        "Client secret (or use the certificate settings); never logged.",
    ),
    "graph_certificate_key_path": (
        "SENDONCE_GRAPH_CERTIFICATE_KEY_PATH",
        "PEM private key of the app's certificate (instead of a secret).",
    ),
    "graph_certificate_thumbprint": (
        "SENDONCE_GRAPH_CERTIFICATE_THUMBPRINT",
        "SHA-1 thumbprint of that certificate, as shown in the app registration.",
    ),
    "graph_authority": (
        "SENDONCE_GRAPH_AUTHORITY",
        "Authority override (the emulator's); default login.microsoftonline.com/{tenant}.",
    ),
    "graph_url": ("SENDONCE_GRAPH_URL", "Graph API base URL."),
    "graph_ca_bundle": (
        "SENDONCE_GRAPH_CA_BUNDLE",
        "PEM CA bundle for the authority and Graph (the emulator's test CA).",
    ),
    "graph_mode": ("SENDONCE_GRAPH_MODE", "`sendmail` or `draft-send`."),
    "graph_connect_timeout_s": ("SENDONCE_GRAPH_CONNECT_TIMEOUT_S", "Graph connect timeout."),
    "graph_read_timeout_s": (
        "SENDONCE_GRAPH_READ_TIMEOUT_S",
        "Graph read timeout; a send timing out is AMBIGUOUS.",
    ),
    "graph_mailbox_concurrency": (
        "SENDONCE_GRAPH_MAILBOX_CONCURRENCY",
        "Requests in flight per sender mailbox, for the whole group (Graph: 4); "
        "each worker takes its share.",
    ),
    "graph_sends_per_minute": (
        "SENDONCE_GRAPH_SENDS_PER_MINUTE",
        "Messages per minute per mailbox, for the whole group (Exchange Online: "
        "30); each worker takes its share; 0 lifts the cap.",
    ),
    "graph_requests_per_10min": (
        "SENDONCE_GRAPH_REQUESTS_PER_10MIN",
        "Request budget per mailbox per 10 minutes, for the whole group (Graph: "
        "10,000); each worker takes its share.",
    ),
    "worker_id": ("SENDONCE_WORKER_ID", "Name recorded in ledger attempts (default host-pid)."),
    "batch_size": ("SENDONCE_BATCH_SIZE", "Intents taken per batch by the worker."),
    "batches_in_flight": (
        "SENDONCE_BATCHES_IN_FLIGHT",
        "Batches a worker lane runs at once (the next is decided while one awaits Kafka).",
    ),
    "batch_within_s": (
        "SENDONCE_BATCH_WITHIN_S",
        "Seconds the worker waits to fill a batch before processing it.",
    ),
    "defer_after_s": (
        "SENDONCE_DEFER_AFTER_S",
        "A send whose mailbox would wait longer than this moves to the deferred lane; 0 never.",
    ),
    "send_concurrency": (
        "SENDONCE_SEND_CONCURRENCY",
        "Provider calls in flight at once per worker.",
    ),
    "producer_linger_ms": (
        "SENDONCE_PRODUCER_LINGER_MS",
        "How long the worker's producer gathers ledger and result records into one request.",
    ),
    "fetch_max_wait_ms": (
        "SENDONCE_FETCH_MAX_WAIT_MS",
        "Longest the broker holds the worker's fetch request open when no records arrive.",
    ),
    "event_loop": (
        "SENDONCE_EVENT_LOOP",
        "Worker event loop: uvloop (faster) or asyncio.",
    ),
    "retry_max_attempts": (
        "SENDONCE_RETRY_MAX_ATTEMPTS",
        "Attempts per key for sends that provably did not reach the provider.",
    ),
    "retry_base_delay_s": (
        "SENDONCE_RETRY_BASE_DELAY_S",
        "First retry delay; doubles per attempt (capped by the max delay).",
    ),
    "retry_max_delay_s": ("SENDONCE_RETRY_MAX_DELAY_S", "Upper bound of one retry delay."),
    "retry_inline_max_s": (
        "SENDONCE_RETRY_INLINE_MAX_S",
        "Longest retry wait (backoff or the provider's Retry-After) slept inside an "
        "intents batch; a longer one moves the intent to the deferred lane. Below "
        "SENDONCE_REVOKE_WAIT_S.",
    ),
    "max_body_bytes": (
        "SENDONCE_MAX_BODY_BYTES",
        "Largest accepted body (text + html); larger intents are refused by the publisher "
        "and dead-lettered by the worker. The default fits SENDONCE_MAX_RECORD_BYTES.",
    ),
    "max_record_bytes": (
        "SENDONCE_MAX_RECORD_BYTES",
        "Largest record sendonce writes (at most the topics' max.message.bytes): the "
        "publisher refuses larger intents; a record too large to dead-letter whole keeps "
        "its first bytes and a SHA-256.",
    ),
    "reconcile_grace_s": (
        "SENDONCE_RECONCILE_GRACE_S",
        "Seconds after an ambiguous send before the first lookup at the provider.",
    ),
    "reconcile_interval_s": (
        "SENDONCE_RECONCILE_INTERVAL_S",
        "Seconds between lookups of one ambiguous send; doubles each time.",
    ),
    "reconcile_max_interval_s": (
        "SENDONCE_RECONCILE_MAX_INTERVAL_S",
        "Upper bound of the interval between lookups.",
    ),
    "reconcile_deadline_s": (
        "SENDONCE_RECONCILE_DEADLINE_S",
        "Seconds after which an ambiguous send not found goes to the deadline policy.",
    ),
    "reconcile_on_deadline": (
        "SENDONCE_RECONCILE_ON_DEADLINE",
        "`review` (stays AMBIGUOUS for an operator) or `resend` (opt-in new attempt).",
    ),
    "reconcile_draft_resend_grace_s": (
        "SENDONCE_RECONCILE_DRAFT_RESEND_GRACE_S",
        "Drafts (`draft-send`): seconds after a send of unknown outcome before a draft "
        "found still a draft is sent again (README: Graph modes).",
    ),
    "reconcile_tick_s": (
        "SENDONCE_RECONCILE_TICK_S",
        "How often the worker checks for ambiguous sends due for a lookup.",
    ),
    "standby_replicas": (
        "SENDONCE_STANDBY_REPLICAS",
        "Faust standby replicas of the ledger table (faster failover).",
    ),
    "session_timeout_s": (
        "SENDONCE_SESSION_TIMEOUT_S",
        "Consumer group session timeout: how long a dead worker keeps its partitions.",
    ),
    "rebalance_timeout_s": (
        "SENDONCE_REBALANCE_TIMEOUT_S",
        "Consumer group rebalance timeout: how long the group waits for a worker to give "
        "up its partitions and rejoin before it moves on without it.",
    ),
    "revoke_wait_s": (
        "SENDONCE_REVOKE_WAIT_S",
        "Longest a rebalance waits for the batches in flight; those still running then "
        "are abandoned (no send starts after it). At most the rebalance timeout "
        f"minus {REVOKE_MARGIN_S:.0f} s.",
    ),
    "rocksdb_block_cache_mb": (
        "SENDONCE_ROCKSDB_BLOCK_CACHE_MB",
        "RocksDB block cache (MiB) shared by every table partition of the worker; "
        "also holds index and filter blocks.",
    ),
    "rocksdb_write_buffer_mb": (
        "SENDONCE_ROCKSDB_WRITE_BUFFER_MB",
        "Size (MiB) of one RocksDB memtable of one table partition.",
    ),
    "rocksdb_max_write_buffers": (
        "SENDONCE_ROCKSDB_MAX_WRITE_BUFFERS",
        "Memtables per table partition (one written, the others flushing); at least 2.",
    ),
    "bulk_restore": (
        "SENDONCE_BULK_RESTORE",
        "`true`: newly assigned table partitions are caught up from their changelogs in "
        "bulk before Faust's recovery; `false`: Faust's recovery alone.",
    ),
    "receiver_host": ("SENDONCE_RECEIVER_HOST", "Address the webhook receiver listens on."),
    "receiver_port": ("SENDONCE_RECEIVER_PORT", "Port of the webhook receiver (0: a free port)."),
    "receiver_max_body_bytes": (
        "SENDONCE_RECEIVER_MAX_BODY_BYTES",
        "Largest webhook request body the receiver reads; larger ones get 413.",
    ),
    "receiver_client_states": (
        "SENDONCE_RECEIVER_CLIENT_STATES",
        "Graph clientState secrets: JSON object or `id=secret,id2=secret2`, keyed by "
        "subscription id or tenant id; never logged.",
    ),
    "receiver_signing_secrets": (
        "SENDONCE_RECEIVER_SIGNING_SECRETS",
        "Signed-webhook secrets per source (`/webhooks/{source}`), same formats; "
        "`whsec_` values are base64; never logged.",
    ),
    "receiver_signature_tolerance_s": (
        "SENDONCE_RECEIVER_SIGNATURE_TOLERANCE_S",
        "Largest age (or clock skew) of a signed webhook's timestamp; older ones get 401.",
    ),
    "receiver_produce_timeout_s": (
        "SENDONCE_RECEIVER_PRODUCE_TIMEOUT_S",
        "Seconds the receiver waits for Kafka to acknowledge a request's events before 503.",
    ),
    "webhook_dedupe_ttl_s": (
        "SENDONCE_WEBHOOK_DEDUPE_TTL_S",
        "How long the dedupe stream remembers an inbound event id (default 7 days).",
    ),
    "webhook_fault": (
        "SENDONCE_WEBHOOK_FAULT",
        "Test hook: `kill-after-mark:N` SIGKILLs the worker after its Nth new sighting is marked.",
    ),
    "webhook_replays_topic": (
        "SENDONCE_WEBHOOK_REPLAYS_TOPIC",
        "`true`: the dedupe stream also copies each replay to `email.webhooks.replays`.",
    ),
    "crash_at": (
        "SENDONCE_CRASH_AT",
        "Test hook: `POINT:N` SIGKILLs the worker the Nth time it reaches POINT: "
        "`after-pending` (PENDING durable, provider not called), `after-accept` "
        "(provider accepted, nothing recorded) or `after-sent` (SENT durable, "
        "result not emitted, offsets not committed).",
    ),
    "pause_at": (
        "SENDONCE_PAUSE_AT",
        "Test hook: `POINT:N` SIGSTOPs the worker the Nth time it reaches POINT (SIGCONT "
        "resumes it): `pending-produced` (PENDING handed to the producer, not acknowledged), "
        "`after-pending`, `after-accept` or `after-sent` (as for SENDONCE_CRASH_AT).",
    ),
    "schema_registry_url": (
        "SENDONCE_SCHEMA_REGISTRY_URL",
        "Confluent-compatible schema registry; set: records are written in the Confluent "
        "wire format with registry ids (subjects `<topic>-value`); empty: Avro "
        "single-object encoding. Both are read either way.",
    ),
    "log_level": ("SENDONCE_LOG_LEVEL", "Log level: debug, info, warning, error."),
    "log_format": (
        "SENDONCE_LOG_FORMAT",
        "`text`, or `json`: one JSON object per line (ts, level, logger, message, worker).",
    ),
    "metrics_host": (
        "SENDONCE_METRICS_HOST",
        "Address of the worker's /metrics, /healthz and /readyz (0.0.0.0 for probes "
        "from outside the host).",
    ),
    "metrics_port": (
        "SENDONCE_METRICS_PORT",
        "Port of the worker's metrics and health endpoint; 0 disables it.",
    ),
}


@dataclass(frozen=True)
class Settings:
    """Everything a sendonce process can be configured with."""

    bootstrap_servers: str = "127.0.0.1:9092"
    app_id: str = "sendonce"
    topic_prefix: str = ""
    partitions: int = 12
    replication_factor: int = 1
    min_insync_replicas: int = 1
    data_dir: Path = Path(".sendonce/worker")
    provider: str = "outbox"
    outbox_dir: Path = Path(".sendonce/outbox")
    outbox_fault: str = ""
    graph_tenant_id: str = ""
    graph_client_id: str = ""
    graph_client_secret: str = field(default="", repr=False)
    graph_certificate_key_path: str = ""
    graph_certificate_thumbprint: str = ""
    graph_authority: str = ""
    graph_url: str = "https://graph.microsoft.com/v1.0"
    graph_ca_bundle: str = ""
    graph_mode: str = "sendmail"
    graph_connect_timeout_s: float = 10.0
    graph_read_timeout_s: float = 30.0
    graph_mailbox_concurrency: int = 4
    graph_sends_per_minute: int = 30
    graph_requests_per_10min: int = 9000
    worker_id: str = field(default_factory=_default_worker_id)
    batch_size: int = 500
    batch_within_s: float = 0.05
    batches_in_flight: int = 2
    defer_after_s: float = 2.0
    send_concurrency: int = 64
    producer_linger_ms: float = 5.0
    event_loop: str = "uvloop"
    fetch_max_wait_ms: int = 20
    retry_max_attempts: int = 5
    retry_base_delay_s: float = 0.5
    retry_max_delay_s: float = 30.0
    retry_inline_max_s: float = 5.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    reconcile_grace_s: float = 30.0
    reconcile_interval_s: float = 30.0
    reconcile_max_interval_s: float = 300.0
    reconcile_deadline_s: float = 1800.0
    reconcile_on_deadline: str = "review"
    reconcile_draft_resend_grace_s: float = 120.0
    reconcile_tick_s: float = 1.0
    standby_replicas: int = 1
    session_timeout_s: float = 30.0
    rebalance_timeout_s: float = 60.0
    revoke_wait_s: float = 45.0
    rocksdb_block_cache_mb: int = 64
    rocksdb_write_buffer_mb: int = 4
    rocksdb_max_write_buffers: int = 2
    bulk_restore: bool = True
    receiver_host: str = "127.0.0.1"
    receiver_port: int = 8080
    receiver_max_body_bytes: int = 1024 * 1024
    receiver_client_states: str = field(default="", repr=False)
    receiver_signing_secrets: str = field(default="", repr=False)
    receiver_signature_tolerance_s: float = 300.0
    receiver_produce_timeout_s: float = 5.0
    webhook_dedupe_ttl_s: float = 7 * 24 * 3600.0
    webhook_fault: str = ""
    webhook_replays_topic: bool = False
    crash_at: str = ""
    pause_at: str = ""
    schema_registry_url: str = ""
    log_level: str = "info"
    log_format: str = "text"
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464

    @property
    def topics(self) -> TopicNames:
        """Topic names with this configuration's prefix."""
        return TopicNames(self.topic_prefix)

    @property
    def ledger_changelog_topic(self) -> str:
        """Faust's name for the ledger table's compacted changelog."""
        return f"{self.app_id}-ledger-changelog"

    @property
    def webhook_sightings_changelog_topic(self) -> str:
        """The webhook sighting table's changelog.

        Named by the topic prefix, not the app id, so a fresh consumer group
        replaying the raw topic restores the same sightings and forwards nothing.
        """
        return f"{self.topic_prefix}email.webhooks.sightings"

    def with_overrides(self, **changes: Any) -> Settings:
        """Return a copy with some settings replaced (validated again)."""
        updated = replace(self, **changes)
        updated.validate()
        return updated

    def validate(self) -> None:
        """Raise :class:`SettingsError` for values no worker could run with."""
        if self.partitions < 1:
            raise SettingsError("SENDONCE_PARTITIONS must be at least 1")
        if self.replication_factor < 1:
            raise SettingsError("SENDONCE_REPLICATION_FACTOR must be at least 1")
        if not 1 <= self.min_insync_replicas <= self.replication_factor:
            # More than the replicas: every acks=all write would be refused.
            raise SettingsError(
                f"SENDONCE_MIN_INSYNC_REPLICAS={self.min_insync_replicas} must be between 1 "
                f"and SENDONCE_REPLICATION_FACTOR={self.replication_factor}"
            )
        if self.provider not in PROVIDERS:
            raise SettingsError(
                f"SENDONCE_PROVIDER={self.provider!r} is not a known provider "
                f"({', '.join(PROVIDERS)})"
            )
        if self.provider == "graph":
            self._validate_graph()
        if self.batch_size < 1 or self.send_concurrency < 1 or self.retry_max_attempts < 1:
            raise SettingsError(
                "SENDONCE_BATCH_SIZE, SENDONCE_SEND_CONCURRENCY and "
                "SENDONCE_RETRY_MAX_ATTEMPTS must be at least 1"
            )
        if self.batches_in_flight < 1:
            raise SettingsError("SENDONCE_BATCHES_IN_FLIGHT must be at least 1")
        if self.max_record_bytes < MIN_RECORD_BYTES:
            raise SettingsError(f"SENDONCE_MAX_RECORD_BYTES must be at least {MIN_RECORD_BYTES}")
        if self.rocksdb_block_cache_mb < 1 or self.rocksdb_write_buffer_mb < 1:
            raise SettingsError(
                "SENDONCE_ROCKSDB_BLOCK_CACHE_MB and SENDONCE_ROCKSDB_WRITE_BUFFER_MB "
                "must be at least 1"
            )
        if self.rocksdb_max_write_buffers < 2:
            raise SettingsError("SENDONCE_ROCKSDB_MAX_WRITE_BUFFERS must be at least 2")
        if self.producer_linger_ms < 0:
            raise SettingsError("SENDONCE_PRODUCER_LINGER_MS must not be negative")
        if not 0 <= self.fetch_max_wait_ms <= 1500:
            raise SettingsError("SENDONCE_FETCH_MAX_WAIT_MS must be between 0 and 1500")
        if self.event_loop not in ("uvloop", "asyncio"):
            raise SettingsError(
                f"SENDONCE_EVENT_LOOP={self.event_loop!r} must be uvloop or asyncio"
            )
        if self.reconcile_draft_resend_grace_s <= self.graph_read_timeout_s:
            raise SettingsError(
                f"SENDONCE_RECONCILE_DRAFT_RESEND_GRACE_S={self.reconcile_draft_resend_grace_s} "
                f"must be above SENDONCE_GRAPH_READ_TIMEOUT_S={self.graph_read_timeout_s}: a "
                "draft is sent again only when no send of it can still be in flight"
            )
        if self.reconcile_on_deadline not in ("review", "resend"):
            raise SettingsError(
                f"SENDONCE_RECONCILE_ON_DEADLINE={self.reconcile_on_deadline!r} must be "
                "review or resend"
            )
        try:
            parse_crash_spec(self.crash_at)
        except ValueError as exc:
            raise SettingsError(
                f"SENDONCE_CRASH_AT={self.crash_at!r} must be POINT:N with POINT one of "
                f"{', '.join(CRASH_POINTS)} and N >= 1"
            ) from exc
        try:
            parse_pause_spec(self.pause_at)
        except ValueError as exc:
            raise SettingsError(
                f"SENDONCE_PAUSE_AT={self.pause_at!r} must be POINT:N with POINT one of "
                f"{', '.join(PAUSE_POINTS)} and N >= 1"
            ) from exc
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise SettingsError(f"SENDONCE_LOG_LEVEL={self.log_level!r} is not a log level")
        if self.log_format not in ("text", "json"):
            raise SettingsError(f"SENDONCE_LOG_FORMAT={self.log_format!r} must be text or json")
        if not 0 <= self.metrics_port <= 65535:
            raise SettingsError("SENDONCE_METRICS_PORT must be between 0 and 65535")
        if self.schema_registry_url and not self.schema_registry_url.startswith(
            ("http://", "https://")
        ):
            raise SettingsError(
                f"SENDONCE_SCHEMA_REGISTRY_URL={self.schema_registry_url!r} must be an "
                "http:// or https:// URL"
            )
        if not self.bootstrap_servers.strip():
            raise SettingsError("SENDONCE_BOOTSTRAP_SERVERS is empty")
        if not 0 < self.revoke_wait_s <= self.rebalance_timeout_s - REVOKE_MARGIN_S:
            # Past the rebalance timeout the group moves on without this worker while
            # its batches still run: a send could start after the partition moved.
            raise SettingsError(
                f"SENDONCE_REVOKE_WAIT_S={self.revoke_wait_s} must be above 0 and at most "
                f"SENDONCE_REBALANCE_TIMEOUT_S ({self.rebalance_timeout_s}) minus "
                f"{REVOKE_MARGIN_S:.0f} s"
            )
        if not 0 <= self.retry_inline_max_s < self.revoke_wait_s:
            raise SettingsError(
                f"SENDONCE_RETRY_INLINE_MAX_S={self.retry_inline_max_s} must be at least 0 "
                f"and below SENDONCE_REVOKE_WAIT_S ({self.revoke_wait_s})"
            )

    def _validate_graph(self) -> None:
        if not self.graph_tenant_id or not self.graph_client_id:
            raise SettingsError(
                "SENDONCE_PROVIDER=graph needs SENDONCE_GRAPH_TENANT_ID and "
                "SENDONCE_GRAPH_CLIENT_ID"
            )
        has_cert = bool(self.graph_certificate_key_path or self.graph_certificate_thumbprint)
        if bool(self.graph_client_secret) == has_cert:
            raise SettingsError(
                "Graph needs either SENDONCE_GRAPH_CLIENT_SECRET or both "
                "SENDONCE_GRAPH_CERTIFICATE_KEY_PATH and SENDONCE_GRAPH_CERTIFICATE_THUMBPRINT"
            )
        if has_cert and not (self.graph_certificate_key_path and self.graph_certificate_thumbprint):
            raise SettingsError(
                "certificate auth needs SENDONCE_GRAPH_CERTIFICATE_KEY_PATH and "
                "SENDONCE_GRAPH_CERTIFICATE_THUMBPRINT"
            )
        if self.graph_mode not in ("sendmail", "draft-send"):
            raise SettingsError(f"SENDONCE_GRAPH_MODE={self.graph_mode!r}: sendmail or draft-send")

    def to_env(self) -> dict[str, str]:
        """These settings as ``SENDONCE_*`` variables, to start another process with them.

        ``worker_id`` is left out: it names one process, not a configuration.
        """
        env: dict[str, str] = {}
        for f in fields(self):
            if f.name == "worker_id":
                continue
            value = getattr(self, f.name)
            text = ("true" if value else "false") if isinstance(value, bool) else str(value)
            env[SETTINGS_DOC[f.name][0]] = text
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read settings from ``SENDONCE_*`` variables, defaults for the rest."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            var = SETTINGS_DOC[f.name][0]
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            values[f.name] = _convert(var, raw, f.type)
        settings = cls(**values)
        settings.validate()
        return settings


def _convert(var: str, raw: str, type_name: Any) -> Any:
    kind = type_name if isinstance(type_name, str) else getattr(type_name, "__name__", "")
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "Path":
            return Path(raw)
        if kind == "bool":
            return _boolean(raw)
    except ValueError as exc:
        raise SettingsError(f"{var}={raw!r} is not a valid {kind}") from exc
    return raw


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _boolean(raw: str) -> bool:
    # Raises ValueError like int()/float() so _convert words the error the same way.
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(raw)


def settings_table_markdown() -> str:
    """The README's configuration table, generated from the dataclass and its docs."""
    defaults = Settings(worker_id="<host>-<pid>")
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for f in fields(Settings):
        var, doc = SETTINGS_DOC[f.name]
        value = getattr(defaults, f.name)
        shown = f"`{value}`" if value != "" else "(empty)"
        if not f.repr:
            shown = "(empty; secret)"
        rows.append(f"| `{var}` | {shown} | {doc} |")
    return "\n".join(rows)


def write_readme_table(readme: Path) -> None:
    """Replace the configuration table in ``readme`` with the generated one."""
    text = readme.read_text()
    start = text.index("| variable | default | meaning |")
    end = text.index("\n\n", start)
    readme.write_text(text[:start] + settings_table_markdown() + text[end:])


if __name__ == "__main__":
    # `python -m sendonce.settings README.md` refreshes the README's table.
    import sys

    write_readme_table(Path(sys.argv[1] if len(sys.argv) > 1 else "README.md"))
