"""Parsing the receiver's secret mappings from settings.

Both ``SENDONCE_RECEIVER_CLIENT_STATES`` and ``SENDONCE_RECEIVER_SIGNING_SECRETS``
map a name (subscription id, tenant id, or webhook source) to a secret, written
either as a JSON object (``{"sub-1": "s3cret"}``) or as ``name=secret`` pairs
separated by commas (``sub-1=s3cret,tenant-9=other``). Secrets may contain ``=``
(base64); a secret containing a comma needs the JSON form.

Error messages name the setting and the offending *name*, never a secret.
"""

from __future__ import annotations

import json
import re

from sendonce.settings import SettingsError

__all__ = ["parse_secret_map", "parse_source_secrets"]

# Source names become part of the URL (/webhooks/{source}) and of dedupe ids
# ({source}:{webhook-id}), so they are kept to a plain, unambiguous alphabet.
_SOURCE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
# "graph" prefixes the Graph receiver's dedupe ids; a signed source of that name
# could collide with them in the dedupe table.
RESERVED_SOURCES = frozenset({"graph"})


def parse_secret_map(text: str, setting: str) -> dict[str, str]:
    """Parse a ``name -> secret`` mapping; an empty string is an empty mapping.

    Raises :class:`SettingsError` for malformed input, empty names or secrets,
    and names given twice.
    """
    stripped = text.strip()
    if not stripped:
        return {}
    if stripped.startswith(("{", "[")):
        pairs = _json_pairs(stripped, setting)
    else:
        pairs = _kv_pairs(stripped, setting)
    mapping: dict[str, str] = {}
    for name, secret in pairs:
        if not name:
            raise SettingsError(f"{setting}: an entry has an empty name")
        if not secret:
            raise SettingsError(f"{setting}: the secret for {name!r} is empty")
        if name in mapping:
            raise SettingsError(f"{setting}: {name!r} is given more than once")
        mapping[name] = secret
    return mapping


def parse_source_secrets(text: str, setting: str) -> dict[str, str]:
    """Like :func:`parse_secret_map`, also checking that every name is a valid source."""
    mapping = parse_secret_map(text, setting)
    for name in mapping:
        if not _SOURCE_NAME.fullmatch(name):
            raise SettingsError(
                f"{setting}: source {name!r} must be lowercase letters, digits, - or _ "
                "(at most 64 characters)"
            )
        if name in RESERVED_SOURCES:
            raise SettingsError(f"{setting}: source name {name!r} is reserved")
    return mapping


def _json_pairs(text: str, setting: str) -> list[tuple[str, str]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        # Position only: the message of a JSON error could quote the secrets.
        raise SettingsError(
            f"{setting}: not a valid JSON object (line {exc.lineno}, column {exc.colno})"
        ) from None
    if not isinstance(data, dict):
        raise SettingsError(f"{setting}: must be a JSON object of name -> secret")
    pairs: list[tuple[str, str]] = []
    for name, secret in data.items():
        if not isinstance(secret, str):
            raise SettingsError(f"{setting}: the secret for {name!r} must be a string")
        pairs.append((name.strip(), secret))
    return pairs


def _kv_pairs(text: str, setting: str) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for position, item in enumerate(text.split(","), 1):
        if not item.strip():
            continue
        name, sep, secret = item.partition("=")
        if not sep:
            raise SettingsError(f"{setting}: entry {position} is not name=secret")
        pairs.append((name.strip(), secret.strip()))
    return pairs
