"""Hypothesis strategies that generate records for an Avro schema given as JSON.

Values follow the codec's conventions: timestamps are int milliseconds, bytes are bytes.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

_PRIMITIVES: dict[str, st.SearchStrategy[Any]] = {
    "null": st.none(),
    "boolean": st.booleans(),
    "int": st.integers(-(2**31), 2**31 - 1),
    "long": st.integers(-(2**63), 2**63 - 1),
    "float": st.floats(width=32, allow_nan=False),
    "double": st.floats(allow_nan=False),
    "bytes": st.binary(max_size=24),
    "string": st.text(max_size=24),
}


def _full_name(name: str, namespace: str | None) -> str:
    if "." in name or not namespace:
        return name
    return f"{namespace}.{name}"


class _Builder:
    def __init__(self) -> None:
        self.named: dict[str, Any] = {}

    def strategy(self, node: Any, namespace: str | None) -> st.SearchStrategy[Any]:
        if isinstance(node, str):
            if node in _PRIMITIVES:
                return _PRIMITIVES[node]
            return st.deferred(lambda: self.named[_full_name(node, namespace)])
        if isinstance(node, list):
            return st.one_of([self.strategy(branch, namespace) for branch in node])
        kind = node["type"]
        if isinstance(kind, str) and kind in _PRIMITIVES:
            return _PRIMITIVES[kind]
        if kind == "array":
            return st.lists(self.strategy(node["items"], namespace), max_size=4)
        if kind == "map":
            return st.dictionaries(
                st.text(max_size=12), self.strategy(node["values"], namespace), max_size=4
            )
        if kind in ("enum", "fixed"):
            full = _full_name(node["name"], node.get("namespace", namespace))
            named: st.SearchStrategy[Any] = (
                st.sampled_from(node["symbols"])
                if kind == "enum"
                else st.binary(min_size=node["size"], max_size=node["size"])
            )
            self.named[full] = named
            return named
        if kind == "record":
            full = _full_name(node["name"], node.get("namespace", namespace))
            inner = full.rpartition(".")[0] or None
            required: dict[str, st.SearchStrategy[Any]] = {}
            optional: dict[str, st.SearchStrategy[Any]] = {}
            for field in node["fields"]:
                target = optional if "default" in field else required
                target[field["name"]] = self.strategy(field["type"], inner)
            strategy = st.fixed_dictionaries(required, optional=optional)
            self.named[full] = strategy
            return strategy
        return self.strategy(kind, namespace)


def records(schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Records valid for ``schema``; fields with a default are sometimes left out."""
    return _Builder().strategy(schema, None)


def with_defaults(schema: Any, datum: Any, namespace: str | None = None) -> Any:
    """``datum`` as a reader of ``schema`` sees it: left-out fields get their defaults.

    Unions are returned unchanged (none of the tested schemas has a record in a union).
    """
    if isinstance(schema, dict):
        kind = schema["type"]
        if kind == "record":
            full = _full_name(schema["name"], schema.get("namespace", namespace))
            inner = full.rpartition(".")[0] or None
            return {
                field["name"]: with_defaults(
                    field["type"], datum.get(field["name"], field.get("default")), inner
                )
                for field in schema["fields"]
            }
        if kind == "array":
            return [with_defaults(schema["items"], item, namespace) for item in datum]
        if kind == "map":
            return {k: with_defaults(schema["values"], v, namespace) for k, v in datum.items()}
    return datum
