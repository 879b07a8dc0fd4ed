"""Avro single-object encoding for sendonce's records: the codec.

Every value sendonce writes to Kafka is one Avro record in the Avro specification's
*single-object encoding*::

    C3 01 | 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's
          |   Parsing Canonical Form (schemas/fingerprint.py)
          | Avro binary encoding of the record

The fingerprint tells a reader which writer schema produced the bytes, so records written
by an older or newer (compatible) version of a schema are resolved against the reader's
current version.

Timestamps: the ``.avsc`` files declare ``timestamp-millis`` logical types (so data tools
see timestamps), but the codec (de)serialises with the logical types stripped, i.e. plain
``long``. Timestamp fields are therefore always ``int`` milliseconds since the Unix epoch
(UTC), on the way in and on the way out. Stripping does not change the fingerprint: the
Parsing Canonical Form drops ``logicalType`` anyway.

Schema registry framing: a codec told a record's registry id (``use_registry_id``, see
``schemas/registry.py``) encodes that record in the Confluent wire format instead::

    00 | 4-byte big-endian schema registry id | Avro binary encoding of the record

``decode`` accepts both framings, whatever this codec encodes with, so producers can
switch without a flag day. A registry id it has not seen is fetched through
``id_resolver`` when ``fetch_on_decode`` is set (command-line tools), and is otherwise an
``UnknownSchemaError`` (the worker resolves ids ahead of time, off its event loop).

Contract: ``SchemaCodec`` owns the known schema versions, the framing and the choice of
path; every error it raises is a ``CodecError`` (``schemas/errors.py``). Records are
checked by ``schemas/validation.py`` and written and read by the avro library, the
reference that defines every result and message. Speed: ``encode`` and ``decode`` run on
fastavro (C, ``schemas/fast_path.py``) when it can vouch that the result is exactly the
reference's, and fall back to the reference otherwise
(``tests/unit/schemas/test_codec_fast_path.py``).
"""

from __future__ import annotations

import copy
import functools
import io
import json
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import avro.compatibility
import avro.errors
import avro.io
import avro.schema

from sendonce.schemas.errors import (
    CodecError,
    IncompatibleSchemaError,
    InvalidSchemaError,
    MalformedRecordError,
    NotSingleObjectError,
    UnknownSchemaError,
    WrongSchemaError,
)
from sendonce.schemas.fast_path import FastPath, Projection, build_fast_path, build_projection
from sendonce.schemas.fingerprint import schema_fingerprint
from sendonce.schemas.validation import (
    RecordValidator,
    ValidatedDatumWriter,
    safe_label,
    type_name,
)

BytesLike = bytes | bytearray | memoryview

MAGIC = b"\xc3\x01"
"""The two marker bytes that start every single-object encoded record."""

HEADER_SIZE = len(MAGIC) + 8

CONFLUENT_MAGIC = b"\x00"
"""The byte that starts every record in the Confluent (schema registry) wire format."""

CONFLUENT_HEADER_SIZE = len(CONFLUENT_MAGIC) + 4

UNKNOWN_ID_RETRY_S = 30.0
"""How long a registry id that could not be fetched is not asked for again."""

SCHEMA_DIR = Path(__file__).resolve().parent


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


@dataclass(frozen=True)
class _SchemaVersion:
    """One known version (writer schema) of a named record schema."""

    full_name: str
    fingerprint: int
    definition: Mapping[str, Any]
    wire: avro.schema.RecordSchema
    header: bytes
    writer: ValidatedDatumWriter
    validator: RecordValidator
    fast: FastPath | None

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
        self._projections: dict[tuple[int, int], Projection | None] = {}
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
        if version.fast is not None:
            data = version.fast.encode(header, record)
            if data is not None:
                return data
        # The reference path gives the same bytes or the exact error.
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
        # write_data skips avro's own validate(), which RecordValidator already did.
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
        """The decoded record, or None where only the reference path can answer exactly."""
        fast = writer.fast
        if fast is None or not fast.decodes:
            return None
        projection: Projection | None = None
        if writer.fingerprint != reader.fingerprint:
            projection = self._projection(writer, reader)
            if projection is None:
                return None
        return fast.decode(data, offset, projection)

    def _projection(self, writer: _SchemaVersion, reader: _SchemaVersion) -> Projection | None:
        pair = (writer.fingerprint, reader.fingerprint)
        if pair not in self._projections:
            self._projections[pair] = build_projection(writer.wire, reader.wire)
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
            writer=ValidatedDatumWriter(wire),
            validator=RecordValidator(full_name),
            fast=build_fast_path(_strip_logical_types(definition), wire),
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
        raise UnknownSchemaError(f"schema {safe_label(name)} {problem}")

    def _frame(self, data: BytesLike) -> tuple[_SchemaVersion, int]:
        """The writer schema of ``data`` and where its Avro body starts (either framing)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise NotSingleObjectError(f"expected bytes, got {type_name(data)}")
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
            raise NotSingleObjectError(f"expected bytes, got {type_name(data)}")
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
