"""Avro single-object encoding for sendonce's records.

Every value sendonce writes to Kafka is one Avro record in the Avro specification's
*single-object encoding*::

    C3 01 | 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's
          |   Parsing Canonical Form
          | Avro binary encoding of the record

The fingerprint tells a reader which writer schema produced the bytes, so records written
by an older or newer (compatible) version of a schema are resolved against the reader's
current version.

Timestamps: the ``.avsc`` files declare ``timestamp-millis`` logical types (so data tools
see timestamps), but the codec (de)serialises with the logical types stripped, i.e. plain
``long``. Timestamp fields are therefore always ``int`` milliseconds since the Unix epoch
(UTC), on the way in and on the way out. Stripping does not change the fingerprint: the
Parsing Canonical Form drops ``logicalType`` anyway.

The canonical form and fingerprint are computed here rather than with avro's
``Schema.canonical_form`` / ``Schema.fingerprint``: avro 1.12 (Python) keeps a logical-typed
primitive as ``{"type":"long"}`` instead of ``"long"`` (the spec's [PRIMITIVES] rule), and
writes a named type out in full again where it is referenced a second time. Its fingerprints
of our schemas therefore differ from the Java implementation's, which ours match (see
``tests/unit/schemas/test_fingerprint.py``).

Schema registry framing: a codec told a record's registry id (``use_registry_id``, see
``schemas/registry.py``) encodes that record in the Confluent wire format instead::

    00 | 4-byte big-endian schema registry id | Avro binary encoding of the record

``decode`` accepts both framings, whatever this codec encodes with, so producers can
switch without a flag day. A registry id it has not seen is fetched through
``id_resolver`` when ``fetch_on_decode`` is set (command-line tools), and is otherwise an
``UnknownSchemaError`` (the worker resolves ids ahead of time, off its event loop).

Speed: ``encode`` and ``decode`` run on fastavro (C) when they can vouch that the result
is exactly what the avro library path gives, and fall back to that path otherwise, which
therefore still defines every error and message (see "Fast path" below and
``tests/unit/schemas/test_codec_fast_path.py``).
"""

from __future__ import annotations

import copy
import functools
import io
import json
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import avro.compatibility
import avro.errors
import avro.io
import avro.schema
import fastavro

__all__ = [
    "CONFLUENT_HEADER_SIZE",
    "CONFLUENT_MAGIC",
    "EMPTY_FINGERPRINT",
    "MAGIC",
    "CodecError",
    "IncompatibleSchemaError",
    "InvalidRecordError",
    "InvalidSchemaError",
    "MalformedRecordError",
    "NotSingleObjectError",
    "SchemaCodec",
    "UnknownSchemaError",
    "WrongSchemaError",
    "crc64_avro",
    "default_codec",
    "parsing_canonical_form",
    "schema_fingerprint",
]

BytesLike = bytes | bytearray | memoryview

MAGIC = b"\xc3\x01"
"""The two marker bytes that start every single-object encoded record."""

HEADER_SIZE = len(MAGIC) + 8

CONFLUENT_MAGIC = b"\x00"
"""The byte that starts every record in the Confluent (schema registry) wire format."""

CONFLUENT_HEADER_SIZE = len(CONFLUENT_MAGIC) + 4

UNKNOWN_ID_RETRY_S = 30.0
"""How long a registry id that could not be fetched is not asked for again."""

EMPTY_FINGERPRINT = 0xC15D213AA4D7A795
"""CRC-64-AVRO's initial value and polynomial (the Avro spec's ``EMPTY``)."""

SCHEMA_DIR = Path(__file__).resolve().parent

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NAMED = frozenset({"record", "error", "enum", "fixed"})
_INT_RANGE = (-(1 << 31), (1 << 31) - 1)
_LONG_RANGE = (-(1 << 63), (1 << 63) - 1)


def _fingerprint_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (EMPTY_FINGERPRINT & -(fp & 1))
        table.append(fp)
    return tuple(table)


_FP_TABLE = _fingerprint_table()


def crc64_avro(data: bytes) -> int:
    """Return the CRC-64-AVRO (Rabin) fingerprint of ``data`` as an unsigned 64-bit int.

    This is the table-driven algorithm of the Avro specification ("Schema Fingerprints").
    """
    fp = EMPTY_FINGERPRINT
    for byte in data:
        fp = (fp >> 8) ^ _FP_TABLE[(fp ^ byte) & 0xFF]
    return fp


# --------------------------------------------------------------------------------------
# Errors. Messages end up in dead-letter reasons and logs: they name schemas, fields and
# byte positions, never field values or message bodies.
# --------------------------------------------------------------------------------------


class CodecError(Exception):
    """Base class of every error the codec raises."""

    error_type: ClassVar[str] = "codec_error"
    """Stable machine-readable class, suitable for ``DeadLetter.error_type``."""


class NotSingleObjectError(CodecError):
    """The bytes are in neither framing (missing marker, too short, not bytes)."""

    error_type = "undecodable"


class UnknownSchemaError(CodecError):
    """The writer schema's fingerprint (or a schema name) is not known to this codec."""

    error_type = "unknown_schema"

    def __init__(
        self, message: str, fingerprint: int | None = None, schema_id: int | None = None
    ) -> None:
        super().__init__(message)
        self.fingerprint = fingerprint
        self.schema_id = schema_id


class WrongSchemaError(CodecError):
    """The record was written with a known schema, but not the one the caller expects."""

    error_type = "wrong_schema"

    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"expected a {expected} record, got a {actual} record")
        self.expected = expected
        self.actual = actual


class MalformedRecordError(CodecError):
    """The body does not decode with the writer schema it claims, or has trailing bytes."""

    error_type = "undecodable"


class InvalidRecordError(CodecError, ValueError):
    """A record passed to ``encode`` does not conform to its schema."""

    error_type = "invalid_record"

    def __init__(self, schema_name: str, path: str, problem: str) -> None:
        where = f"field {path}" if path else "record"
        super().__init__(f"{schema_name}: {where}: {problem}")
        self.schema_name = schema_name
        self.path = path
        self.problem = problem


