"""SchemaCodec: byte layout, round trips, defaults and every error class."""

from __future__ import annotations

import copy
import datetime
import io
import json
from typing import Any

import avro.io
import avro.schema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sendonce.schemas.codec import MAGIC, SCHEMA_DIR, SchemaCodec, default_codec
from sendonce.schemas.errors import (
    IncompatibleSchemaError,
    InvalidRecordError,
    InvalidSchemaError,
    MalformedRecordError,
    NotSingleObjectError,
    UnknownSchemaError,
    WrongSchemaError,
)
from tests.unit.schemas.avro_strategies import records, with_defaults
from tests.unit.schemas.samples import INTENT, RESULT, SAMPLES, SECRET
from tests.unit.schemas.test_fingerprint import reference_crc64

NAMES = sorted(SAMPLES)


def avsc(name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((SCHEMA_DIR / f"{name}.avsc").read_text())
    return result


def avro_library_body(name: str, record: dict[str, Any]) -> bytes:
    """Avro binary of ``record`` written by the avro library itself, logical types removed."""
    text = json.dumps(avsc(name)).replace(', "logicalType": "timestamp-millis"', "")
    schema = avro.schema.parse(text)
    out = io.BytesIO()
    avro.io.DatumWriter(schema).write(record, avro.io.BinaryEncoder(out))
    return out.getvalue()


# ---- layout ------------------------------------------------------------------------


def test_default_codec_knows_every_schema_file_and_is_cached() -> None:
    assert default_codec() is default_codec()
    assert set(default_codec().names()) == {f"io.sendonce.{name}" for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_header_is_marker_plus_little_endian_fingerprint(codec: SchemaCodec, name: str) -> None:
    data = codec.encode(name, SAMPLES[name])
    assert data[0] == 0xC3
    assert data[1] == 0x01
    canonical = codec_independent_canonical_form(avsc(name))
    expected = reference_crc64(canonical.encode("utf-8"))
    assert data[2:10] == expected.to_bytes(8, "little")
    assert codec.fingerprint(name) == expected
    # The body is plain Avro binary, byte for byte what the avro library writes.
    assert data[10:] == avro_library_body(name, SAMPLES[name])


def codec_independent_canonical_form(schema: dict[str, Any]) -> str:
    """Canonical form via the avro library (correct once logical types are removed)."""
    text = json.dumps(schema).replace(', "logicalType": "timestamp-millis"', "")
    return str(avro.schema.parse(text).canonical_form)


def test_tiny_record_bytes_literally(codec: SchemaCodec) -> None:
    schema = {
        "type": "record",
        "name": "Tiny",
        "namespace": "io.sendonce.test",
        "fields": [{"name": "n", "type": "long"}, {"name": "s", "type": "string"}],
    }
    fingerprint = codec.register(schema)
    canonical = (
        '{"name":"io.sendonce.test.Tiny","type":"record","fields":'
        '[{"name":"n","type":"long"},{"name":"s","type":"string"}]}'
    )
    assert fingerprint == reference_crc64(canonical.encode())
    data = codec.encode("Tiny", {"n": -2, "s": "é"})
    # zig-zag(-2) = 3; "é" is 2 UTF-8 bytes, length 2 zig-zags to 4.
    assert data == b"\xc3\x01" + fingerprint.to_bytes(8, "little") + b"\x03\x04\xc3\xa9"
    assert codec.decode(data) == {"n": -2, "s": "é"}


# ---- round trips ---------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_sample_round_trip(codec: SchemaCodec, name: str) -> None:
    data = codec.encode(name, SAMPLES[name])
    assert codec.decode(data, expect=name) == SAMPLES[name]
    assert codec.decode(data, expect=f"io.sendonce.{name}") == SAMPLES[name]
    assert codec.writer_name(data) == f"io.sendonce.{name}"


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_generated_round_trip(codec: SchemaCodec, name: str, data: st.DataObject) -> None:
    schema = avsc(name)
    record = data.draw(records(schema))
    decoded = codec.decode(codec.encode(name, record), expect=name)
    assert decoded == with_defaults(schema, record)


def test_left_out_fields_get_their_defaults(codec: SchemaCodec) -> None:
    minimal = {
        k: v
        for k, v in INTENT.items()
        if k in ("tenant_id", "source_event_id", "action_type", "sender", "to", "subject")
    }
    minimal["created_at"] = 5
    decoded = codec.decode(codec.encode("EmailIntent", minimal))
    assert decoded["cc"] == [] and decoded["bcc"] == []
    assert decoded["text_body"] is None and decoded["idempotency_key"] is None
    assert decoded["template_params"] == {} and decoded["headers"] == {}


def test_mutable_defaults_are_not_shared(codec: SchemaCodec) -> None:
    first = codec.decode(codec.encode("DeadLetter", {**SAMPLES["DeadLetter"]}))
    first["original_headers"].append({"key": "x", "value": None})
    record = {k: v for k, v in SAMPLES["DeadLetter"].items() if k != "original_headers"}
    assert codec.decode(codec.encode("DeadLetter", record))["original_headers"] == []


def test_timestamps_are_int_millis_both_ways(codec: SchemaCodec) -> None:
    decoded = codec.decode(codec.encode("EmailResult", RESULT))
    assert decoded["decided_at"] == 1_700_000_555_000
    assert type(decoded["decided_at"]) is int
    assert type(decoded["accepted_at"]) is int
    when = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    with pytest.raises(InvalidRecordError, match="decided_at: expected long, got datetime"):
        codec.encode("EmailResult", {**RESULT, "decided_at": when})


def test_decode_accepts_bytearray_and_memoryview(codec: SchemaCodec) -> None:
    data = codec.encode("EmailIntent", INTENT)
    assert codec.decode(bytearray(data)) == INTENT
    assert codec.decode(memoryview(data)) == INTENT


# ---- encode errors (record validation: test_validation.py) ---------------------------


def test_encode_unknown_schema_name(codec: SchemaCodec) -> None:
    with pytest.raises(UnknownSchemaError, match="'Nope' is not known"):
        codec.encode("Nope", {})


# ---- decode errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "too short"),
        (b"\xc3\x01\x00", "too short"),
        (b"\xc3\x01" + bytes(7), "too short"),
        (b"\x01\x01" + bytes(20), "no Avro single-object marker"),
        (b"\x00\x01", "too short for a schema registry"),
        (b"\xc3\x02" + bytes(20), "no Avro single-object marker"),
        (b'{"json": "instead"}', "no Avro single-object marker"),
    ],
)
def test_not_single_object(codec: SchemaCodec, data: bytes, message: str) -> None:
    with pytest.raises(NotSingleObjectError, match=message) as caught:
        codec.decode(data)
    assert caught.value.error_type == "undecodable"


