"""Prometheus metrics of the worker, and the small HTTP server that exposes them.

Every metric is defined once, here, in ``prometheus_client``'s default (process-wide)
registry; the code that does the work updates it with one-line calls. Counters and
histograms are updated as things happen; the gauges that describe state (ledger
size, consumer lag) are refreshed by :class:`WorkerGauges` when ``/metrics`` is
scraped, in the worker's event loop (Faust and aiokafka are never touched from
another thread).

The server (:class:`MetricsServer`, aiohttp in the worker's own loop) answers:

* ``GET /metrics``: the Prometheus text exposition;
* ``GET /healthz``: 200 while the process runs (liveness);
* ``GET /readyz``: 200 only when every table is recovered and no rebalance is
  under way, else 503 (readiness).

Labels never hold keys, recipients or anything else per message: only outcome
classes, provider names, partitions and topics.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

log = logging.getLogger("sendonce.metrics")

# No ``*_created`` series beside every counter and histogram: noise in Prometheus.
disable_created_metrics()  # type: ignore[no-untyped-call]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

INTENTS = Counter(
    "sendonce_intents",
    "Results emitted, by outcome (SENT, DUPLICATE, AMBIGUOUS, FAILED, CONFLICT).",
    ["outcome"],
)
PROVIDER_LATENCY = Histogram(
    "sendonce_provider_latency_seconds",
    "Duration of each provider send call, by provider and outcome class "
    "(accepted, rejected, not_sent_retryable, ambiguous).",
    ["provider", "outcome_class"],
    buckets=_LATENCY_BUCKETS,
)
LOOKUP_LATENCY = Histogram(
    "sendonce_provider_lookup_latency_seconds",
    "Duration of each reconciliation lookup at the provider, by provider and result "
    "(found, not_found_definitive, unknown).",
    ["provider", "outcome_class"],
    buckets=_LATENCY_BUCKETS,
)
THROTTLE_WAITS = Counter(
    "sendonce_throttle_waits",
    "Waits before a provider request: retry delays (retry_after: the provider asked; "
    "backoff) and the Graph mailbox limiter (mailbox_retry_after, mailbox_rate, "
    "mailbox_concurrency).",
    ["provider", "reason"],
)
THROTTLE_WAIT_SECONDS = Counter(
    "sendonce_throttle_wait_seconds",
    "Seconds spent in the waits counted by sendonce_throttle_waits_total.",
    ["provider", "reason"],
)
LEDGER_ENTRIES = Gauge(
    "sendonce_ledger_entries",
    "Entries in the ledger partitions this worker owns: an estimate (RocksDB "
    "rocksdb.estimate-num-keys: overwritten values count until compaction, plus one "
    "bookkeeping key per partition).",
    ["partition"],
)
AMBIGUOUS_OPEN = Gauge(
    "sendonce_ambiguous_open",
    "AMBIGUOUS ledger entries in the partitions this worker owns, awaiting a lookup "
    "or flagged for review.",
)
SENDS_WAITING = Gauge(
    "sendonce_sends_waiting",
    "Sends this worker admitted that wait for their mailbox's permit (rate or "
    "concurrency limits); their keys become PENDING only once it is granted.",
    ["provider"],
)
OLDEST_OPEN_AGE = Gauge(
    "sendonce_oldest_open_entry_age_seconds",
    "Age, since its first attempt, of the oldest ledger entry in the partitions this "
    "worker owns that is not final (PENDING or AMBIGUOUS); 0 when there is none. A "
    "value that keeps growing is a key nobody settles: see `sendonce review list`.",
)
DEAD_LETTERS = Counter(
    "sendonce_dead_letters",
    "Records sent to the dead-letter topic, by error type.",
    ["error_type"],
)
WEBHOOK_EVENTS = Counter(
    "sendonce_webhook_events",
    "Raw webhook events handled by the dedupe stream: forwarded (first sighting) "
    "or replay (dropped).",
    ["result"],
)
CONSUMER_LAG = Gauge(
    "sendonce_consumer_lag",
    "Records of an owned source partition not yet finished: high watermark minus the "
    "committed frontier.",
    ["topic", "partition"],
)
BATCH_RECORDS = Histogram(
    "sendonce_batch_records",
    "Records per batch a lane processed (the count is the number of batches).",
    ["lane"],
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500),
)


@contextmanager
def timed(histogram: Histogram, provider: str) -> Iterator[Callable[[str], None]]:
    """Time a block; the block calls the yielded function with its outcome class.

    A block that raises (or never names its outcome) is recorded as ``error``.
    """
    started = time.perf_counter()
    outcome = ["error"]
    try:
        yield lambda name: outcome.__setitem__(0, name)
    finally:
        histogram.labels(provider, outcome[0]).observe(time.perf_counter() - started)


def throttle_waited(provider: str, reason: str, seconds: float) -> None:
    """Count one wait before a provider request and its duration."""
    THROTTLE_WAITS.labels(provider, reason).inc()
    THROTTLE_WAIT_SECONDS.labels(provider, reason).inc(max(0.0, seconds))


def retry_waited(provider: str, cause: object, seconds: float) -> None:
    """A retry delay before a new attempt; ``cause`` is the ledger event that chose it.

    ``retry_after`` when the failed send carried the provider's Retry-After,
    ``backoff`` otherwise.
    """
    outcome = getattr(cause, "outcome", None)
    asked = getattr(outcome, "retry_after_s", None)
    throttle_waited(provider, "retry_after" if asked else "backoff", seconds)


def throttle_observer(provider: str) -> Callable[[str, float], None]:
    """A ``(reason, seconds)`` callback for a limiter that knows nothing of Prometheus."""

    def observe(reason: str, seconds: float) -> None:
        throttle_waited(provider, reason, seconds)

    return observe


class GaugedKeys:
    """A set of keys whose size is added to a process-wide gauge.

    Each :class:`~streams.processor.IntentProcessor` tracks its AMBIGUOUS keys in one;
    the gauge is the sum over the processors of the process (one in a worker).
    """

    def __init__(self, gauge: Gauge) -> None:
        self._gauge = gauge
        self._keys: set[str] = set()

    def add(self, key: str) -> None:
        """Track ``key``."""
        if key not in self._keys:
            self._keys.add(key)
            self._gauge.inc()

    def discard(self, key: str) -> None:
        """Stop tracking ``key`` (if tracked)."""
        if key in self._keys:
            self._keys.remove(key)
            self._gauge.dec()

    def clear(self) -> None:
        """Stop tracking every key."""
        self._gauge.dec(len(self._keys))
        self._keys.clear()

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)


class OpenEntries:
    """The keys of one processor whose entries are not final, with their first attempt time.

    Every tracker of the process feeds :data:`OLDEST_OPEN_AGE` when it is scraped, so
    the gauge needs no updating as entries open and settle.
    """

    def __init__(self) -> None:
        self._since_ms: dict[str, int] = {}
        _OPEN_TRACKERS.add(self)

    def add(self, key: str, since_ms: int) -> None:
        """Track ``key``, open since ``since_ms``."""
        self._since_ms[key] = since_ms

    def discard(self, key: str) -> None:
        """Stop tracking ``key`` (if tracked)."""
        self._since_ms.pop(key, None)

    def clear(self) -> None:
        """Stop tracking every key."""
        self._since_ms.clear()

    def keys(self) -> set[str]:
        """The keys tracked."""
        return set(self._since_ms)

    def oldest_age_s(self, now_ms: int) -> float:
        """Seconds since the oldest tracked key's first attempt; 0 when none."""
        if not self._since_ms:
            return 0.0
        return max(0.0, (now_ms - min(self._since_ms.values())) / 1000)


