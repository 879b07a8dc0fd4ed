"""A FAKE of the Confluent Schema Registry REST API, for tests only.

No real schema registry could be had from the package registries reachable here (see
schemas/README.md), so sendonce's side of the protocol is tested against this: an
in-memory registry served over HTTP on loopback (``http.server`` in a thread). It
implements just the calls sendonce makes, with the Confluent status codes, error codes
and content type, and checks BACKWARD compatibility with the avro library (the new
schema as reader of the latest version). It proves our requests and our handling of
the answers, not that a real registry answers the same way.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import avro.compatibility
import avro.errors
import avro.schema

from sendonce.lifecycle import Service
from sendonce.schemas.fingerprint import parsing_canonical_form

__all__ = ["FakeSchemaRegistry"]

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class _NotFound(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class FakeSchemaRegistry(Service):
    """In-memory fake registry on ``http://127.0.0.1:<free port>`` (``with`` starts it)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ids: dict[str, int] = {}  # canonical form -> id
        self.schemas: dict[int, str] = {}
        self.subjects: dict[str, list[int]] = {}  # subject -> ids by version
        self.config: dict[str, str] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, content type
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> str:
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                registry.requests.append((method, self.path, self.headers.get("Content-Type")))
                try:
                    status, answer = registry.handle(method, self.path, body)
                except _NotFound as exc:
                    status, answer = 404, {"error_code": exc.code, "message": str(exc)}
                except ValueError as exc:
                    status, answer = 422, {"error_code": 42201, "message": str(exc)}
                self._answer(status, answer)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_PUT(self) -> None:
                self._handle("PUT")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # ---- the API ---------------------------------------------------------------------

    def _latest(self, subject: str) -> int:
        versions = self.subjects.get(subject)
        if not versions:
            raise _NotFound(40401, f"Subject '{subject}' not found.")
        return versions[-1]

    def _incompatibilities(self, subject: str, schema: str) -> list[str]:
        level = self.config.get(subject, "BACKWARD")
        if level == "NONE" or subject not in self.subjects:
            return []
        reader = avro.schema.parse(schema)
        writer = avro.schema.parse(self.schemas[self._latest(subject)])
        checker: Any = avro.compatibility.ReaderWriterCompatibilityChecker()  # type: ignore[no-untyped-call]
        result = checker.get_compatibility(reader, writer)
        if result.compatibility is avro.compatibility.SchemaCompatibilityType.compatible:
            return []
        return [str(m) for m in result.messages] or ["incompatible"]

    def handle(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        path, _, _query = path.partition("?")
        with self.lock:
            m = re.fullmatch(r"/subjects/([^/]+)/versions", path)
            if m and method == "POST":
                subject = _unquote(m[1])
                schema = _schema_of(body)
                canonical = parsing_canonical_form(schema)
                schema_id = self.ids.get(canonical)
                versions = self.subjects.setdefault(subject, [])
                if schema_id is None or schema_id not in versions:
                    problems = self._incompatibilities(subject, schema) if versions else []
                    if problems:
                        return 409, {
                            "error_code": 409,
                            "message": "Schema being registered is incompatible with an "
                            "earlier schema for subject "
                            f'"{subject}", details: {problems}',
                        }
                    if schema_id is None:
                        schema_id = len(self.schemas) + 1
                        self.ids[canonical] = schema_id
                        self.schemas[schema_id] = schema
                    versions.append(schema_id)
                return 200, {"id": schema_id}
            m = re.fullmatch(r"/subjects/([^/]+)", path)
            if m and method == "POST":
                subject = _unquote(m[1])
                schema_id = self.ids.get(parsing_canonical_form(_schema_of(body)))
                versions = self.subjects.get(subject) or []
                if not versions:
                    raise _NotFound(40401, f"Subject '{subject}' not found.")
                if schema_id is None or schema_id not in versions:
                    raise _NotFound(40403, "Schema not found")
                return 200, {
                    "subject": subject,
                    "id": schema_id,
                    "version": versions.index(schema_id) + 1,
                    "schema": self.schemas[schema_id],
                }
            m = re.fullmatch(r"/subjects/([^/]+)/versions/([^/]+)", path)
            if m and method == "GET":
                subject = _unquote(m[1])
                versions = self.subjects.get(subject) or []
                if not versions:
                    raise _NotFound(40401, f"Subject '{subject}' not found.")
                number = len(versions) if m[2] == "latest" else int(m[2])
                if not 1 <= number <= len(versions):
                    raise _NotFound(40402, f"Version {m[2]} not found.")
                schema_id = versions[number - 1]
                return 200, {
                    "subject": subject,
                    "version": number,
                    "id": schema_id,
                    "schema": self.schemas[schema_id],
                }
            m = re.fullmatch(r"/subjects/([^/]+)/versions", path)
            if m and method == "GET":
                subject = _unquote(m[1])
                if subject not in self.subjects:
                    raise _NotFound(40401, f"Subject '{subject}' not found.")
                return 200, list(range(1, len(self.subjects[subject]) + 1))
            m = re.fullmatch(r"/config/([^/]+)", path)
            if m and method == "PUT":
                level = str((body or {}).get("compatibility", ""))
                if level not in ("NONE", "BACKWARD", "FORWARD", "FULL"):
                    raise ValueError(f"Invalid compatibility level {level}")
                self.config[_unquote(m[1])] = level
                return 200, {"compatibility": level}
            m = re.fullmatch(r"/compatibility/subjects/([^/]+)/versions/latest", path)
            if m and method == "POST":
                subject = _unquote(m[1])
                self._latest(subject)
                problems = self._incompatibilities(subject, _schema_of(body))
                return 200, {"is_compatible": not problems, "messages": problems}
            m = re.fullmatch(r"/schemas/ids/(\d+)", path)
            if m and method == "GET":
                schema_id = int(m[1])
                if schema_id not in self.schemas:
                    raise _NotFound(40403, "Schema not found")
                return 200, {"schema": self.schemas[schema_id]}
            raise _NotFound(404, f"no route {method} {path}")


def _unquote(text: str) -> str:
    from urllib.parse import unquote

    return unquote(text)


def _schema_of(body: Any) -> str:
    if not isinstance(body, dict) or not isinstance(body.get("schema"), str):
        raise ValueError("Input schema is an invalid Avro schema")
    if body.get("schemaType", "AVRO") != "AVRO":
        raise ValueError("only AVRO in this fake")
    try:
        avro.schema.parse(body["schema"])
    except (avro.errors.AvroException, ValueError) as exc:
        raise ValueError(f"Input schema is an invalid Avro schema: {exc}") from None
    return str(body["schema"])
