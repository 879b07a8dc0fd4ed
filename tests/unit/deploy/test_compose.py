"""docker-compose.yml: valid for Compose, and consistent with the code it runs.

The file is rendered by ``docker compose config --format json`` (every profile, no
``.env``, no ``SENDONCE_*`` from the caller's environment) when the Compose plugin is
installed (``deploy/tools/install-compose.sh``). Without it the YAML is read with
PyYAML and normalised to the same shape (anchors, merge keys, ``${VAR:-default}``,
short port and volume syntax), so the consistency checks run either way.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from sendonce.cli.main import build_parser
from sendonce.kafka.topics import topic_specs
from sendonce.settings import Settings
from sendonce.streams.lanes import DRAIN_WAIT_S
from tests.unit.deploy.common import (
    REPO,
    image_settings_env,
    secret_vars,
    settings_from,
    unknown_sendonce_vars,
)

COMPOSE_FILE = REPO / "docker-compose.yml"
SENDONCE_IMAGE = "sendonce:local"


# ------------------------------------------------------------------ loading


def compose_available() -> bool:
    """Whether ``docker compose`` (the v2 plugin) runs here."""
    if shutil.which("docker") is None:
        return False
    try:
        proc = subprocess.run(
            ["docker", "compose", "version", "--short"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SENDONCE_", "COMPOSE_"))}
    env["COMPOSE_PROFILES"] = "*"
    return env


def render_with_compose() -> dict[str, Any]:
    proc = subprocess.run(
        [
            "docker",
            "compose",
            "--env-file",
            os.devnull,
            "-f",
            str(COMPOSE_FILE),
            "--profile",
            "*",
            "config",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=REPO,
        env=_clean_env(),
    )
    assert proc.returncode == 0, f"docker compose config failed:\n{proc.stderr}"
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


_VAR = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)")


def _interpolate(value: Any) -> Any:
    """Compose's ``${VAR:-default}`` interpolation against an empty environment."""
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            if m.group(2) and m.group(2).endswith("?"):
                raise AssertionError(f"{m.group(0)}: a required variable has no value")
            return m.group(3) or ""

        return _VAR.sub(sub, value)
    if isinstance(value, list):
        return [_interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: _interpolate(v) for k, v in value.items()}
    return value


def _port(spec: Any) -> dict[str, Any]:
    if isinstance(spec, dict):
        return {**spec, "target": int(spec["target"])}
    text = str(spec)
    proto = "tcp"
    if "/" in text:
        text, proto = text.split("/", 1)
    parts = text.rsplit(":", 2)
    out: dict[str, Any] = {"target": int(parts[-1]), "protocol": proto}
    if len(parts) >= 2:
        out["published"] = parts[-2]
    if len(parts) == 3:
        out["host_ip"] = parts[0]
    return out


def _volume(spec: Any) -> dict[str, Any]:
    if isinstance(spec, dict):
        return spec
    parts = str(spec).split(":")
    if len(parts) == 1:
        return {"type": "volume", "target": parts[0]}
    source, target = parts[0], parts[1]
    kind = "bind" if source.startswith((".", "/", "~")) else "volume"
    out: dict[str, Any] = {"type": kind, "source": source, "target": target}
    if len(parts) > 2 and "ro" in parts[2].split(","):
        out["read_only"] = True
    return out


def render_with_pyyaml() -> dict[str, Any]:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    data: dict[str, Any] = _interpolate({k: v for k, v in raw.items() if not k.startswith("x-")})
    for service in data["services"].values():
        env = service.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
        service["environment"] = {k: None if v is None else str(v) for k, v in env.items()}
        service["ports"] = [_port(p) for p in service.get("ports", [])]
        service["volumes"] = [_volume(v) for v in service.get("volumes", [])]
        deps = service.get("depends_on") or {}
        if isinstance(deps, list):
            deps = {d: {"condition": "service_started"} for d in deps}
        service["depends_on"] = deps
        for key in ("command", "entrypoint"):
            if isinstance(service.get(key), str):
                service[key] = service[key].split()
    data["volumes"] = {name: spec or {} for name, spec in (data.get("volumes") or {}).items()}
    return data


@cache
def _config() -> tuple[str, dict[str, Any]]:
    if compose_available():
        return "docker compose", render_with_compose()
    return "pyyaml", render_with_pyyaml()


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return _config()[1]


