"""sendonce's Avro schemas (the ``.avsc`` files in this package) and their codec."""

from sendonce.schemas.codec import (
    EMPTY_FINGERPRINT,
    MAGIC,
    CodecError,
    IncompatibleSchemaError,
    InvalidRecordError,
    InvalidSchemaError,
    MalformedRecordError,
    NotSingleObjectError,
    SchemaCodec,
    UnknownSchemaError,
    WrongSchemaError,
    crc64_avro,
    default_codec,
    parsing_canonical_form,
    schema_fingerprint,
)

__all__ = [
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
