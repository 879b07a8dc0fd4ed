"""The idempotency key: one key per *intended* email, identical on every machine.

The key identifies the intended action (tenant, source event, action type, recipient set,
content), never the attempt, so a retried, replayed or re-decided intent gets the same
key. The exact algorithm is specified in ``schemas/README.md`` ("The idempotency key") so
that producers in other languages can compute it; ``tests/data/key_vectors.json`` holds
test vectors. Changing anything here that changes a key is a breaking change: bump
``KEY_VERSION`` and keep the old derivation readable.

Version 2 makes one intended email one key: the spellings of one domain (``bücher.example``,
``xn--bcher-kva.example``, fullwidth letters: UTS-46 equivalents) normalise to one form,
and a template intent's subject and HTML body, which reach the recipient, are in the
fingerprint. An intent that was canonical under version 1 keeps its key byte for byte
(the hashed ``"v"`` stays 1), so existing ledgers and other-language producers go on.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import time
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_RECORD_BYTES",
    "KEY_VERSION",
    "MAX_RECIPIENTS",
    "MAX_SUBJECT_CHARS",
    "MAX_SUPPLIED_KEY_CHARS",
    "IdempotencyKey",
    "IntentIdentity",
    "InvalidAddressError",
    "InvalidIntentError",
    "OversizeIntentError",
    "canonical_domain",
    "canonical_json",
    "content_digest",
    "content_fingerprint",
    "derive_key",
    "fingerprint_for",
    "idempotency_key_for",
    "identify_intent",
    "mailbox_address",
    "mask_address",
    "normalize_action_type",
    "normalize_address",
    "sha256_hex",
    "supplied_key",
    "validate_intent",
    "validate_tenant_id",
]

KEY_VERSION = 2
"""Version of the algorithm in ``schemas/README.md`` ("The idempotency key")."""
_HASHED_KEY_VERSION = 1
"""The ``"v"`` hashed into every derived key. Version 2 changed only the keys of
addresses that version 1 split, so it hashes the same ``1`` as version 1."""

MAX_RECIPIENTS = 500
MAX_SUBJECT_CHARS = 998
MAX_SUPPLIED_KEY_CHARS = 200
MAX_ACTION_TYPE_CHARS = 100
#: Fits a record limit of 1,000,000 bytes (librdkafka's default message.max.bytes,
#: SENDONCE_MAX_RECORD_BYTES) with room for the rest of the intent and, should the
#: intent be dead-lettered, the DeadLetter around it.
DEFAULT_MAX_BODY_BYTES = 900_000
#: The largest record a producer writes by default: librdkafka's message.max.bytes,
#: below the broker's default message.max.bytes (1,048,588).
DEFAULT_MAX_RECORD_BYTES = 1_000_000

_TENANT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DERIVED_HASH_RE = re.compile(r"[0-9a-f]{32}")
_DOMAIN_END_RE = re.compile(r"[\s<>()]")
_ASCII_LABEL_RE = re.compile(r"[A-Za-z0-9-]+")
_HEADER_NAME_RE = re.compile(r"[!-9;-~]+")  # RFC 5322 field name: printable ASCII but ':'
# RFC 5322 "specials" that only a quoted local part may contain; quoted local parts are
# not supported, so these are invalid in any local part.
_LOCAL_PART_SPECIALS = frozenset('()<>[]\\,;:"@')
# Unicode categories never allowed in addresses or supplied keys: controls, format
# characters (zero-width joiners, bidi overrides), surrogates, private use, separators.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zs", "Zl", "Zp"})


class InvalidIntentError(ValueError):
    """An intent cannot be accepted. The message names the field, never its content."""

    error_type: ClassVar[str] = "invalid_intent"
    """Stable machine-readable class, suitable for ``DeadLetter.error_type``."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class InvalidAddressError(InvalidIntentError):
    """An email address is invalid. The message shows it masked (``j***@example.com``)."""

    def __init__(self, masked: str | _Masked, problem: str, field: str = "address") -> None:
        masked = str(masked)
        super().__init__(field, f"invalid address {masked}: {problem}")
        self.masked = masked