# ------------------------------------------------------------------ helpers


def sendonce_services(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in config["services"].items() if s.get("image") == SENDONCE_IMAGE}


def command_of(service: Mapping[str, Any]) -> list[str]:
    return [str(c) for c in service.get("command") or ["worker"]]


def workers(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in sendonce_services(config).items() if command_of(s)[0] == "worker"}


def effective_settings(service: Mapping[str, Any]) -> Settings:
    """The settings a sendonce container runs with: image ENV, then the service's."""
    return settings_from({**image_settings_env(), **service.get("environment", {})})


def named_volume_mounts(service: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """target path -> mount, for mounts of named volumes."""
    return {
        v["target"]: v
        for v in service.get("volumes", [])
        if v.get("type") == "volume" and v.get("source")
    }


def mount_for(service: Mapping[str, Any], path: Path) -> dict[str, Any] | None:
    """The named-volume mount holding ``path`` (the deepest one)."""
    best: dict[str, Any] | None = None
    for target, mount in named_volume_mounts(service).items():
        if (path == Path(target) or Path(target) in path.parents) and (
            best is None or len(target) > len(best["target"])
        ):
            best = mount
    return best


def healthcheck_urls(service: Mapping[str, Any]) -> list[str]:
    test = " ".join(str(t) for t in (service.get("healthcheck") or {}).get("test") or [])
    return re.findall(r"https?://[^'\" ]+", test)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")


def seconds(duration: str) -> float:
    """A Compose / Go duration (``180s``, ``3m0s``, ``1m30s``) in seconds."""
    unit = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = _DURATION.findall(duration)
    assert parts and "".join(a + b for a, b in parts) == duration, duration
    return sum(float(n) * unit[u] for n, u in parts)


def listeners(value: str) -> dict[str, tuple[str, int]]:
    """``NAME://host:port,...`` -> {NAME: (host, port)}."""
    out: dict[str, tuple[str, int]] = {}
    for item in value.split(","):
        name, _, address = item.strip().partition("://")
        host, _, port = address.rpartition(":")
        out[name] = (host, int(port))
    return out


def kafka_service(config: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    found = [
        (n, s)
        for n, s in config["services"].items()
        if str(s.get("image", "")).startswith("apache/kafka:")
    ]
    assert len(found) == 1, "exactly one apache/kafka service"
    return found[0]


# ------------------------------------------------------------------ tests


def test_rendered(config: dict[str, Any]) -> None:
    """The file renders (by Compose itself when installed); the services are there."""
    how = _config()[0]
    assert {"kafka", "topics", "receiver", "graph-emulator", "schema-registry"} <= set(
        config["services"]
    ), how
    assert len(workers(config)) >= 1
    declared = set(config.get("volumes") or {})
    for name, service in config["services"].items():
        for mount in service.get("volumes", []):
            if mount.get("type") == "volume":
                assert mount.get("source") in declared, (
                    f"{name}: anonymous or undeclared volume {mount}"
                )


def test_sendonce_variables_are_settings(config: dict[str, Any]) -> None:
    for name, service in config["services"].items():
        env = service.get("environment") or {}
        assert unknown_sendonce_vars(env) == [], f"{name}: not a sendonce setting"
    assert unknown_sendonce_vars(image_settings_env()) == [], "Dockerfile ENV"


def test_settings_load_for_every_sendonce_service(config: dict[str, Any]) -> None:
    for name, service in sendonce_services(config).items():
        effective_settings(service)  # raises SettingsError on a bad value
        assert service.get("init") is True, f"{name}: PID 1 should be an init (signals, zombies)"


def test_commands_parse_with_the_cli(config: dict[str, Any]) -> None:
    parser = build_parser()
    for name, service in sendonce_services(config).items():
        args = parser.parse_args(command_of(service))
        assert callable(args.func), name


def test_no_secret_in_the_file(config: dict[str, Any]) -> None:
    """Secret settings only come from the environment at `up` time (empty here)."""
    for name, service in config["services"].items():
        env = service.get("environment") or {}
        for var in secret_vars() & set(env):
            assert not env[var], f"{name}: {var} has a literal value"


def test_ports_match_settings(config: dict[str, Any]) -> None:
    for name, service in sendonce_services(config).items():
        settings = effective_settings(service)
        role = command_of(service)[0]
        targets = {p["target"] for p in service.get("ports", [])}
        urls = healthcheck_urls(service)
        if role == "worker":
            assert settings.metrics_port > 0, name
            assert settings.metrics_host == "0.0.0.0", f"{name}: unreachable from outside"
            assert targets == {settings.metrics_port}, name
            assert urls == [f"http://127.0.0.1:{settings.metrics_port}/healthz"], name
        elif role == "receiver":
            assert settings.receiver_host == "0.0.0.0", f"{name}: unreachable from outside"
            assert targets == {settings.receiver_port}, name
            assert urls == [f"http://127.0.0.1:{settings.receiver_port}/healthz"], name
        else:
            assert service.get("healthcheck", {}).get("disable") is True, (
                f"{name}: the image's worker healthcheck does not apply to {role}"
            )
    published = [
        (p.get("host_ip", ""), str(p.get("published")))
        for s in config["services"].values()
        for p in s.get("ports", [])
    ]
    assert len(published) == len(set(published)), "two services publish the same host port"


def test_worker_data_dir_is_its_own_named_volume(config: dict[str, Any]) -> None:
    seen: dict[str, str] = {}
    ids: set[str] = set()
    for name, service in workers(config).items():
        settings = effective_settings(service)
        assert settings.data_dir.is_absolute(), name
        mount = mount_for(service, settings.data_dir)
        assert mount is not None, f"{name}: {settings.data_dir} is not on a named volume"
        assert not mount.get("read_only"), name
        assert mount["source"] not in seen, (
            f"{name} shares volume {mount['source']} with {seen.get(mount['source'])}"
        )
        seen[mount["source"]] = name
        worker_id = service["environment"].get("SENDONCE_WORKER_ID")
        assert worker_id and worker_id not in ids, f"{name}: worker id must be set and unique"
        ids.add(worker_id)
        assert (service.get("deploy") or {}).get("replicas", 1) == 1, (
            f"{name}: replicas would share one data volume"
        )


def test_outbox_is_shared_by_the_workers(config: dict[str, Any]) -> None:
    """Any worker may own a key after a rebalance: all must see the same outbox."""
    sources: set[str] = set()
    for name, service in workers(config).items():
        settings = effective_settings(service)
        mount = mount_for(service, settings.outbox_dir)
        data = mount_for(service, settings.data_dir)
        assert mount is not None, f"{name}: {settings.outbox_dir} is not on a named volume"
        assert data is not None and mount["source"] != data["source"], name
        sources.add(mount["source"])
    assert len(sources) == 1


def test_bootstrap_is_the_kafka_internal_listener(config: dict[str, Any]) -> None:
    name, kafka = kafka_service(config)
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}, "KRaft"
    assert not any(k.startswith("KAFKA_ZOOKEEPER") for k in env)
    bound = listeners(env["KAFKA_LISTENERS"])
    advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    hostnames = {name, kafka.get("hostname")}
    internal = {
        f"{host}:{port}"
        for lname, (host, port) in advertised.items()
        if host in hostnames and lname != controller and bound.get(lname, ("", 0))[1] == port
    }
    assert internal, "no advertised listener reachable by service name"
    for sname, service in sendonce_services(config).items():
        if "SENDONCE_BOOTSTRAP_SERVERS" not in service["environment"]:
            continue  # the emulator does not talk to Kafka
        servers = set(effective_settings(service).bootstrap_servers.split(","))
        assert servers <= internal, f"{sname}: {servers} is not one of {internal}"
        deps = service.get("depends_on") or {}
        assert name in deps or "topics" in deps, f"{sname} starts before Kafka"
    registry = config["services"]["schema-registry"]["environment"]
    store = registry["SCHEMA_REGISTRY_KAFKASTORE_BOOTSTRAP_SERVERS"].split("://", 1)[-1]
    assert store in internal
    assert any(m["target"] == env["KAFKA_LOG_DIRS"] for m in named_volume_mounts(kafka).values())


def test_topic_creation_matches_the_workers(config: dict[str, Any]) -> None:
    topics = config["services"]["topics"]
    command = command_of(topics)
    assert command[:2] == ["topics", "create"]
    assert topics.get("restart") in ("no", None)
    created = effective_settings(topics)
    args = build_parser().parse_args(command)
    if args.partitions:
        created = created.with_overrides(partitions=args.partitions)
    expected = topic_specs(created)
    for name, service in workers(config).items():
        settings = effective_settings(service)
        assert settings.partitions == created.partitions, name
        assert topic_specs(settings) == expected, f"{name}: other topics than `topics` creates"
        dep = service["depends_on"].get("topics") or {}
        assert dep.get("condition") == "service_completed_successfully", name
    receiver = config["services"]["receiver"]
    assert receiver["depends_on"]["topics"]["condition"] == "service_completed_successfully"


def test_workers_stop_after_the_batch_in_flight(config: dict[str, Any]) -> None:
    for name, service in workers(config).items():
        grace = seconds(str(service.get("stop_grace_period", "10s")))
        assert grace > DRAIN_WAIT_S, f"{name}: {grace}s < DRAIN_WAIT_S={DRAIN_WAIT_S}"


def test_profiles(config: dict[str, Any]) -> None:
    services = config["services"]
    assert services["graph-emulator"].get("profiles") == ["graph"]
    assert services["schema-registry"].get("profiles") == ["registry"]
    for name in ("kafka", "topics", "receiver", *workers(config)):
        assert not services[name].get("profiles"), f"{name} must run without a profile"
    # Workers wait for the emulator only when its profile is on.
    for name, service in workers(config).items():
        dep = service["depends_on"].get("graph-emulator")
        assert dep is not None and dep.get("required") is False, name


def test_graph_emulator_ca_reaches_the_workers(config: dict[str, Any]) -> None:
    emulator = config["services"]["graph-emulator"]
    args = build_parser().parse_args(command_of(emulator))
    assert args.host == "0.0.0.0"
    assert "graph-emulator" in args.tls_name, "the certificate must name the service"
    ca_mount = mount_for(emulator, Path(args.ca_dir))
    assert ca_mount is not None and not ca_mount.get("read_only")
    for name, service in workers(config).items():
        mounts = named_volume_mounts(service)
        assert mounts.get(ca_mount["target"], {}).get("source") == ca_mount["source"], name
        assert mounts[ca_mount["target"]].get("read_only") is True, name
    # The bundle path documented in the file's header is where the emulator writes it.
    from sendonce.emulator import CA_FILE

    documented = re.search(r"SENDONCE_GRAPH_CA_BUNDLE=(\S+)", COMPOSE_FILE.read_text())
    assert documented is not None
    assert Path(documented.group(1)) == Path(args.ca_dir) / CA_FILE
    port = re.search(
        r"SENDONCE_GRAPH_URL=https://graph-emulator:(\d+)/v1.0", COMPOSE_FILE.read_text()
    )
    assert port is not None and int(port.group(1)) == args.port


@pytest.mark.skipif(not compose_available(), reason="docker compose plugin not installed")
def test_pyyaml_reading_agrees_with_compose() -> None:
    """Where Compose is absent (CI), the PyYAML reading stands in for it: same answers."""
    ours, theirs = render_with_pyyaml(), render_with_compose()
    assert set(ours["services"]) == set(theirs["services"])
    assert set(ours["volumes"]) == set(theirs["volumes"])

    def mounts(service: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        return sorted(
            (v["type"], v.get("source"), v["target"], bool(v.get("read_only")))
            for v in service.get("volumes", [])
        )

    def ports(service: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        return sorted(
            (p.get("host_ip", ""), str(p.get("published")), p["target"])
            for p in service.get("ports", [])
        )

    for name, theirs_service in theirs["services"].items():
        ours_service = ours["services"][name]
        assert ours_service["environment"] == (theirs_service.get("environment") or {}), name
        assert mounts(ours_service) == mounts(theirs_service), name
        assert ports(ours_service) == ports(theirs_service), name
        assert ours_service.get("command") == theirs_service.get("command"), name
        assert {k: v["condition"] for k, v in ours_service["depends_on"].items()} == {
            k: v["condition"] for k, v in (theirs_service.get("depends_on") or {}).items()
        }, name
        assert ours_service.get("profiles") == theirs_service.get("profiles"), name
        if "stop_grace_period" in theirs_service:
            assert seconds(str(ours_service["stop_grace_period"])) == seconds(
                theirs_service["stop_grace_period"]
            )