class InvalidSchemaError(CodecError):
    """A schema given to ``register`` is not a valid Avro record schema."""

    error_type = "invalid_schema"


class IncompatibleSchemaError(CodecError):
    """A registered schema cannot be resolved against the other versions of its name."""

    error_type = "incompatible_schema"


# --------------------------------------------------------------------------------------
# Parsing Canonical Form
# --------------------------------------------------------------------------------------


def _full_name(name: str, namespace: str | None, enclosing: str | None) -> str:
    if "." in name:
        return name
    space = namespace if namespace is not None else enclosing
    return f"{space}.{name}" if space else name


def _namespace_of(full_name: str) -> str | None:
    return full_name.rpartition(".")[0] or None


def _canonical(node: Any, enclosing: str | None, defined: set[str]) -> Any:
    """Return the canonical JSON value of ``node`` (rules of the spec in brackets)."""
    if isinstance(node, str):
        if node in _PRIMITIVES:
            return node
        # A reference to an earlier named type. Like the Java parser, try the enclosing
        # namespace first, then the null namespace.
        candidate = _full_name(node, None, enclosing)
        if candidate not in defined and node in defined:
            candidate = node
        if candidate not in defined:
            raise InvalidSchemaError(f"reference to undefined type {node!r}")
        return candidate
    if isinstance(node, list):
        return [_canonical(branch, enclosing, defined) for branch in node]
    if not isinstance(node, Mapping):
        raise InvalidSchemaError(f"not a schema: {type(node).__name__}")
    kind = node.get("type")
    if isinstance(kind, (list, Mapping)):
        return _canonical(kind, enclosing, defined)
    if not isinstance(kind, str):
        raise InvalidSchemaError("schema object without a type")
    if kind in _PRIMITIVES:
        # [PRIMITIVES]: {"type": "long", "logicalType": ...} becomes "long".
        return kind
    if kind in _NAMED:
        full = _full_name(str(node["name"]), node.get("namespace"), enclosing)
        if full in defined:
            raise InvalidSchemaError(f"type {full!r} is defined twice")
        defined.add(full)
        inner = _namespace_of(full)
        # [FULLNAMES], [STRIP] and [ORDER]: name, type, fields, symbols, items, values, size.
        out: dict[str, Any] = {"name": full, "type": "record" if kind == "error" else kind}
        if kind in ("record", "error"):
            out["fields"] = [
                {"name": field["name"], "type": _canonical(field["type"], inner, defined)}
                for field in node["fields"]
            ]
        elif kind == "enum":
            out["symbols"] = list(node["symbols"])
        else:
            out["size"] = int(node["size"])
        return out
    if kind == "array":
        return {"type": "array", "items": _canonical(node["items"], enclosing, defined)}
    if kind == "map":
        return {"type": "map", "values": _canonical(node["values"], enclosing, defined)}
    # A bare named-type reference written as {"type": "Name"}.
    return _canonical(kind, enclosing, defined)


def parsing_canonical_form(schema: str | Mapping[str, Any] | Sequence[Any]) -> str:
    """Return the Avro Parsing Canonical Form of ``schema`` (JSON text or parsed JSON).

    Implements the spec's transformations: [PRIMITIVES], [FULLNAMES], [STRIP] (which also
    drops ``logicalType``, ``doc``, ``default`` and ``aliases``), [ORDER], [STRINGS],
    [INTEGERS] and [WHITESPACE].
    """
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError:
            # A bare primitive name such as int, as the Java parser accepts.
            schema = str(schema).strip()
    try:
        canonical = _canonical(schema, None, set())
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, InvalidSchemaError):
            raise
        raise InvalidSchemaError(f"not a valid schema: {type(exc).__name__} {exc}") from None
    return json.dumps(canonical, separators=(",", ":"), ensure_ascii=False)


def schema_fingerprint(schema: str | Mapping[str, Any] | Sequence[Any]) -> int:
    """Return the CRC-64-AVRO fingerprint of the schema's Parsing Canonical Form."""
    return crc64_avro(parsing_canonical_form(schema).encode("utf-8"))


# --------------------------------------------------------------------------------------
# Record validation (our own, so that errors name the field path and never the value;
# avro's own AvroTypeException message embeds the datum).
# --------------------------------------------------------------------------------------


def _type_name(value: object) -> str:
    return type(value).__name__


def _schema_label(schema: avro.schema.Schema) -> str:
    if isinstance(schema, avro.schema.NamedSchema):
        return str(schema.fullname)
    return str(schema.type)


def _safe_label(text: str, limit: int = 64) -> str:
    """Render user-supplied names (map keys, unknown field names) harmlessly in messages."""
    shown = "".join(ch if ch.isprintable() else "?" for ch in text[:limit])
    return repr(shown + ("..." if len(text) > limit else ""))


def _default_datum(schema: avro.schema.Schema, default: Any) -> Any:
    """Turn a field's JSON default into the Python datum the writer expects."""
    if default is None or isinstance(default, (bool, int, float)):
        return default
    if isinstance(schema, avro.schema.UnionSchema):
        # The spec: a union field's default belongs to the union's first branch.
        return _default_datum(schema.schemas[0], default)
    if schema.type in ("bytes", "fixed") and isinstance(default, str):
        return default.encode("latin-1")
    if isinstance(schema, avro.schema.RecordSchema) and isinstance(default, Mapping):
        return {
            field.name: _default_datum(field.type, default.get(field.name, field.default))
            for field in schema.fields
        }
    return copy.deepcopy(default)


