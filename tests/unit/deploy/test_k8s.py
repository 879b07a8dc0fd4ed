"""deploy/k8s: valid Kubernetes objects, consistent with the settings and topics.

Built-in kinds are validated against the Kubernetes JSON schemas bundled with the
``kubernetes-validate`` package (strict: unknown fields fail; no network). Strimzi
``KafkaTopic`` has no bundled schema: a structural test compares it with
``topic_specs()`` for the ConfigMap's settings instead.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]

from sendonce.kafka.topics import topic_specs
from sendonce.settings import Settings
from sendonce.streams.lanes import DRAIN_WAIT_S
from tests.unit.deploy.common import (
    REPO,
    dockerfile_instructions,
    final_stage,
    setting_vars,
    settings_from,
    unknown_sendonce_vars,
)

K8S_DIR = REPO / "deploy" / "k8s"
# The oldest Kubernetes minor the manifests target (persistentVolumeClaimRetentionPolicy
# is GA from 1.32).
K8S_VERSION = "1.32"
CRD_GROUPS = ("kafka.strimzi.io/",)


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S_DIR.glob("*.yaml") if p.name != "kustomization.yaml")


def load_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in manifest_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                doc.setdefault("metadata", {}).setdefault("annotations", {})
                doc["_file"] = path.name
                docs.append(doc)
    return docs


DOCS = load_docs()


def strip(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The object as written (without the test's bookkeeping)."""
    out = {k: v for k, v in doc.items() if k != "_file"}
    meta = dict(out["metadata"])
    if not meta.get("annotations"):
        meta.pop("annotations", None)
    out["metadata"] = meta
    return out


