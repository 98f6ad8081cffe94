"""Where the health server listens: loopback by default, all interfaces in the image.

A host outside a container answers /livez and /readyz on 127.0.0.1 only (the readiness
body names the host's checks); the container image and the Kubernetes config say 0.0.0.0
explicitly, because their probes come from outside the container.
"""

from __future__ import annotations

from typing import Any

import yaml

from jetagents import HostSettings
from tests.conftest import REPO


def test_a_host_binds_its_health_server_to_loopback_by_default(monkeypatch: Any) -> None:
    monkeypatch.delenv("JETAGENTS_HEALTH_BIND", raising=False)
    assert HostSettings().health_bind == "127.0.0.1"


def test_the_image_and_kubernetes_listen_on_every_interface() -> None:
    dockerfile = (REPO / "services" / "agent_host" / "Dockerfile").read_text()
    assert "JETAGENTS_HEALTH_BIND=0.0.0.0" in dockerfile
    (config,) = [
        d
        for d in yaml.safe_load_all((REPO / "ops" / "k8s" / "configmap.yaml").read_text())
        if d and d.get("kind") == "ConfigMap"
    ]
    assert config["data"]["JETAGENTS_HEALTH_BIND"] == "0.0.0.0"
    assert config["data"]["JETAGENTS_HEALTH_PORT"] == "8080"