class _Validator:
    """Checks a record against a (logical-type free) schema and fills in defaults."""

    def __init__(self, schema_name: str) -> None:
        self.schema_name = schema_name

    def fail(self, path: str, problem: str) -> InvalidRecordError:
        return InvalidRecordError(self.schema_name, path, problem)

    def check_string(self, datum: Any, path: str) -> str:
        if not isinstance(datum, str):
            raise self.fail(path, f"expected string, got {_type_name(datum)}")
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
                raise self.fail(path, f"expected {kind}, got {_type_name(datum)}")
            low, high = _INT_RANGE if kind == "int" else _LONG_RANGE
            if not low <= datum <= high:
                raise self.fail(path, f"out of range for {kind}")
            return datum
        if kind == "null":
            if datum is not None:
                raise self.fail(path, f"expected null, got {_type_name(datum)}")
            return None
        if kind == "boolean":
            if not isinstance(datum, bool):
                raise self.fail(path, f"expected boolean, got {_type_name(datum)}")
            return datum
        if kind in ("float", "double"):
            if not isinstance(datum, (int, float)) or isinstance(datum, bool):
                raise self.fail(path, f"expected {kind}, got {_type_name(datum)}")
            return datum
        if kind == "bytes":
            if not isinstance(datum, (bytes, bytearray, memoryview)):
                raise self.fail(path, f"expected bytes, got {_type_name(datum)}")
            return bytes(datum)
        if isinstance(schema, avro.schema.UnionSchema):
            return self.check_union(schema, datum, path)
        if isinstance(schema, avro.schema.RecordSchema):
            return self.check_record(schema, datum, path)
        if isinstance(schema, avro.schema.ArraySchema):
            if isinstance(datum, (str, bytes, bytearray)) or not isinstance(datum, Sequence):
                raise self.fail(path, f"expected array, got {_type_name(datum)}")
            return [self.check(schema.items, item, f"{path}[{i}]") for i, item in enumerate(datum)]
        if isinstance(schema, avro.schema.MapSchema):
            if not isinstance(datum, Mapping):
                raise self.fail(path, f"expected map, got {_type_name(datum)}")
            out = {}
            for key, value in datum.items():
                if not isinstance(key, str):
                    raise self.fail(path, f"map key of type {_type_name(key)}, expected string")
                self.check_string(key, path)
                out[key] = self.check(schema.values, value, f"{path}[{_safe_label(key)}]")
            return out
        if isinstance(schema, avro.schema.EnumSchema):
            if not isinstance(datum, str):
                raise self.fail(path, f"expected enum symbol, got {_type_name(datum)}")
            if datum not in schema.symbols:
                raise self.fail(path, f"not a symbol of {schema.fullname}")
            return datum
        if isinstance(schema, avro.schema.FixedSchema):
            if not isinstance(datum, (bytes, bytearray, memoryview)):
                raise self.fail(path, f"expected fixed, got {_type_name(datum)}")
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
        raise self.fail(path, f"expected one of [{labels}], got {_type_name(datum)}")

    def check_record(self, schema: avro.schema.RecordSchema, datum: Any, path: str) -> Any:
        if not isinstance(datum, Mapping):
            raise self.fail(path, f"expected record {schema.fullname}, got {_type_name(datum)}")
        prefix = f"{path}." if path else ""
        fields = schema.fields_dict
        for key in datum:
            if key not in fields:
                # Rejecting instead of dropping catches typos (e.g. "body" for "text_body").
                label = _safe_label(key) if isinstance(key, str) else _type_name(key)
                raise self.fail(path, f"unknown field {label}")
        out: dict[str, Any] = {}
        for field in schema.fields:
            if field.name in datum:
                out[field.name] = self.check(field.type, datum[field.name], prefix + field.name)
            elif field.has_default:
                out[field.name] = _default_datum(field.type, field.default)
            else:
                raise self.fail(prefix + field.name, "required field is missing")
        return out


# --------------------------------------------------------------------------------------
# The codec
# --------------------------------------------------------------------------------------


def _strip_logical_types(node: Any) -> Any:
    """Copy of a schema's JSON without ``logicalType`` (see the module docstring)."""
    if isinstance(node, list):
        return [_strip_logical_types(item) for item in node]
    if isinstance(node, Mapping):
        stripped = {k: _strip_logical_types(v) for k, v in node.items() if k != "logicalType"}
        if stripped.get("type") == "bytes" or stripped.get("type") == "fixed":
            # decimal's parameters mean nothing without the logical type.
            stripped.pop("precision", None)
            stripped.pop("scale", None)
        return stripped
    return node


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


