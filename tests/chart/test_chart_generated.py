"""Files generated from the chart are current, and the plain manifests build with kustomize.

Given the chart as it is now, when its README and deploy/k8s/ are generated again, then they
equal the committed files; and `kubectl kustomize` builds every overlay into objects that are
valid Kubernetes (and valid KEDA/Prometheus-operator objects).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import chart_readme
import kustomize_base
import pytest
import yaml
from chart_tools import (
    CHART_DIR,
    K8S_DIR,
    KUBERNETES_VERSIONS,
    crd_errors,
    is_custom_resource,
    kubernetes_errors,
    pod_specs,
)
from pod_security import platform_violations, violations

OVERLAYS = sorted(p.parent.name for p in (K8S_DIR / "overlays").glob("*/kustomization.yaml"))


def test_every_value_is_documented() -> None:
    rows = chart_readme.rows((CHART_DIR / "values.yaml").read_text())
    assert {row.key for row in rows} >= {"redis.enabled", "workerDefaults.autoscaling.listLength"}
    assert all(row.description for row in rows)


def test_an_undocumented_value_is_refused() -> None:
    with pytest.raises(chart_readme.UndocumentedValuesError, match=r"beat\.extra"):
        chart_readme.rows("beat:\n  # -- documented\n  enabled: true\n  extra: 1\n")


def test_the_chart_readme_is_generated_from_the_current_values() -> None:
    assert (CHART_DIR / "README.md").read_text() == chart_readme.expected(), (
        "run: python tests/chart/chart_readme.py --write")


def test_the_kustomize_base_is_rendered_from_the_current_chart(helm: None) -> None:
    assert kustomize_base.drifted() == [], "run: python tests/chart/kustomize_base.py --write"


def test_there_are_dev_and_prod_overlays() -> None:
    assert set(OVERLAYS) >= {"dev", "prod"}


def _build(kubectl: Path, overlay: str) -> list[dict]:
    result = subprocess.run([str(kubectl), "kustomize", str(K8S_DIR / "overlays" / overlay)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def builds(kubectl_binary: Path) -> dict[str, list[dict]]:
    return {overlay: _build(kubectl_binary, overlay) for overlay in OVERLAYS}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubectl_kustomize_builds_valid_objects(builds: dict, overlay: str) -> None:
    objects = builds[overlay]
    assert objects
    problems = {}
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        assert obj["metadata"].get("namespace", "platform-tasks") == "platform-tasks", name
        if is_custom_resource(obj):
            errors = crd_errors(obj)
        else:
            errors = [e for v in KUBERNETES_VERSIONS for e in kubernetes_errors(obj, v)]
        if errors:
            problems[name] = errors
    assert problems == {}
    for name, spec in pod_specs(objects):
        assert violations(spec) + platform_violations(spec) == [], name


def test_the_dev_overlay_provides_the_secret_the_base_references(builds: dict) -> None:
    [secret] = [o for o in builds["dev"] if o["kind"] == "Secret"]
    assert secret["metadata"]["name"] == "platform-tasks-auth"
    assert {"redis-password", "sentinel-password", "redis-admin-password"} <= set(
        secret.get("data", {}) | secret.get("stringData", {}))
    assert {o["kind"] for o in builds["dev"]} >= {"HorizontalPodAutoscaler", "StatefulSet"}


def test_the_prod_overlay_scales_with_keda_and_is_monitored(builds: dict) -> None:
    kinds = [o["kind"] for o in builds["prod"]]
    assert "HorizontalPodAutoscaler" not in kinds
    assert kinds.count("ScaledObject") == 4
    assert {"PodMonitor", "ServiceMonitor", "PrometheusRule"} <= set(kinds)
    assert "Secret" not in kinds  # created outside Git
    for obj in builds["prod"]:
        for _, spec in pod_specs([obj]):
            for c in spec["containers"]:
                if "platform-tasks@" in c["image"] or "platform-tasks:" in c["image"]:
                    assert "@sha256:" in c["image"], obj["metadata"]["name"]
