"""The errors the schema codec raises, one class per way a record or schema can fail.

Contract: every error is a ``CodecError`` whose class attribute ``error_type`` is a
stable machine-readable name, suitable for ``DeadLetter.error_type``. Messages end up in
dead-letter reasons and logs: they name schemas, fields and byte positions, never field
values or message bodies.

Reason for a module of their own: the canonical form (``schemas/fingerprint.py``), record
validation (``schemas/validation.py``) and the codec (``schemas/codec.py``) all raise
them, and callers catch them without needing the codec's machinery.
"""

from __future__ import annotations

from typing import ClassVar


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
