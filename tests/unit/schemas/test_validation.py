"""Record validation through ``SchemaCodec.encode``: errors name the field, never the value."""

from __future__ import annotations

from typing import Any

import pytest

from sendonce.schemas.codec import SchemaCodec
from sendonce.schemas.errors import CodecError, InvalidRecordError
from tests.unit.schemas.samples import INTENT, RESULT, SAMPLES, SECRET


@pytest.mark.parametrize(
    ("change", "path", "problem"),
    [
        ({"subject": None}, "subject", "expected string, got NoneType"),
        ({"to": ["a@b.c", 7]}, "to[1]", "expected string, got int"),
        ({"to": SECRET}, "to", "expected array, got str"),
        ({"text_body": 12}, "text_body", "expected string, got int"),
        ({"headers": {"X-A": 1}}, "headers['X-A']", "expected string, got int"),
        ({"created_at": True}, "created_at", "expected long, got bool"),
        ({"created_at": 2**63}, "created_at", "out of range for long"),
        ({"body": SECRET}, "", "unknown field 'body'"),
        ({"text_body": "\ud800" + SECRET}, "text_body", "not encodable as UTF-8"),
    ],
)
def test_invalid_records_name_the_field_never_the_value(
    codec: SchemaCodec, change: dict[str, Any], path: str, problem: str
) -> None:
    with pytest.raises(InvalidRecordError) as caught:
        codec.encode("EmailIntent", {**INTENT, **change})
    assert caught.value.path == path
    assert problem in str(caught.value)
    assert SECRET not in str(caught.value)
    assert caught.value.error_type == "invalid_record"
    assert isinstance(caught.value, CodecError)


def test_missing_required_field(codec: SchemaCodec) -> None:
    record = {k: v for k, v in INTENT.items() if k != "subject"}
    with pytest.raises(InvalidRecordError, match="subject: required field is missing"):
        codec.encode("EmailIntent", record)


def test_invalid_enum_symbol_and_nested_path(codec: SchemaCodec) -> None:
    with pytest.raises(InvalidRecordError, match="outcome: not a symbol"):
        codec.encode("EmailResult", {**RESULT, "outcome": "MAYBE"})
    with pytest.raises(InvalidRecordError) as caught:
        headers = [{"key": "k", "value": "not bytes"}]
        codec.encode("DeadLetter", {**SAMPLES["DeadLetter"], "original_headers": headers})
    assert caught.value.path == "original_headers[0].value"


def test_int_range_is_checked(codec: SchemaCodec) -> None:
    with pytest.raises(InvalidRecordError, match="intent_partition: out of range for int"):
        codec.encode("EmailResult", {**RESULT, "intent_partition": 2**31})