def test_not_bytes(codec: SchemaCodec) -> None:
    with pytest.raises(NotSingleObjectError, match="expected bytes, got str"):
        codec.decode("c301")  # type: ignore[arg-type]


def test_unknown_fingerprint(codec: SchemaCodec) -> None:
    data = MAGIC + (0x0123456789ABCDEF).to_bytes(8, "little") + b"\x00"
    with pytest.raises(UnknownSchemaError, match="0123456789abcdef") as caught:
        codec.decode(data)
    assert caught.value.fingerprint == 0x0123456789ABCDEF
    assert caught.value.error_type == "unknown_schema"


def test_wrong_schema(codec: SchemaCodec) -> None:
    data = codec.encode("EmailResult", RESULT)
    with pytest.raises(WrongSchemaError) as caught:
        codec.decode(data, expect="EmailIntent")
    assert (
        str(caught.value) == "expected a EmailIntent record, got a io.sendonce.EmailResult record"
    )
    assert caught.value.error_type == "wrong_schema"
    with pytest.raises(WrongSchemaError):
        codec.decode(data, expect="other.namespace.EmailResult")


def intent_bytes(codec: SchemaCodec, **changes: Any) -> bytes:
    return codec.encode("EmailIntent", {**INTENT, "text_body": SECRET, **changes})


