"""Helpers shared by the deployment tests: the repository, settings names, Dockerfile ENV."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path

from sendonce.settings import SETTINGS_DOC, Settings

REPO = Path(__file__).resolve().parents[3]

# Variables read by sendonce code that are not Settings fields.
EXTRA_VARS: frozenset[str] = frozenset({"SENDONCE_GRAPH_EMULATOR_CLIENT_SECRET"})
# Announced settings that deployment files already reference (with an empty value,
# so today's code ignores them). Once a name lands in Settings it is checked like
# every other one; a pending name may only ever be set to "".
PENDING_VARS: frozenset[str] = frozenset({"SENDONCE_SCHEMA_REGISTRY_URL"})


def setting_vars() -> dict[str, str]:
    """Environment variable -> Settings field name, for every setting."""
    return {SETTINGS_DOC[f.name][0]: f.name for f in fields(Settings)}


def secret_vars() -> set[str]:
    """Variables of the settings kept out of repr (secrets)."""
    return {SETTINGS_DOC[f.name][0] for f in fields(Settings) if not f.repr}


def unknown_sendonce_vars(env: Mapping[str, str | None]) -> list[str]:
    """``SENDONCE_*`` names in ``env`` that no code reads (pending names set non-empty too)."""
    known = set(setting_vars()) | EXTRA_VARS
    bad = []
    for name, value in env.items():
        if not name.startswith("SENDONCE_") or name in known:
            continue
        if name in PENDING_VARS and not value:
            continue
        bad.append(name)
    return sorted(bad)


def settings_from(env: Mapping[str, str | None]) -> Settings:
    """``Settings.from_env`` for a container environment (only ``SENDONCE_*`` names)."""
    clean = {k: v for k, v in env.items() if k.startswith("SENDONCE_") and v is not None}
    return Settings.from_env(clean)


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        instr, _, args = current.partition(" ")
        out.append((instr.upper(), args.strip()))
        current = ""
    return out


def final_stage(text: str) -> list[tuple[str, str]]:
    """The instructions of the Dockerfile's last stage (from its FROM on)."""
    instrs = dockerfile_instructions(text)
    start = max(i for i, (name, _) in enumerate(instrs) if name == "FROM")
    return instrs[start:]


def dockerfile_env(text: str) -> dict[str, str]:
    """The ENV values of the final stage (``KEY=value`` form)."""
    env: dict[str, str] = {}
    for name, args in final_stage(text):
        if name != "ENV":
            continue
        for item in shlex.split(args):
            key, sep, value = item.partition("=")
            assert sep, f"ENV {args!r}: use the KEY=value form"
            env[key] = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), value)
    return env


def image_settings_env() -> dict[str, str]:
    """The ``SENDONCE_*`` variables the image sets (Dockerfile ENV)."""
    env = dockerfile_env((REPO / "Dockerfile").read_text())
    return {k: v for k, v in env.items() if k.startswith("SENDONCE_")}