_OPEN_TRACKERS: weakref.WeakSet[OpenEntries] = weakref.WeakSet()
OLDEST_OPEN_AGE.set_function(
    lambda: max(
        (t.oldest_age_s(int(time.time() * 1000)) for t in list(_OPEN_TRACKERS)), default=0.0
    )
)


def ledger_key_estimates(table: Any) -> dict[int, int]:
    """``rocksdb.estimate-num-keys`` of each active partition DB of a Faust table."""
    store = table.data
    topic = table.changelog_topic.get_topic_name()
    actives = {tp.partition for tp in store.app.assignor.assigned_actives() if tp.topic == topic}
    found: dict[int, int] = {}
    for partition, db in list(store._dbs.items()):
        if partition in actives:
            value = db.property_int_value("rocksdb.estimate-num-keys")
            if value is not None:
                found[partition] = int(value)
    return found


class WorkerGauges:
    """Refreshes the state gauges (ledger size, consumer lag) on each scrape.

    Everything it reads is injected: ``topics()`` names the lanes' source topics,
    ``owned(topic)`` lists owned partitions,
    ``frontiers()`` the lanes' committed frontiers, ``committed(topic, partition)``
    reads the group's committed offset from the broker (used for a partition no
    batch finished in yet: nothing but a frontier commits, so it is cached until the
    assignment changes, see :meth:`forget`), ``highwaters(partitions)`` the
    consumer's high watermarks, and ``ledger()`` the ledger's per-partition sizes.
    """

    def __init__(
        self,
        *,
        topics: Callable[[], Iterable[str]],
        owned: Callable[[str], Iterable[int]],
        frontiers: Callable[[], Mapping[tuple[str, int], int]],
        committed: Callable[[str, int], Awaitable[int]],
        highwaters: Callable[[list[tuple[str, int]]], Awaitable[Mapping[tuple[str, int], int]]],
        ledger: Callable[[], Mapping[int, int]],
        timeout_s: float = 5.0,
    ) -> None:
        self._topics = topics
        self._owned = owned
        self._frontiers = frontiers
        self._committed = committed
        self._highwaters = highwaters
        self._ledger = ledger
        self._timeout_s = timeout_s
        self._committed_cache: dict[tuple[str, int], int] = {}

    def forget(self) -> None:
        """The assignment changed: committed offsets must be read again."""
        self._committed_cache.clear()

    async def refresh(self) -> None:
        """Update the gauges; a part that fails keeps its previous values."""
        try:
            sizes = self._ledger()
        except Exception as exc:
            log.debug("ledger size unavailable: %s", type(exc).__name__)
        else:
            LEDGER_ENTRIES.clear()
            for partition, count in sizes.items():
                LEDGER_ENTRIES.labels(str(partition)).set(count)
        try:
            lags = await asyncio.wait_for(self._lags(), self._timeout_s)
        except Exception as exc:
            log.debug("consumer lag unavailable: %s", type(exc).__name__)
        else:
            # No await between clearing and setting: a scrape never sees half of it.
            CONSUMER_LAG.clear()
            for (topic, partition), lag in lags.items():
                CONSUMER_LAG.labels(topic, str(partition)).set(lag)

    async def _lags(self) -> dict[tuple[str, int], int]:
        tps = [(topic, p) for topic in self._topics() for p in sorted(self._owned(topic))]
        if not tps:
            return {}
        highs = await self._highwaters(tps)
        frontiers = self._frontiers()
        lags: dict[tuple[str, int], int] = {}
        for tp in tps:
            high = highs.get(tp)
            if high is None:
                continue  # nothing fetched from it yet
            done = frontiers.get(tp)
            if done is None:
                done = self._committed_cache.get(tp)
                if done is None:
                    done = self._committed_cache[tp] = await self._committed(*tp)
            lags[tp] = max(0, high - done)
        return lags


class MetricsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` over aiohttp, in the running loop."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ready: Callable[[], bool],
        refresh: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._ready = ready
        self._refresh = refresh
        self._runner: web.AppRunner | None = None
        self.url = ""

    def make_app(self) -> web.Application:
        """The aiohttp application (for aiohttp's test tools)."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        return app

    async def start(self) -> str:
        """Listen; return the base URL. Raises ``OSError`` when the port is taken."""
        runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        return self.url

    async def start_or_warn(self) -> None:
        """Start, logging (not raising) when the address cannot be used.

        Metrics are not worth a worker that does not send: a second worker on the
        same host with the same port keeps running, without its endpoint.
        """
        try:
            url = await self.start()
        except OSError as exc:
            log.error(
                "metrics endpoint not started: cannot listen on %s:%d: %s (set "
                "SENDONCE_METRICS_PORT to a free port, or 0 to disable it)",
                self.host,
                self.port,
                exc,
            )
            return
        log.info("metrics on %s/metrics (health: /healthz, readiness: /readyz)", url)

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        if self._refresh is not None:
            await self._refresh()
        return metrics_response()

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _readyz(self, request: web.Request) -> web.Response:
        if self._ready():
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "recovering or rebalancing"}, status=503)


def metrics_service(server: MetricsServer) -> Any:
    """A mode service running ``server``, for ``faust.Worker(app, *services)``.

    The Worker starts it before the app; Faust's own ``app.task``/``app.service``
    start only once table recovery finished, and ``/healthz`` must answer during it.
    """
    from mode import Service

    class MetricsService(Service):  # type: ignore[misc]
        async def on_start(self) -> None:
            await server.start_or_warn()

        async def on_stop(self) -> None:
            await server.stop()

    return MetricsService()


def metrics_response() -> web.Response:
    """The default registry in Prometheus' text format, as an aiohttp response."""
    body = generate_latest()
    response = web.Response(body=body)
    # aiohttp refuses a charset inside content_type=; set the header as is.
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response
