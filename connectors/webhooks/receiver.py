"""The webhook receiver: provider webhooks in, WebhookEvent records on ``email.webhooks.raw``.

Endpoints (aiohttp):

* ``POST /graph/notifications`` and ``POST /graph/lifecycle``: Microsoft Graph
  change and lifecycle notifications. A ``validationToken`` query parameter (POST
  or GET) is the subscription handshake: 200, ``text/plain``, the decoded token.
* ``POST /webhooks/{source}``: Standard Webhooks style signed deliveries.
* ``GET /healthz``: 200 when Kafka answers and the raw topic exists, else 503.
* ``GET /metrics``: Prometheus text (notifications received, rejections, validation
  handshakes, records produced, responses by status).

The receiver answers 202 only after Kafka acknowledged (acks=all) every event of
the request; when it cannot, it answers 503 with ``Retry-After`` so the provider
retries. It does not deduplicate: a redelivery is produced again with the same
dedupe id, and the dedupe stream lets only its first sighting through.

Nothing of a request body, no clientState, signature or secret is ever logged;
error responses are short JSON messages that do not quote the body.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import signal
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import prometheus_client as prom
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sendonce.connectors.webhooks.graph import (
    ClientStateVerifier,
    NotificationError,
    parse_notifications,
    to_webhook_event,
)
from sendonce.connectors.webhooks.producer import EventSink, KafkaEventSink, ProduceError
from sendonce.connectors.webhooks.secrets import parse_secret_map, parse_source_secrets
from sendonce.connectors.webhooks.signed import SignatureError, decode_secret, verify_signature
from sendonce.lifecycle import Service
from sendonce.schemas.codec import SchemaCodec, default_codec
from sendonce.schemas.errors import CodecError
from sendonce.settings import Settings, SettingsError

__all__ = [
    "FORWARDED_HEADERS",
    "ReceiverConfig",
    "ReceiverThread",
    "WebhookReceiver",
    "build_app",
    "run_receiver",
    "serve",
]

log = logging.getLogger("sendonce.receiver")

# Process-wide (prometheus_client's default registry), like the worker's metrics;
# no ``*_created`` series (noise in Prometheus).
prom.disable_created_metrics()  # type: ignore[no-untyped-call]
NOTIFICATIONS = prom.Counter(
    "sendonce_receiver_notifications",
    "Notifications received in well-formed requests, by route (graph, signed), "
    "before verification.",
    ["route"],
)
REJECTED = prom.Counter(
    "sendonce_receiver_rejected",
    "Requests refused for their credentials: client_state (Graph clientState "
    "missing or wrong), signature (signed webhook), unknown_source.",
    ["reason"],
)
VALIDATIONS = prom.Counter(
    "sendonce_receiver_validations",
    "Graph subscription validation handshakes (validationToken) answered.",
)
PRODUCED = prom.Counter(
    "sendonce_receiver_records_produced",
    "WebhookEvent records acknowledged by Kafka on the raw topic.",
)
RESPONSES = prom.Counter(
    "sendonce_receiver_responses",
    "Responses by HTTP status code.",
    ["status"],
)

# Request headers copied into WebhookEvent.headers: useful for tracing a
# delivery, never credentials (no Authorization, no webhook-signature).
FORWARDED_HEADERS = (
    "content-type",
    "user-agent",
    "client-request-id",
    "request-id",
    "webhook-id",
    "webhook-timestamp",
)


@dataclass(frozen=True)
class ReceiverConfig:
    """What the receiver needs, parsed and validated from :class:`Settings`."""

    bootstrap_servers: str
    topic: str
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 1024 * 1024
    client_states: Mapping[str, str] = field(default_factory=dict, repr=False)
    signing_keys: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    signature_tolerance_s: float = 300.0
    produce_timeout_s: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ReceiverConfig:
        """Parse the secret mappings; raise :class:`SettingsError` for unusable values."""
        client_states = parse_secret_map(
            settings.receiver_client_states, "SENDONCE_RECEIVER_CLIENT_STATES"
        )
        sources = parse_source_secrets(
            settings.receiver_signing_secrets, "SENDONCE_RECEIVER_SIGNING_SECRETS"
        )
        keys: dict[str, bytes] = {}
        for source, secret in sources.items():
            try:
                keys[source] = decode_secret(secret)
            except ValueError as exc:
                raise SettingsError(
                    f"SENDONCE_RECEIVER_SIGNING_SECRETS: {source!r}: {exc}"
                ) from None
        if settings.receiver_max_body_bytes < 1:
            raise SettingsError("SENDONCE_RECEIVER_MAX_BODY_BYTES must be at least 1")
        if not 0 <= settings.receiver_port <= 65535:
            raise SettingsError("SENDONCE_RECEIVER_PORT must be between 0 and 65535")
        if settings.receiver_signature_tolerance_s <= 0:
            raise SettingsError("SENDONCE_RECEIVER_SIGNATURE_TOLERANCE_S must be positive")
        if settings.receiver_produce_timeout_s <= 0:
            raise SettingsError("SENDONCE_RECEIVER_PRODUCE_TIMEOUT_S must be positive")
        return cls(
            bootstrap_servers=settings.bootstrap_servers,
            topic=settings.topics.webhooks_raw,
            host=settings.receiver_host,
            port=settings.receiver_port,
            max_body_bytes=settings.receiver_max_body_bytes,
            client_states=client_states,
            signing_keys=keys,
            signature_tolerance_s=settings.receiver_signature_tolerance_s,
            produce_timeout_s=settings.receiver_produce_timeout_s,
        )


class _Rejected(Exception):
    """A request answered with an error status; rendered by the error middleware."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message, "status": status}, status=status, headers=headers)


