"""Email providers by name: the one list the worker, the settings and the CLI read.

``SENDONCE_PROVIDER`` names a provider; :data:`PROVIDERS` maps each name to the
``"module:attr"`` of its connector's factory ``from_settings(settings) -> EmailProvider``.
The strings are imported only when a provider is built (as Faust picks a store by
name), so this table sits in the foundation: the settings check a name against its
keys without importing any connector, and a new provider is its own module plus one
line here. The first name is the default (``Settings.provider``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    # Types only: the foundation imports no connector when it runs.
    from sendonce.connectors.base import EmailProvider
    from sendonce.settings import Settings

__all__ = ["PROVIDERS", "build_provider", "provider_factory"]

PROVIDERS: Mapping[str, str] = MappingProxyType(
    {
        "outbox": "sendonce.connectors.outbox:from_settings",
        "graph": "sendonce.connectors.graph.provider:from_settings",
        "null": "sendonce.connectors.null:from_settings",
    }
)
"""Provider name -> ``"module:attr"`` of its ``from_settings`` factory."""


def provider_factory(name: str) -> Callable[[Settings], EmailProvider]:
    """The factory registered as ``name``, imported now (KeyError for an unknown name)."""
    module, _, attr = PROVIDERS[name].partition(":")
    return cast(
        "Callable[[Settings], EmailProvider]", getattr(importlib.import_module(module), attr)
    )


def build_provider(settings: Settings) -> EmailProvider:
    """The provider ``settings.provider`` names, built from ``settings``."""
    return provider_factory(settings.provider)(settings)