def find(kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        d for d in DOCS if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def workload_containers() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for doc in DOCS:
        if doc["kind"] in ("StatefulSet", "Deployment"):
            for container in doc["spec"]["template"]["spec"]["containers"]:
                yield doc, container


def container_env(workload: Mapping[str, Any], container: Mapping[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet would build it."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(one("ConfigMap", source["configMapRef"]["name"])["data"])
        if "secretRef" in source:
            env.update(one("Secret", source["secretRef"]["name"])["stringData"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[item["name"]] = f"{workload['metadata']['name']}-0"
        else:
            raise AssertionError(f"unexpected env source {item}")
    return env


def container_settings(workload: Mapping[str, Any], container: Mapping[str, Any]) -> Settings:
    return settings_from(container_env(workload, container))


def port_number(container: Mapping[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return int(p["containerPort"])
    raise AssertionError(f"no container port named {port!r}")


def configmap_settings() -> Settings:
    worker = one("StatefulSet")
    return container_settings(worker, worker["spec"]["template"]["spec"]["containers"][0])


# ------------------------------------------------------------------ schema


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == [p.name for p in manifest_files()]


def test_kubernetes_validate_has_bundled_schemas() -> None:
    """The schemas ship in the wheel: validation needs no network."""
    versions = kubernetes_validate.utils.all_versions()
    assert any(v.startswith(K8S_VERSION + ".") for v in versions), versions


@pytest.mark.parametrize(
    "doc", DOCS, ids=[f"{d['_file']}:{d['kind']}/{d['metadata']['name']}" for d in DOCS]
)
def test_schema(doc: dict[str, Any]) -> None:
    if doc["apiVersion"].startswith(CRD_GROUPS):
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            kubernetes_validate.validate(strip(doc), K8S_VERSION, strict=True)
        return  # checked by test_kafka_topics_match_topic_specs
    try:
        kubernetes_validate.validate(strip(doc), K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{doc['_file']}: {exc.message} at {list(exc.absolute_path)}")


def test_selectors_match_pod_labels() -> None:
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
        for d in DOCS
        if d["kind"] in ("StatefulSet", "Deployment")
    }
    for doc in DOCS:
        if doc["kind"] in ("StatefulSet", "Deployment"):
            selector = doc["spec"]["selector"]["matchLabels"]
            assert selector.items() <= pods[doc["metadata"]["name"]].items()
        if doc["kind"] == "Service":
            selector = doc["spec"]["selector"]
        elif doc["kind"] == "PodDisruptionBudget":
            selector = doc["spec"]["selector"]["matchLabels"]
        else:
            continue
        matched = [n for n, labels in pods.items() if selector.items() <= labels.items()]
        assert len(matched) == 1, f"{doc['kind']}/{doc['metadata']['name']} selects {matched}"


# ------------------------------------------------------------------ settings


def test_configmap_and_secret_keys_are_settings() -> None:
    for doc in find("ConfigMap") + find("Secret"):
        data = doc.get("data") or doc.get("stringData") or {}
        assert data, doc["metadata"]["name"]
        assert all(k.startswith("SENDONCE_") for k in data), doc["metadata"]["name"]
        assert unknown_sendonce_vars(data) == [], doc["metadata"]["name"]


def test_secrets_are_marked_placeholders() -> None:
    secrets = find("Secret")
    assert secrets
    for secret in secrets:
        assert "data" not in secret, "use stringData (readable placeholders)"
        for key, value in secret["stringData"].items():
            assert str(value).startswith("REPLACE-ME"), f"{key}: not a marked placeholder"
    for config in find("ConfigMap"):
        secret_like = {"SENDONCE_GRAPH_CLIENT_SECRET", "SENDONCE_RECEIVER_CLIENT_STATES"}
        assert not secret_like & set(config["data"]), "secrets belong in a Secret"


def test_every_container_gets_valid_settings() -> None:
    names = setting_vars()
    for workload, container in workload_containers():
        for item in container.get("env", []):
            assert item["name"] in names, f"{container['name']}: {item['name']} is not a setting"
        container_settings(workload, container)  # raises SettingsError on bad values


# ------------------------------------------------------------------ worker


def test_worker_statefulset() -> None:
    sts = one("StatefulSet", "sendonce-worker")
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    settings = container_settings(sts, container)

    # SENDONCE_WORKER_ID is the pod's name.
    (worker_id,) = [e for e in container["env"] if e["name"] == "SENDONCE_WORKER_ID"]
    assert worker_id["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"

    # One PersistentVolumeClaim per pod, mounted at SENDONCE_DATA_DIR.
    claims = {t["metadata"]["name"]: t for t in sts["spec"]["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert settings.data_dir.is_absolute()
    assert mounts.get(str(settings.data_dir)) in claims, "data dir is not on the claim"
    assert claims[mounts[str(settings.data_dir)]]["spec"]["accessModes"] == ["ReadWriteOnce"]

    # Headless governing Service.
    service = one("Service", sts["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"

    # Metrics port, probes.
    assert settings.metrics_port > 0
    assert settings.metrics_host == "0.0.0.0", "probes come from outside the pod"
    assert [p["containerPort"] for p in container["ports"]] == [settings.metrics_port]
    ready, live = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
    assert ready["path"] == "/readyz" and live["path"] == "/healthz"
    assert port_number(container, ready["port"]) == settings.metrics_port
    assert port_number(container, live["port"]) == settings.metrics_port
    startup = container.get("startupProbe", {}).get("httpGet")
    if startup:
        assert startup["path"] == "/healthz", "recovery may be long: never gate on /readyz"
        assert port_number(container, startup["port"]) == settings.metrics_port
    (svc_port,) = service["spec"]["ports"]
    assert port_number(container, svc_port["targetPort"]) == settings.metrics_port

    # Stopping lets the rebalance finish the batch in flight.
    assert pod["terminationGracePeriodSeconds"] > DRAIN_WAIT_S

    # The disruption budget.
    pdbs = [
        p
        for p in find("PodDisruptionBudget")
        if p["spec"]["selector"]["matchLabels"].items()
        <= sts["spec"]["template"]["metadata"]["labels"].items()
    ]
    assert len(pdbs) == 1 and pdbs[0]["spec"]["maxUnavailable"] == 1


def _image_uid() -> int:
    (user,) = [
        args for name, args in final_stage((REPO / "Dockerfile").read_text()) if name == "USER"
    ]
    return int(user.split(":")[0])


def test_pods_are_hardened_and_sized() -> None:
    uid = _image_uid()
    for workload, container in workload_containers():
        pod = workload["spec"]["template"]["spec"]
        name = f"{workload['kind']}/{workload['metadata']['name']}"
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == uid != 0, name
        assert pod.get("automountServiceAccountToken") is False, name
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, name
        assert sc["capabilities"]["drop"] == ["ALL"], name
        if sc.get("readOnlyRootFilesystem"):
            assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}, name
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), f"{name}: {kind}"
        assert container["args"][0] in ("worker", "receiver"), name
        assert str(container["image"]).startswith("sendonce:"), "kustomize `images:` rewrites it"


# ------------------------------------------------------------------ receiver


def test_receiver() -> None:
    deployment = one("Deployment", "sendonce-receiver")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    settings = container_settings(deployment, container)
    assert container["args"] == ["receiver"]
    assert settings.receiver_host == "0.0.0.0"
    assert [p["containerPort"] for p in container["ports"]] == [settings.receiver_port]
    ready = container["readinessProbe"]["httpGet"]
    assert ready["path"] == "/healthz"
    assert port_number(container, ready["port"]) == settings.receiver_port
    service = one("Service", "sendonce-receiver")
    (svc_port,) = service["spec"]["ports"]
    assert port_number(container, svc_port["targetPort"]) == settings.receiver_port
    # The receiver never holds the Graph credentials.
    env = container_env(deployment, container)
    assert "SENDONCE_GRAPH_CLIENT_SECRET" not in env


# ------------------------------------------------------------------ topics


def test_kafka_topics_match_topic_specs() -> None:
    settings = configmap_settings()
    topics = find("KafkaTopic")
    clusters = set()
    by_name: dict[str, dict[str, Any]] = {}
    for topic in topics:
        assert topic["apiVersion"] == "kafka.strimzi.io/v1beta2"
        assert set(topic) == {"apiVersion", "kind", "metadata", "spec", "_file"}
        clusters.add(topic["metadata"]["labels"]["strimzi.io/cluster"])
        spec = topic["spec"]
        assert set(spec) <= {"topicName", "partitions", "replicas", "config"}
        name = spec.get("topicName", topic["metadata"]["name"])
        assert name not in by_name, f"{name} declared twice"
        by_name[name] = spec
    expected = {t.name: t for t in topic_specs(settings)}
    assert sorted(by_name) == sorted(expected)
    for name, spec in by_name.items():
        assert spec["partitions"] == expected[name].partitions, name
        assert spec["replicas"] == settings.replication_factor, name
        config = {k: str(v) for k, v in (spec.get("config") or {}).items()}
        assert config == expected[name].config, name
    # One cluster, and it is the one the settings bootstrap from.
    assert len(clusters) == 1
    (cluster,) = clusters
    hosts = [s.split(":")[0] for s in settings.bootstrap_servers.split(",")]
    assert all(h.split(".")[0] == f"{cluster}-kafka-bootstrap" for h in hosts), hosts


def test_uses_dockerfile_entrypoint() -> None:
    """The manifests pass sendonce subcommands as args: the image's ENTRYPOINT is `sendonce`."""
    instrs = dockerfile_instructions((REPO / "Dockerfile").read_text())
    entrypoints = [args for name, args in instrs if name == "ENTRYPOINT"]
    assert entrypoints[-1] == '["sendonce"]'
    for _, container in workload_containers():
        assert "command" not in container
