"""The chart, rendered by the real Helm engine for every ci/*-values.yaml, is valid Kubernetes.

Given each ci values file (and the API versions its header declares), when Helm renders it,
then every object passes the official schemas of Kubernetes 1.29 and 1.37 (strict), every KEDA
and Prometheus-operator object passes its CRD's schema, every pod meets Pod Security
"restricted", and `helm lint --strict` finds nothing.
"""

from __future__ import annotations

import pytest
from chart_tools import (
    KUBERNETES_VERSIONS,
    Render,
    ci_cases,
    crd_errors,
    is_custom_resource,
    kubernetes_errors,
    lint,
    pod_specs,
)
from pod_security import platform_violations, violations

CASE_NAMES = [case.name for case in ci_cases()]


def test_there_is_a_ci_values_file_for_each_scenario_the_chart_supports() -> None:
    assert {"minimal", "external-redis", "no-keda", "tls", "scale-to-zero",
            "flower-exporter", "monitoring"} <= set(CASE_NAMES)


@pytest.mark.parametrize("case", CASE_NAMES)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_kubernetes_object_is_valid_for_the_supported_versions(
    renders: dict[str, Render], case: str, version: str
) -> None:
    problems = {
        f"{obj['kind']}/{obj['metadata']['name']}": errors
        for obj in renders[case].objects
        if not is_custom_resource(obj)
        for errors in [kubernetes_errors(obj, version)]
        if errors
    }
    assert problems == {}


@pytest.mark.parametrize("case", CASE_NAMES)
def test_keda_and_prometheus_objects_match_their_crd_schemas(
    renders: dict[str, Render], case: str
) -> None:
    problems = {
        f"{obj['kind']}/{obj['metadata']['name']}": errors
        for obj in renders[case].objects
        if is_custom_resource(obj)
        for errors in [crd_errors(obj)]
        if errors
    }
    assert problems == {}


@pytest.mark.parametrize("case", CASE_NAMES)
def test_every_pod_meets_pod_security_restricted(renders: dict[str, Render], case: str) -> None:
    specs = list(pod_specs(renders[case].objects))
    assert specs, "no pods rendered"
    problems = {name: violations(spec) + platform_violations(spec)
                for name, spec in specs}
    assert {name: found for name, found in problems.items() if found} == {}


@pytest.mark.parametrize("case", CASE_NAMES)
def test_helm_lint_strict_is_clean(cases: dict, case: str, helm: None) -> None:
    assert lint(cases[case].values) == []


@pytest.mark.parametrize("case", CASE_NAMES)
def test_objects_are_unique_and_named_after_the_release(
    renders: dict[str, Render], case: str
) -> None:
    keys = [(o["kind"], o["metadata"]["name"]) for o in renders[case].objects]
    assert len(keys) == len(set(keys))
    assert all(name.startswith("platform-tasks") for _, name in keys)
    assert all(len(name) <= 63 for _, name in keys)


def test_the_pod_security_checker_catches_what_it_should() -> None:
    # A container that breaks the profile in the usual ways is reported on each count.
    bad = {"hostNetwork": True, "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
           "containers": [{"name": "c", "securityContext": {"privileged": True,
                           "capabilities": {"add": ["SYS_ADMIN"]}},
                           "ports": [{"containerPort": 80, "hostPort": 80}]}]}
    found = " ".join(violations(bad))
    for control in ("hostNetwork", "hostPath", "privileged", "allowPrivilegeEscalation",
                    "runAsNonRoot", "seccompProfile", "drop lacks ALL", "SYS_ADMIN", "hostPort"):
        assert control in found
    assert platform_violations(bad)
