"""The fastavro fast path against the avro-library reference path it must equal exactly.

``SchemaCodec.encode`` / ``decode`` try fastavro first and fall back to the avro library
(``_reference_encode`` / ``_reference_decode``) whenever they cannot vouch for the result.
These properties check that the public methods give the same bytes, values, exception
types and messages as the reference, for valid records, perturbed (invalid) records and
perturbed bytes, and that typical records really take the fast path.
"""

from __future__ import annotations

import copy
import datetime
import json
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sendonce.schemas.codec import HEADER_SIZE, SCHEMA_DIR, SchemaCodec
from tests.unit.schemas.avro_strategies import records, with_defaults
from tests.unit.schemas.samples import SAMPLES

NAMES = sorted(SAMPLES)

# Shapes our .avsc files do not have, so that the fallback decisions get exercised too:
# wider unions, float vs double, enums and fixed in unions, nested and recursive
# records, maps of records, bytes defaults.
ODD: dict[str, Any] = {
    "type": "record",
    "name": "Odd",
    "namespace": "io.sendonce.test",
    "fields": [
        {"name": "f", "type": "float"},
        {"name": "d", "type": "double", "default": 1.5},
        {"name": "fd", "type": ["null", "float", "double"], "default": None},
        {"name": "il", "type": ["int", "long", "string"]},
        {"name": "e", "type": {"type": "enum", "name": "Colour", "symbols": ["RED", "BLUE"]}},
        {"name": "es", "type": ["Colour", "string"], "default": "RED"},
        {"name": "fx", "type": {"type": "fixed", "name": "Four", "size": 4}},
        {"name": "ofx", "type": ["null", "Four"], "default": None},
        {"name": "b", "type": "bytes", "default": "\u00ff"},
        {"name": "ob", "type": ["null", "boolean"], "default": None},
        {
            "name": "m",
            "type": {
                "type": "map",
                "values": {
                    "type": "record",
                    "name": "Inner",
                    "fields": [
                        {"name": "n", "type": "int", "default": 7},
                        {"name": "tags", "type": {"type": "array", "items": "string"}},
                    ],
                },
            },
            "default": {},
        },
        {"name": "inner", "type": ["null", "Inner"], "default": None},
    ],
}
LINKED: dict[str, Any] = {
    "type": "record",
    "name": "Linked",
    "namespace": "io.sendonce.test",
    "fields": [
        {"name": "v", "type": "long"},
        {"name": "next", "type": ["null", "Linked"], "default": None},
    ],
}
FLAT: dict[str, Any] = {
    "type": "record",
    "name": "Flat",
    "namespace": "io.sendonce.test",
    "fields": [
        {"name": "f", "type": "float"},
        {"name": "d", "type": "double"},
        {"name": "ok", "type": "boolean"},
        {"name": "e", "type": {"type": "enum", "name": "Side", "symbols": ["L", "R"]}},
        {"name": "fx", "type": {"type": "fixed", "name": "Two", "size": 2}},
        {"name": "b", "type": ["null", "bytes"], "default": None},
        {"name": "n", "type": ["null", "int"], "default": None},
        {"name": "m", "type": {"type": "map", "values": ["null", "long"]}, "default": {}},
        {"name": "a", "type": {"type": "array", "items": "double"}, "default": []},
    ],
}
EXTRA = {"Odd": ODD, "Linked": LINKED, "Flat": FLAT}


def avsc(name: str) -> dict[str, Any]:
    if name in EXTRA:
        return EXTRA[name]
    result: dict[str, Any] = json.loads((SCHEMA_DIR / f"{name}.avsc").read_text())
    return result


def make_codec() -> SchemaCodec:
    codec = SchemaCodec()
    for schema in EXTRA.values():
        codec.register(schema)
    return codec


CODEC = make_codec()
ALL_NAMES = NAMES + sorted(EXTRA)


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    """What a call did: its value, or its exception's type and message."""
    try:
        return ("value", call())
    except Exception as exc:
        return (type(exc).__name__, str(exc))


def same(left: tuple[str, Any], right: tuple[str, Any]) -> bool:
    """Outcome equality where NaN equals NaN (floats are compared by bit pattern)."""
    return json.dumps(left, default=repr, sort_keys=False) == json.dumps(
        right, default=repr, sort_keys=False
    ) or _nan_equal(left, right)


def _nan_equal(left: Any, right: Any) -> bool:
    if isinstance(left, float) and isinstance(right, float):
        return left == right or (math.isnan(left) and math.isnan(right))
    if type(left) is not type(right):
        return False
    if isinstance(left, (list, tuple)):
        return len(left) == len(right) and all(map(_nan_equal, left, right))
    if isinstance(left, dict):
        return list(left) == list(right) and all(_nan_equal(left[k], right[k]) for k in left)
    return bool(left == right)


