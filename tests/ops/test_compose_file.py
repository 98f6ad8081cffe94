"""docker-compose.yml against the Compose Specification schema, plus the properties the
operations depend on; the Dockerfile's and the Kubernetes manifests' essentials."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import jsonschema
import pytest
import yaml

from tests.conftest import REPO

SCHEMA = json.loads((REPO / "ops" / "schema" / "compose-spec.json").read_text())
NATS_NODES = ["nats-1", "nats-2", "nats-3"]
HOSTS = ["host-1", "host-2", "host-3"]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return doc


def _errors(doc: dict[str, Any]) -> list[str]:
    # the vendored revision names its draft with a URI jsonschema does not know; current
    # upstream declares draft-07, which reads this revision the same way
    validator = jsonschema.Draft7Validator(SCHEMA)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    return {k: str(v) for k, v in env.items()}


def test_compose_file_is_valid_against_the_compose_specification(compose: dict[str, Any]) -> None:
    assert _errors(compose) == []


def test_the_schema_check_catches_mistakes(compose: dict[str, Any]) -> None:
    bad = copy.deepcopy(compose)
    bad["services"]["host-1"]["depends_on"]["nats-1"]["condition"] = "service_ready"
    bad["services"]["nats-2"]["healthcheck"]["intervall"] = "2s"
    errors = _errors(bad)
    assert len(errors) >= 2, errors


def test_nats_nodes_are_a_durable_cluster_with_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    volumes = set()
    for name in NATS_NODES:
        svc = services[name]
        assert re.fullmatch(r"\$\{NATS_IMAGE:-nats:[0-9.]+-alpine\}", svc["image"]), svc["image"]
        assert svc["command"] == ["--config", "/etc/nats/cluster.conf"]
        mounts = {m.split(":")[1]: m.split(":")[0] for m in svc["volumes"]}
        assert mounts["/etc/nats"] == "./ops/nats" and (REPO / "ops" / "nats" / "cluster.conf").is_file()
        volumes.add(mounts["/data"])
        assert _env(svc)["NATS_SERVER_NAME"] == name
        assert "8222" in " ".join(svc["healthcheck"]["test"])  # the monitoring port
    assert volumes == {f"{n}-data" for n in NATS_NODES}  # one volume per node
    assert set(volumes) <= set(compose["volumes"])
    cluster_conf = (REPO / "ops" / "nats" / "cluster.conf").read_text()
    assert "sync_interval: always" in cluster_conf
    assert all(f"nats-route://{n}:6222" in cluster_conf for n in NATS_NODES)


def test_hosts_start_after_healthy_nats_and_use_every_node_with_r3(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in HOSTS:
        svc = services[name]
        assert svc["image"].startswith("${JETAGENTS_IMAGE:-")
        assert svc["build"]["context"] == "."  # the repository root; the Dockerfile lives with the service
        assert svc["build"]["dockerfile"] == "services/agent_host/Dockerfile"
        assert (REPO / svc["build"]["dockerfile"]).is_file() and not (REPO / "Dockerfile").exists()
        assert svc["depends_on"] == {n: {"condition": "service_healthy"} for n in NATS_NODES}
        env = _env(svc)
        assert env["JETAGENTS_REPLICAS"] == "3"
        assert all(f"@{n}:4222" in env["JETAGENTS_NATS_URL"] for n in NATS_NODES)
        assert env["JETAGENTS_HOST_ID"] == name
        assert json.loads(env["JETAGENTS_AGENTS"]) == ["jetagents.examples:EXAMPLE_AGENTS"]  # opt-in (ADR 0040)
        assert env.get("JETAGENTS_MEMBERSHIP", "ring") == "ring"  # hosts share partitions, none is pinned
        assert "agent_host.probe" in svc["healthcheck"]["test"]
        grace = float(svc["stop_grace_period"].rstrip("s"))
        assert grace >= float(env["JETAGENTS_DRAIN_GRACE_S"]) + 5 + 2 + 5  # + round trip + margin + flush
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4317"


def test_observability_and_demo_services_are_wired(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"otel-collector", "jaeger", "prometheus", "demo"} <= set(services)
    for name, var in (("otel-collector", "OTEL_COLLECTOR_IMAGE"), ("jaeger", "JAEGER_IMAGE")):
        assert services[name]["image"].startswith(f"${{{var}:-"), name
    collector = yaml.safe_load((REPO / "ops" / "otel" / "collector.yaml").read_text())
    assert collector["exporters"]["otlp/jaeger"]["endpoint"] == "jaeger:4317"
    pipelines = collector["service"]["pipelines"]
    assert pipelines["traces"]["exporters"] == ["otlp/jaeger"] and pipelines["metrics"]["exporters"] == ["prometheus"]
    prom = yaml.safe_load((REPO / "ops" / "prometheus" / "prometheus.yml").read_text())
    targets = [t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert "otel-collector:8889" in targets
    demo = services["demo"]
    assert demo["entrypoint"] == ["python3", "/demo/workload.py"] and (REPO / "ops" / "demo" / "workload.py").is_file()
    assert demo["depends_on"] == {h: {"condition": "service_healthy"} for h in HOSTS}
    assert "nats://client:" in _env(demo)["JETAGENTS_NATS_URL"]  # the least-privileged user


def test_dockerfile_is_multistage_non_root_with_healthcheck_and_exec_entrypoint() -> None:
    text = (REPO / "services" / "agent_host" / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.\d+-slim", text, re.M)
    froms = [ln for ln in lines if ln.startswith("FROM ")]
    assert len(froms) == 2 and froms[0].endswith(" AS build") and "${" in froms[1]
    assert any(ln.startswith("COPY --from=build") for ln in lines)
    user = [ln for ln in lines if ln.startswith("USER ")]
    assert user and not user[-1].split()[1].startswith(("0", "root"))
    entry = [ln for ln in lines if ln.startswith("ENTRYPOINT ")][-1]
    assert json.loads(entry.removeprefix("ENTRYPOINT ")) == ["python3", "-m", "agent_host"]  # exec form
    assert "HEALTHCHECK" in text and "agent_host.probe" in text
    ignore = (REPO / ".dockerignore").read_text().split()
    assert ignore[0] == "*" or "*" in ignore


def _k8s_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted((REPO / "ops" / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_kubernetes_manifests_parse_and_carry_the_essentials() -> None:
    docs = _k8s_docs()
    for doc in docs:
        assert {"apiVersion", "kind"} <= set(doc), doc
        if doc["kind"] != "Kustomization":
            assert doc["metadata"]["name"], doc
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) >= {"Kustomization", "Namespace", "ConfigMap", "Deployment", "PodDisruptionBudget"}
    listed = set(kinds["Kustomization"]["resources"])
    assert listed == {p.name for p in (REPO / "ops" / "k8s").glob("*.yaml")} - {"kustomization.yaml"}

    config = kinds["ConfigMap"]["data"]
    sts = kinds["Deployment"]
    spec = sts["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert spec["terminationGracePeriodSeconds"] >= float(config["JETAGENTS_DRAIN_GRACE_S"]) + 5 + 2 + 5
    assert sts["spec"]["replicas"] >= 2  # partitions move when one host stops
    rolling = sts["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0 and rolling["maxSurge"] >= 1  # a new host joins before an old one drains
    assert config["JETAGENTS_REPLICAS"] == "3"
    assert json.loads(config["JETAGENTS_AGENTS"]), "a host serves no agent type unless told (ADR 0040)"
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["health"]
    assert str(port) == config["JETAGENTS_HEALTH_PORT"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    env = {e["name"]: e for e in container["env"]}
    assert env["JETAGENTS_NATS_URL"]["valueFrom"]["secretKeyRef"]["name"] == "jetagents-nats"
    assert env["JETAGENTS_HOST_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    selector = sts["spec"]["selector"]["matchLabels"]
    assert kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == selector
    assert selector.items() <= sts["spec"]["template"]["metadata"]["labels"].items()
