"""A small synchronous client of the Confluent Schema Registry REST API, and the codec
wiring that uses it.

Only what sendonce needs: register a schema under a subject, look an already registered
schema up, set a subject's compatibility level, test a schema against the latest
registered version, and fetch a schema by id. Requests and responses are
``application/vnd.schemaregistry.v1+json``; every call has a timeout; errors are
:class:`RegistryError` with the HTTP status, the registry's ``error_code`` and message.

Subjects follow the TopicNameStrategy: a topic's values are registered under
``<topic>-value`` (see :func:`topic_subjects`).

Where the I/O happens. The worker encodes on its event loop and must never wait for the
registry per record, so :func:`registry_codec` resolves everything it can *before* the
worker starts: the id of each of our schemas (they must already be registered, with
``sendonce schemas register``) and every version registered under each subject. A
record written with an id registered *after* start-up is resolved by the batch handlers
:func:`resolving` wraps: they fetch unknown ids in a thread (``asyncio.to_thread``), once
per id, before the batch is decoded on the loop. An id the registry does not know, or
cannot give while it is down, fails that record's decode with ``UnknownSchemaError``
(the record is dead-lettered with that reason and can be replayed), and is not asked
for again for :data:`schemas.codec.UNKNOWN_ID_RETRY_S`. Command-line tools are
synchronous and let ``decode`` fetch unknown ids itself (``fetch_on_decode``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sendonce.schemas.codec import SCHEMA_DIR, SchemaCodec, default_codec
from sendonce.schemas.errors import CodecError
from sendonce.settings import Settings, SettingsError

__all__ = [
    "CONTENT_TYPE",
    "TOPIC_SCHEMAS",
    "CompatibilityResult",
    "RegisteredSchema",
    "RegistryError",
    "SchemaRegistryClient",
    "local_schema_texts",
    "registry_codec",
    "resolve_unknown_ids",
    "resolving",
    "topic_subjects",
]

log = logging.getLogger("sendonce.schemas.registry")

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"

#: Which schema each topic carries (unprefixed topic name -> record short name), as in the
#: table of schemas/README.md. The deferred lane keeps the intents' original bytes.
TOPIC_SCHEMAS: dict[str, str] = {
    "email.intents": "EmailIntent",
    "email.intents.deferred": "EmailIntent",
    "email.results.sent": "EmailResult",
    "email.results.ambiguous": "EmailResult",
    "email.results.failed": "EmailResult",
    "email.intents.dlq": "DeadLetter",
    "email.webhooks.raw": "WebhookEvent",
    "email.webhooks.deduped": "WebhookEvent",
    "email.webhooks.replays": "WebhookEvent",
    "email.commands": "OperatorCommand",
}

# Confluent error codes (https://docs.confluent.io/platform/current/schema-registry/develop/api.html)
SUBJECT_NOT_FOUND = 40401
VERSION_NOT_FOUND = 40402
SCHEMA_NOT_FOUND = 40403


class RegistryError(Exception):
    """A schema registry request failed: unreachable, timed out, or answered an error."""

    def __init__(
        self, message: str, *, status: int | None = None, error_code: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code

    @property
    def not_found(self) -> bool:
        """The subject, version or schema does not exist (HTTP 404)."""
        return self.status == 404


@dataclass(frozen=True)
class RegisteredSchema:
    """One version of a subject."""

    subject: str
    version: int
    schema_id: int
    schema: str


@dataclass(frozen=True)
class CompatibilityResult:
    """The registry's answer to "can this schema be the next version of the subject"."""

    compatible: bool
    messages: tuple[str, ...] = ()


def topic_subjects(prefix: str = "") -> dict[str, str]:
    """Subject (TopicNameStrategy, ``<topic>-value``) -> record short name, for every topic."""
    return {f"{prefix}{topic}-value": name for topic, name in TOPIC_SCHEMAS.items()}


def local_schema_texts(schema_dir: str | Path = SCHEMA_DIR) -> dict[str, str]:
    """Record short name -> the ``.avsc`` file's text (what gets registered)."""
    texts: dict[str, str] = {}
    for path in sorted(Path(schema_dir).glob("*.avsc")):
        text = path.read_text(encoding="utf-8")
        texts[str(json.loads(text)["name"]).rpartition(".")[2]] = text
    return texts