class _ValidatedDatumWriter(avro.io.DatumWriter):
    """DatumWriter for data that _Validator has already checked and normalised.

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
            f"no union branch for a {_type_name(datum)}"
        )


# --------------------------------------------------------------------------------------
# Fast path (fastavro). The avro-library path above stays the reference: it alone decides
# what is an error and with which message. The fast path only answers when it can vouch
# that its result is exactly the reference's; otherwise (_NotFast, any fastavro error, a
# failed check) the reference path runs and produces the result or the exception.
# --------------------------------------------------------------------------------------


class _NotFast(Exception):
    """The fast path cannot vouch for this datum; the reference path decides."""


_Normalizer = Callable[[Any], Any]

_FLT_MAX = 3.4028234663852886e38
_FAST_UNION_BRANCHES = frozenset({"string", "int", "long", "boolean", "bytes", "float", "double"})


def _fast_string(datum: Any) -> Any:
    # Lone surrogates pass here; fastavro's UTF-8 encode raises on them, and the
    # reference path then reports them.
    if type(datum) is str:
        return datum
    raise _NotFast


def _fast_int(datum: Any) -> Any:
    # fastavro writes an out-of-range int as a long without complaint.
    if type(datum) is int and -2147483648 <= datum <= 2147483647:
        return datum
    raise _NotFast


def _fast_long(datum: Any) -> Any:
    if type(datum) is int and -9223372036854775808 <= datum <= 9223372036854775807:
        return datum
    raise _NotFast


def _fast_boolean(datum: Any) -> Any:
    if type(datum) is bool:
        return datum
    raise _NotFast


def _fast_null(datum: Any) -> Any:
    if datum is None:
        return None
    raise _NotFast


def _fast_float(datum: Any) -> Any:
    # struct.pack("<f") (the reference) raises OverflowError beyond FLT_MAX where a C
    # cast (fastavro) silently gives inf; inf and NaN themselves go the reference way.
    kind = type(datum)
    if (kind is float or kind is int) and -_FLT_MAX <= datum <= _FLT_MAX:
        return datum
    raise _NotFast


def _fast_double(datum: Any) -> Any:
    # Both sides convert an int with PyFloat_AsDouble; too large raises in both.
    kind = type(datum)
    if kind is float or kind is int:
        return datum
    raise _NotFast


def _fast_bytes(datum: Any) -> Any:
    if type(datum) is bytes:
        return datum
    raise _NotFast


_EXACT_TYPES: dict[_Normalizer, frozenset[type]] = {
    _fast_string: frozenset({str}),
    _fast_boolean: frozenset({bool}),
    _fast_bytes: frozenset({bytes}),
    _fast_null: frozenset({type(None)}),
}
"""Normalizers that are nothing but an exact-type test, which records inline: a function
call per field was most of the cost of checking an EmailResult."""

_FAST_PRIMITIVES: dict[str, _Normalizer] = {
    "string": _fast_string,
    "int": _fast_int,
    "long": _fast_long,
    "boolean": _fast_boolean,
    "null": _fast_null,
    "float": _fast_float,
    "double": _fast_double,
    "bytes": _fast_bytes,
}


def _fast_normalizer(
    schema: avro.schema.Schema, active: frozenset[int] = frozenset()
) -> tuple[_Normalizer, bool] | None:
    """(normalizer, keeps_identity) for ``schema``, or None where only the reference works.

    A normalizer accepts a subset of what ``_Validator`` accepts (exact builtin types,
    nothing the validator would have to convert) and returns the datum as the reference
    writer would see it after validation, shaped so that fastavro writes the same bytes.
    ``keeps_identity`` says it always returns its argument unchanged, so that containers
    of such values need not be rebuilt.
    """
    kind = schema.type
    primitive = _FAST_PRIMITIVES.get(kind)
    if primitive is not None:
        return primitive, True
    if isinstance(schema, avro.schema.UnionSchema):
        return _fast_union(schema, active)
    if isinstance(schema, avro.schema.EnumSchema):
        symbols = frozenset(schema.symbols)

        def enum(datum: Any) -> Any:
            if type(datum) is str and datum in symbols:
                return datum
            raise _NotFast

        return enum, True
    if isinstance(schema, avro.schema.FixedSchema):
        size = schema.size

        def fixed(datum: Any) -> Any:
            if type(datum) is bytes and len(datum) == size:
                return datum
            raise _NotFast

        return fixed, True
    if isinstance(schema, avro.schema.ArraySchema):
        return _fast_array(schema, active)
    if isinstance(schema, avro.schema.MapSchema):
        return _fast_map(schema, active)
    if isinstance(schema, avro.schema.RecordSchema):
        return _fast_record(schema, active)
    return None


def _fast_union(
    schema: avro.schema.UnionSchema, active: frozenset[int]
) -> tuple[_Normalizer, bool] | None:
    # Only the optional-primitive shape ["null", X] / [X, "null"]. There the validator
    # and the reference writer both pick null exactly for None, and fastavro's own
    # branch choice (first branch whose validation passes) agrees for the values the
    # normalizers let through. Wider unions differ in corner cases (float vs double,
    # records by most fields, "-type" keys), so they stay with the reference.
    kinds = [branch.type for branch in schema.schemas]
    if len(kinds) != 2 or "null" not in kinds:
        return None
    other = kinds[1] if kinds[0] == "null" else kinds[0]
    if other not in _FAST_UNION_BRANCHES:
        return None
    inner = _FAST_PRIMITIVES[other]

    def optional(datum: Any) -> Any:
        if datum is None:
            return None
        return inner(datum)

    if inner in _EXACT_TYPES:
        _EXACT_TYPES[optional] = _EXACT_TYPES[inner] | {type(None)}
    return optional, True


def _fast_array(
    schema: avro.schema.ArraySchema, active: frozenset[int]
) -> tuple[_Normalizer, bool] | None:
    compiled = _fast_normalizer(schema.items, active)
    if compiled is None:
        return None
    items, identity = compiled
    if identity:

        def array(datum: Any) -> Any:
            if type(datum) is not list:
                raise _NotFast
            for item in datum:
                items(item)
            return datum

    else:

        def array(datum: Any) -> Any:
            if type(datum) is not list:
                raise _NotFast
            return [items(item) for item in datum]

    return array, identity


def _fast_map(
    schema: avro.schema.MapSchema, active: frozenset[int]
) -> tuple[_Normalizer, bool] | None:
    compiled = _fast_normalizer(schema.values, active)
    if compiled is None:
        return None
    values, identity = compiled

    # Keys with lone surrogates reach fastavro, whose UTF-8 encode raises on them.
    if identity:

        def mapping(datum: Any) -> Any:
            if type(datum) is not dict:
                raise _NotFast
            for key, value in datum.items():
                if type(key) is not str:
                    raise _NotFast
                values(value)
            return datum

    else:

        def mapping(datum: Any) -> Any:
            if type(datum) is not dict:
                raise _NotFast
            out = {}
            for key, value in datum.items():
                if type(key) is not str:
                    raise _NotFast
                out[key] = values(value)
            return out

    return mapping, identity


_NO_DEFAULT = object()


def _fast_record(
    schema: avro.schema.RecordSchema, active: frozenset[int]
) -> tuple[_Normalizer, bool] | None:
    if id(schema) in active:
        return None  # recursive type: the closures would recurse forever while building
    active = active | {id(schema)}
    fields: list[tuple[str, _Normalizer, Any]] = []
    all_identity = True
    for field in schema.fields:
        compiled = _fast_normalizer(field.type, active)
        if compiled is None:
            return None
        normalize, identity = compiled
        all_identity = all_identity and identity
        default: Any = _NO_DEFAULT
        if field.has_default:
            try:
                # What the reference writes for a left-out field, run through the same
                # normalizer so that fastavro writes the same bytes; a default that the
                # normalizer cannot vouch for sends such records the reference way.
                default = normalize(_default_datum(field.type, field.default))
            except Exception:
                default = _NO_DEFAULT
        fields.append((field.name, normalize, default))
    names = frozenset(name for name, _, _ in fields)
    checks = tuple((name, normalize) for name, normalize, _ in fields)
    typed = tuple((name, _EXACT_TYPES[fn]) for name, fn in checks if fn in _EXACT_TYPES)
    called = tuple((name, fn) for name, fn in checks if fn not in _EXACT_TYPES)
    full = tuple(fields)

    def record(datum: Any) -> Any:
        if type(datum) is not dict:
            raise _NotFast
        keys = datum.keys()
        if keys == names:
            if all_identity:
                for name, types in typed:
                    if type(datum[name]) not in types:
                        raise _NotFast
                for name, normalize in called:
                    normalize(datum[name])
                return datum
            return {name: normalize(datum[name]) for name, normalize in checks}
        if not keys <= names:
            raise _NotFast  # unknown field: the reference names it
        out = {}
        for name, normalize, default in full:
            if name in datum:
                out[name] = normalize(datum[name])
            elif default is not _NO_DEFAULT:
                # fastavro only reads it, so sharing one object between records is safe.
                out[name] = default
            else:
                raise _NotFast
        return out

    return record, False


def _collections(schema: avro.schema.Schema, seen: frozenset[int]) -> tuple[bool, bool]:
    """(has an array or map, has one whose elements can encode to zero bytes).

    avro's reader caps how many zero-byte elements one datum may hold (they cost no
    input); records of such schemas are left to the reference reader rather than
    mirroring that cap.
    """
    if id(schema) in seen:
        return False, False
    seen = seen | {id(schema)}
    if isinstance(schema, avro.schema.ArraySchema):
        _, zero = _collections(schema.items, seen)
        return True, zero or _min_size(schema.items, frozenset()) == 0
    if isinstance(schema, avro.schema.MapSchema):
        _, zero = _collections(schema.values, seen)  # a key takes at least one byte
        return True, zero
    if isinstance(schema, avro.schema.UnionSchema):
        parts = [_collections(branch, seen) for branch in schema.schemas]
    elif isinstance(schema, avro.schema.RecordSchema):
        parts = [_collections(field.type, seen) for field in schema.fields]
    else:
        return False, False
    return any(has for has, _ in parts), any(zero for _, zero in parts)


def _min_size(schema: avro.schema.Schema, seen: frozenset[int]) -> int:
    """Lower bound of the encoded size of a value of ``schema`` (0 or 1 is all we need)."""
    kind = schema.type
    if kind == "null":
        return 0
    if isinstance(schema, avro.schema.FixedSchema):
        size: int = schema.size
        return min(size, 1)
    if isinstance(schema, avro.schema.RecordSchema):
        if id(schema) in seen:
            return 1  # a recursive record needs a non-empty branch somewhere to end
        seen = seen | {id(schema)}
        return min(1, sum(_min_size(field.type, seen) for field in schema.fields))
    return 1  # every other type writes at least one byte (a length, index or value)


def _exact_json(schema: avro.schema.Schema) -> str:
    """The schema with every named type spelled out, to compare two field types."""
    return json.dumps(schema.to_json(), sort_keys=True)  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class _FastPath:
    """fastavro's side of one schema version."""

    schema: Any
    """The writer schema as parsed by ``fastavro.parse_schema`` (logical types stripped)."""
    normalize: _Normalizer | None
    """Fast record check for ``encode``; None when the schema has a shape it cannot vouch
    for (wider unions, recursive records): then every record goes the reference way."""
    decodes: bool
    """Whether ``decode`` may try fastavro for records written with this version."""
    has_collections: bool
    """Whether the schema has arrays or maps (avro caps their element counts)."""