class OversizeIntentError(InvalidIntentError):
    """The intent's bodies exceed the configured size limit."""

    error_type = "oversize"


# --------------------------------------------------------------------------------------
# Canonical JSON and hashing
# --------------------------------------------------------------------------------------


def _nfc(value: Any) -> Any:
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"canonical JSON object keys must be strings, not {type(key).__name__}"
                )
            nfc_key = unicodedata.normalize("NFC", key)
            if nfc_key in out:
                # Two spellings of one key would make the result depend on dict order.
                raise ValueError("two object keys are equal after NFC normalisation")
            out[nfc_key] = _nfc(item)
        return out
    if isinstance(value, (list, tuple)):
        return [_nfc(item) for item in value]
    if value is None or isinstance(value, (bool, int)):
        return value
    # Floats (and everything else) have no portable JSON spelling.
    raise TypeError(f"canonical JSON does not support {type(value).__name__}")


def canonical_json(obj: Any) -> bytes:
    """Serialise ``obj`` to canonical JSON: NFC strings, sorted keys, no spaces, UTF-8.

    Supports dicts with string keys, lists, strings, ints, booleans and None.
    """
    text = json.dumps(_nfc(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


def sha256_hex(data: bytes) -> str:
    """Lowercase hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def _hash_fields(obj: Mapping[str, Any], field: str) -> str:
    """sha256_hex(canonical_json(obj)), with unusable input reported against ``field``."""
    try:
        return sha256_hex(canonical_json(obj))
    except InvalidIntentError:
        raise
    except (TypeError, ValueError) as exc:
        # Lone surrogates, keys equal after NFC: named by kind only, never by content.
        raise InvalidIntentError(field, f"cannot be canonicalised ({type(exc).__name__})") from None


# --------------------------------------------------------------------------------------
# Field normalisation
# --------------------------------------------------------------------------------------


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def mask_address(address: str) -> str:
    """Mask an address for messages and logs: first character, ``***@``, domain."""
    local, at, domain = address.strip().rpartition("@")
    if not at:
        local, domain = address.strip(), ""
    first = _printable(local[:1]) or "?"
    # Only the domain itself: whatever follows it (a comment, a display name) may be PII.
    domain = _DOMAIN_END_RE.split(domain, maxsplit=1)[0]
    shown_domain = _printable(domain[:64]) + ("..." if len(domain) > 64 else "")
    return f"{first}***@{shown_domain}" if at else f"{first}***"


class _Masked:
    """An address masked only when a message needs it (most addresses are valid)."""

    __slots__ = ("_text",)

    def __init__(self, text: str) -> None:
        self._text = text

    def __str__(self) -> str:
        return mask_address(self._text)


def _has_forbidden_char(text: str) -> bool:
    if text.isascii():
        # The same answer without a Unicode lookup per character: in ASCII the
        # forbidden characters are the controls (not printable) and the whitespace
        # (of which only the space is printable).
        return not text.isprintable() or " " in text
    return any(ch.isspace() or unicodedata.category(ch) in _FORBIDDEN_CATEGORIES for ch in text)


def _extract_address(text: str, masked: _Masked, field: str) -> str:
    """Take the address out of ``Display Name <address>`` (portable rule, see README)."""
    if not text.endswith(">"):
        if "<" in text or ">" in text:
            raise InvalidAddressError(masked, "misplaced angle bracket", field)
        return text
    opening = text.rfind("<")
    if opening < 0:
        raise InvalidAddressError(masked, "unbalanced angle brackets", field)
    display_name = text[:opening]
    if "<" in display_name or ">" in display_name:
        raise InvalidAddressError(masked, "angle brackets in the display name", field)
    return text[opening + 1 : -1].strip()


def display_name_and_address(text: str) -> tuple[str, str]:
    """Split a valid recipient into its display name ("" when none) and its address.

    ``Bob <bob@example.com>`` -> ``("Bob", "bob@example.com")``; the name loses the
    surrounding white space and one pair of enclosing double quotes, the address is
    what the brackets hold, as written. Providers that take the two apart (Graph's
    ``emailAddress.name`` / ``.address``) need it; the key never sees the name. Same
    portable rule as the validation, so it never raises for an address that passed it.
    """
    stripped = text.strip()
    address = _extract_address(stripped, _Masked(stripped), "address")
    if address == stripped:
        return "", address
    name = stripped[: stripped.rfind("<")].strip()
    if len(name) >= 2 and name.startswith('"') and name.endswith('"'):
        name = name[1:-1].strip()
    return name, address


def _check_local_part(local: str, masked: _Masked, field: str) -> None:
    if not 1 <= len(local) <= 64:
        raise InvalidAddressError(masked, "local part must be 1 to 64 characters", field)
    if any(ch in _LOCAL_PART_SPECIALS for ch in local):
        raise InvalidAddressError(masked, "special character in the local part", field)
    if local.startswith(".") or local.endswith(".") or ".." in local:
        raise InvalidAddressError(masked, "misplaced dot in the local part", field)


def _check_domain(domain: str, masked: _Masked, field: str) -> None:
    if not 1 <= len(domain) <= 253 or "." not in domain:
        raise InvalidAddressError(masked, "domain must be 1 to 253 characters with a dot", field)
    for label in domain.split("."):
        if not 1 <= len(label) <= 63:
            raise InvalidAddressError(masked, "domain label must be 1 to 63 characters", field)
        if label.startswith("-") or label.endswith("-"):
            raise InvalidAddressError(masked, "domain label starts or ends with '-'", field)
        if _ASCII_LABEL_RE.fullmatch(label):
            continue  # ASCII letters, digits and '-': the common case, no lookups
        for ch in label:
            if ch != "-" and unicodedata.category(ch)[0] not in "LMN":
                raise InvalidAddressError(masked, "invalid character in the domain", field)
    try:
        domain.encode("idna")
    except UnicodeError:
        raise InvalidAddressError(masked, "domain is not a valid IDNA name", field) from None


def mailbox_address(addr: str, *, field: str = "address") -> str:
    """Return the mailbox a provider gets for ``addr`` or raise ``InvalidAddressError``.

    Version 1's normalisation: trims, takes the address out of a ``Display Name
    <address>`` form, NFC-normalises and lowercases it, then validates it (see
    ``schemas/README.md`` for the exact rules). The domain stays as the producer spelled
    it (``xn--bcher-kva.example`` is not turned into ``bücher.example``): the mailbox a
    sender is looked up under and the Message-ID's domain do not move with version 2.
    ``field`` names the intent field in the error message.
    """
    if not isinstance(addr, str):
        raise InvalidAddressError(
            "<not a string>", f"expected a string, got {type(addr).__name__}", field
        )
    return _mailbox_address(addr, field)


def normalize_address(addr: str, *, field: str = "address") -> str:
    """Return the canonical form of an email address or raise ``InvalidAddressError``.

    ``mailbox_address`` with the domain in its one UTS-46 form (``canonical_domain``):
    every spelling of one mailbox gives the same result, which is what the key, the
    fingerprint and recipient hashes use. It accepts and rejects exactly what
    ``mailbox_address`` does. ``field`` names the intent field in the error message.
    """
    if not isinstance(addr, str):
        raise InvalidAddressError(
            "<not a string>", f"expected a string, got {type(addr).__name__}", field
        )
    return _normalize_address(addr, field)


# Every intent normalises its sender and recipients several times (validation, key,
# fingerprint) and senders repeat across intents; the functions are pure, and errors
# are not cached (lru_cache does not keep exceptions).
@functools.lru_cache(maxsize=16384)
def _mailbox_address(addr: str, field: str) -> str:
    masked = _Masked(addr)
    text = _extract_address(addr.strip(), masked, field)
    masked = _Masked(text)
    address = unicodedata.normalize("NFC", unicodedata.normalize("NFC", text).lower())
    if not address:
        raise InvalidAddressError(masked, "empty", field)
    if len(address) > 254:
        raise InvalidAddressError(masked, "longer than 254 characters", field)
    if _has_forbidden_char(address):
        raise InvalidAddressError(masked, "contains whitespace or control characters", field)
    if address.count("@") != 1:
        raise InvalidAddressError(masked, "must contain exactly one '@'", field)
    local, _, domain = address.partition("@")
    _check_local_part(local, masked, field)
    _check_domain(domain, masked, field)
    return address


@functools.lru_cache(maxsize=16384)
def _normalize_address(addr: str, field: str) -> str:
    mailbox = _mailbox_address(addr, field)
    local, _, domain = mailbox.partition("@")
    canonical = canonical_domain(domain)
    if canonical == domain:
        return mailbox
    address = f"{local}@{canonical}"
    # The mapped form must itself be a valid address (UTS-46 can lengthen a domain:
    # the ligature U+FB03 is "ffi"), so that normalising is idempotent; else version 1's form.
    return address if len(address) <= 254 else mailbox


def canonical_domain(domain: str) -> str:
    """The one spelling of a valid (version 1) domain: UTS-46 ToUnicode, else as given.

    ``xn--bcher-kva.example``, fullwidth ``ｂüｃｈｅｒ.example`` and ``bücher.example`` all
    give ``bücher.example``. A domain of ASCII labels none of which starts with ``xn--``
    is returned as is (UTS-46 would not change it), and so is a domain UTS-46
    processing refuses (``xn--zz.example``, hyphens in the third and fourth place of a
    label next to a non-ASCII one, a disallowed code point): version 1's spelling, as
    the key had it before.
    """
    if domain.isascii() and not any(label.startswith("xn--") for label in domain.split(".")):
        return domain  # the common case, unchanged by UTS-46: no table lookups
    return _uts46_domain(domain)


@functools.lru_cache(maxsize=4096)
def _uts46_domain(domain: str) -> str:
    # Imported here, as the only third-party module of the foundation: sendonce.keys
    # imports without dependencies (tests/unit/test_packaging.py), and only domains
    # with non-ASCII characters or xn-- labels need the UTS-46 tables.
    import idna

    try:
        # Nontransitional (ß stays ß), UseSTD3ASCIIRules, IDNA2008 label checks
        # (CheckHyphens, CheckBidi, CheckJoiners) and A-labels decoded.
        mapped = idna.decode(domain, strict=True, uts46=True, std3_rules=True)
    except UnicodeError:  # idna.IDNAError is one
        return domain
    try:
        _check_domain(mapped, _Masked(mapped), "address")
    except InvalidAddressError:
        return domain
    return mapped


def validate_tenant_id(tenant_id: object) -> str:
    """Return ``tenant_id`` if it matches ``[A-Za-z0-9][A-Za-z0-9._-]{0,63}``.

    Tenant ids cannot contain ':', so the tenant prefix of a key is unambiguous.
    """
    if not isinstance(tenant_id, str):
        raise InvalidIntentError("tenant_id", f"expected a string, got {type(tenant_id).__name__}")
    if not _TENANT_RE.fullmatch(tenant_id):
        raise InvalidIntentError(
            "tenant_id", "must be 1-64 characters of [A-Za-z0-9._-], starting alphanumeric"
        )
    return tenant_id


def normalize_action_type(action_type: object) -> str:
    """Trim and lowercase an action type; it must then be non-empty."""
    if not isinstance(action_type, str):
        raise InvalidIntentError(
            "action_type", f"expected a string, got {type(action_type).__name__}"
        )
    normalized = unicodedata.normalize("NFC", action_type.strip().lower())
    if not normalized:
        raise InvalidIntentError("action_type", "is empty")
    if len(normalized) > MAX_ACTION_TYPE_CHARS:
        raise InvalidIntentError("action_type", f"longer than {MAX_ACTION_TYPE_CHARS} characters")
    if any(unicodedata.category(ch) in ("Cc", "Cf") for ch in normalized):
        raise InvalidIntentError("action_type", "contains control characters")
    return normalized


def _check_source_event_id(source_event_id: object) -> str:
    if not isinstance(source_event_id, str):
        raise InvalidIntentError(
            "source_event_id", f"expected a string, got {type(source_event_id).__name__}"
        )
    if not source_event_id.strip():
        raise InvalidIntentError("source_event_id", "is empty")
    return source_event_id


# --------------------------------------------------------------------------------------
# Content digest, key, fingerprint
# --------------------------------------------------------------------------------------


def _has_text(value: str | None) -> bool:
    return value is not None and value != ""


def content_digest(
    *,
    subject: str,
    text_body: str | None,
    html_body: str | None,
    template_id: str | None,
    template_params: Mapping[str, str] | None,
) -> str:
    """Digest of what the email says: ``tmpl:<sha256>`` or ``body:<sha256>``.

    With a template the subject and bodies do not take part, nor therefore in the key:
    the template renders the text, and the subject and an HTML body, which are sent as
    given, count in the fingerprint (``content_fingerprint``).
    """
    if template_id is not None:
        if template_id == "":
            raise InvalidIntentError("template_id", "is empty (use null for no template)")
        params = dict(template_params or {})
        template = {"template_id": template_id, "params": params}
        return "tmpl:" + _hash_fields(template, "template_params")
    if not (_has_text(text_body) or _has_text(html_body)):
        raise InvalidIntentError("text_body", "an intent needs a text_body, html_body or template")
    body = {"subject": subject, "text": text_body, "html": html_body}
    return "body:" + _hash_fields(body, "text_body")


def derive_key(
    tenant_id: str,
    source_event_id: str,
    action_type: str,
    recipients: Iterable[str],
    content_digest: str,
) -> str:
    """Derive the key ``<tenant_id>:<32 hex>`` from the intended action.

    ``recipients`` are all of to, cc and bcc; only their normalised *set* counts, so
    order, duplicates, case, display names and to/cc/bcc placement do not change the key.
    """
    tenant = validate_tenant_id(tenant_id)
    recipient_set = sorted({normalize_address(a, field="recipients") for a in recipients})
    if not recipient_set:
        raise InvalidIntentError("to", "an intent needs at least one recipient")
    key_input = {
        "v": _HASHED_KEY_VERSION,
        "tenant": tenant,
        "source_event_id": _check_source_event_id(source_event_id),
        "action_type": normalize_action_type(action_type),
        "recipients": recipient_set,
        "content": content_digest,
    }
    return f"{tenant}:{_hash_fields(key_input, 'source_event_id')[:32]}"


def _check_supplied(supplied: object) -> str:
    if not isinstance(supplied, str):
        raise InvalidIntentError(
            "idempotency_key", f"expected a string, got {type(supplied).__name__}"
        )
    if not 1 <= len(supplied) <= MAX_SUPPLIED_KEY_CHARS:
        raise InvalidIntentError(
            "idempotency_key", f"must be 1 to {MAX_SUPPLIED_KEY_CHARS} characters"
        )
    if _has_forbidden_char(supplied):
        raise InvalidIntentError("idempotency_key", "contains whitespace or control characters")
    return supplied


def supplied_key(tenant_id: str, supplied: str) -> str:
    """Namespace a producer-supplied key by tenant: ``<tenant_id>:p:<supplied>``.

    The supplied key is used as is (no normalisation): it is the producer's opaque id.
    """
    return f"{validate_tenant_id(tenant_id)}:p:{_check_supplied(supplied)}"


def _address_list(addresses: Iterable[str], field: str) -> list[str]:
    return sorted({normalize_address(a, field=field) for a in addresses})


def content_fingerprint(
    *,
    sender: str,
    to: Sequence[str],
    cc: Sequence[str],
    bcc: Sequence[str],
    action_type: str,
    content_digest: str,
    headers: Mapping[str, str],
    subject: str = "",
    html_body: str | None = None,
) -> str:
    """SHA-256 hex over everything the recipients would see for a key.

    The ledger compares it when a key comes back: same key with a different fingerprint
    is a CONFLICT (e.g. the same recipients moved from to to cc, another sender, other
    headers, a template sent under another subject), never a silent send or a silent
    drop. ``subject`` and ``html_body`` count for a template digest only (a body digest
    already holds them); the template renders the text, and both are sent as given. An
    empty one is left out, so such a fingerprint is the same as under version 1.
    """
    fingerprint_input: dict[str, Any] = {
        "sender": normalize_address(sender, field="sender"),
        "to": _address_list(to, "to"),
        "cc": _address_list(cc, "cc"),
        "bcc": _address_list(bcc, "bcc"),
        "action_type": normalize_action_type(action_type),
        "content": content_digest,
        "headers": dict(headers),
    }
    if content_digest.startswith("tmpl:"):
        if subject:
            fingerprint_input["subject"] = subject
        if html_body:
            fingerprint_input["html"] = html_body
    return _hash_fields(fingerprint_input, "headers")


@dataclass(frozen=True)
class IdempotencyKey:
    """A tenant-namespaced idempotency key (the Kafka record key of intents and results)."""

    value: str
    tenant_id: str
    supplied: bool

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: str) -> IdempotencyKey:
        """Parse a key string (e.g. a Kafka record key) back into its parts."""
        tenant, sep, rest = value.partition(":")
        if not sep:
            raise InvalidIntentError("idempotency_key", "has no tenant prefix")
        validate_tenant_id(tenant)
        if rest.startswith("p:"):
            _check_supplied(rest[2:])
            return cls(value, tenant, True)
        if not _DERIVED_HASH_RE.fullmatch(rest):
            raise InvalidIntentError("idempotency_key", "is neither a derived nor a supplied key")
        return cls(value, tenant, False)


# --------------------------------------------------------------------------------------
# Intent-level entry points (intent = dict with EmailIntent's field names)
# --------------------------------------------------------------------------------------


def _optional_str(intent: Mapping[str, Any], name: str) -> str | None:
    value = intent.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidIntentError(name, f"expected a string or null, got {type(value).__name__}")
    return value


def _required_str(intent: Mapping[str, Any], name: str) -> str:
    if name not in intent or intent[name] is None:
        raise InvalidIntentError(name, "is missing")
    value = intent[name]
    if not isinstance(value, str):
        raise InvalidIntentError(name, f"expected a string, got {type(value).__name__}")
    return value


def _str_list(intent: Mapping[str, Any], name: str, *, required: bool = False) -> list[str]:
    value = intent.get(name)
    if value is None:
        if required:
            raise InvalidIntentError(name, "is missing")
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise InvalidIntentError(name, f"expected a list of strings, got {type(value).__name__}")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise InvalidIntentError(
                f"{name}[{index}]", f"expected a string, got {type(item).__name__}"
            )
    return list(value)


def _str_map(intent: Mapping[str, Any], name: str) -> dict[str, str]:
    value = intent.get(name)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidIntentError(name, f"expected a map of strings, got {type(value).__name__}")
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise InvalidIntentError(name, "keys and values must be strings")
    return dict(value)


def _intent_content_digest(intent: Mapping[str, Any]) -> str:
    return content_digest(
        subject=_required_str(intent, "subject"),
        text_body=_optional_str(intent, "text_body"),
        html_body=_optional_str(intent, "html_body"),
        template_id=_optional_str(intent, "template_id"),
        template_params=_str_map(intent, "template_params"),
    )


def _all_recipients(intent: Mapping[str, Any]) -> list[str]:
    recipients: list[str] = []
    for name in ("to", "cc", "bcc"):
        for index, address in enumerate(_str_list(intent, name, required=name == "to")):
            # Normalising per field here gives errors that name the exact entry.
            recipients.append(normalize_address(address, field=f"{name}[{index}]"))
    return recipients


def idempotency_key_for(intent: Mapping[str, Any]) -> IdempotencyKey:
    """The idempotency key of an intent (a dict with EmailIntent's field names).

    A producer-supplied ``idempotency_key`` is namespaced by tenant; otherwise the key is
    derived. Only the fields the key needs are checked here; call ``validate_intent``
    to check the whole intent.
    """
    tenant = validate_tenant_id(intent.get("tenant_id"))
    supplied = intent.get("idempotency_key")
    if supplied is not None:
        return IdempotencyKey(supplied_key(tenant, supplied), tenant, True)
    value = derive_key(
        tenant,
        _required_str(intent, "source_event_id"),
        _required_str(intent, "action_type"),
        _all_recipients(intent),
        _intent_content_digest(intent),
    )
    return IdempotencyKey(value, tenant, False)


def fingerprint_for(intent: Mapping[str, Any]) -> str:
    """The content fingerprint of an intent (see ``content_fingerprint``)."""
    return content_fingerprint(
        sender=_required_str(intent, "sender"),
        to=_str_list(intent, "to", required=True),
        cc=_str_list(intent, "cc"),
        bcc=_str_list(intent, "bcc"),
        action_type=_required_str(intent, "action_type"),
        content_digest=_intent_content_digest(intent),
        headers=_str_map(intent, "headers"),
        subject=_required_str(intent, "subject"),
        html_body=_optional_str(intent, "html_body"),
    )


def _utf8_size(text: str | None) -> int:
    return len(text.encode("utf-8", "surrogatepass")) if text else 0


def validate_intent(
    intent: Mapping[str, Any], *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
) -> None:
    """Raise ``InvalidIntentError`` (naming the field, never its content) for a bad intent.

    Checks required fields, tenant id, addresses (sender and every recipient), the
    recipient count (1 to 500 over to, cc and bcc), subject (at most 998 characters, no
    CR/LF), that there is a body or a template, header names and values, the supplied
    key, and that bodies plus template parameters are at most ``max_body_bytes`` of UTF-8
    (``OversizeIntentError``).
    """
    _validated_content_digest(intent, max_body_bytes)


@dataclass(frozen=True)
class IntentIdentity:
    """What the worker derives from a valid intent: its key, fingerprint and sender."""

    key: IdempotencyKey
    fingerprint: str
    #: The sender's mailbox as the provider gets it (``mailbox_address``).
    sender: str
    #: This intent's fingerprint under version 1 of the key algorithm, where it
    #: differs (a template intent with a subject or HTML body, which version 1 left
    #: out): a ledger entry written before the upgrade holds that one.
    earlier_fingerprints: tuple[str, ...] = ()


def identify_intent(
    intent: Mapping[str, Any], *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
) -> IntentIdentity:
    """``validate_intent``, ``idempotency_key_for`` and ``fingerprint_for`` in one pass.

    The same checks and results as calling the three, with the content digest (a
    SHA-256 over the bodies, the worker's costliest step for a large email) computed
    once instead of three times.
    """
    digest = _validated_content_digest(intent, max_body_bytes)
    tenant: str = intent["tenant_id"]
    supplied = intent.get("idempotency_key")
    if supplied is not None:
        key = IdempotencyKey(supplied_key(tenant, supplied), tenant, True)
    else:
        value = derive_key(
            tenant,
            intent["source_event_id"],
            intent["action_type"],
            _all_recipients(intent),
            digest,
        )
        key = IdempotencyKey(value, tenant, False)
    visible: dict[str, Any] = {
        "sender": intent["sender"],
        "to": _str_list(intent, "to", required=True),
        "cc": _str_list(intent, "cc"),
        "bcc": _str_list(intent, "bcc"),
        "action_type": intent["action_type"],
        "content_digest": digest,
        "headers": _str_map(intent, "headers"),
    }
    fingerprint = content_fingerprint(
        **visible, subject=intent["subject"], html_body=intent.get("html_body")
    )
    earlier: tuple[str, ...] = ()
    if digest.startswith("tmpl:") and (intent["subject"] or intent.get("html_body")):
        earlier = (content_fingerprint(**visible),)
    sender = mailbox_address(intent["sender"], field="sender")
    return IntentIdentity(key, fingerprint, sender, earlier)


def _validated_content_digest(intent: Mapping[str, Any], max_body_bytes: int) -> str:
    """The checks of :func:`validate_intent`; returns the content digest it computed."""
    if not isinstance(intent, Mapping):
        raise InvalidIntentError("intent", f"expected a record, got {type(intent).__name__}")
    validate_tenant_id(intent.get("tenant_id"))
    _check_source_event_id(_required_str(intent, "source_event_id"))
    normalize_action_type(_required_str(intent, "action_type"))
    normalize_address(_required_str(intent, "sender"), field="sender")

    recipients = _all_recipients(intent)
    if not recipients:
        raise InvalidIntentError("to", "an intent needs at least one recipient")
    if len(recipients) > MAX_RECIPIENTS:
        raise InvalidIntentError(
            "to", f"{len(recipients)} recipients over to, cc and bcc; at most {MAX_RECIPIENTS}"
        )

    subject = _required_str(intent, "subject")
    if len(subject) > MAX_SUBJECT_CHARS:
        raise InvalidIntentError("subject", f"longer than {MAX_SUBJECT_CHARS} characters")
    if "\r" in subject or "\n" in subject:
        raise InvalidIntentError("subject", "contains CR or LF")

    headers = _str_map(intent, "headers")
    for name, value in headers.items():
        if not _HEADER_NAME_RE.fullmatch(name):
            raise InvalidIntentError("headers", "a header name is not printable ASCII without ':'")
        if "\r" in value or "\n" in value:
            # A CR/LF in a header value would let an intent inject headers.
            raise InvalidIntentError(f"headers[{name}]", "contains CR or LF")

    created_at = intent.get("created_at")
    if not isinstance(created_at, int) or isinstance(created_at, bool):
        raise InvalidIntentError("created_at", "expected milliseconds since the epoch (int)")

    supplied = intent.get("idempotency_key")
    if supplied is not None:
        _check_supplied(supplied)

    text_body = _optional_str(intent, "text_body")
    html_body = _optional_str(intent, "html_body")
    params = _str_map(intent, "template_params")
    # Size first, so an oversize body is rejected before it is hashed.
    size = _utf8_size(text_body) + _utf8_size(html_body)
    size += sum(_utf8_size(k) + _utf8_size(v) for k, v in params.items())
    if size > max_body_bytes:
        raise OversizeIntentError(
            "text_body", f"bodies and template parameters are {size} bytes; limit {max_body_bytes}"
        )
    # Raises for a missing body/template, an empty template_id and uncanonicalisable
    # strings, exactly as key derivation would.
    digest = _intent_content_digest(intent)
    _hash_fields({"headers": headers}, "headers")
    return digest


INTENT_DEFAULTS: dict[str, Any] = {
    "cc": [],
    "bcc": [],
    "text_body": None,
    "html_body": None,
    "template_id": None,
    "template_params": {},
    "idempotency_key": None,
    "headers": {},
}


def complete_intent(intent: Mapping[str, Any], now_ms: int | None = None) -> dict[str, Any]:
    """Fill optional EmailIntent fields with their defaults."""
    full = {**INTENT_DEFAULTS, **intent}
    if full.get("created_at") is None:
        full["created_at"] = now_ms if now_ms is not None else int(time.time() * 1000)
    return full