class SchemaRegistryClient:
    """Synchronous client of the Confluent Schema Registry REST API (ids cached)."""

    def __init__(self, url: str, *, timeout_s: float = 10.0) -> None:
        parsed = urllib.parse.urlsplit(url)
        # Credentials in the URL (https://key:secret@host) become a Basic header and
        # never appear in an error message or a log line.
        host = parsed.hostname or ""
        if parsed.port is not None:
            host = f"{host}:{parsed.port}"
        bare = urllib.parse.urlunsplit(parsed._replace(netloc=host)).rstrip("/")
        if parsed.scheme not in ("http", "https") or not host:
            raise RegistryError(f"schema registry URL {bare!r} is not an http(s) URL")
        #: The registry's address, without credentials.
        self.url = bare
        self._headers = {"Accept": CONTENT_TYPE, "Content-Type": CONTENT_TYPE}
        if parsed.username is not None:
            user = urllib.parse.unquote(parsed.username)
            secret = urllib.parse.unquote(parsed.password or "")
            token = base64.b64encode(f"{user}:{secret}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
        self.timeout_s = timeout_s
        self._schemas: dict[int, str] = {}

    # ---- requests ------------------------------------------------------------------

    def _request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers=self._headers,
        )
        where = f"{method} {path}"
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            raise self._error(where, exc) from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RegistryError(
                f"schema registry {self.url} unreachable ({where}): {reason}"
            ) from None
        try:
            return json.loads(payload) if payload else None
        except ValueError:
            raise RegistryError(f"schema registry answered {where} with non-JSON") from None

    def _error(self, where: str, exc: urllib.error.HTTPError) -> RegistryError:
        code: int | None = None
        message = exc.reason if isinstance(exc.reason, str) else str(exc.reason)
        try:
            body = json.loads(exc.read() or b"null")
        except ValueError:
            body = None
        if isinstance(body, dict):
            raw_code = body.get("error_code")
            code = raw_code if isinstance(raw_code, int) else None
            message = str(body.get("message") or message)
        return RegistryError(
            f"schema registry: {where}: HTTP {exc.code}"
            + (f" (error {code})" if code is not None else "")
            + f": {message}",
            status=exc.code,
            error_code=code,
        )

    @staticmethod
    def _subject(subject: str) -> str:
        return urllib.parse.quote(subject, safe="")

    # ---- API -----------------------------------------------------------------------

    def register(self, subject: str, schema: str) -> int:
        """Register ``schema`` (Avro JSON text) under ``subject``; its id (same if known)."""
        body = self._request(
            "POST",
            f"/subjects/{self._subject(subject)}/versions",
            {"schema": schema, "schemaType": "AVRO"},
        )
        schema_id = _int_field(body, "id", "register")
        self._schemas.setdefault(schema_id, schema)
        return schema_id

    def lookup(self, subject: str, schema: str) -> RegisteredSchema | None:
        """The version of ``subject`` that is ``schema``, or None when it is not registered."""
        try:
            body = self._request(
                "POST",
                f"/subjects/{self._subject(subject)}",
                {"schema": schema, "schemaType": "AVRO"},
            )
        except RegistryError as exc:
            if exc.not_found:
                return None
            raise
        schema_id = _int_field(body, "id", "lookup")
        self._schemas.setdefault(schema_id, schema)
        return RegisteredSchema(subject, _int_field(body, "version", "lookup"), schema_id, schema)

    def set_compatibility(self, subject: str, level: str = "BACKWARD") -> str:
        """Set ``subject``'s compatibility level; the level the registry now reports."""
        body = self._request("PUT", f"/config/{self._subject(subject)}", {"compatibility": level})
        return str(body.get("compatibility", level)) if isinstance(body, dict) else level

    def check_compatibility(self, subject: str, schema: str) -> CompatibilityResult:
        """Whether ``schema`` is compatible with the latest version of ``subject``.

        Raises :class:`RegistryError` with ``not_found`` when nothing is registered.
        """
        body = self._request(
            "POST",
            f"/compatibility/subjects/{self._subject(subject)}/versions/latest?verbose=true",
            {"schema": schema, "schemaType": "AVRO"},
        )
        if not isinstance(body, dict) or not isinstance(body.get("is_compatible"), bool):
            raise RegistryError("schema registry answered the compatibility check oddly")
        messages = body.get("messages") or []
        return CompatibilityResult(
            body["is_compatible"], tuple(str(m) for m in messages if m is not None)
        )

    def schema(self, schema_id: int) -> str:
        """The schema (Avro JSON text) registered under ``schema_id`` (fetched once)."""
        cached = self._schemas.get(schema_id)
        if cached is not None:
            return cached
        body = self._request("GET", f"/schemas/ids/{int(schema_id)}")
        if not isinstance(body, dict) or not isinstance(body.get("schema"), str):
            raise RegistryError(f"schema registry gave no schema for id {schema_id}")
        if body.get("schemaType", "AVRO") != "AVRO":
            raise RegistryError(f"schema id {schema_id} is a {body['schemaType']} schema")
        self._schemas[schema_id] = body["schema"]
        return str(body["schema"])

    def versions(self, subject: str) -> list[int]:
        """Versions registered under ``subject`` (empty when the subject does not exist)."""
        try:
            body = self._request("GET", f"/subjects/{self._subject(subject)}/versions")
        except RegistryError as exc:
            if exc.not_found:
                return []
            raise
        return [int(v) for v in body] if isinstance(body, list) else []

    def version(self, subject: str, version: int | str = "latest") -> RegisteredSchema:
        """One registered version of ``subject``."""
        body = self._request("GET", f"/subjects/{self._subject(subject)}/versions/{version}")
        schema_id = _int_field(body, "id", "version")
        text = str(body.get("schema", ""))
        self._schemas.setdefault(schema_id, text)
        return RegisteredSchema(subject, _int_field(body, "version", "version"), schema_id, text)


