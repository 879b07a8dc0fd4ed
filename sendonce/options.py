"""The command-line options every ``sendonce`` command shares, and the settings they set.

A command reads its configuration from ``SENDONCE_*`` variables; an option given on
its command line replaces one variable. ``--bootstrap`` is the option every Kafka
command has. In the foundation (not in :mod:`sendonce.cli`) because commands register
themselves from two floors (``sendonce.dev``, ``sendonce.cli``) and each floor may only
import the ones below it.
"""

from __future__ import annotations

import argparse
from typing import TypeAlias

from sendonce.settings import Settings

__all__ = ["Subparsers", "add_bootstrap_option", "settings_from_options"]

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What a command's ``add_cli(subparsers)`` registers itself on."""


def add_bootstrap_option(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` the ``--bootstrap`` option (read by :func:`settings_from_options`)."""
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (SENDONCE_BOOTSTRAP_SERVERS)")


def settings_from_options(args: argparse.Namespace, **overrides: object) -> Settings:
    """``Settings.from_env()`` with the options given on the command line in their place.

    ``--bootstrap``, when given, sets ``bootstrap_servers``; each of ``overrides``
    (a settings field and its option's value) sets its field unless it is None.
    The result is validated again: a bad option is a :class:`SettingsError` (exit 2).
    """
    given = {name: value for name, value in overrides.items() if value is not None}
    bootstrap = getattr(args, "bootstrap", None)
    if bootstrap:
        given["bootstrap_servers"] = bootstrap
    settings = Settings.from_env()
    return settings.with_overrides(**given) if given else settings
