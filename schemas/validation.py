"""Validation of a record against its schema, with errors a person can act on.

Contract: ``RecordValidator(schema_name).check_record(schema, record, "")`` returns the
record as the avro writer should see it (defaults filled in, ``bytes``-like values as
``bytes``), or raises ``InvalidRecordError`` naming the field path and the problem:
unknown fields, missing required fields, wrong types, out-of-range numbers, strings that
are not UTF-8 encodable. ``ValidatedDatumWriter`` is the avro writer for records that
passed it. Schemas here are the codec's *wire* schemas (logical types stripped), so
timestamps are plain ``int`` milliseconds.

Reason: our own validation, so that errors name the field path and never the value;
avro's own ``AvroTypeException`` message embeds the datum, and these messages end up in
dead-letter reasons and logs. It is the reference that decides what an invalid record
is; the fastavro fast path (``schemas/fast_path.py``) only ever accepts a subset of it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import avro.errors
import avro.io
import avro.schema

from sendonce.schemas.errors import InvalidRecordError

_INT_RANGE = (-(1 << 31), (1 << 31) - 1)
_LONG_RANGE = (-(1 << 63), (1 << 63) - 1)


def type_name(value: object) -> str:
    return type(value).__name__


def _schema_label(schema: avro.schema.Schema) -> str:
    if isinstance(schema, avro.schema.NamedSchema):
        return str(schema.fullname)
    return str(schema.type)


def safe_label(text: str, limit: int = 64) -> str:
    """Render user-supplied names (map keys, unknown field names) harmlessly in messages."""
    shown = "".join(ch if ch.isprintable() else "?" for ch in text[:limit])
    return repr(shown + ("..." if len(text) > limit else ""))


def default_datum(schema: avro.schema.Schema, default: Any) -> Any:
    """Turn a field's JSON default into the Python datum the writer expects."""
    if default is None or isinstance(default, (bool, int, float)):
        return default
    if isinstance(schema, avro.schema.UnionSchema):
        # The spec: a union field's default belongs to the union's first branch.
        return default_datum(schema.schemas[0], default)
    if schema.type in ("bytes", "fixed") and isinstance(default, str):
        return default.encode("latin-1")
    if isinstance(schema, avro.schema.RecordSchema) and isinstance(default, Mapping):
        return {
            field.name: default_datum(field.type, default.get(field.name, field.default))
            for field in schema.fields
        }
    return copy.deepcopy(default)


