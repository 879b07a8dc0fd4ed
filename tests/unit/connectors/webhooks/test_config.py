"""Receiver settings: the secret mapping formats and their validation."""

from __future__ import annotations

import pytest

from sendonce.connectors.webhooks.receiver import ReceiverConfig
from sendonce.connectors.webhooks.secrets import parse_secret_map, parse_source_secrets
from sendonce.settings import Settings, SettingsError

VAR = "SENDONCE_RECEIVER_CLIENT_STATES"


def test_key_value_format() -> None:
    assert parse_secret_map("sub-1=abc, tenant-2 = d=e=f ,", VAR) == {
        "sub-1": "abc",
        "tenant-2": "d=e=f",  # base64 padding survives: split on the first '='
    }


def test_json_format() -> None:
    assert parse_secret_map(' {"sub-1": "a,b", "t": "x=y"} ', VAR) == {"sub-1": "a,b", "t": "x=y"}


def test_empty_is_an_empty_mapping() -> None:
    assert parse_secret_map("", VAR) == {}
    assert parse_secret_map("   ", VAR) == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sub-1", "entry 1 is not name=secret"),
        ("sub-1=", "secret for 'sub-1' is empty"),
        ("=hunter2-secret", "empty name"),
        ("a=1,a=2", "more than once"),
        ('{"a": 1}', "must be a string"),
        ('{"a": "hunter2-secret"', "not a valid JSON object"),
        ('["a"]', "must be a JSON object"),
    ],
)
def test_malformed_mappings_are_clear_errors_without_secrets(text: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message) as info:
        parse_secret_map(text, VAR)
    assert VAR in str(info.value)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize("name", ["Upper", "graph", "has space", "a/b", ""])
def test_source_names_are_checked(name: str) -> None:
    with pytest.raises(SettingsError):
        parse_source_secrets(f"{name}=s3cret-value", "SENDONCE_RECEIVER_SIGNING_SECRETS")


def test_settings_from_env_to_receiver_config() -> None:
    settings = Settings.from_env(
        {
            "SENDONCE_TOPIC_PREFIX": "p.",
            "SENDONCE_RECEIVER_PORT": "0",
            "SENDONCE_RECEIVER_MAX_BODY_BYTES": "2048",
            "SENDONCE_RECEIVER_CLIENT_STATES": "sub-1=state-one,tenant-1=state-two",
            "SENDONCE_RECEIVER_SIGNING_SECRETS": '{"billing": "whsec_c2VjcmV0LWtleQ=="}',
            "SENDONCE_RECEIVER_SIGNATURE_TOLERANCE_S": "60",
            "SENDONCE_WEBHOOK_REPLAYS_TOPIC": "true",
            "SENDONCE_WEBHOOK_DEDUPE_TTL_S": "3600",
        }
    )
    assert settings.webhook_replays_topic is True
    assert settings.webhook_dedupe_ttl_s == 3600
    # Secrets stay out of reprs (and so out of logged settings).
    assert "state-one" not in repr(settings)
    assert "whsec_" not in repr(settings)
    config = ReceiverConfig.from_settings(settings)
    assert config.topic == "p.email.webhooks.raw"
    assert config.port == 0
    assert config.max_body_bytes == 2048
    assert config.client_states == {"sub-1": "state-one", "tenant-1": "state-two"}
    assert config.signing_keys == {"billing": b"secret-key"}
    assert config.signature_tolerance_s == 60
    assert "state-one" not in repr(config)
    assert "secret-key" not in repr(config)


def test_defaults() -> None:
    s = Settings()
    assert (s.receiver_host, s.receiver_port) == ("127.0.0.1", 8080)
    assert s.receiver_max_body_bytes == 1024 * 1024
    assert s.webhook_dedupe_ttl_s == 7 * 24 * 3600
    assert s.webhook_replays_topic is False


@pytest.mark.parametrize(("raw", "value"), [("1", True), ("YES", True), ("off", False)])
def test_boolean_settings(raw: str, value: bool) -> None:
    assert Settings.from_env({"SENDONCE_WEBHOOK_REPLAYS_TOPIC": raw}).webhook_replays_topic is value


def test_bad_boolean_is_a_clear_error() -> None:
    with pytest.raises(SettingsError, match="not a valid bool"):
        Settings.from_env({"SENDONCE_WEBHOOK_REPLAYS_TOPIC": "maybe"})


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("SENDONCE_RECEIVER_MAX_BODY_BYTES", "0"),
        ("SENDONCE_RECEIVER_PORT", "70000"),
        ("SENDONCE_RECEIVER_PRODUCE_TIMEOUT_S", "0"),
        ("SENDONCE_RECEIVER_SIGNING_SECRETS", "billing=whsec_!!!"),
    ],
)
def test_receiver_config_rejects_unusable_values(var: str, value: str) -> None:
    with pytest.raises(SettingsError, match=var):
        ReceiverConfig.from_settings(Settings.from_env({var: value}))
