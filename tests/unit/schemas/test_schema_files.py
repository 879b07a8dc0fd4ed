"""The .avsc files: field contract with the rest of the code, docs, logical types."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from sendonce.schemas.codec import SCHEMA_DIR

README = (SCHEMA_DIR / "README.md").read_text(encoding="utf-8")

# The field names other modules rely on, in order.
EXPECTED_FIELDS: dict[str, list[str]] = {
    "EmailIntent": [
        "tenant_id", "source_event_id", "action_type", "sender", "to", "cc", "bcc", "subject",
        "text_body", "html_body", "template_id", "template_params", "idempotency_key",
        "headers", "created_at",
    ],
    "EmailResult": [
        "result_id", "outcome", "idempotency_key", "tenant_id", "source_event_id",
        "action_type", "provider", "provider_request_id", "provider_message_id",
        "internet_message_id", "attempt_id", "attempt_count", "intent_topic",
        "intent_partition", "intent_offset", "original_result_id",
        "original_intent_partition", "original_intent_offset", "accepted_at", "decided_at",
        "error_code", "error_message", "reconciled", "worker",
    ],
    "DeadLetter": [
        "source_topic", "source_partition", "source_offset", "source_timestamp",
        "original_key", "original_value", "original_headers", "reason", "error_type",
        "failed_at", "worker",
    ],
    "OperatorCommand": [
        "command_id", "idempotency_key", "action", "reason", "operator", "issued_at",
    ],
    "WebhookEvent": [
        "dedupe_id", "source", "kind", "tenant_id", "subscription_id", "change_type",
        "resource", "resource_id", "lifecycle_event", "client_state_verified", "received_at",
        "payload", "headers",
    ],
}  # fmt: skip
TIMESTAMP_FIELDS = {
    "EmailIntent": {"created_at"},
    "EmailResult": {"accepted_at", "decided_at"},
    "DeadLetter": {"source_timestamp", "failed_at"},
    "WebhookEvent": {"received_at"},
    "OperatorCommand": {"issued_at"},
}


def load(name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((SCHEMA_DIR / f"{name}.avsc").read_text())
    return result


def named_types(node: Any) -> Iterator[dict[str, Any]]:
    """Every record and enum definition inside ``node``, ``node`` included."""
    if isinstance(node, list):
        for item in node:
            yield from named_types(item)
    elif isinstance(node, dict):
        if node.get("type") in ("record", "enum"):
            yield node
        for key in ("fields", "items", "values"):
            if key in node:
                yield from named_types(node[key])
        if isinstance(node.get("type"), (dict, list)):
            yield from named_types(node["type"])


def test_exactly_the_expected_files() -> None:
    assert sorted(p.stem for p in SCHEMA_DIR.glob("*.avsc")) == sorted(EXPECTED_FIELDS)


@pytest.mark.parametrize("name", sorted(EXPECTED_FIELDS))
def test_field_names_and_namespace(name: str) -> None:
    schema = load(name)
    assert schema["namespace"] == "io.sendonce"
    assert schema["name"] == name
    assert [f["name"] for f in schema["fields"]] == EXPECTED_FIELDS[name]


@pytest.mark.parametrize("name", sorted(EXPECTED_FIELDS))
def test_every_type_and_field_has_a_doc(name: str) -> None:
    undocumented = []
    for definition in named_types(load(name)):
        if not str(definition.get("doc", "")).strip():
            undocumented.append(definition["name"])
        for field in definition.get("fields", []):
            if not str(field.get("doc", "")).strip():
                undocumented.append(f"{definition['name']}.{field['name']}")
    assert undocumented == []


@pytest.mark.parametrize("name", sorted(EXPECTED_FIELDS))
def test_nullable_fields_default_to_null(name: str) -> None:
    for definition in named_types(load(name)):
        for field in definition.get("fields", []):
            if isinstance(field["type"], list) and field["type"][0] == "null":
                # WebhookEvent's optional fields too: a reader of a future version that
                # drops one must be able to fill it.
                assert "default" in field and field["default"] is None, field["name"]


@pytest.mark.parametrize("name", sorted(EXPECTED_FIELDS))
def test_timestamps_are_declared_timestamp_millis(name: str) -> None:
    found = set()
    for field in load(name)["fields"]:
        branches = field["type"] if isinstance(field["type"], list) else [field["type"]]
        for branch in branches:
            if isinstance(branch, dict) and branch.get("logicalType") == "timestamp-millis":
                assert branch["type"] == "long"
                found.add(field["name"])
    assert found == TIMESTAMP_FIELDS[name]


@pytest.mark.parametrize("name", sorted(EXPECTED_FIELDS))
def test_readme_documents_every_field(name: str) -> None:
    section = README.split(f"### {name}", 1)[1].split("\n### ", 1)[0]
    for definition in named_types(load(name)):
        for field in definition.get("fields", []):
            assert re.search(rf"^\| `{field['name']}` \|", section, re.MULTILINE), field["name"]
