"""Avro Parsing Canonical Form and its CRC-64-AVRO fingerprint.

Contract: ``schema_fingerprint(schema)`` is the 64-bit fingerprint the Avro
specification's single-object encoding puts in every record header (``schemas/codec.py``
writes it little-endian after the ``C3 01`` marker): CRC-64-AVRO (``crc64_avro``) of the
schema's Parsing Canonical Form (``parsing_canonical_form``). A schema that is not valid
JSON Avro raises ``InvalidSchemaError``.

Reason: the canonical form and fingerprint are computed here rather than with avro's
``Schema.canonical_form`` / ``Schema.fingerprint``: avro 1.12 (Python) keeps a logical-typed
primitive as ``{"type":"long"}`` instead of ``"long"`` (the spec's [PRIMITIVES] rule), and
writes a named type out in full again where it is referenced a second time. Its fingerprints
of our schemas therefore differ from the Java implementation's, which ours match (see
``tests/unit/schemas/test_fingerprint.py``). The form drops ``logicalType``, so the codec
stripping logical types does not change a fingerprint.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from sendonce.schemas.errors import InvalidSchemaError

EMPTY_FINGERPRINT = 0xC15D213AA4D7A795
"""CRC-64-AVRO's initial value and polynomial (the Avro spec's ``EMPTY``)."""

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NAMED = frozenset({"record", "error", "enum", "fixed"})


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