def _int_field(body: Any, name: str, call: str) -> int:
    value = body.get(name) if isinstance(body, dict) else None
    if not isinstance(value, int) or isinstance(value, bool):
        raise RegistryError(f"schema registry answered {call} without an integer {name!r}")
    return value


# --------------------------------------------------------------------------------------
# The codec wiring
# --------------------------------------------------------------------------------------


def registry_codec(
    client: SchemaRegistryClient,
    *,
    prefix: str = "",
    fetch_on_decode: bool = True,
    schema_dir: str | Path = SCHEMA_DIR,
) -> SchemaCodec:
    """A codec that encodes in the Confluent wire format with the registry's ids.

    Each local schema must be registered under every subject of the topics that carry
    it (``sendonce schemas register``); a schema that is not is a :class:`RegistryError`
    naming the subject. Every version registered under those subjects is made known
    for decoding (versions our readers cannot read are skipped with a warning: records
    written with them fail to decode, naming the id). Single-object records decode as
    before. Does all its I/O here, none per record (unless ``fetch_on_decode``).
    """
    codec = SchemaCodec(schema_dir)
    texts = local_schema_texts(schema_dir)
    subjects = topic_subjects(prefix)
    for name, text in texts.items():
        ids: dict[str, int] = {}
        for subject, carried in subjects.items():
            if carried != name:
                continue
            found = client.lookup(subject, text)
            if found is None:
                raise RegistryError(
                    f"{name} (schemas/{name}.avsc) is not registered under subject "
                    f"{subject!r} at {client.url}; run `sendonce schemas register`"
                )
            ids[subject] = found.schema_id
        if not ids:
            continue
        schema_id = next(iter(ids.values()))
        if len(set(ids.values())) > 1:
            log.warning(
                "%s has different ids per subject (%s); writing with %d", name, ids, schema_id
            )
        for other in ids.values():
            codec.register_id(other, text)
        codec.use_registry_id(name, schema_id)
    for subject in subjects:
        for number in client.versions(subject):
            registered = client.version(subject, number)
            if registered.schema_id in codec.known_ids():
                continue
            try:
                codec.register_id(registered.schema_id, registered.schema)
            except CodecError as exc:
                log.warning(
                    "schema id %d (%s version %d) is not readable here: %s",
                    registered.schema_id,
                    subject,
                    number,
                    exc,
                )
    codec.id_resolver = client.schema
    codec.fetch_on_decode = fetch_on_decode
    return codec


class _HasValue(Protocol):
    @property
    def value(self) -> bytes | None: ...


R = TypeVar("R", bound=_HasValue)
T = TypeVar("T")


async def resolve_unknown_ids(codec: SchemaCodec, values: Iterable[bytes | None]) -> None:
    """Fetch the schemas of registry ids in ``values`` the codec lacks, off the loop.

    The HTTP request runs in a thread; the (CPU only) registration in the codec runs on
    the caller's loop. Failures are remembered by the codec (named by ``decode``).
    """
    resolver = codec.id_resolver
    if resolver is None:
        return
    for schema_id in sorted(codec.unknown_ids(values)):
        if not codec.should_fetch(schema_id):
            continue
        try:
            text = await asyncio.to_thread(resolver, schema_id)
            codec.register_id(schema_id, text)
            log.info("resolved schema registry id %d", schema_id)
        except (RegistryError, CodecError) as exc:
            codec.id_failed(schema_id, str(exc))
            log.warning("schema registry id %d not resolved: %s", schema_id, exc)


def resolving(
    codec: SchemaCodec, handler: Callable[[Sequence[R]], Awaitable[T]]
) -> Callable[[Sequence[R]], Awaitable[T]]:
    """Wrap a batch handler so unknown registry ids are fetched (in a thread) first.

    Without a registry (``codec.id_resolver`` unset) the handler is returned as is.
    """
    if codec.id_resolver is None:
        return handler

    async def handle(records: Sequence[R]) -> T:
        await resolve_unknown_ids(codec, (record.value for record in records))
        return await handler(records)

    return handle


def codec_for_settings(settings: Settings, *, fetch_on_decode: bool = True) -> SchemaCodec:
    """The codec this configuration produces with (resolved now: ids, known versions).

    ``fetch_on_decode=False`` for code on an event loop (the worker), which resolves
    unknown ids off the loop with :func:`schemas.registry.resolving` instead.
    """
    if not settings.schema_registry_url:
        return default_codec()
    try:
        return registry_codec(
            SchemaRegistryClient(settings.schema_registry_url),
            prefix=settings.topic_prefix,
            fetch_on_decode=fetch_on_decode,
        )
    except RegistryError as exc:
        # `sendonce: configuration error: ...` (exit 2) instead of a traceback.
        raise SettingsError(f"SENDONCE_SCHEMA_REGISTRY_URL: {exc}") from exc
