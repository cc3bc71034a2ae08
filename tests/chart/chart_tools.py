"""Renders the chart with the real Helm engine and validates what comes out.

Helm is PyPI ``helm-python-sdk`` (Helm v4's Go SDK behind a C ABI, no helm binary). Kubernetes'
own kinds are checked with the official schemas ``kubernetes-validate`` ships; KEDA and
Prometheus-operator kinds against the CRDs in ``../shared/crds``.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "deploy" / "helm" / "platform-tasks"
CI_DIR = CHART_DIR / "ci"
K8S_DIR = REPO_ROOT / "deploy" / "k8s"
CRD_DIR = REPO_ROOT.parent / "shared" / "crds"

RELEASE = "platform-tasks"
NAMESPACE = "platform-tasks"
KEDA_API = "keda.sh/v1alpha1"
MONITORING_API = "monitoring.coreos.com/v1"
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")

#: Passwords for renders that need the chart to create its Secret (never real ones).
TEST_AUTH = {"redisPassword": "app-pass", "sentinelPassword": "sentinel-pass",
             "adminPassword": "admin-pass"}

Manifest = dict[str, Any]


class HelmUnavailableError(RuntimeError):
    """helm-python-sdk (or its native library) cannot be loaded."""


@functools.cache
def _helm() -> Any:
    try:
        import helm_python
    except Exception as error:  # ImportError, or the native library failing to load
        raise HelmUnavailableError(f"helm-python-sdk is not usable: {error}") from error
    return helm_python


@functools.cache
def _chart(path: Path = CHART_DIR) -> Any:
    return _helm().Chart.load(str(path))


@dataclass(frozen=True)
class Render:
    """The rendered templates of one release, split into objects."""

    files: Mapping[str, str]
    api_versions: tuple[str, ...] = ()
    objects: list[Manifest] = field(default_factory=list)

    @property
    def notes(self) -> str:
        return next((text for name, text in self.files.items() if name.endswith("NOTES.txt")), "")

    def of_kind(self, kind: str) -> list[Manifest]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def named(self, kind: str, name: str) -> Manifest:
        for obj in self.of_kind(kind):
            if obj["metadata"]["name"] == name:
                return obj
        have = [o["metadata"]["name"] for o in self.of_kind(kind)]
        raise KeyError(f"no {kind} {name}; have {have}")

    @property
    def hooks(self) -> list[Manifest]:
        return [o for o in self.objects if "helm.sh/hook" in o["metadata"].get("annotations", {})]

    @property
    def installed(self) -> list[Manifest]:
        """What `helm install` creates: everything but hooks."""
        return [o for o in self.objects if o not in self.hooks]


def render(
    values: Mapping[str, Any] | None = None,
    *,
    api_versions: tuple[str, ...] | list[str] = (),
    kube_version: str | None = None,
    chart_dir: Path = CHART_DIR,
) -> Render:
    """Render the chart as ``helm template`` would, with ``--api-versions`` and
    ``--kube-version`` (which helm-python-sdk's ``Chart.render`` does not expose yet, so the
    options go to its native call directly). Raises HelmValuesError/HelmRenderError."""
    helm = _helm()
    from helm_python import _native

    options: dict[str, Any] = {"name": RELEASE, "namespace": NAMESPACE, "is_install": True}
    if api_versions:
        options["api_versions"] = list(api_versions)
    if kube_version:
        options["kube_version"] = kube_version
    chart = _chart(chart_dir) if chart_dir == CHART_DIR else helm.Chart.load(str(chart_dir))
    raw = _native.call_string(
        "helm_render", chart._raw(), json.dumps(dict(values or {})), json.dumps(options)
    )
    files: dict[str, str] = json.loads(raw)
    objects = [
        doc
        for name in sorted(files)
        if not name.endswith(".txt")
        for doc in yaml.safe_load_all(files[name])
        if doc
    ]
    return Render(files=files, api_versions=tuple(api_versions), objects=objects)


def lint(values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """`helm lint --strict` findings of warning or error severity."""
    report = _helm().lint(str(CHART_DIR), dict(values), strict=True)
    messages: list[dict[str, Any]] = [m for m in report["messages"] if m["severity"] >= 2]
    messages += [{"severity": 3, "path": "", "error": e} for e in report.get("errors") or []]
    return messages


# -- ci/*-values.yaml ------------------------------------------------------------------------

_API_VERSIONS_LINE = re.compile(r"^#\s*api-versions:\s*(.*)$", re.MULTILINE)


@dataclass(frozen=True)
class Case:
    """One ci/*-values.yaml: its values and the API versions its header comment declares
    (``# api-versions: keda.sh/v1alpha1 …``, as ``helm template --api-versions`` would)."""

    name: str
    values: dict[str, Any]
    api_versions: tuple[str, ...]

    def render(self, **kwargs: Any) -> Render:
        return render(self.values, api_versions=self.api_versions, **kwargs)


def ci_cases() -> list[Case]:
    cases = []
    for path in sorted(CI_DIR.glob("*-values.yaml")):
        text = path.read_text()
        match = _API_VERSIONS_LINE.search(text)
        apis = tuple(match.group(1).split()) if match else ()
        cases.append(Case(path.name.removesuffix("-values.yaml"), yaml.safe_load(text) or {}, apis))
    return cases


# -- schemas ---------------------------------------------------------------------------------


def pod_specs(objects: list[Manifest]) -> Iterator[tuple[str, Manifest]]:
    """Every pod spec in ``objects``, named ``Kind/name``."""
    for obj in objects:
        kind, name = obj["kind"], obj["metadata"]["name"]
        if kind == "Pod":
            yield f"{kind}/{name}", obj["spec"]
        elif kind in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}:
            yield f"{kind}/{name}", obj["spec"]["template"]["spec"]
        elif kind == "CronJob":
            yield f"{kind}/{name}", obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def containers(spec: Manifest) -> list[Manifest]:
    return [*spec.get("initContainers", []), *spec.get("containers", []),
            *spec.get("ephemeralContainers", [])]


@functools.cache
def _kubernetes_schema_dir(version: str) -> Path:
    import importlib.resources

    import kubernetes_validate

    root = Path(str(importlib.resources.files(kubernetes_validate))) / "kubernetes-json-schema"
    wanted = version if version.count(".") == 2 else f"{version}.0"
    path = root / f"v{wanted}-local-strict"
    if not path.is_dir():
        raise FileNotFoundError(f"kubernetes-validate has no strict schemas for {version}")
    return path


@functools.cache
def _kubernetes_validator(version: str, kind: str, api_version: str) -> Any:
    import jsonschema
    from referencing import Registry, Resource

    directory = _kubernetes_schema_dir(version)
    # kubernetes-validate names files <kind>-<group without domain>-<version>.json.
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema_file = directory / f"{kind.lower()}-{group}.json"
    if not schema_file.is_file():
        raise LookupError(f"no Kubernetes {version} schema for {kind} {api_version}")
    schema = json.loads(schema_file.read_text())
    definitions = _definitions(directory)
    registry = Resource.from_contents(schema) @ Registry()
    registry = definitions @ registry
    return jsonschema.Draft202012Validator(schema, registry=registry)


@functools.cache
def _definitions(directory: Path) -> Any:
    from referencing import Resource

    return Resource.from_contents(json.loads((directory / "_definitions.json").read_text()))


def kubernetes_errors(obj: Manifest, version: str) -> list[str]:
    """``kubernetes-validate --strict`` for one object: schema errors, as readable lines."""
    validator = _kubernetes_validator(version, obj["kind"], obj["apiVersion"])
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in validator.iter_errors(obj)
    ]


@functools.cache
def _crd_validators() -> dict[tuple[str, str], Any]:
    import jsonschema

    validators = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = version["schema"]["openAPIV3Schema"]
            validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(schema)
    return validators


def is_custom_resource(obj: Manifest) -> bool:
    return obj["apiVersion"].split("/")[0] in {"keda.sh", "monitoring.coreos.com"}


def crd_errors(obj: Manifest) -> list[str]:
    """Validate a KEDA or Prometheus-operator object against its CRD's OpenAPI schema.

    OpenAPI v3 schemas allow unknown fields unless they list properties; the API server
    prunes them silently, so unknown fields are reported here as errors too."""
    validators = _crd_validators()
    key = (obj["apiVersion"], obj["kind"])
    if key not in validators:
        raise LookupError(f"no CRD schema in {CRD_DIR} for {key}")
    validator = validators[key]
    errors = [
        f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in validator.iter_errors(obj)
    ]
    errors += _unknown_fields(obj, validator.schema, "")
    return errors


def _unknown_fields(value: Any, schema: Mapping[str, Any], path: str) -> list[str]:
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if isinstance(value, dict):
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        found: list[str] = []
        for key, child in value.items():
            if properties is not None and key in properties:
                found += _unknown_fields(child, properties[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                found += _unknown_fields(child, extra, f"{path}.{key}")
            elif properties is not None and path + "." + key not in {".apiVersion", ".kind"}:
                if path == "" and key in {"apiVersion", "kind", "metadata"}:
                    continue
                found.append(f"{path}.{key}: unknown field (the API server would drop it)")
        return found
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [e for i, item in enumerate(value)
                for e in _unknown_fields(item, schema["items"], f"{path}[{i}]")]
    return []


def env_of(container: Manifest) -> dict[str, Manifest]:
    """A container's env entries by name."""
    return {entry["name"]: entry for entry in container.get("env", [])}