# ---- valid records ---------------------------------------------------------------------


ODD_SAMPLE: dict[str, Any] = {
    "f": 1.25,
    "il": 2**40,
    "e": "BLUE",
    "fx": b"abcd",
    "m": {"k": {"tags": ["x"]}},
    "inner": None,
}
LINKED_SAMPLE: dict[str, Any] = {"v": 1, "next": {"v": 2, "next": None}}
FLAT_SAMPLE: dict[str, Any] = {
    "f": 0.5,
    "d": -2.0,
    "ok": True,
    "e": "R",
    "fx": b"\x00\xff",
    "b": b"raw",
    "n": -3,
    "m": {"a": None, "b": 2**40},
    "a": [1.0, 2],
}
ALL_SAMPLES = {**SAMPLES, "Odd": ODD_SAMPLE, "Linked": LINKED_SAMPLE, "Flat": FLAT_SAMPLE}


@pytest.mark.parametrize("name", ALL_NAMES)
def test_samples_encode_and_decode_like_the_reference(name: str) -> None:
    record = ALL_SAMPLES[name]
    data = CODEC.encode(name, record)
    assert data == CODEC._reference_encode(name, record)
    assert CODEC.decode(data) == CODEC._reference_decode(data)


@pytest.mark.parametrize("name", [*NAMES, "Flat"])
def test_typical_records_take_the_fast_path(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    record = ALL_SAMPLES[name]
    expected = CODEC._reference_encode(name, record)
    decoded = CODEC._reference_decode(expected)

    def refuse(*args: Any) -> Any:
        raise AssertionError("the reference path was used")

    monkeypatch.setattr(SchemaCodec, "_encode_with_avro", staticmethod(refuse))
    monkeypatch.setattr(SchemaCodec, "_decode_with_avro", refuse)
    assert CODEC.encode(name, record) == expected
    assert CODEC.decode(expected) == decoded


@pytest.mark.parametrize("name", ALL_NAMES)
@settings(max_examples=80, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_generated_records_encode_like_the_reference_and_round_trip(
    name: str, data: st.DataObject
) -> None:
    schema = avsc(name)
    record = data.draw(records(schema))
    result = outcome(lambda: CODEC.encode(name, record))
    # Equal even where the reference fails on a valid record: with Odd's ["Colour",
    # "string"] a non-symbol string passes validation as a string, yet the reference
    # writer tries the enum branch first and raises ValueError.
    assert same(result, outcome(lambda: CODEC._reference_encode(name, record)))
    if result[0] != "value":
        assert name == "Odd"
        return
    encoded = result[1]
    decoded = CODEC.decode(encoded, expect=name)
    assert same(("value", decoded), ("value", CODEC._reference_decode(encoded)))
    if name in SAMPLES:
        assert decoded == with_defaults(schema, record)


# ---- invalid records: same exception, same message -------------------------------------

ODD_VALUES = st.sampled_from(
    [
        None,
        True,
        False,
        0,
        -1,
        2**31,
        -(2**31) - 1,
        2**63,
        2**70,
        1.5,
        -0.0,
        1e39,
        -1e39,
        1e300,
        math.inf,
        math.nan,
        "",
        "RED",
        "x",
        "\ud800",
        b"",
        b"abcd",
        bytearray(b"ab"),
        memoryview(b"abcd"),
        [],
        ["x", 1],
        ("a", "b"),
        {},
        {"k": "v"},
        {"k": 1},
        {"k": None},
        {1: "v"},
        {"tags": []},
        datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC),
    ]
)


@st.composite
def perturbed(draw: st.DrawFn, name: str) -> dict[str, Any]:
    """A valid record with one field replaced, dropped, or an unknown one added."""
    record: dict[str, Any] = copy.deepcopy(draw(records(avsc(name))))
    fields = [field["name"] for field in avsc(name)["fields"]]
    how = draw(st.sampled_from(["replace", "replace", "drop", "add"]))
    field = draw(st.sampled_from(fields))
    if how == "replace":
        record[field] = draw(ODD_VALUES)
    elif how == "drop":
        record.pop(field, None)
    else:
        record[draw(st.sampled_from(["body", "", "\ud800", "x" * 100]))] = draw(ODD_VALUES)
    return record


@pytest.mark.parametrize("name", ALL_NAMES)
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_perturbed_records_fail_or_succeed_like_the_reference(
    name: str, data: st.DataObject
) -> None:
    record = data.draw(perturbed(name))
    assert same(
        outcome(lambda: CODEC.encode(name, record)),
        outcome(lambda: CODEC._reference_encode(name, record)),
    )


class Text(str):
    """A str subclass: valid for the validator, not an exact type for the fast path."""


EDGES: list[tuple[str, dict[str, Any]]] = [
    ("Flat", {"f": 1e39}),  # struct.pack("<f") raises OverflowError, a C cast gives inf
    ("Flat", {"f": -1e39}),
    ("Flat", {"f": 3.4028235e38}),  # rounds down to FLT_MAX: no overflow
    ("Flat", {"f": math.inf}),
    ("Flat", {"f": math.nan}),
    ("Flat", {"f": 2**200}),
    ("Flat", {"d": 10**400}),
    ("Flat", {"d": math.nan}),
    ("Flat", {"d": 2**53 + 1}),
    ("Flat", {"n": 2**31}),
    ("Flat", {"n": True}),
    ("Flat", {"b": bytearray(b"x")}),
    ("Flat", {"b": memoryview(b"xy")}),
    ("Flat", {"fx": b"abc"}),
    ("Flat", {"a": (1.0, 2.0)}),
    ("Flat", {"m": {"\ud800": 1}}),
    ("Flat", {"m": {Text("k"): 1}}),
    ("Flat", {"e": Text("L")}),
    ("Flat", {"e": "X"}),
    ("EmailIntent", {"subject": Text("s")}),
    ("EmailIntent", {"headers": {"k": "\udfff"}}),
    ("EmailIntent", {"to": ("a@b.c",)}),
    ("EmailResult", {"intent_offset": 2**63}),
    ("EmailResult", {"intent_partition": -(2**31) - 1}),
    ("EmailResult", {"accepted_at": 1.0}),
    ("EmailResult", {"reconciled": 1}),
    ("DeadLetter", {"original_headers": [{"key": "k"}]}),
    ("DeadLetter", {"original_headers": [{"key": "k", "value": bytearray(b"v")}]}),
]


@pytest.mark.parametrize(("name", "change"), EDGES)
def test_edge_values_encode_like_the_reference(name: str, change: dict[str, Any]) -> None:
    record = {**ALL_SAMPLES[name], **change}
    expected = outcome(lambda: CODEC._reference_encode(name, record))
    assert same(outcome(lambda: CODEC.encode(name, record)), expected)


# ---- perturbed bytes: same value or same MalformedRecordError ---------------------------


@st.composite
def damaged(draw: st.DrawFn, name: str) -> bytes:
    """A valid encoding with a few body bytes flipped, inserted, dropped or cut off."""
    encoded = outcome(lambda: CODEC.encode(name, draw(records(avsc(name)))))
    assume(encoded[0] == "value")  # see the Odd note in the generated-records test
    data = bytearray(encoded[1])
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["set", "insert", "delete", "truncate", "append"]))
        at = draw(st.integers(HEADER_SIZE, max(HEADER_SIZE, len(data) - 1)))
        byte = draw(
            st.sampled_from([0x00, 0x01, 0x02, 0x03, 0x7F, 0x80, 0xFF]) | st.integers(0, 255)
        )
        if how == "set" and at < len(data):
            data[at] = byte
        elif how == "insert":
            data.insert(at, byte)
        elif how == "delete" and at < len(data):
            del data[at]
        elif how == "truncate":
            del data[at:]
        else:
            data.append(byte)
    return bytes(data)


