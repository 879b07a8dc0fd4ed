"""Schema evolution: each schema's "next version" (one field added with a default).

Proves (a) records written with today's schema decode with the next version as reader,
(b) generated records round-trip in both directions (old writer -> new reader, new writer
-> old reader), and that adding a field *without* a default is refused.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sendonce.schemas.codec import SCHEMA_DIR, SchemaCodec
from sendonce.schemas.errors import IncompatibleSchemaError
from tests.unit.schemas.avro_strategies import records, with_defaults
from tests.unit.schemas.samples import SAMPLES

# One added field per schema, of different kinds, each with a default.
ADDED_FIELDS: dict[str, dict[str, Any]] = {
    "EmailIntent": {
        "name": "priority",
        "type": "string",
        "default": "normal",
        "doc": "Next version: delivery priority.",
    },
    "EmailResult": {
        "name": "provider_status",
        "type": ["null", "int"],
        "default": None,
        "doc": "Next version: the provider's HTTP status.",
    },
    "DeadLetter": {
        "name": "retry_count",
        "type": "int",
        "default": 0,
        "doc": "Next version: how often the record was retried.",
    },
    "WebhookEvent": {
        "name": "labels",
        "type": {"type": "map", "values": "string"},
        "default": {"origin": "webhook"},
        "doc": "Next version: free-form labels.",
    },
}
NAMES = sorted(ADDED_FIELDS)


def today(name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((SCHEMA_DIR / f"{name}.avsc").read_text())
    return result


def next_version(name: str) -> dict[str, Any]:
    schema = copy.deepcopy(today(name))
    schema["fields"].append(copy.deepcopy(ADDED_FIELDS[name]))
    return schema


def codecs(name: str) -> tuple[SchemaCodec, SchemaCodec]:
    """(a codec at today's version that also knows the next as a writer, one at the next)."""
    old = SchemaCodec()
    old.register(next_version(name))
    new = SchemaCodec()
    new.register(next_version(name), as_reader=True)
    return old, new


@pytest.mark.parametrize("name", NAMES)
def test_next_version_is_a_new_fingerprint_with_the_same_name(name: str) -> None:
    old, new = codecs(name)
    assert new.fingerprint(name) != old.fingerprint(name)
    old_bytes = old.encode(name, SAMPLES[name])
    new_bytes = new.encode(name, SAMPLES[name])
    assert old_bytes[2:10] != new_bytes[2:10]
    assert old.writer_name(new_bytes) == new.writer_name(old_bytes) == f"io.sendonce.{name}"


@pytest.mark.parametrize("name", NAMES)
def test_todays_records_decode_with_the_next_version(name: str) -> None:
    old, new = codecs(name)
    added = ADDED_FIELDS[name]
    decoded = new.decode(old.encode(name, SAMPLES[name]), expect=name)
    assert decoded == {**SAMPLES[name], added["name"]: added["default"]}


@pytest.mark.parametrize("name", NAMES)
def test_next_versions_records_decode_with_todays_version(name: str) -> None:
    old, new = codecs(name)
    added = ADDED_FIELDS[name]["name"]
    record = {**SAMPLES[name], added: ADDED_FIELDS[name]["default"]}
    assert old.decode(new.encode(name, record), expect=name) == SAMPLES[name]


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_generated_records_cross_versions(name: str, data: st.DataObject) -> None:
    old, new = codecs(name)
    old_schema, new_schema = today(name), next_version(name)
    added = ADDED_FIELDS[name]["name"]

    written_today = data.draw(records(old_schema), label="today's record")
    expected_new = with_defaults(new_schema, written_today)
    assert new.decode(old.encode(name, written_today)) == expected_new

    written_next = data.draw(records(new_schema), label="next version's record")
    full_next = with_defaults(new_schema, written_next)
    assert new.decode(new.encode(name, written_next)) == full_next
    assert old.decode(new.encode(name, written_next)) == {
        k: v for k, v in full_next.items() if k != added
    }


@pytest.mark.parametrize("name", NAMES)
def test_adding_a_field_without_default_is_refused_as_reader(name: str) -> None:
    schema = next_version(name)
    del schema["fields"][-1]["default"]
    codec = SchemaCodec()
    with pytest.raises(IncompatibleSchemaError, match="cannot read"):
        codec.register(schema, as_reader=True)
    # The reader is unchanged after the refusal.
    assert codec.decode(codec.encode(name, SAMPLES[name])) == SAMPLES[name]