def _reject_constant(name: str) -> Any:
    # NaN/Infinity are not JSON; accepting them would put invalid JSON in payloads.
    raise ValueError(f"{name} is not valid JSON")


def _decode_json(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _Rejected(400, "body is not UTF-8") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        # Position only: the decoder's message never quotes the body, but the
        # line/column is all a sender needs.
        raise _Rejected(400, f"malformed JSON (line {exc.lineno}, column {exc.colno})") from None
    except (ValueError, RecursionError):
        raise _Rejected(400, "malformed JSON") from None


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class WebhookReceiver:
    """The aiohttp application plus its Kafka sink.

    ``sink`` defaults to a :class:`KafkaEventSink` created when the app starts
    and closed (flushed) when it stops; pass your own to test the HTTP layer
    without Kafka. ``clock`` (unix seconds) is used for ``received_at`` and the
    signature tolerance.
    """

    def __init__(
        self,
        config: ReceiverConfig,
        *,
        sink: EventSink | None = None,
        clock: Callable[[], float] = time.time,
        codec: SchemaCodec | None = None,
    ) -> None:
        self.config = config
        self._sink = sink
        self._owns_sink = sink is None
        self._clock = clock
        self._codec = codec or default_codec()
        self._verifier = ClientStateVerifier(config.client_states)
        self._runner: web.AppRunner | None = None
        # Responses by status code, for benchmarks and /healthz.
        self.stats: Counter[int] = Counter()
        self.app = self._make_app()

    # -- application -------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        # client_max_size enforces the limit while reading, for bodies without
        # (or with a lying) Content-Length; the handlers check Content-Length first.
        app = web.Application(
            client_max_size=self.config.max_body_bytes, middlewares=[self._middleware]
        )
        app.router.add_route("POST", "/graph/notifications", self._graph)
        app.router.add_route("GET", "/graph/notifications", self._graph)
        app.router.add_route("POST", "/graph/lifecycle", self._graph)
        app.router.add_route("GET", "/graph/lifecycle", self._graph)
        app.router.add_route("POST", "/webhooks/{source}", self._signed)
        app.router.add_route("GET", "/healthz", self._healthz)
        app.router.add_route("GET", "/metrics", self._metrics)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, app: web.Application) -> None:
        if self._sink is None:
            self._sink = KafkaEventSink(
                self.config.bootstrap_servers, timeout_s=self.config.produce_timeout_s
            )

    async def _on_cleanup(self, app: web.Application) -> None:
        if self._owns_sink and self._sink is not None:
            sink, self._sink = self._sink, None
            # flush() blocks: keep the loop free for other cleanup meanwhile.
            await asyncio.to_thread(sink.close)

    @property
    def sink(self) -> EventSink:
        """The sink events go to (available once the app started)."""
        if self._sink is None:
            raise RuntimeError("the receiver has not started")
        return self._sink

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            response = await handler(request)
        except _Rejected as exc:
            response = _error(exc.status, exc.message, exc.headers)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            response = _error(exc.status, exc.reason, allow)
        except Exception as exc:
            # The type only: an exception's message could quote request data.
            log.error(
                "unexpected %s handling %s %s", type(exc).__name__, request.method, request.path
            )
            response = _error(500, "internal error")
        self.stats[response.status] += 1
        RESPONSES.labels(str(response.status)).inc()
        # The path only: the query string can hold a validationToken.
        log.debug(
            "%s %s -> %d in %.1f ms",
            request.method,
            request.path,
            response.status,
            (time.perf_counter() - started) * 1000,
        )
        return response

    # -- helpers -------------------------------------------------------------------------

    async def _read_json_body(self, request: web.Request) -> bytes:
        limit = self.config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise _Rejected(413, f"body larger than {limit} bytes")
        if not _is_json(request.content_type):
            raise _Rejected(415, "Content-Type must be application/json")
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise _Rejected(413, f"body larger than {limit} bytes") from None

    def _forwarded_headers(self, request: web.Request) -> dict[str, str]:
        return {
            name: request.headers[name] for name in FORWARDED_HEADERS if name in request.headers
        }

    def _encode(self, events: list[dict[str, Any]]) -> list[tuple[bytes, bytes]]:
        try:
            return [
                (e["dedupe_id"].encode(), self._codec.encode("WebhookEvent", e)) for e in events
            ]
        except (CodecError, UnicodeEncodeError, ValueError):
            # e.g. a lone surrogate escape in a JSON string: valid JSON, not UTF-8.
            raise _Rejected(400, "the event cannot be encoded (invalid text?)") from None

    async def _produce(self, events: list[dict[str, Any]]) -> web.Response:
        records = self._encode(events)
        try:
            await self.sink.send_all(self.config.topic, records)
        except ProduceError as exc:
            log.warning("answering 503: %d events not acknowledged by Kafka: %s", len(records), exc)
            retry_after = str(max(1, math.ceil(self.config.produce_timeout_s)))
            raise _Rejected(
                503, "events could not be stored; retry later", {"Retry-After": retry_after}
            ) from None
        PRODUCED.inc(len(records))
        return web.json_response({"accepted": len(records)}, status=202)

    # -- handlers ------------------------------------------------------------------------

    async def _graph(self, request: web.Request) -> web.Response:
        token = request.query.get("validationToken")
        if token is not None:
            # Subscription handshake: Graph wants the token back as plain text
            # within 10 s. No Kafka involved, so it works even while Kafka is down.
            VALIDATIONS.inc()
            return web.Response(text=token, content_type="text/plain")
        if request.method != "POST":
            raise _Rejected(405, "GET is only for the validationToken handshake", {"Allow": "POST"})
        document = _decode_json(await self._read_json_body(request))
        try:
            notifications = parse_notifications(document)
        except NotificationError as exc:
            raise _Rejected(400, str(exc)) from None
        NOTIFICATIONS.labels("graph").inc(len(notifications))
        if not self._verifier.verify_all(notifications):
            REJECTED.labels("client_state").inc()
            # Ids only, never the clientState values; repr() escapes hostile text.
            log.warning(
                "rejected %d Graph notifications: clientState missing, wrong or not "
                "configured (subscriptions %s)",
                len(notifications),
                sorted({repr((n.subscription_id or "")[:64]) for n in notifications}),
            )
            raise _Rejected(403, "clientState does not match the subscription's secret")
        received_ms = int(self._clock() * 1000)
        headers = self._forwarded_headers(request)
        events = [
            to_webhook_event(n, received_at_ms=received_ms, headers=headers) for n in notifications
        ]
        return await self._produce(events)

    async def _signed(self, request: web.Request) -> web.Response:
        source = request.match_info["source"]
        key = self.config.signing_keys.get(source)
        if key is None:
            REJECTED.labels("unknown_source").inc()
            raise _Rejected(404, "unknown webhook source")
        body = await self._read_json_body(request)
        NOTIFICATIONS.labels("signed").inc()
        webhook_id = request.headers.get("webhook-id")
        try:
            verify_signature(
                key,
                webhook_id=webhook_id,
                timestamp=request.headers.get("webhook-timestamp"),
                signature=request.headers.get("webhook-signature"),
                body=body,
                now=self._clock(),
                tolerance_s=self.config.signature_tolerance_s,
            )
        except SignatureError as exc:
            REJECTED.labels("signature").inc()
            log.warning("rejected signed webhook for source %r: %s", source, exc)
            raise _Rejected(401, str(exc)) from None
        assert webhook_id is not None  # verify_signature rejected a missing one
        document = _decode_json(body)
        event_type = document.get("type") if isinstance(document, dict) else None
        event = {
            "dedupe_id": f"{source}:{webhook_id}",
            "source": source,
            "kind": "NOTIFICATION",
            "tenant_id": None,
            "subscription_id": None,
            "change_type": event_type if isinstance(event_type, str) else None,
            "resource": None,
            "resource_id": None,
            "lifecycle_event": None,
            "client_state_verified": True,
            "received_at": int(self._clock() * 1000),
            "payload": body.decode("utf-8"),
            "headers": self._forwarded_headers(request),
        }
        return await self._produce([event])

    async def _healthz(self, request: web.Request) -> web.Response:
        ok = await self.sink.healthy(self.config.topic)
        return web.json_response(
            {"status": "ok" if ok else "kafka unavailable", "topic": self.config.topic},
            status=200 if ok else 503,
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest())
        # aiohttp refuses a charset inside content_type=; set the header as is.
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    # -- running -------------------------------------------------------------------------

    async def start(self) -> str:
        """Listen on the configured host and port; return the base URL (``http://h:p``)."""
        # No access log: aiohttp's prints the query string (validationToken).
        runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=10.0
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.config.host, self.config.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        host, port = runner.addresses[0][:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    async def stop(self) -> None:
        """Stop listening, finish requests in flight, flush and close the producer."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> WebhookReceiver:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def build_app(settings: Settings, *, sink: EventSink | None = None) -> web.Application:
    """The receiver's aiohttp application for ``settings`` (for aiohttp's test tools).

    Run it with ``access_log=None`` (as :meth:`WebhookReceiver.start` does):
    aiohttp's access log prints the query string, which can hold a validationToken.
    """
    return WebhookReceiver(ReceiverConfig.from_settings(settings), sink=sink).app


async def serve(
    config: ReceiverConfig, stop: asyncio.Event, codec: SchemaCodec | None = None
) -> None:
    """Run the receiver until ``stop`` is set."""
    receiver = WebhookReceiver(config, codec=codec)
    url = await receiver.start()
    log.info(
        "webhook receiver listening on %s (events to %s at %s)",
        url,
        config.topic,
        config.bootstrap_servers,
    )
    try:
        await stop.wait()
    finally:
        log.info("webhook receiver stopping")
        await receiver.stop()


def run_receiver(settings: Settings, codec: SchemaCodec | None = None) -> int:
    """``sendonce receiver``: serve until SIGTERM or SIGINT; the exit code.

    ``codec`` encodes the events (the registry's wire format when one is configured).
    """
    config = ReceiverConfig.from_settings(settings)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve(config, stop, codec)

    try:
        asyncio.run(main())
    except OSError as exc:
        log.error("webhook receiver cannot listen on %s:%d: %s", config.host, config.port, exc)
        return 1
    return 0


class ReceiverThread(Service):
    """A :class:`WebhookReceiver` on its own event loop in a background thread.

    For tests and benchmarks that drive it with a blocking HTTP client::

        with ReceiverThread(ReceiverConfig.from_settings(settings)) as running:
            urllib.request.urlopen(running.url + "/healthz")
    """

    def __init__(self, config: ReceiverConfig, *, sink: EventSink | None = None) -> None:
        self.config = config
        self._sink = sink
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self.receiver: WebhookReceiver | None = None
        self.url = ""

    def start(self, timeout: float = 30.0) -> str:
        """Start serving; return the base URL once the socket listens."""
        self._thread = threading.Thread(target=self._run, name="webhook-receiver", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"the receiver did not start within {timeout}s")
        if self._error is not None:
            raise self._error
        return self.url

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # handed to start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self.receiver = WebhookReceiver(self.config, sink=self._sink)
        self.url = await self.receiver.start()
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            await self.receiver.stop()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop serving and wait for the thread to end."""
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"the receiver did not stop within {timeout}s")