@pytest.mark.parametrize("name", ALL_NAMES)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_damaged_bytes_decode_or_fail_like_the_reference(name: str, data: st.DataObject) -> None:
    raw = data.draw(damaged(name))
    assume(len(raw) >= HEADER_SIZE)
    assert same(outcome(lambda: CODEC.decode(raw)), outcome(lambda: CODEC._reference_decode(raw)))


def test_a_boolean_byte_other_than_one_reads_as_false_like_avro() -> None:
    # fastavro reads any non-zero byte as True; avro (the reference) only 01.
    record = {**SAMPLES["EmailResult"], "worker": None, "reconciled": False}
    data = CODEC.encode("EmailResult", record)
    assert data[-2:] == b"\x00\x00"  # reconciled, then the null branch of worker
    raw = data[:-2] + b"\x02\x00"
    assert CODEC.decode(raw) == CODEC._reference_decode(raw) == record


@pytest.mark.parametrize(
    "varint",
    [b"\x82\x00", b"\x80\x80\x00", b"\xff" * 9 + b"\x01", b"\xff" * 10 + b"\x01"],
)
def test_overlong_varints_follow_avro(varint: bytes) -> None:
    codec = SchemaCodec(schema_dir=None)
    codec.register(
        {
            "type": "record",
            "name": "Longs",
            "fields": [{"name": "n", "type": "long"}, {"name": "ok", "type": "boolean"}],
        }
    )
    raw = codec.encode("Longs", {"n": 1, "ok": True})[:HEADER_SIZE] + varint + b"\x01"
    assert same(outcome(lambda: codec.decode(raw)), outcome(lambda: codec._reference_decode(raw)))


