"""``sendonce schemas register|check``: the schema registry from the command line.

The codec every process builds from its settings is
:func:`sendonce.schemas.registry.codec_for_settings`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sendonce.options import Subparsers
from sendonce.schemas.registry import (
    RegistryError,
    SchemaRegistryClient,
    local_schema_texts,
    topic_subjects,
)
from sendonce.settings import Settings

__all__ = ["COMPATIBILITY", "add_cli"]

COMPATIBILITY = "BACKWARD"
"""The level every sendonce subject is given: new readers read old data."""


def _client(args: argparse.Namespace) -> tuple[SchemaRegistryClient, Settings]:
    settings = Settings.from_env()
    url = args.registry or settings.schema_registry_url
    if not url:
        raise RegistryError("no schema registry: set SENDONCE_SCHEMA_REGISTRY_URL or --registry")
    return SchemaRegistryClient(url), settings


def _subjects(settings: Settings) -> list[tuple[str, str, str]]:
    """(subject, schema name, schema text) for every topic, in table order."""
    texts = local_schema_texts()
    return [(s, name, texts[name]) for s, name in topic_subjects(settings.topic_prefix).items()]


def _cmd_register(args: argparse.Namespace) -> int:
    client, settings = _client(args)
    print(f"{'subject':40} {'schema':16} {'id':>6} {'version':>7}  compatibility")
    for subject, name, text in _subjects(settings):
        # Compatibility first, so the registry checks this very registration with it.
        level = client.set_compatibility(subject, COMPATIBILITY)
        schema_id = client.register(subject, text)
        found = client.lookup(subject, text)
        version = "?" if found is None else str(found.version)
        print(f"{subject:40} {name:16} {schema_id:>6} {version:>7}  {level}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    client, settings = _client(args)
    failed = 0
    for subject, name, text in _subjects(settings):
        try:
            result = client.check_compatibility(subject, text)
        except RegistryError as exc:
            if exc.not_found:
                print(f"{subject:40} {name:16} new (nothing registered yet)")
                continue
            raise
        if result.compatible:
            print(f"{subject:40} {name:16} compatible")
            continue
        failed += 1
        detail = "; ".join(result.messages) or "the registry gave no details"
        print(f"{subject:40} {name:16} INCOMPATIBLE: {detail}")
        print(
            f"sendonce: schemas/{name}.avsc is not {COMPATIBILITY}-compatible with the "
            f"latest version of {subject}: {detail}",
            file=sys.stderr,
        )
    return 1 if failed else 0


def _run(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except RegistryError as exc:
            print(f"sendonce: {exc}", file=sys.stderr)
            return 1

    return run


def add_cli(sub: Subparsers) -> None:
    """Register ``sendonce schemas register|check``."""
    schemas = sub.add_parser(
        "schemas", help="schema registry: register the .avsc files, check compatibility"
    ).add_subparsers(dest="schemas_command", required=True)
    p = schemas.add_parser(
        "register",
        help=f"register every schema under its topics' <topic>-value subjects "
        f"(compatibility {COMPATIBILITY})",
    )
    p.add_argument("--registry", help="registry URL (SENDONCE_SCHEMA_REGISTRY_URL)")
    p.set_defaults(func=_run(_cmd_register))
    p = schemas.add_parser(
        "check",
        help="check the local .avsc files are compatible with the latest registered "
        "versions (exit 1 if not)",
    )
    p.add_argument("--registry", help="registry URL (SENDONCE_SCHEMA_REGISTRY_URL)")
    p.set_defaults(func=_run(_cmd_check))