@dataclass(frozen=True)
class _Projection:
    """How the reference reader turns a record of one writer version into the reader's.

    Only for version pairs whose shared fields have identical types: then avro's
    resolution is the writer's own decoding with removed fields dropped and added fields
    set to their defaults, in avro's key order (writer's fields, then added ones).
    """

    kept: tuple[str, ...]
    added: tuple[tuple[str, Any], ...]


def _build_fast_path(
    definition: Mapping[str, Any], wire: avro.schema.RecordSchema
) -> _FastPath | None:
    try:
        parsed = fastavro.parse_schema(_strip_logical_types(definition))
    except Exception:
        # A schema fastavro refuses is still valid for avro: it just has no fast path.
        return None
    compiled = _fast_normalizer(wire)
    has_collections, zero_byte_collections = _collections(wire, frozenset())
    return _FastPath(
        schema=parsed,
        normalize=None if compiled is None else compiled[0],
        decodes=not zero_byte_collections,
        has_collections=has_collections,
    )


def _build_projection(
    writer: avro.schema.RecordSchema, reader: avro.schema.RecordSchema
) -> _Projection | None:
    """The projection for a (writer, reader) pair, None if only avro can resolve it."""
    if not reader.match(writer):  # type: ignore[no-untyped-call]
        return None
    reader_fields = reader.fields_dict
    writer_fields = writer.fields_dict
    kept = []
    # Mirrors avro's DatumReader.read_record: writer's fields by name, then the defaults.
    for field in writer.fields:
        other = reader_fields.get(field.name)
        if other is None:
            continue
        if _exact_json(field.type) != _exact_json(other.type):
            return None  # nested resolution (promotions, enum symbols, ...): avro decides
        kept.append(field.name)
    added = []
    default_reader = avro.io.DatumReader()  # type: ignore[no-untyped-call]
    for name, field in reader_fields.items():
        if name in writer_fields:
            continue
        if not field.has_default:
            return None
        try:
            default = default_reader._read_default_value(field.type, field.default)
        except Exception:
            return None  # avro raises it on every record; let it
        added.append((name, default))
    return _Projection(kept=tuple(kept), added=tuple(added))


# avro >= 1.12.1 caps collection sizes (configurable by environment); older ones do not.
_AVRO_LIMITS: Callable[[], tuple[int, int]] | None = getattr(avro.io, "_collection_limits", None)


def _collection_limit() -> int | None:
    """avro's per-collection element cap, read as avro reads it (per record, ~1 µs)."""
    return None if _AVRO_LIMITS is None else _AVRO_LIMITS()[1]


@dataclass(frozen=True)
class _SchemaVersion:
    """One known version (writer schema) of a named record schema."""

    full_name: str
    fingerprint: int
    definition: Mapping[str, Any]
    wire: avro.schema.RecordSchema
    header: bytes
    writer: _ValidatedDatumWriter
    validator: _Validator
    fast: _FastPath | None

    @property
    def short_name(self) -> str:
        return self.full_name.rpartition(".")[2]