def test_arrays_of_zero_byte_items_are_left_to_avro(monkeypatch: pytest.MonkeyPatch) -> None:
    # avro caps the number of such items per record (they cost no input); the fast path
    # does not mirror the cap, so these records never take it.
    codec = SchemaCodec(schema_dir=None)
    codec.register(
        {
            "type": "record",
            "name": "Nulls",
            "fields": [{"name": "a", "type": {"type": "array", "items": "null"}}],
        }
    )
    raw = codec.encode("Nulls", {"a": [None, None]})
    monkeypatch.setenv("AVRO_MAX_COLLECTION_ITEMS", "1")
    assert same(outcome(lambda: codec.decode(raw)), outcome(lambda: codec._reference_decode(raw)))
    assert outcome(lambda: codec.decode(raw))[0] == "MalformedRecordError"


def test_avros_collection_cap_is_respected(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = CODEC.encode("EmailIntent", SAMPLES["EmailIntent"])
    monkeypatch.setenv("AVRO_MAX_COLLECTION_ITEMS", "1")
    expected = outcome(lambda: CODEC._reference_decode(raw))
    assert expected[0] == "MalformedRecordError"
    assert outcome(lambda: CODEC.decode(raw)) == expected


# ---- schema evolution: the projection equals avro's resolution --------------------------


def next_version(name: str, added: dict[str, Any], drop: str | None = None) -> dict[str, Any]:
    schema = copy.deepcopy(avsc(name))
    schema["fields"] = [f for f in schema["fields"] if f["name"] != drop]
    schema["fields"].append(added)
    return schema


HEADER_ARRAY = {"type": "array", "items": "io.sendonce.DeadLetterHeader"}
EVOLUTIONS: list[tuple[str, dict[str, Any], str | None]] = [
    ("EmailIntent", {"name": "priority", "type": "string", "default": "normal"}, None),
    ("EmailIntent", {"name": "labels", "type": {"type": "map", "values": "string"},
                     "default": {"a": "b"}}, "headers"),
    ("EmailResult", {"name": "status", "type": ["null", "int"], "default": None}, "worker"),
    ("DeadLetter", {"name": "raw", "type": "bytes", "default": "\u00e9"}, None),
    ("DeadLetter", {"name": "hdrs", "type": HEADER_ARRAY, "default": [{"key": "k"}]}, None),
    ("WebhookEvent", {"name": "score", "type": "double", "default": 0.5}, None),
]  # fmt: skip


@pytest.mark.parametrize(("name", "added", "drop"), EVOLUTIONS)
@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_cross_version_decoding_equals_avro_resolution(
    name: str, added: dict[str, Any], drop: str | None, data: st.DataObject
) -> None:
    newer = next_version(name, added, drop)
    old = SchemaCodec()
    old.register(newer)
    new = SchemaCodec()
    new.register(newer, as_reader=True)
    for writer, reader, schema in ((old, new, avsc(name)), (new, old, newer)):
        raw = writer.encode(name, data.draw(records(schema)))
        decoded = reader.decode(raw)
        assert same(("value", decoded), ("value", reader._reference_decode(raw)))
        assert list(decoded) == list(reader._reference_decode(raw))  # avro's key order
    # Defaults handed out are fresh objects, as avro builds them per record.
    raw = old.encode(name, ALL_SAMPLES[name])
    first, second = new.decode(raw), new.decode(raw)
    for key, value in first.items():
        if isinstance(value, (list, dict)) and key == added["name"]:
            assert value is not second[key]


def test_promotions_go_the_avro_way() -> None:
    """A field whose type changes (int -> long) is resolved by avro, not projected."""
    schema = copy.deepcopy(avsc("EmailResult"))
    for field in schema["fields"]:
        if field["name"] == "attempt_count":
            field["type"] = "long"
    new = SchemaCodec()
    new.register(schema, as_reader=True)
    raw = SchemaCodec().encode("EmailResult", ALL_SAMPLES["EmailResult"])
    assert new.decode(raw) == new._reference_decode(raw) == ALL_SAMPLES["EmailResult"]
