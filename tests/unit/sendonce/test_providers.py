"""The provider registry: one list of names for the worker, the settings and the CLI."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sendonce.cli.main import build_parser
from sendonce.connectors.base import EmailProvider
from sendonce.connectors.graph.provider import GraphProvider
from sendonce.connectors.outbox import OutboxFault, OutboxProvider
from sendonce.providers import PROVIDERS, build_provider, provider_factory
from sendonce.settings import SETTINGS_DOC, Settings, SettingsError
from sendonce.streams.app import provider_from_settings


def _settings(name: str, tmp_path: Path, **extra: object) -> Settings:
    """Settings each registered provider can be built from (no network is touched)."""
    settings = Settings(
        provider=name,
        outbox_dir=tmp_path / "outbox",
        graph_tenant_id="tenant",
        graph_client_id="client",
        graph_client_secret="secret",
    )
    return settings.with_overrides(**extra)


@pytest.mark.parametrize("name", list(PROVIDERS))
def test_every_registered_name_builds_an_email_provider(name: str, tmp_path: Path) -> None:
    settings = _settings(name, tmp_path)
    provider = build_provider(settings)
    assert isinstance(provider, EmailProvider)
    assert provider.name == name
    assert callable(provider_factory(name))
    asyncio.run(provider.close())


def test_an_unknown_name_is_refused_with_the_registered_names() -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"SENDONCE_PROVIDER": "carrier-pigeon"})
    message = str(refused.value)
    assert "'carrier-pigeon' is not a known provider" in message
    assert f"({', '.join(PROVIDERS)})" in message


def test_the_default_provider_is_registered_first_and_documented() -> None:
    assert Settings().provider == next(iter(PROVIDERS))
    doc = SETTINGS_DOC["provider"][1]
    assert all(f"`{name}`" in doc for name in PROVIDERS)


def test_the_worker_offers_exactly_the_registered_providers() -> None:
    parser = build_parser()
    for name in PROVIDERS:
        assert parser.parse_args(["worker", "--provider", name]).provider == name
    with pytest.raises(SystemExit) as refused:
        parser.parse_args(["worker", "--provider", "carrier-pigeon"])
    assert refused.value.code == 2


def test_the_graph_factory_carries_every_graph_setting(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    settings = _settings(
        "graph",
        tmp_path,
        graph_authority="https://login.example/tenant",
        graph_ca_bundle=str(ca),
        graph_url="https://graph.example/v1.0",
        graph_mode="draft-send",
        graph_connect_timeout_s=3.0,
        graph_read_timeout_s=7.0,
        graph_mailbox_concurrency=2,
        graph_sends_per_minute=0,  # 0 lifts the cap
        graph_requests_per_10min=500,
    )
    provider = build_provider(settings)
    assert isinstance(provider, GraphProvider)
    assert provider.tokens.tenant_id == "tenant"
    assert provider.tokens.client_id == "client"
    assert provider.tokens.credential_kind == "client_secret"
    assert provider.tokens.authority == "https://login.example/tenant"
    assert provider.tokens.ca_bundle == str(ca)
    graph = provider.settings
    assert graph.graph_url == "https://graph.example/v1.0"
    assert graph.mode == "draft-send"
    assert graph.ca_bundle == ca
    assert (graph.connect_timeout_s, graph.read_timeout_s) == (3.0, 7.0)
    assert graph.max_concurrent_per_mailbox == 2
    assert graph.sends_per_minute is None
    assert graph.requests_per_window == 500
    # The connector knows nothing of metrics; the worker wires the throttle's waits.
    assert provider.throttle.on_wait is None
    worker_provider = provider_from_settings(settings)
    assert isinstance(worker_provider, GraphProvider)
    assert worker_provider.throttle.on_wait is not None


def test_the_outbox_factory_keeps_its_test_fault(tmp_path: Path) -> None:
    settings = _settings("outbox", tmp_path, outbox_fault="kill-after-accept:3")
    provider = build_provider(settings)
    assert isinstance(provider, OutboxProvider)
    assert provider.directory == tmp_path / "outbox"
    assert provider._fault == OutboxFault(kill_after_accept=3)
