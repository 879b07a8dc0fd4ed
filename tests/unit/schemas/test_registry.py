"""The Confluent wire format, the registry client and `sendonce schemas` (against a FAKE).

No real schema registry could be had here (see schemas/README.md); the fake in
sendonce/dev/registry.py checks only our side of the REST protocol.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sendonce.cli.main import main
from sendonce.dev.registry import FakeSchemaRegistry
from sendonce.schemas.codec import CONFLUENT_HEADER_SIZE, MAGIC, SchemaCodec
from sendonce.schemas.errors import NotSingleObjectError, UnknownSchemaError
from sendonce.schemas.registry import (
    CONTENT_TYPE,
    RegistryError,
    SchemaRegistryClient,
    codec_for_settings,
    local_schema_texts,
    registry_codec,
    resolving,
    topic_subjects,
)
from sendonce.settings import Settings, SettingsError

from .samples import SAMPLES

SCHEMA_DIR = Path(__file__).resolve().parents[3] / "schemas"


@pytest.fixture
def registry() -> Iterator[FakeSchemaRegistry]:
    with FakeSchemaRegistry() as fake:
        yield fake


@pytest.fixture
def client(registry: FakeSchemaRegistry) -> SchemaRegistryClient:
    return SchemaRegistryClient(registry.url, timeout_s=5)


def _register_all(client: SchemaRegistryClient, prefix: str = "") -> None:
    texts = local_schema_texts()
    for subject, name in topic_subjects(prefix).items():
        client.set_compatibility(subject, "BACKWARD")
        client.register(subject, texts[name])


def _evolved(name: str, field: dict[str, Any]) -> str:
    definition = json.loads(local_schema_texts()[name])
    definition["fields"].append(field)
    return json.dumps(definition)


# ---- framing ---------------------------------------------------------------------------


def test_confluent_framing_magic_byte_and_big_endian_id() -> None:
    codec = SchemaCodec()
    codec.register_id(0x01020304, local_schema_texts()["EmailIntent"])
    codec.use_registry_id("EmailIntent", 0x01020304)
    data = codec.encode("EmailIntent", SAMPLES["EmailIntent"])
    assert data[:CONFLUENT_HEADER_SIZE] == b"\x00\x01\x02\x03\x04"
    plain = SchemaCodec().encode("EmailIntent", SAMPLES["EmailIntent"])
    assert plain[:2] == MAGIC
    # Same Avro body, other header.
    assert data[CONFLUENT_HEADER_SIZE:] == plain[10:]
    assert codec.registry_id("EmailIntent") == 0x01020304
    assert codec.registry_id("EmailResult") is None


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_round_trip_both_framings_fast_and_reference(name: str) -> None:
    codec = SchemaCodec()
    text = local_schema_texts()[name]
    single = codec.encode(name, SAMPLES[name])
    codec.register_id(7, text)
    codec.use_registry_id(name, 7)
    framed = codec.encode(name, SAMPLES[name])
    assert framed[0] == 0 and framed[1:5] == (7).to_bytes(4, "big")
    assert framed == codec._reference_encode(name, SAMPLES[name])
    for data in (single, framed):
        decoded = codec.decode(data, expect=name)
        assert decoded == codec._reference_decode(data, expect=name)
        assert codec.encode(name, decoded) == framed
    # A codec that only knows the id (no registry) still reads single-object records.
    assert SchemaCodec().decode(single, expect=name) == codec.decode(framed, expect=name)


def test_unknown_id_is_a_clear_error_without_registry() -> None:
    codec = SchemaCodec()
    data = b"\x00\x00\x00\x01\x00" + b"\x02"
    with pytest.raises(UnknownSchemaError, match="unknown schema registry id 256") as caught:
        codec.decode(data)
    assert caught.value.schema_id == 256
    assert caught.value.error_type == "unknown_schema"
    assert "no schema registry configured" in str(caught.value)
    with pytest.raises(NotSingleObjectError, match="too short for a schema registry"):
        codec.decode(b"\x00\x00\x01")


def test_use_registry_id_needs_the_current_version() -> None:
    codec = SchemaCodec()
    codec.register_id(3, local_schema_texts()["EmailIntent"])
    with pytest.raises(UnknownSchemaError, match="registry id 3 is not the current version"):
        codec.use_registry_id("EmailResult", 3)
    with pytest.raises(UnknownSchemaError):
        codec.use_registry_id("EmailIntent", 4)


def test_decode_fetches_an_unknown_id_once(
    registry: FakeSchemaRegistry, client: SchemaRegistryClient
) -> None:
    _register_all(client)
    newer = _evolved(
        "EmailIntent", {"name": "priority", "type": ["null", "string"], "default": None}
    )
    new_id = client.register("email.intents-value", newer)
    writer = SchemaCodec(None)
    writer.register_id(new_id, newer)
    writer.use_registry_id("EmailIntent", new_id)
    data = writer.encode("EmailIntent", {**SAMPLES["EmailIntent"], "priority": "high"})

    # A tool's codec (own client, nothing cached) fetches the new id on decode, once.
    codec = SchemaCodec()
    codec.id_resolver = SchemaRegistryClient(registry.url).schema
    codec.fetch_on_decode = True
    fetches_before = sum(1 for r in registry.requests if r[1].startswith("/schemas/ids/"))
    for _ in range(3):
        assert codec.decode(data, expect="EmailIntent") == SAMPLES["EmailIntent"]
    fetches = sum(1 for r in registry.requests if r[1].startswith("/schemas/ids/"))
    assert fetches - fetches_before == 1
    # An id the registry does not have: the registry's message, asked once.
    missing = b"\x00" + (999).to_bytes(4, "big") + b"\x00"
    for _ in range(2):
        with pytest.raises(UnknownSchemaError, match=r"unknown schema registry id 999.*40403"):
            codec.decode(missing)
    assert sum(1 for r in registry.requests if r[1] == "/schemas/ids/999") == 1


def test_worker_codec_resolves_unknown_ids_off_the_loop(
    registry: FakeSchemaRegistry, client: SchemaRegistryClient
) -> None:
    _register_all(client)
    codec = registry_codec(client, fetch_on_decode=False)
    newer = _evolved("EmailIntent", {"name": "note", "type": "string", "default": ""})
    new_id = client.register("email.intents-value", newer)
    writer = SchemaCodec(None)
    writer.register_id(new_id, newer)
    writer.use_registry_id("EmailIntent", new_id)
    data = writer.encode("EmailIntent", {**SAMPLES["EmailIntent"], "note": "x"})
    with pytest.raises(UnknownSchemaError, match="not resolved yet"):
        codec.decode(data)  # no I/O in decode on the worker's loop

    @dataclass
    class Rec:
        value: bytes | None

    seen: list[dict[str, Any]] = []

    async def handler(records: Sequence[Rec]) -> int:
        seen.extend(codec.decode(r.value) for r in records if r.value is not None)
        return len(records)

    wrapped = resolving(codec, handler)

    async def go() -> int:
        return await wrapped([Rec(data), Rec(None)])

    assert asyncio.run(go()) == 2
    assert seen == [SAMPLES["EmailIntent"]]
    assert new_id in codec.known_ids()


# ---- the client against the fake ------------------------------------------------------------


def test_register_lookup_and_ids(
    registry: FakeSchemaRegistry, client: SchemaRegistryClient
) -> None:
    text = local_schema_texts()["EmailResult"]
    assert client.lookup("email.results.sent-value", text) is None
    first = client.register("email.results.sent-value", text)
    # Same schema, other subject: same id (ids are global per schema).
    assert client.register("email.results.failed-value", text) == first
    found = client.lookup("email.results.sent-value", text)
    assert found is not None and (found.schema_id, found.version) == (first, 1)
    assert json.loads(SchemaRegistryClient(registry.url).schema(first)) == json.loads(text)
    assert client.versions("email.results.sent-value") == [1]
    assert client.versions("nothing-value") == []
    assert all(ct == CONTENT_TYPE for m, _, ct in registry.requests if m != "GET")


def test_compatibility_and_refusal(client: SchemaRegistryClient) -> None:
    subject = "email.intents-value"
    assert client.set_compatibility(subject, "BACKWARD") == "BACKWARD"
    client.register(subject, local_schema_texts()["EmailIntent"])
    ok = _evolved("EmailIntent", {"name": "note", "type": "string", "default": ""})
    assert client.check_compatibility(subject, ok).compatible
    bad = _evolved("EmailIntent", {"name": "note", "type": "string"})  # no default
    result = client.check_compatibility(subject, bad)
    assert not result.compatible and result.messages
    with pytest.raises(RegistryError, match=r"HTTP 409.*incompatible") as caught:
        client.register(subject, bad)
    assert caught.value.status == 409


def test_errors_name_the_call(client: SchemaRegistryClient) -> None:
    with pytest.raises(RegistryError, match=r"HTTP 404 \(error 40401\)") as caught:
        client.check_compatibility("nothing-value", local_schema_texts()["EmailIntent"])
    assert caught.value.not_found and caught.value.error_code == 40401
    with pytest.raises(RegistryError, match="HTTP 422"):
        client.set_compatibility("x-value", "SIDEWAYS")
    with pytest.raises(RegistryError, match="not an http"):
        SchemaRegistryClient("localhost:8081")


def test_unreachable_registry_times_out_clearly() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)  # accepts, never answers
        client = SchemaRegistryClient(f"http://127.0.0.1:{sock.getsockname()[1]}", timeout_s=0.3)
        with pytest.raises(RegistryError, match="unreachable"):
            client.schema(1)


def test_credentials_in_the_url_are_sent_as_basic_auth_and_never_shown() -> None:
    import base64
    import http.server
    import threading

    seen: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"error_code": 401, "message": "Unauthorized"}')

        def log_message(self, *args: Any) -> None:
            return None

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        client = SchemaRegistryClient(f"http://api-key:s3cr%40t@127.0.0.1:{port}/")
        assert client.url == f"http://127.0.0.1:{port}"
        with pytest.raises(RegistryError) as refused:
            client.schema(1)
        assert seen == ["Basic " + base64.b64encode(b"api-key:s3cr@t").decode()]
        assert "s3cr" not in str(refused.value)
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(RegistryError) as unreachable:
        SchemaRegistryClient(f"http://k:s3cr3t@127.0.0.1:{port}", timeout_s=0.3).schema(1)
    assert "s3cr3t" not in str(unreachable.value)
    with pytest.raises(RegistryError) as bad:
        SchemaRegistryClient("ftp://k:s3cr3t@host")
    assert "s3cr3t" not in str(bad.value)


def test_registry_codec_needs_registration(client: SchemaRegistryClient) -> None:
    with pytest.raises(RegistryError, match=r"not registered under subject.*schemas register"):
        registry_codec(client)


def test_registry_codec_writes_registered_ids(client: SchemaRegistryClient) -> None:
    _register_all(client, prefix="p.")
    codec = registry_codec(client, prefix="p.")
    for name, record in SAMPLES.items():
        data = codec.encode(name, record)
        found = client.lookup(f"p.{_topic_of(name)}-value", local_schema_texts()[name])
        assert found is not None
        assert data[:5] == b"\x00" + found.schema_id.to_bytes(4, "big")
        assert codec.decode(data, expect=name) == record


def _topic_of(name: str) -> str:
    from sendonce.schemas.registry import TOPIC_SCHEMAS

    return next(t for t, n in TOPIC_SCHEMAS.items() if n == name)


# ---- settings and CLI -----------------------------------------------------------------------


def test_setting() -> None:
    assert Settings().schema_registry_url == ""
    env = {"SENDONCE_SCHEMA_REGISTRY_URL": "http://registry:8081"}
    assert Settings.from_env(env).schema_registry_url == "http://registry:8081"
    with pytest.raises(SettingsError, match="SCHEMA_REGISTRY_URL"):
        Settings.from_env({"SENDONCE_SCHEMA_REGISTRY_URL": "registry:8081"})
    assert codec_for_settings(Settings()).registry_id("EmailIntent") is None


def test_cli_register_then_check(
    registry: FakeSchemaRegistry,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SENDONCE_SCHEMA_REGISTRY_URL", registry.url)
    assert main(["schemas", "check"]) == 0
    assert "new (nothing registered yet)" in capsys.readouterr().out
    assert main(["schemas", "register"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in out[1:]}
    assert set(rows) == set(topic_subjects())
    assert rows["email.intents-value"][0] == "EmailIntent"
    assert rows["email.intents-value"][2:] == ["1", "BACKWARD"]
    assert rows["email.results.sent-value"][1] == rows["email.results.failed-value"][1]
    assert set(registry.config.values()) == {"BACKWARD"}
    assert main(["schemas", "register"]) == 0  # idempotent: same ids, version 1
    assert all(len(v) == 1 for v in registry.subjects.values())
    capsys.readouterr()
    assert main(["schemas", "check"]) == 0
    assert capsys.readouterr().out.count("compatible") == len(topic_subjects())
    codec = codec_for_settings(Settings.from_env())
    assert codec.registry_id("EmailIntent") == int(rows["email.intents-value"][1])


def test_cli_check_refuses_incompatible(
    registry: FakeSchemaRegistry,
    client: SchemaRegistryClient,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A local EmailIntent.avsc with a field added without a default cannot read the
    # registered version's records: BACKWARD refuses it.
    _register_all(client)
    local = json.loads(local_schema_texts()["EmailIntent"])
    local["fields"].append({"name": "required_new", "type": "string"})
    monkeypatch.setattr(
        "sendonce.cli.schemas.local_schema_texts",
        lambda: {**local_schema_texts(), "EmailIntent": json.dumps(local)},
    )
    assert main(["schemas", "check", "--registry", registry.url]) == 1
    captured = capsys.readouterr()
    assert "email.intents-value" in captured.out and "INCOMPATIBLE" in captured.out
    assert "email.intents-value" in captured.err and "required_new" in captured.err


def test_cli_without_registry(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SENDONCE_SCHEMA_REGISTRY_URL", raising=False)
    assert main(["schemas", "check"]) == 1
    assert "SENDONCE_SCHEMA_REGISTRY_URL" in capsys.readouterr().err


def test_unregistered_schemas_are_a_configuration_error(registry: FakeSchemaRegistry) -> None:
    settings = Settings(schema_registry_url=registry.url)
    with pytest.raises(SettingsError, match=r"not registered under subject 'email\."):
        codec_for_settings(settings, fetch_on_decode=False)
