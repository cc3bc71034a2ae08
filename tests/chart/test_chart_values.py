"""Bad values fail at `helm install` with the schema's (or the chart's) message, before any
object is created; good values pass."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from chart_tools import TEST_AUTH, render

MINIMAL: dict[str, Any] = {"auth": dict(TEST_AUTH)}


def with_(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    values = copy.deepcopy(base)
    for dotted, value in changes.items():
        node = values
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return values


BAD_VALUES = {
    "missing password": ({}, "at '/auth/redisPassword': minLength: got 0, want 1"),
    "missing sentinel and admin passwords": (
        {"auth": {"redisPassword": "app-pass"}},
        "at '/auth/sentinelPassword': minLength: got 0, want 1"),
    "negative replicas": (
        with_(MINIMAL, workers__email__replicas=-1),
        "at '/workers/email/replicas': minimum: got -1, want 0"),
    "negative max replicas": (
        with_(MINIMAL, workerDefaults__autoscaling__maxReplicas=0),
        "at '/workerDefaults/autoscaling/maxReplicas': minimum: got 0, want 1"),
    "unknown queue": (
        with_(MINIMAL, workers__video={"replicas": 1}),
        "invalid propertyName 'video'"),
    "unknown setting": (
        with_(MINIMAL, settings__smtpHots="smtp"),
        "at '/settings': additional properties 'smtpHots' not allowed"),
    "password that breaks the exporter's URL": (
        with_(MINIMAL, auth__redisPassword="p@ss/word"),
        "at '/auth/redisPassword': 'p@ss/word' does not match pattern"),
    "flower without basic auth": (
        with_(MINIMAL, flower__enabled=True),
        "at '/auth/flowerBasicAuth': minLength: got 0, want 3"),
    "bad pool": (
        with_(MINIMAL, workers__media__policy={"pool": "gevent", "timeLimitSeconds": 1,
                                                "softShutdownSeconds": 1}),
        "at '/workers/media/policy/pool': value must be one of 'prefork', 'threads', 'solo'"),
    "app user named default": (
        with_(MINIMAL, redis__appUsername="default"),
        "at '/redis/appUsername': 'not' failed"),
    "quorum above the Sentinels": (
        with_(MINIMAL, redis__quorum=4),
        "redis.quorum (4) cannot exceed redis.replicas (3)"),
    "min-replicas-to-write that blocks every write": (
        with_(MINIMAL, redis__replicas=1, redis__quorum=1),
        "redis.minReplicasToWrite (1) must be below redis.replicas (1)"),
    "external Redis without Sentinels": (
        with_(MINIMAL, redis__enabled=False),
        "set redis.external.sentinels"),
    "TLS with the bundled Redis": (
        with_(MINIMAL, tls__enabled=True),
        "tls.enabled needs redis.external"),
}


@pytest.mark.parametrize("name", list(BAD_VALUES))
def test_bad_values_fail_with_a_message_naming_the_value(name: str, helm: None) -> None:
    from helm_python import HelmRenderError, HelmValuesError

    values, message = BAD_VALUES[name]
    with pytest.raises((HelmValuesError, HelmRenderError)) as failure:
        render(values)
    assert message in str(failure.value)


def test_an_existing_secret_replaces_every_password(helm: None) -> None:
    r = render({"auth": {"existingSecret": "made-elsewhere"}})
    assert r.of_kind("Secret") == []
    refs = {
        entry["valueFrom"]["secretKeyRef"]["name"]
        for obj in r.objects if obj["kind"] == "Deployment"
        for c in obj["spec"]["template"]["spec"]["containers"]
        for entry in c.get("env", []) if "secretKeyRef" in entry.get("valueFrom", {})
    }
    assert refs == {"made-elsewhere"}


def test_a_single_node_redis_for_development_renders(helm: None) -> None:
    r = render(with_(MINIMAL, redis__replicas=1, redis__quorum=1, redis__minReplicasToWrite=0))
    assert r.named("StatefulSet", "platform-tasks-redis")["spec"]["replicas"] == 1
