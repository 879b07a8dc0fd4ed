"""The fastavro fast path of the codec: same bytes, same results, less time.

Contract: ``build_fast_path(wire_definition, wire)`` prepares fastavro's side of one
schema version (``None`` when fastavro refuses the schema). ``FastPath.encode`` and
``FastPath.decode`` return the encoded bytes or decoded record *only* when they can vouch
that the result is exactly what the avro-library path of ``schemas/codec.py`` gives, and
``None`` otherwise; they never raise. ``build_projection`` says how a record of one
writer version becomes one of the reader version without avro's schema resolution
(``None`` when only avro can resolve the pair).

Reason: the avro library (pure Python) was most of the worker's time per record; fastavro
(C) is several times faster. But the avro-library path stays the reference: it alone
decides what is an error and with which message (``schemas/validation.py``). So the fast
path accepts only values the reference would accept unchanged, checks a decoded record by
writing it back to the same bytes, and everything else (any fastavro error, a failed
check) goes the reference way, which produces the result or the exception
(``tests/unit/schemas/test_codec_fast_path.py`` compares both paths).
"""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import avro.io
import avro.schema
import fastavro

from sendonce.schemas.validation import default_datum


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

    A normalizer accepts a subset of what ``RecordValidator`` accepts (exact builtin types,
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
                default = normalize(default_datum(field.type, field.default))
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
class FastPath:
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

    def encode(self, header: bytes, record: Mapping[str, Any]) -> bytes | None:
        """``header`` and the Avro binary of ``record``, or None: the reference decides.

        None for a schema without a record check, a record the check cannot vouch for
        (``_NotFast``) and fastavro refusing the datum: the reference path then gives the
        same bytes or the exact error (``InvalidRecordError`` naming the field).
        """
        if self.normalize is None:
            return None
        try:
            datum = self.normalize(record)
            buffer = io.BytesIO()
            buffer.write(header)
            fastavro.schemaless_writer(buffer, self.schema, datum)
            return buffer.getvalue()
        except Exception:
            return None

    def decode(
        self,
        data: bytes | bytearray | memoryview,
        offset: int,
        projection: Projection | None,
    ) -> dict[str, Any] | None:
        """The record whose Avro body starts at ``offset``, or None: the reference decides.

        fastavro reads the body with the writer schema; the result counts only if
        fastavro writes it back to exactly the same bytes. Canonical bytes decode to the
        same value in both libraries, while the inputs they treat differently (a boolean
        byte other than 0 or 1, overlong varints, bad union or enum indices, short or
        trailing data, invalid UTF-8) are never canonical, or fail, and so go the
        reference way with its exact error or result. ``projection`` (None when writer
        and reader are the same version) turns the writer's record into the reader's.
        """
        if not self.decodes:
            return None
        if self.has_collections:
            limit = _collection_limit()
            if limit is not None and len(data) - offset > limit:
                return None  # avro might refuse a collection this large
        try:
            stream = io.BytesIO(data)
            stream.seek(offset)
            record = fastavro.schemaless_reader(stream, self.schema, None)
            if stream.tell() != len(data) or not isinstance(record, dict):
                return None
            check = io.BytesIO()
            check.write(data[:offset])
            fastavro.schemaless_writer(check, self.schema, record)
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


@dataclass(frozen=True)
class Projection:
    """How the reference reader turns a record of one writer version into the reader's.

    Only for version pairs whose shared fields have identical types: then avro's
    resolution is the writer's own decoding with removed fields dropped and added fields
    set to their defaults, in avro's key order (writer's fields, then added ones).
    """

    kept: tuple[str, ...]
    added: tuple[tuple[str, Any], ...]


def build_fast_path(
    wire_definition: dict[str, Any], wire: avro.schema.RecordSchema
) -> FastPath | None:
    """fastavro's side of one schema version, or None if fastavro refuses the schema.

    ``wire_definition`` is the version's JSON with logical types stripped (as the codec
    writes it) and ``wire`` the same schema as parsed by avro.
    """
    try:
        parsed = fastavro.parse_schema(wire_definition)
    except Exception:
        # A schema fastavro refuses is still valid for avro: it just has no fast path.
        return None
    compiled = _fast_normalizer(wire)
    has_collections, zero_byte_collections = _collections(wire, frozenset())
    return FastPath(
        schema=parsed,
        normalize=None if compiled is None else compiled[0],
        decodes=not zero_byte_collections,
        has_collections=has_collections,
    )


def build_projection(
    writer: avro.schema.RecordSchema, reader: avro.schema.RecordSchema
) -> Projection | None:
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
    return Projection(kept=tuple(kept), added=tuple(added))


# avro >= 1.12.1 caps collection sizes (configurable by environment); older ones do not.
_AVRO_LIMITS: Callable[[], tuple[int, int]] | None = getattr(avro.io, "_collection_limits", None)


def _collection_limit() -> int | None:
    """avro's per-collection element cap, read as avro reads it (per record, ~1 µs)."""
    return None if _AVRO_LIMITS is None else _AVRO_LIMITS()[1]