class RecordValidator:
    """Checks a record against a (logical-type free) schema and fills in defaults."""

    def __init__(self, schema_name: str) -> None:
        self.schema_name = schema_name

    def fail(self, path: str, problem: str) -> InvalidRecordError:
        return InvalidRecordError(self.schema_name, path, problem)

    def check_string(self, datum: Any, path: str) -> str:
        if not isinstance(datum, str):
            raise self.fail(path, f"expected string, got {type_name(datum)}")
        if not datum.isascii():
            try:
                datum.encode("utf-8")
            except UnicodeEncodeError:
                # Lone surrogates would otherwise fail half-way through the write.
                raise self.fail(path, "string is not encodable as UTF-8") from None
        return datum

    def check(self, schema: avro.schema.Schema, datum: Any, path: str) -> Any:
        kind = schema.type
        if kind == "string":
            return self.check_string(datum, path)
        if kind in ("int", "long"):
            if not isinstance(datum, int) or isinstance(datum, bool):
                raise self.fail(path, f"expected {kind}, got {type_name(datum)}")
            low, high = _INT_RANGE if kind == "int" else _LONG_RANGE
            if not low <= datum <= high:
                raise self.fail(path, f"out of range for {kind}")
            return datum
        if kind == "null":
            if datum is not None:
                raise self.fail(path, f"expected null, got {type_name(datum)}")
            return None
        if kind == "boolean":
            if not isinstance(datum, bool):
                raise self.fail(path, f"expected boolean, got {type_name(datum)}")
            return datum
        if kind in ("float", "double"):
            if not isinstance(datum, (int, float)) or isinstance(datum, bool):
                raise self.fail(path, f"expected {kind}, got {type_name(datum)}")
            return datum
        if kind == "bytes":
            if not isinstance(datum, (bytes, bytearray, memoryview)):
                raise self.fail(path, f"expected bytes, got {type_name(datum)}")
            return bytes(datum)
        if isinstance(schema, avro.schema.UnionSchema):
            return self.check_union(schema, datum, path)
        if isinstance(schema, avro.schema.RecordSchema):
            return self.check_record(schema, datum, path)
        if isinstance(schema, avro.schema.ArraySchema):
            if isinstance(datum, (str, bytes, bytearray)) or not isinstance(datum, Sequence):
                raise self.fail(path, f"expected array, got {type_name(datum)}")
            return [self.check(schema.items, item, f"{path}[{i}]") for i, item in enumerate(datum)]
        if isinstance(schema, avro.schema.MapSchema):
            if not isinstance(datum, Mapping):
                raise self.fail(path, f"expected map, got {type_name(datum)}")
            out = {}
            for key, value in datum.items():
                if not isinstance(key, str):
                    raise self.fail(path, f"map key of type {type_name(key)}, expected string")
                self.check_string(key, path)
                out[key] = self.check(schema.values, value, f"{path}[{safe_label(key)}]")
            return out
        if isinstance(schema, avro.schema.EnumSchema):
            if not isinstance(datum, str):
                raise self.fail(path, f"expected enum symbol, got {type_name(datum)}")
            if datum not in schema.symbols:
                raise self.fail(path, f"not a symbol of {schema.fullname}")
            return datum
        if isinstance(schema, avro.schema.FixedSchema):
            if not isinstance(datum, (bytes, bytearray, memoryview)):
                raise self.fail(path, f"expected fixed, got {type_name(datum)}")
            if len(datum) != schema.size:
                raise self.fail(path, f"expected {schema.size} bytes, got {len(datum)}")
            return bytes(datum)
        raise self.fail(path, f"unsupported schema type {kind}")

    def check_union(self, schema: avro.schema.UnionSchema, datum: Any, path: str) -> Any:
        branches = schema.schemas
        if datum is None and any(branch.type == "null" for branch in branches):
            return None
        first_error: InvalidRecordError | None = None
        for branch in branches:
            if branch.type == "null":
                continue
            try:
                return self.check(branch, datum, path)
            except InvalidRecordError as exc:
                first_error = first_error or exc
        if first_error is not None and len(branches) == 2 and branches[0].type == "null":
            # The common optional-field shape: report the real branch's problem.
            raise first_error
        labels = ", ".join(_schema_label(branch) for branch in branches)
        raise self.fail(path, f"expected one of [{labels}], got {type_name(datum)}")

    def check_record(self, schema: avro.schema.RecordSchema, datum: Any, path: str) -> Any:
        if not isinstance(datum, Mapping):
            raise self.fail(path, f"expected record {schema.fullname}, got {type_name(datum)}")
        prefix = f"{path}." if path else ""
        fields = schema.fields_dict
        for key in datum:
            if key not in fields:
                # Rejecting instead of dropping catches typos (e.g. "body" for "text_body").
                label = safe_label(key) if isinstance(key, str) else type_name(key)
                raise self.fail(path, f"unknown field {label}")
        out: dict[str, Any] = {}
        for field in schema.fields:
            if field.name in datum:
                out[field.name] = self.check(field.type, datum[field.name], prefix + field.name)
            elif field.has_default:
                out[field.name] = default_datum(field.type, field.default)
            else:
                raise self.fail(prefix + field.name, "required field is missing")
        return out


def _shallow_match(branch: avro.schema.Schema, datum: Any) -> bool:
    """Whether ``datum`` (already validated) belongs to union ``branch``."""
    kind = branch.type
    if kind == "null":
        return datum is None
    if kind in ("string", "enum"):
        return isinstance(datum, str)
    if kind in ("int", "long"):
        return isinstance(datum, int) and not isinstance(datum, bool)
    if kind == "boolean":
        return isinstance(datum, bool)
    if kind in ("float", "double"):
        return isinstance(datum, (int, float)) and not isinstance(datum, bool)
    if kind in ("bytes", "fixed"):
        return isinstance(datum, bytes)
    if kind == "array":
        return isinstance(datum, list)
    return isinstance(datum, dict)


class ValidatedDatumWriter(avro.io.DatumWriter):
    """DatumWriter for data that RecordValidator has already checked and normalised.

    avro's write_union runs its full validate() on every branch of every union field,
    which made it the largest cost of encoding an EmailResult (mostly optional fields).
    """

    def write_union(
        self, writers_schema: avro.schema.UnionSchema, datum: Any, encoder: avro.io.BinaryEncoder
    ) -> None:
        for index, branch in enumerate(writers_schema.schemas):
            if _shallow_match(branch, datum):
                encoder.write_long(index)
                self.write_data(branch, datum, encoder)
                return
        # Unreachable after validation; a one-argument message keeps the value out of it.
        raise avro.errors.AvroTypeException(  # type: ignore[no-untyped-call]
            f"no union branch for a {type_name(datum)}"
        )
