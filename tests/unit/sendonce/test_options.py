"""Options shared by the commands: --bootstrap and the settings options override."""

from __future__ import annotations

import argparse

import pytest

from sendonce.options import add_bootstrap_option, settings_from_options
from sendonce.settings import SettingsError


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_bootstrap_option(parser)
    return parser.parse_args(argv)


def test_without_options_the_environment_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENDONCE_BOOTSTRAP_SERVERS", "env:9092")
    monkeypatch.setenv("SENDONCE_RECEIVER_PORT", "8081")
    settings = settings_from_options(_args(), receiver_port=None)
    assert (settings.bootstrap_servers, settings.receiver_port) == ("env:9092", 8081)


def test_given_options_replace_their_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENDONCE_BOOTSTRAP_SERVERS", "env:9092")
    settings = settings_from_options(_args("--bootstrap", "cli:9092"), receiver_port=0)
    assert settings.bootstrap_servers == "cli:9092"
    assert settings.receiver_port == 0  # 0 is a value, only None is "not given"


def test_a_bad_option_is_a_settings_error() -> None:
    with pytest.raises(SettingsError, match="not a known provider"):
        settings_from_options(_args(), provider="carrier-pigeon")