def test_truncated_body(codec: SchemaCodec) -> None:
    data = intent_bytes(codec)
    for cut in (11, len(data) // 2, len(data) - 1):
        with pytest.raises(MalformedRecordError, match="does not decode") as caught:
            codec.decode(data[:cut])
        assert SECRET not in str(caught.value)


def test_trailing_garbage(codec: SchemaCodec) -> None:
    with pytest.raises(MalformedRecordError, match="3 unexpected trailing byte"):
        codec.decode(intent_bytes(codec) + b"\x00\x01\x02")


def test_invalid_utf8_in_a_string(codec: SchemaCodec) -> None:
    data = intent_bytes(codec, tenant_id="abc")
    # tenant_id is the first field: length byte 06, then "abc".
    assert data[10:14] == b"\x06abc"
    broken = data[:11] + b"\xff\xfe\xfd" + data[14:]
    with pytest.raises(MalformedRecordError, match="UnicodeDecodeError"):
        codec.decode(broken)


def test_enum_index_out_of_range(codec: SchemaCodec) -> None:
    data = codec.encode("EmailResult", {**RESULT, "result_id": "r"})
    assert data[10:12] == b"\x02r"
    assert data[12] == 2  # DUPLICATE is symbol 1, zig-zag 2.
    broken = data[:12] + b"\x0a" + data[13:]  # symbol 5 does not exist
    with pytest.raises(MalformedRecordError):
        codec.decode(broken)


def test_huge_declared_length_is_rejected_without_allocating(codec: SchemaCodec) -> None:
    data = intent_bytes(codec)
    varint_2_to_40 = b"\x80\x80\x80\x80\x80\x80\x02"  # zig-zag of 2**40, as a long
    broken = data[:10] + varint_2_to_40 + data[11:]
    with pytest.raises(MalformedRecordError):
        codec.decode(broken)


# ---- registry ----------------------------------------------------------------------------


def test_register_is_idempotent_and_returns_the_fingerprint(codec: SchemaCodec) -> None:
    fingerprint = codec.register(json.dumps(avsc("EmailIntent")))
    assert fingerprint == codec.fingerprint("EmailIntent")
    assert codec.register(avsc("EmailIntent")) == fingerprint


@pytest.mark.parametrize(
    "bad",
    [
        "{not json",
        '"string"',
        {"type": "enum", "name": "E", "symbols": ["A"]},
        {"type": "record", "name": "R", "fields": [{"name": "x", "type": "nope"}]},
        {"type": "record", "name": "R"},
    ],
)
def test_register_rejects_invalid_schemas(codec: SchemaCodec, bad: Any) -> None:
    with pytest.raises(InvalidSchemaError):
        codec.register(bad)


def test_register_rejects_a_writer_the_reader_cannot_read(codec: SchemaCodec) -> None:
    changed = copy.deepcopy(avsc("WebhookEvent"))
    for field in changed["fields"]:
        if field["name"] == "payload":
            field["type"] = "int"
    with pytest.raises(IncompatibleSchemaError, match="cannot read"):
        codec.register(changed)


def test_codec_without_schema_dir_knows_nothing() -> None:
    empty = SchemaCodec(schema_dir=None)
    assert empty.names() == ()
    with pytest.raises(UnknownSchemaError):
        empty.decode(default_codec().encode("EmailIntent", INTENT))


def test_schema_returns_a_copy_of_the_definition(codec: SchemaCodec) -> None:
    definition = codec.schema("EmailIntent")
    assert definition == avsc("EmailIntent")
    definition["fields"].clear()
    assert codec.schema("EmailIntent") == avsc("EmailIntent")
