"""The small OData subset the Graph emulator understands, and the names it speaks of.

Graph clients find a sent message again by its extended property, so the emulator parses
exactly that: the ``$filter`` ``singleValueExtendedProperties/any(ep: ep/id eq '...' and
ep/value eq '...')``, ``$select`` over a message's properties, and ``$expand=
singleValueExtendedProperties($filter=id eq '...')``. Anything else is a
:class:`FilterError` (answered 400, as Graph refuses what it does not support), so a
client never relies on a query the emulator silently misreads. Extended property ids
compare like Exchange's (case- and spacing-insensitive).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "MESSAGE_PROPERTIES",
    "ExpandSpec",
    "FilterError",
    "PropertyFilter",
    "normalize_property_id",
    "parse_expand",
    "parse_property_filter",
    "parse_select",
    "property_name",
    "valid_property_id",
]

# Properties a message has in the emulator, i.e. what ``$select`` may name.
MESSAGE_PROPERTIES = (
    "id",
    "createdDateTime",
    "lastModifiedDateTime",
    "changeKey",
    "categories",
    "receivedDateTime",
    "sentDateTime",
    "hasAttachments",
    "internetMessageId",
    "subject",
    "bodyPreview",
    "importance",
    "parentFolderId",
    "conversationId",
    "isDeliveryReceiptRequested",
    "isReadReceiptRequested",
    "isRead",
    "isDraft",
    "body",
    "sender",
    "from",
    "toRecipients",
    "ccRecipients",
    "bccRecipients",
    "replyTo",
)
_PROPERTY_BY_LOWER = {p.lower(): p for p in MESSAGE_PROPERTIES}


class FilterError(ValueError):
    """An OData query option the emulator does not support (answered with 400)."""


def normalize_property_id(prop_id: str) -> str:
    """Compare extended property ids like Exchange: case- and spacing-insensitive."""
    return " ".join(prop_id.split()).lower()


# An extended property id: ``String {GUID} Name X``, ``String {GUID} Id 0x8005`` or
# ``String 0x0037`` (the MAPI property types Graph accepts in singleValueExtendedProperties).
_GUID = r"\{[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\}"
_PROPERTY_ID = re.compile(
    r"^(String|Integer|Boolean|SystemTime|Long|Double|Binary|CLSID)\s+"
    rf"(?:{_GUID}\s+Name\s+\S+|{_GUID}\s+Id\s+0x[0-9a-fA-F]{{1,4}}|0x[0-9a-fA-F]{{1,4}})$",
    re.IGNORECASE,
)


def valid_property_id(prop_id: str) -> bool:
    """Whether ``prop_id`` is a well-formed single-value extended property id."""
    return _PROPERTY_ID.match(prop_id.strip()) is not None


def property_name(prop_id: str) -> str | None:
    """The ``Name`` part of a named property id, else None."""
    parts = prop_id.split()
    if len(parts) == 4 and parts[2].lower() == "name":
        return parts[3]
    return None


# --------------------------------------------------------------------------- OData


_TOKEN = re.compile(r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<punct>[():])|(?P<word>[A-Za-z_$][\w./$]*))")


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise FilterError(f"Invalid filter clause: unexpected text at position {pos}.")
        pos = m.end()
        kind = m.lastgroup
        assert kind is not None
        value = m.group(kind)
        if kind == "str":
            value = value[1:-1].replace("''", "'")
        tokens.append((kind, value))
    return tokens


@dataclass(frozen=True)
class PropertyFilter:
    """``singleValueExtendedProperties/any(ep: ep/id eq ID [and ep/value eq VALUE])``."""

    property_id: str
    value: str | None

    def matches(self, properties: list[dict[str, str]]) -> bool:
        """Whether any of ``properties`` has this id (and value).

        Values compare case-insensitively: keys that differ only in case would collide in
        a real mailbox's string comparisons too, so the emulator never hides such a clash.
        """
        wanted = normalize_property_id(self.property_id)
        for prop in properties:
            if normalize_property_id(prop["id"]) != wanted:
                continue
            if self.value is None or prop["value"].lower() == self.value.lower():
                return True
        return False


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, kind: str, value: str | None = None) -> str:
        tok = self.peek()
        if tok is None or tok[0] != kind or (value is not None and tok[1].lower() != value):
            want = value or kind
            got = "end of input" if tok is None else repr(tok[1])
            raise FilterError(f"Invalid filter clause: expected {want}, got {got}.")
        self.pos += 1
        return tok[1]

    def at(self, kind: str, value: str | None = None) -> bool:
        tok = self.peek()
        return tok is not None and tok[0] == kind and (value is None or tok[1].lower() == value)


def parse_property_filter(text: str) -> PropertyFilter:
    """Parse the extended-property ``$filter`` (already URL-decoded); FilterError otherwise."""
    p = _Parser(_tokenize(text))
    depth = 0
    while p.at("punct", "("):
        p.take("punct")
        depth += 1
    head = p.take("word")
    if head.lower() != "singlevalueextendedproperties/any":
        raise FilterError(
            "Invalid filter clause: only singleValueExtendedProperties/any(...) is supported."
        )
    p.take("punct", "(")
    var = p.take("word")
    p.take("punct", ":")
    clauses: dict[str, str] = {}
    while True:
        inner = 0
        while p.at("punct", "("):
            p.take("punct")
            inner += 1
        path = p.take("word").lower()
        field_name = path.removeprefix(var.lower() + "/")
        if field_name == path or field_name not in ("id", "value"):
            raise FilterError(f"Invalid filter clause: unsupported operand {path!r}.")
        if field_name in clauses:
            raise FilterError(f"Invalid filter clause: {field_name!r} compared twice.")
        p.take("word", "eq")
        clauses[field_name] = p.take("str")
        for _ in range(inner):
            p.take("punct", ")")
        if p.at("word", "and"):
            p.take("word")
            continue
        break
    p.take("punct", ")")
    for _ in range(depth):
        p.take("punct", ")")
    if p.peek() is not None:
        raise FilterError(f"Invalid filter clause: unexpected {p.peek()[1]!r}.")  # type: ignore[index]
    if "id" not in clauses:
        raise FilterError("Invalid filter clause: the lambda must compare ep/id.")
    if not valid_property_id(clauses["id"]):
        raise FilterError(f"Invalid filter clause: malformed property id {clauses['id']!r}.")
    return PropertyFilter(property_id=clauses["id"], value=clauses.get("value"))


def parse_select(text: str | None) -> list[str] | None:
    """``$select`` as canonical property names (``id`` always first); None = all."""
    if text is None or not text.strip():
        return None
    names = ["id"]
    for raw in text.split(","):
        name = raw.strip()
        canonical = _PROPERTY_BY_LOWER.get(name.lower())
        if canonical is None:
            if name.lower() == "singlevalueextendedproperties":
                continue  # selected through $expand; Graph tolerates naming it here
            raise FilterError(
                f"Could not find a property named '{name}' on type 'microsoft.graph.message'."
            )
        if canonical not in names:
            names.append(canonical)
    return names


@dataclass(frozen=True)
class ExpandSpec:
    """``$expand=singleValueExtendedProperties[($filter=id eq '...')]``."""

    property_id: str | None


_EXPAND = re.compile(
    r"^\s*singleValueExtendedProperties\s*(?:\(\s*\$filter\s*=\s*(?P<filter>.*)\)\s*)?$",
    re.IGNORECASE | re.DOTALL,
)


def parse_expand(text: str | None) -> ExpandSpec | None:
    """Parse ``$expand``; only the extended properties are expandable."""
    if text is None or not text.strip():
        return None
    m = _EXPAND.match(text)
    if m is None:
        raise FilterError(f"Parsing OData Select and Expand failed: unsupported $expand {text!r}.")
    flt = m.group("filter")
    if flt is None:
        return ExpandSpec(property_id=None)
    p = _Parser(_tokenize(flt))
    p.take("word", "id")
    p.take("word", "eq")
    prop_id = p.take("str")
    if p.peek() is not None:
        raise FilterError("Invalid filter clause in $expand: only id eq '...' is supported.")
    return ExpandSpec(property_id=prop_id)