class SchemaCodec:
    """Encodes and decodes records in Avro single-object encoding.

    Holds every known *writer* schema by fingerprint and, per full name, the *reader*
    schema (the current version) that decoded records are resolved to. By default it
    loads every ``.avsc`` file in the ``schemas`` package directory as the current
    version of its record.
    """

    def __init__(self, schema_dir: str | Path | None = SCHEMA_DIR) -> None:
        """Create a codec with the ``.avsc`` files of ``schema_dir`` (none if ``None``)."""
        self._writers: dict[int, _SchemaVersion] = {}
        self._readers: dict[str, _SchemaVersion] = {}
        self._datum_readers: dict[tuple[int, int], avro.io.DatumReader] = {}
        self._projections: dict[tuple[int, int], _Projection | None] = {}
        # Schema registry: id -> writer version; full name -> Confluent header to encode with.
        self._by_id: dict[int, _SchemaVersion] = {}
        self._id_headers: dict[str, bytes] = {}
        self._id_failures: dict[int, tuple[float, str]] = {}
        #: Fetches the schema (JSON text) registered under an id; see schemas/registry.py.
        self.id_resolver: Callable[[int], str] | None = None
        #: Whether ``decode`` may call ``id_resolver`` itself (I/O) for an unknown id.
        self.fetch_on_decode = False
        checker = avro.compatibility.ReaderWriterCompatibilityChecker  # untyped in avro
        self._compatibility: Any = checker()  # type: ignore[no-untyped-call]
        loaded: dict[str, str] = {}
        if schema_dir is not None:
            for path in sorted(Path(schema_dir).glob("*.avsc")):
                fingerprint = self.register(path.read_text(encoding="utf-8"), as_reader=True)
                full_name = self._writers[fingerprint].full_name
                if full_name in loaded:
                    raise InvalidSchemaError(f"{path.name}: {full_name} is defined twice")
                loaded[full_name] = path.name

    # ---- schema registry ------------------------------------------------------------

    def register(self, schema_json: str | Mapping[str, Any], *, as_reader: bool = False) -> int:
        """Make a writer schema known and return its fingerprint.

        With ``as_reader=True`` (or when no version of the name is known yet) it also
        becomes the reader schema that records of that name are decoded into. Raises
        ``InvalidSchemaError`` for a schema that is not a valid record schema and
        ``IncompatibleSchemaError`` when the current reader could not read it (or, as a
        new reader, it could not read a known writer).
        """
        definition = self._parse_definition(schema_json)
        fingerprint = schema_fingerprint(definition)
        version = self._writers.get(fingerprint)
        if version is None:
            version = self._build_version(definition, fingerprint)
        reader = self._readers.get(version.full_name)
        if reader is None or as_reader:
            for writer in self._writers.values():
                if writer.full_name == version.full_name:
                    self._check_compatible(version, writer)
            self._readers[version.full_name] = version
        else:
            self._check_compatible(reader, version)
        self._writers[fingerprint] = version
        return fingerprint

    def names(self) -> tuple[str, ...]:
        """Full names of the records this codec can encode, sorted."""
        return tuple(sorted(self._readers))

    def fingerprint(self, name: str) -> int:
        """Fingerprint of the current (reader) version of record ``name``."""
        return self._reader(name).fingerprint

    def schema(self, name: str) -> Mapping[str, Any]:
        """The JSON definition (as in the ``.avsc`` file) of the current version of ``name``."""
        return copy.deepcopy(self._reader(name).definition)

    def writer_name(self, data: BytesLike) -> str:
        """Full name of the schema ``data`` was written with, without decoding the body."""
        return self._frame(data)[0].full_name

    # ---- schema registry ids --------------------------------------------------------

    def register_id(self, schema_id: int, schema_json: str | Mapping[str, Any]) -> int:
        """Make the writer schema a registry assigned ``schema_id`` known; its fingerprint.

        Raises like :meth:`register` (the current reader must be able to read it).
        """
        _check_schema_id(schema_id)
        fingerprint = self.register(schema_json)
        self._by_id[schema_id] = self._writers[fingerprint]
        self._id_failures.pop(schema_id, None)
        return fingerprint

    def use_registry_id(self, name: str, schema_id: int) -> None:
        """Encode record ``name`` in the Confluent wire format with ``schema_id`` from now on.

        The id must have been made known (:meth:`register_id`) for the current version.
        """
        reader = self._reader(name)
        version = self._by_id.get(schema_id)
        if version is None or version.fingerprint != reader.fingerprint:
            raise UnknownSchemaError(
                f"registry id {schema_id} is not the current version of {reader.full_name}",
                schema_id=schema_id,
            )
        self._id_headers[reader.full_name] = CONFLUENT_MAGIC + schema_id.to_bytes(4, "big")

    def registry_id(self, name: str) -> int | None:
        """The registry id ``name`` is encoded with, or None (single-object encoding)."""
        header = self._id_headers.get(self._reader(name).full_name)
        return None if header is None else int.from_bytes(header[1:], "big")

    def known_ids(self) -> frozenset[int]:
        """Registry ids this codec can decode without asking the registry."""
        return frozenset(self._by_id)

    def unknown_ids(self, values: Iterable[BytesLike | None]) -> set[int]:
        """Registry ids of Confluent-framed ``values`` this codec does not know yet."""
        unknown: set[int] = set()
        for data in values:
            if (
                isinstance(data, (bytes, bytearray, memoryview))
                and len(data) >= CONFLUENT_HEADER_SIZE
                and data[0] == 0
            ):
                schema_id = int.from_bytes(data[1:CONFLUENT_HEADER_SIZE], "big")
                if schema_id not in self._by_id:
                    unknown.add(schema_id)
        return unknown

    def id_failed(self, schema_id: int, reason: str) -> None:
        """Remember that ``schema_id`` could not be resolved (named in decode errors)."""
        self._id_failures[schema_id] = (time.monotonic(), reason)

    def should_fetch(self, schema_id: int) -> bool:
        """False while a failed fetch of ``schema_id`` is recent (not asked again yet)."""
        failure = self._id_failures.get(schema_id)
        return failure is None or time.monotonic() - failure[0] >= UNKNOWN_ID_RETRY_S

    # ---- encoding -------------------------------------------------------------------

    def encode(self, name: str, record: Mapping[str, Any]) -> bytes:
        """Encode ``record`` with the current version of schema ``name`` (short or full).

        Missing fields that have a default get it; unknown fields, missing required
        fields and wrongly typed values raise ``InvalidRecordError`` naming the field.
        Timestamps are ``int`` milliseconds.
        """
        version = self._reader(name)
        header = self._id_headers.get(version.full_name, version.header)
        fast = version.fast
        if fast is not None and fast.normalize is not None:
            try:
                datum = fast.normalize(record)
                buffer = io.BytesIO()
                buffer.write(header)
                fastavro.schemaless_writer(buffer, fast.schema, datum)
                return buffer.getvalue()
            except Exception:
                # _NotFast or fastavro refusing the datum: the reference path gives the
                # same bytes or the exact error (InvalidRecordError naming the field).
                pass
        return self._encode_with_avro(version, record, header)

    def _reference_encode(self, name: str, record: Mapping[str, Any]) -> bytes:
        """``encode`` on the avro-library path only (the reference the tests compare to)."""
        version = self._reader(name)
        return self._encode_with_avro(
            version, record, self._id_headers.get(version.full_name, version.header)
        )

    @staticmethod
    def _encode_with_avro(
        version: _SchemaVersion, record: Mapping[str, Any], header: bytes
    ) -> bytes:
        datum = version.validator.check_record(version.wire, record, "")
        buffer = io.BytesIO()
        buffer.write(header)
        # write_data skips avro's own validate(), which _Validator already did.
        version.writer.write_data(version.wire, datum, avro.io.BinaryEncoder(buffer))
        return buffer.getvalue()

    # ---- decoding -------------------------------------------------------------------

    def decode(self, data: BytesLike, expect: str | None = None) -> dict[str, Any]:
        """Decode one record (either framing) into a dict of the reader schema.

        ``expect`` (short or full name) guards against a record of another type on the
        topic. Raises ``NotSingleObjectError``, ``UnknownSchemaError``,
        ``WrongSchemaError`` or ``MalformedRecordError`` (all ``CodecError``).
        """
        writer, offset = self._frame(data)
        if expect is not None:
            actual = writer.full_name if "." in expect else writer.short_name
            if actual != expect:
                raise WrongSchemaError(expect, writer.full_name)
        reader = self._readers[writer.full_name]
        record = self._decode_with_fastavro(writer, reader, data, offset)
        if record is not None:
            return record
        return self._decode_with_avro(writer, reader, data, offset)

    def _reference_decode(self, data: BytesLike, expect: str | None = None) -> dict[str, Any]:
        """``decode`` on the avro-library path only (the reference the tests compare to)."""
        writer, offset = self._frame(data)
        if expect is not None:
            actual = writer.full_name if "." in expect else writer.short_name
            if actual != expect:
                raise WrongSchemaError(expect, writer.full_name)
        return self._decode_with_avro(writer, self._readers[writer.full_name], data, offset)

    def _decode_with_fastavro(
        self,
        writer: _SchemaVersion,
        reader: _SchemaVersion,
        data: BytesLike,
        offset: int = HEADER_SIZE,
    ) -> dict[str, Any] | None:
        """The decoded record, or None where only the reference path can answer exactly.

        fastavro reads the body with the writer schema; the result counts only if
        fastavro writes it back to exactly the same bytes. Canonical bytes decode to the
        same value in both libraries, while the inputs they treat differently (a boolean
        byte other than 0 or 1, overlong varints, bad union or enum indices, short or
        trailing data, invalid UTF-8) are never canonical, or fail, and so go the
        reference way with its exact error or result.
        """
        fast = writer.fast
        if fast is None or not fast.decodes:
            return None
        projection: _Projection | None = None
        if writer.fingerprint != reader.fingerprint:
            projection = self._projection(writer, reader)
            if projection is None:
                return None
        if fast.has_collections:
            limit = _collection_limit()
            if limit is not None and len(data) - offset > limit:
                return None  # avro might refuse a collection this large
        try:
            stream = io.BytesIO(data)
            stream.seek(offset)
            record = fastavro.schemaless_reader(stream, fast.schema, None)
            if stream.tell() != len(data) or not isinstance(record, dict):
                return None
            check = io.BytesIO()
            check.write(data[:offset])
            fastavro.schemaless_writer(check, fast.schema, record)
            if check.getvalue() != data:
                return None
        except Exception:
            return None
        if projection is None:
            return record
        out = {name: record[name] for name in projection.kept}
        for name, default in projection.added:
            # avro builds a fresh default per record, so mutable ones must not be shared.
            out[name] = copy.deepcopy(default) if isinstance(default, (list, dict)) else default
        return out

    def _projection(self, writer: _SchemaVersion, reader: _SchemaVersion) -> _Projection | None:
        pair = (writer.fingerprint, reader.fingerprint)
        if pair not in self._projections:
            self._projections[pair] = _build_projection(writer.wire, reader.wire)
        return self._projections[pair]

    def _decode_with_avro(
        self,
        writer: _SchemaVersion,
        reader: _SchemaVersion,
        data: BytesLike,
        offset: int = HEADER_SIZE,
    ) -> dict[str, Any]:
        datum_reader = self._datum_reader(writer, reader)
        buffer = io.BytesIO(data)
        buffer.seek(offset)
        try:
            record = datum_reader.read(avro.io.BinaryDecoder(buffer))
        except (
            avro.errors.AvroException,
            UnicodeDecodeError,
            struct.error,
            ValueError,
            IndexError,
            OverflowError,
            MemoryError,
            RecursionError,
        ) as exc:
            # Only avro's binary-encoding messages are kept: they hold sizes, not data.
            detail = str(exc) if isinstance(exc, avro.errors.InvalidAvroBinaryEncoding) else ""
            raise MalformedRecordError(
                f"{writer.full_name} body does not decode at body byte "
                f"{buffer.tell() - offset} of {len(data) - offset}: "
                f"{type(exc).__name__}{': ' + detail if detail else ''}"
            ) from None
        trailing = len(data) - buffer.tell()
        if trailing:
            raise MalformedRecordError(
                f"{writer.full_name} record followed by {trailing} unexpected trailing byte(s)"
            )
        if not isinstance(record, dict):
            raise MalformedRecordError(f"{writer.full_name} did not decode to a record")
        return record

    # ---- internals ------------------------------------------------------------------

    @staticmethod
    def _parse_definition(schema_json: str | Mapping[str, Any]) -> dict[str, Any]:
        if isinstance(schema_json, str):
            try:
                parsed = json.loads(schema_json)
            except json.JSONDecodeError as exc:
                raise InvalidSchemaError(f"schema is not JSON: {exc.msg} at {exc.pos}") from None
        else:
            parsed = copy.deepcopy(dict(schema_json))
        if not isinstance(parsed, dict) or parsed.get("type") not in ("record", "error"):
            raise InvalidSchemaError("only record schemas can be registered")
        return parsed

    def _build_version(self, definition: dict[str, Any], fingerprint: int) -> _SchemaVersion:
        try:
            wire = avro.schema.parse(json.dumps(_strip_logical_types(definition)))
        except (avro.errors.AvroException, ValueError, TypeError, KeyError) as exc:
            raise InvalidSchemaError(f"not a valid Avro schema: {exc}") from None
        if not isinstance(wire, avro.schema.RecordSchema):
            raise InvalidSchemaError("only record schemas can be registered")
        full_name = str(wire.fullname)
        return _SchemaVersion(
            full_name=full_name,
            fingerprint=fingerprint,
            definition=definition,
            wire=wire,
            header=MAGIC + fingerprint.to_bytes(8, "little"),
            writer=_ValidatedDatumWriter(wire),
            validator=_Validator(full_name),
            fast=_build_fast_path(definition, wire),
        )

    def _check_compatible(self, reader: _SchemaVersion, writer: _SchemaVersion) -> None:
        if reader.fingerprint == writer.fingerprint:
            return
        result = self._compatibility.get_compatibility(reader.wire, writer.wire)
        if result.compatibility is not avro.compatibility.SchemaCompatibilityType.compatible:
            problems = "; ".join(str(message) for message in result.messages)
            raise IncompatibleSchemaError(
                f"{reader.full_name} version {reader.fingerprint:016x} cannot read version "
                f"{writer.fingerprint:016x}: {problems}"
            )

    def _reader(self, name: str) -> _SchemaVersion:
        version = self._readers.get(name)
        if version is not None:
            return version
        matches = [v for full, v in self._readers.items() if full.rpartition(".")[2] == name]
        if len(matches) == 1:
            return matches[0]
        problem = "is ambiguous, use the full name" if matches else "is not known"
        raise UnknownSchemaError(f"schema {_safe_label(name)} {problem}")

    def _frame(self, data: BytesLike) -> tuple[_SchemaVersion, int]:
        """The writer schema of ``data`` and where its Avro body starts (either framing)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise NotSingleObjectError(f"expected bytes, got {_type_name(data)}")
        if len(data) and data[0] == 0:
            return self._writer_by_id(data), CONFLUENT_HEADER_SIZE
        return self._writer_of(data), HEADER_SIZE

    def _writer_by_id(self, data: BytesLike) -> _SchemaVersion:
        if len(data) < CONFLUENT_HEADER_SIZE:
            raise NotSingleObjectError(
                f"{len(data)} byte(s) is too short for a schema registry (Confluent) header"
            )
        schema_id = int.from_bytes(data[1:CONFLUENT_HEADER_SIZE], "big")
        writer = self._by_id.get(schema_id)
        if writer is not None:
            return writer
        resolver = self.id_resolver
        if resolver is not None and self.fetch_on_decode and self.should_fetch(schema_id):
            try:
                self.register_id(schema_id, resolver(schema_id))
                return self._by_id[schema_id]
            except CodecError as exc:
                self.id_failed(schema_id, str(exc))
            except Exception as exc:  # the resolver's errors (registry down, 404, ...)
                self.id_failed(schema_id, str(exc))
        failure = self._id_failures.get(schema_id)
        detail = (
            f": {failure[1]}"
            if failure is not None
            else " (not fetched: no schema registry configured)"
            if resolver is None
            else " (not resolved yet)"
        )
        raise UnknownSchemaError(
            f"unknown schema registry id {schema_id}{detail}", schema_id=schema_id
        )

    def _writer_of(self, data: BytesLike) -> _SchemaVersion:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise NotSingleObjectError(f"expected bytes, got {_type_name(data)}")
        if len(data) < HEADER_SIZE:
            raise NotSingleObjectError(
                f"{len(data)} byte(s) is too short for an Avro single-object header"
            )
        if bytes(data[:2]) != MAGIC:
            raise NotSingleObjectError(
                "no Avro single-object marker (expected c301) and no schema registry "
                f"marker (expected 00), got {bytes(data[:2]).hex()}"
            )
        fingerprint = int.from_bytes(data[2:HEADER_SIZE], "little")
        writer = self._writers.get(fingerprint)
        if writer is None:
            raise UnknownSchemaError(
                f"unknown writer schema fingerprint {fingerprint:016x}", fingerprint
            )
        return writer

    def _datum_reader(self, writer: _SchemaVersion, reader: _SchemaVersion) -> avro.io.DatumReader:
        pair = (writer.fingerprint, reader.fingerprint)
        datum_reader = self._datum_readers.get(pair)
        if datum_reader is None:
            datum_reader = avro.io.DatumReader(writer.wire, reader.wire)
            self._datum_readers[pair] = datum_reader
        return datum_reader


def _check_schema_id(schema_id: int) -> None:
    if not isinstance(schema_id, int) or isinstance(schema_id, bool) or not 0 <= schema_id < 2**31:
        raise InvalidSchemaError(f"not a schema registry id: {schema_id!r}")


@functools.cache
def default_codec() -> SchemaCodec:
    """The process-wide codec with the package's ``.avsc`` schemas (created once)."""
    return SchemaCodec()
