"""CRC-64-AVRO and Parsing Canonical Form, checked against independent references."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import avro.schema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sendonce.schemas.codec import SCHEMA_DIR
from sendonce.schemas.errors import InvalidSchemaError
from sendonce.schemas.fingerprint import (
    EMPTY_FINGERPRINT,
    crc64_avro,
    parsing_canonical_form,
    schema_fingerprint,
)

AVSC_FILES = sorted(SCHEMA_DIR.glob("*.avsc"))


def reference_crc64(data: bytes) -> int:
    """Bit-at-a-time CRC-64-AVRO, written straight from the spec's description.

    The spec's table is ``FP_TABLE[i] = i shifted right 8 times, xor-ing EMPTY whenever a
    1 bit falls off``; applying that per bit instead of per byte gives the same function
    without any table.
    """
    fp = EMPTY_FINGERPRINT
    for byte in data:
        fp ^= byte
        for _ in range(8):
            fp = (fp >> 1) ^ (EMPTY_FINGERPRINT if fp & 1 else 0)
    return fp


# Cross-language vectors from the Avro project's share/test/data/schema-tests.txt:
# (input, canonical form, fingerprint as a Java signed long). The file says the Java
# implementation cross-checks them with a direct (slow) fingerprint implementation.
AVRO_SHARED_VECTORS: list[tuple[str, str, int]] = [
    ('"null"', '"null"', 7195948357588979594),
    ('"boolean"', '"boolean"', -6970731678124411036),
    ('{"type":"int"}', '"int"', 8247732601305521295),
    ('"long"', '"long"', -3434872931120570953),
    ('"float"', '"float"', 5583340709985441680),
    ('{"type":"double"}', '"double"', -8181574048448539266),
    ('"bytes"', '"bytes"', 5746618253357095269),
    ('"string"', '"string"', -8142146995180207161),
    ("[  ]", "[]", -1241056759729112623),
    ('[ "int"  ]', '["int"]', -5232228896498058493),
    ('[ "int" , {"type":"boolean"} ]', '["int","boolean"]', 5392556393470105090),
    (
        '{"fields":[], "type":"record", "name":"foo"}',
        '{"name":"foo","type":"record","fields":[]}',
        -4824392279771201922,
    ),
    (
        '{"fields":[], "type":"record", "name":"foo", "namespace":"x.y"}',
        '{"name":"x.y.foo","type":"record","fields":[]}',
        5916914534497305771,
    ),
    (
        '{"fields":[], "type":"record", "name":"a.b.foo", "namespace":"x.y"}',
        '{"name":"a.b.foo","type":"record","fields":[]}',
        -4616218487480524110,
    ),
    (
        '{"fields":[], "type":"record", "name":"foo", "doc":"foo", "aliases":["foo","bar"]}',
        '{"name":"foo","type":"record","fields":[]}',
        -4824392279771201922,
    ),
    (
        '{"fields":[{"type":{"type":"boolean"}, "name":"f1"}], "type":"record", "name":"foo"}',
        '{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"}]}',
        7843277075252814651,
    ),
    (
        '{ "fields":[{"type":"boolean", "aliases":[], "name":"f1", "default":"true"},\n'
        '            {"order":"descending","name":"f2","doc":"Hello","type":"int"}],\n'
        '  "type":"record", "name":"foo"\n}',
        '{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"},'
        '{"name":"f2","type":"int"}]}',
        -4860222112080293046,
    ),
    (
        '{"type":"enum", "name":"foo", "symbols":["A1"]}',
        '{"name":"foo","type":"enum","symbols":["A1"]}',
        -6342190197741309591,
    ),
    (
        '{"namespace":"x.y.z", "type":"enum", "name":"foo", "doc":"foo bar", '
        '"symbols":["A1", "A2"]}',
        '{"name":"x.y.z.foo","type":"enum","symbols":["A1","A2"]}',
        -4448647247586288245,
    ),
    (
        '{"name":"foo","type":"fixed","size":15}',
        '{"name":"foo","type":"fixed","size":15}',
        1756455273707447556,
    ),
    (
        '{"namespace":"x.y.z", "type":"fixed", "name":"foo", "doc":"foo bar", "size":32}',
        '{"name":"x.y.z.foo","type":"fixed","size":32}',
        -3064184465700546786,
    ),
    (
        '{ "items":{"type":"null"}, "type":"array"}',
        '{"type":"array","items":"null"}',
        -589620603366471059,
    ),
    (
        '{ "values":"string", "type":"map"}',
        '{"type":"map","values":"string"}',
        -8732877298790414990,
    ),
    (
        '{"name":"PigValue","type":"record",\n'
        '   "fields":[{"name":"value", "type":["null", "int", "long", "PigValue"]}]}',
        '{"name":"PigValue","type":"record","fields":[{"name":"value","type":'
        '["null","int","long","PigValue"]}]}',
        -1759257747318642341,
    ),
]

# Computed once with the Java reference implementation (avro 1.12.0,
# SchemaNormalization.parsingFingerprint64 / toParsingForm), for the two features where
# the Python avro 1.12 library deviates: logical types, and a named type used twice
# (the library writes MD5's definition out again; its own test suite expects that,
# 43818703b7b5d769, which is not what Java computes).
JAVA_REFERENCE_VECTORS: list[tuple[dict[str, Any], str, int]] = [
    (
        {
            "type": "record",
            "name": "HandshakeRequest",
            "namespace": "org.apache.avro.ipc",
            "fields": [
                {"name": "clientHash", "type": {"type": "fixed", "name": "MD5", "size": 16}},
                {"name": "clientProtocol", "type": ["null", "string"]},
                {"name": "serverHash", "type": "MD5"},
                {"name": "meta", "type": ["null", {"type": "map", "values": "bytes"}]},
            ],
        },
        '{"name":"org.apache.avro.ipc.HandshakeRequest","type":"record","fields":['
        '{"name":"clientHash","type":{"name":"org.apache.avro.ipc.MD5","type":"fixed","size":16}},'
        '{"name":"clientProtocol","type":["null","string"]},'
        '{"name":"serverHash","type":"org.apache.avro.ipc.MD5"},'
        '{"name":"meta","type":["null",{"type":"map","values":"bytes"}]}]}',
        0x57577C5A9ED76AB9,
    ),
    (
        {
            "type": "record",
            "name": "Evidence",
            "namespace": "io.sendonce.test",
            "doc": "d",
            "fields": [
                {
                    "name": "at",
                    "type": {"type": "long", "logicalType": "timestamp-millis"},
                    "doc": "x",
                },
                {
                    "name": "maybe_at",
                    "type": ["null", {"type": "long", "logicalType": "timestamp-millis"}],
                    "default": None,
                },
                {"name": "id", "type": {"type": "fixed", "name": "Id", "size": 16}},
                {"name": "previous_id", "type": ["null", "Id"], "default": None},
                {
                    "name": "kind",
                    "type": {
                        "type": "enum",
                        "name": "Kind",
                        "namespace": "io.other",
                        "symbols": ["A", "B"],
                    },
                },
                {"name": "kinds", "type": {"type": "array", "items": "io.other.Kind"}},
                {"name": "tags", "type": {"type": "map", "values": "string"}, "default": {}},
            ],
        },
        '{"name":"io.sendonce.test.Evidence","type":"record","fields":['
        '{"name":"at","type":"long"},{"name":"maybe_at","type":["null","long"]},'
        '{"name":"id","type":{"name":"io.sendonce.test.Id","type":"fixed","size":16}},'
        '{"name":"previous_id","type":["null","io.sendonce.test.Id"]},'
        '{"name":"kind","type":{"name":"io.other.Kind","type":"enum","symbols":["A","B"]}},'
        '{"name":"kinds","type":{"type":"array","items":"io.other.Kind"}},'
        '{"name":"tags","type":{"type":"map","values":"string"}}]}',
        0x2685475C8C5578A2,
    ),
]


def test_empty_input_gives_the_spec_constant() -> None:
    assert crc64_avro(b"") == reference_crc64(b"") == 0xC15D213AA4D7A795


@given(st.binary(max_size=300))
def test_table_driven_crc_equals_the_bitwise_reference(data: bytes) -> None:
    assert crc64_avro(data) == reference_crc64(data)


@pytest.mark.parametrize(("schema", "canonical", "java_long"), AVRO_SHARED_VECTORS)
def test_avro_shared_vectors(schema: str, canonical: str, java_long: int) -> None:
    assert parsing_canonical_form(schema) == canonical
    fingerprint = schema_fingerprint(schema)
    assert fingerprint == java_long % 2**64
    assert reference_crc64(canonical.encode()) == fingerprint
    # The header carries the same 64-bit value little-endian.
    assert int.from_bytes(fingerprint.to_bytes(8, "little"), "little", signed=True) == java_long


@pytest.mark.parametrize(("schema", "canonical", "java_fingerprint"), JAVA_REFERENCE_VECTORS)
def test_java_reference_vectors(
    schema: dict[str, Any], canonical: str, java_fingerprint: int
) -> None:
    assert parsing_canonical_form(schema) == canonical
    assert schema_fingerprint(json.dumps(schema)) == java_fingerprint
    assert reference_crc64(canonical.encode()) == java_fingerprint


@pytest.mark.parametrize("schema", ['"int"', '{"type":"array","items":"long"}'])
def test_fingerprint_equals_the_avro_library_where_it_follows_the_spec(schema: str) -> None:
    library = avro.schema.parse(schema).fingerprint("CRC-64-AVRO")
    assert schema_fingerprint(schema).to_bytes(8, "little") == library


@pytest.mark.parametrize("path", AVSC_FILES, ids=lambda p: p.name)
def test_our_canonical_form_equals_avros_once_logical_types_are_removed(path: Path) -> None:
    definition = json.loads(path.read_text())
    text = json.dumps(definition)
    without_logical = text.replace(', "logicalType": "timestamp-millis"', "")
    assert "logicalType" not in without_logical
    library = avro.schema.parse(without_logical)
    assert parsing_canonical_form(definition) == library.canonical_form
    assert schema_fingerprint(definition).to_bytes(8, "little") == library.fingerprint()
    # Logical types are stripped by [STRIP]: the fingerprint ignores them.
    assert schema_fingerprint(definition) == schema_fingerprint(without_logical)


def test_logical_types_reduce_to_their_primitive() -> None:
    # Spec: [PRIMITIVES] then [STRIP]. avro 1.12 gives {"type":"long"} here instead, which
    # is why the codec computes canonical forms itself.
    assert parsing_canonical_form({"type": "long", "logicalType": "timestamp-millis"}) == '"long"'
    record = {
        "type": "record",
        "name": "R",
        "fields": [{"name": "t", "type": {"type": "long", "logicalType": "timestamp-millis"}}],
    }
    assert parsing_canonical_form(record) == (
        '{"name":"R","type":"record","fields":[{"name":"t","type":"long"}]}'
    )


def test_canonical_form_namespaces_order_and_stripping() -> None:
    schema = {
        "doc": "stripped",
        "fields": [
            {
                "name": "inner",
                "doc": "stripped",
                "default": {"n": 1},
                "type": {
                    "type": "record",
                    "name": "Inner",
                    "fields": [{"name": "n", "type": "int"}],
                },
            },
            {"name": "again", "type": "Inner"},
            {"name": "global", "type": {"type": "fixed", "name": "G", "namespace": "", "size": 1}},
            # Resolved in the enclosing namespace first (a.b.G is undefined), then in the
            # null namespace, as the Java parser does.
            {"name": "global_again", "type": "G"},
            {
                "name": "elsewhere",
                "type": {"type": "enum", "name": "E", "namespace": "", "symbols": ["X"]},
            },
            {
                "name": "dotted",
                "type": {"type": "fixed", "name": "x.y.F", "namespace": "ignored", "size": 4},
            },
        ],
        "aliases": ["Old"],
        "namespace": "a.b",
        "name": "Outer",
        "type": "record",
    }
    assert parsing_canonical_form(json.dumps(schema, indent=4)) == (
        '{"name":"a.b.Outer","type":"record","fields":['
        '{"name":"inner","type":{"name":"a.b.Inner","type":"record","fields":'
        '[{"name":"n","type":"int"}]}},'
        '{"name":"again","type":"a.b.Inner"},'
        '{"name":"global","type":{"name":"G","type":"fixed","size":1}},'
        '{"name":"global_again","type":"G"},'
        '{"name":"elsewhere","type":{"name":"E","type":"enum","symbols":["X"]}},'
        '{"name":"dotted","type":{"name":"x.y.F","type":"fixed","size":4}}]}'
    )


def test_canonical_form_rejects_undefined_references() -> None:
    with pytest.raises(InvalidSchemaError, match="undefined"):
        parsing_canonical_form({"type": "array", "items": "Nowhere"})
