"""What the rendered workloads do: commands, env, probes, shutdown, autoscaling, monitoring.

These read the rendered manifests the way a kubelet would run them, so the names they check
(commands, PLATFORM_TASKS_* variables, probe commands) are the ones the platform's code knows.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_tools import (
    CHART_DIR,
    KEDA_API,
    MONITORING_API,
    TEST_AUTH,
    Case,
    Render,
    containers,
    env_of,
    pod_specs,
    render,
)

from platform_tasks.queues import QUEUE_NAMES, QUEUES
from platform_tasks.settings import Settings

VALUES = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
MINIMAL = {"auth": TEST_AUTH}


def worker(r: Render, queue: str) -> dict[str, Any]:
    return r.named("Deployment", f"platform-tasks-worker-{queue}")


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]["containers"][0]


# -- workers ---------------------------------------------------------------------------------


def test_values_name_exactly_the_queues_of_the_catalog() -> None:
    assert set(VALUES["workers"]) == set(QUEUE_NAMES)


@pytest.mark.parametrize("queue", QUEUE_NAMES)
def test_each_queue_policy_in_values_matches_queues_py(queue: str) -> None:
    policy = QUEUES[queue]  # type: ignore[index]
    assert VALUES["workers"][queue]["policy"] == {
        "pool": policy.pool,
        "timeLimitSeconds": policy.time_limit,
        "softShutdownSeconds": policy.soft_shutdown_seconds,
    }


@pytest.mark.parametrize("queue", QUEUE_NAMES)
def test_one_worker_deployment_per_queue_runs_that_queues_worker(
    renders: dict[str, Render], queue: str
) -> None:
    deployment = worker(renders["minimal"], queue)
    spec = deployment["spec"]["template"]["spec"]
    main = container(deployment)
    policy = QUEUES[queue]  # type: ignore[index]
    assert [main["command"][0], *main["args"]] == [
        "platform-tasks", "worker", "--queue", queue, "--pool", policy.pool,
    ]
    # Warm shutdown lets a running task finish within its hard limit; the soft-shutdown time
    # is the margin on top.
    assert spec["terminationGracePeriodSeconds"] == policy.time_limit + policy.soft_shutdown_seconds
    # Startup and readiness ask Redis for this worker's heartbeat; liveness reads only the
    # local file, so a broker outage restarts no worker.
    probe_command = ["platform-tasks", "health", "--queue", queue]
    for probe in ("startupProbe", "readinessProbe"):
        assert main[probe]["exec"]["command"] == probe_command
    assert main["livenessProbe"]["exec"]["command"] == [*probe_command, "--local"]
    env = env_of(main)
    assert env["PLATFORM_TASKS_METRICS_PORT"]["value"] == "9808"
    assert env["PLATFORM_TASKS_METRICS_DIR"]["value"] == "/tmp/metrics"
    mounts = {m["mountPath"] for m in main["volumeMounts"]}
    assert {"/tmp", "/tmp/metrics"} <= mounts
    assert main["ports"] == [{"name": "metrics", "containerPort": 9808, "protocol": "TCP"}]
    # Autoscaled: the replica count belongs to KEDA/the HPA, not to `helm upgrade`.
    assert "replicas" not in deployment["spec"]
    pdb = renders["minimal"].named("PodDisruptionBudget", f"platform-tasks-worker-{queue}")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]


def test_the_media_worker_gets_the_media_volume_and_the_others_do_not(
    renders: dict[str, Render],
) -> None:
    for queue in QUEUE_NAMES:
        main = container(worker(renders["minimal"], queue))
        mounts = {m["mountPath"] for m in main["volumeMounts"]}
        assert ("/srv/media" in mounts) == (queue == "media")


def test_a_worker_can_be_turned_off_and_its_concurrency_overridden(
    renders: dict[str, Render],
) -> None:
    r = renders["existing-secret"]
    deployments = {d["metadata"]["name"] for d in r.of_kind("Deployment")}
    assert "platform-tasks-worker-media" not in deployments
    default = worker(r, "default")
    assert container(default)["args"][-2:] == ["--concurrency", "4"]
    assert default["spec"]["replicas"] == 1
    assert not r.of_kind("HorizontalPodAutoscaler") or all(
        h["metadata"]["name"] != "platform-tasks-worker-default"
        for h in r.of_kind("HorizontalPodAutoscaler"))


# -- environment -----------------------------------------------------------------------------


def platform_containers(r: Render) -> list[dict[str, Any]]:
    """Containers that run the platform image (everything but Redis and the exporter)."""
    return [c for _, spec in pod_specs(r.objects) for c in containers(spec)
            if c["name"] not in {"redis", "sentinel", "config", "exporter"}]


@pytest.mark.parametrize("case", ["minimal", "external-redis", "tls", "flower-exporter"])
def test_every_platform_variable_the_chart_sets_is_a_setting(
    renders: dict[str, Render], case: str
) -> None:
    fields = {f"PLATFORM_TASKS_{name.upper()}" for name in Settings.model_fields}
    for c in platform_containers(renders[case]):
        names = {n for n in env_of(c) if n.startswith("PLATFORM_TASKS_")}
        assert names - fields == set(), c["name"]


def test_every_settings_key_in_values_maps_to_a_setting() -> None:
    schema_keys = set(__import__("json").loads(
        (CHART_DIR / "values.schema.json").read_text())["properties"]["settings"]["properties"])
    fields = set(Settings.model_fields)
    snake = {key: "".join(f"_{ch.lower()}" if ch.isupper() else ch for ch in key)
             for key in schema_keys}
    assert {key for key, name in snake.items() if name not in fields} == set()
    assert set(VALUES["settings"]) <= schema_keys


def test_the_platform_env_points_at_the_bundled_sentinels_with_secrets_by_reference(
    renders: dict[str, Render],
) -> None:
    env = env_of(container(worker(renders["minimal"], "email")))
    sentinels = env["PLATFORM_TASKS_SENTINELS"]["value"].split(",")
    assert sentinels == [
        f"platform-tasks-redis-{i}.platform-tasks-redis-headless.platform-tasks.svc.cluster.local:26379"
        for i in range(3)
    ]
    assert env["PLATFORM_TASKS_SENTINEL_MASTER"]["value"] == "platform-tasks"
    assert env["PLATFORM_TASKS_REDIS_USERNAME"]["value"] == "platform-tasks"
    for name, key in (("PLATFORM_TASKS_REDIS_PASSWORD", "redis-password"),
                      ("PLATFORM_TASKS_SENTINEL_PASSWORD", "sentinel-password")):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "platform-tasks-auth", "key": key}
    secret = renders["minimal"].named("Secret", "platform-tasks-auth")
    assert set(secret["data"]) == {"redis-password", "sentinel-password", "redis-admin-password"}


def test_external_redis_replaces_the_statefulset(renders: dict[str, Render]) -> None:
    r = renders["external-redis"]
    assert r.of_kind("StatefulSet") == []
    env = env_of(container(worker(r, "default")))
    assert env["PLATFORM_TASKS_SENTINELS"]["value"] == (
        "sentinel-0.redis.example.internal:26379,sentinel-1.redis.example.internal:26379,"
        "sentinel-2.redis.example.internal:26379")
    assert env["PLATFORM_TASKS_SENTINEL_MASTER"]["value"] == "jobs"
    triggers = r.named("ScaledObject", "platform-tasks-worker-default")["spec"]["triggers"]
    assert triggers[0]["metadata"]["addresses"] == env["PLATFORM_TASKS_SENTINELS"]["value"]


def test_tls_turns_on_tls_with_the_mounted_ca_everywhere(renders: dict[str, Render]) -> None:
    r = renders["tls"]
    for c in platform_containers(r):
        env = env_of(c)
        assert env["PLATFORM_TASKS_REDIS_TLS"]["value"] == "true"
        ca = env["PLATFORM_TASKS_REDIS_TLS_CA_FILE"]["value"]
        assert any(ca.startswith(m["mountPath"] + "/") for m in c["volumeMounts"])
    trigger = r.named("ScaledObject", "platform-tasks-worker-email")["spec"]["triggers"][0]
    assert trigger["metadata"]["enableTLS"] == "true"
    auth = r.named("TriggerAuthentication", "platform-tasks-redis")["spec"]["secretTargetRef"]
    assert {"parameter": "ca", "name": "redis-ca", "key": "ca.crt"} in auth
    args = container(r.named("Deployment", "platform-tasks-exporter"))["args"]
    assert "--broker-ssl-option=ssl_cert_reqs=2" in args


@pytest.mark.parametrize(("case", "events"), [("minimal", "false"), ("flower-exporter", "true")])
def test_workers_send_task_events_only_for_flower_or_the_exporter(
    renders: dict[str, Render], case: str, events: str
) -> None:
    for queue in QUEUE_NAMES:
        env = env_of(container(worker(renders[case], queue)))
        assert env["PLATFORM_TASKS_TASK_EVENTS"]["value"] == events


def test_settings_become_platform_variables_and_empty_ones_are_left_out(helm: None) -> None:
    values = copy.deepcopy(MINIMAL) | {"settings": {"smtpHost": "smtp.internal",
                                                    "smtpStarttls": True, "reportRecipient": "",
                                                    "maxImagePixels": 40000000}}
    env = env_of(container(worker(render(values), "email")))
    assert env["PLATFORM_TASKS_SMTP_HOST"]["value"] == "smtp.internal"
    assert env["PLATFORM_TASKS_SMTP_STARTTLS"]["value"] == "true"
    assert env["PLATFORM_TASKS_MAX_IMAGE_PIXELS"]["value"] == "40000000"
    assert "PLATFORM_TASKS_REPORT_RECIPIENT" not in env


# -- beat, monitor, exporter, flower ---------------------------------------------------------


def test_beat_is_a_single_recreated_replica(renders: dict[str, Render]) -> None:
    beat = renders["minimal"].named("Deployment", "platform-tasks-beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    assert container(beat)["args"] == ["beat"]


def test_the_monitor_is_a_singleton_behind_a_metrics_service(renders: dict[str, Render]) -> None:
    r = renders["minimal"]
    monitor = r.named("Deployment", "platform-tasks-monitor")
    assert monitor["spec"]["replicas"] == 1
    assert monitor["spec"]["strategy"]["type"] == "Recreate"
    main = container(monitor)
    assert main["args"] == ["monitor"]
    assert env_of(main)["PLATFORM_TASKS_MONITOR_PORT"]["value"] == "9809"
    service = r.named("Service", "platform-tasks-monitor")
    assert service["spec"]["selector"] == monitor["spec"]["selector"]["matchLabels"]


def test_the_exporter_watches_every_queue_through_the_sentinels(renders: dict[str, Render]) -> None:
    exporter = renders["flower-exporter"].named("Deployment", "platform-tasks-exporter")
    main = container(exporter)
    assert main["image"] == "danihodovic/celery-exporter:0.11.2"
    args = main["args"]
    assert "--queues=default,email,media,payments" in args
    assert "--broker-transport-option=master_name=platform-tasks" in args
    assert '--broker-transport-option=sentinel_kwargs={"password":"$(SENTINEL_PASSWORD)"}' in args
    url = next(a for a in args if a.startswith("--broker-url="))
    alternatives = url.removeprefix("--broker-url=").split(";")
    assert len(alternatives) == 3
    assert all(a.startswith("sentinel://platform-tasks:$(REDIS_PASSWORD)@platform-tasks-redis-")
               and a.endswith(":26379/0") for a in alternatives)
    # $(VAR) in args is expanded by the kubelet from the container's own env.
    assert {"REDIS_PASSWORD", "SENTINEL_PASSWORD"} <= set(env_of(main))


def test_the_exporter_lists_a_queue_whose_worker_is_disabled(
    helm: None, cases: dict[str, Case]
) -> None:
    # celery-exporter reports a queue no live worker consumes only when -Q names it: the
    # queue of a disabled worker is exactly the one whose backlog nobody else would show.
    values = copy.deepcopy(cases["flower-exporter"].values)
    values["workers"] = {"media": {"enabled": False}}
    r = render(values)
    assert "platform-tasks-worker-media" not in {d["metadata"]["name"]
                                                for d in r.of_kind("Deployment")}
    args = container(r.named("Deployment", "platform-tasks-exporter"))["args"]
    assert f"--queues={','.join(sorted(QUEUE_NAMES))}" in args


def test_flower_runs_celerys_cli_behind_basic_auth(renders: dict[str, Render]) -> None:
    flower = container(renders["flower-exporter"].named("Deployment", "platform-tasks-flower"))
    assert [flower["command"][0], *flower["args"][:3]] == [
        "celery", "--app", "platform_tasks.celery_app", "flower"]
    auth = env_of(flower)["FLOWER_BASIC_AUTH"]["valueFrom"]["secretKeyRef"]
    assert auth["key"] == "flower-basic-auth"


# -- autoscaling -----------------------------------------------------------------------------


def test_without_keda_each_autoscaled_queue_gets_a_cpu_hpa_of_at_least_one(
    renders: dict[str, Render],
) -> None:
    r = renders["no-keda"]
    assert r.of_kind("ScaledObject") == []
    hpas = {h["metadata"]["name"]: h for h in r.of_kind("HorizontalPodAutoscaler")}
    assert set(hpas) == {f"platform-tasks-worker-{q}" for q in ("email", "payments", "default")}
    assert all(h["spec"]["minReplicas"] == 1 for h in hpas.values())
    assert worker(r, "media")["spec"]["replicas"] == 2
    assert "KEDA is not installed" in r.notes


def test_with_keda_each_queue_scales_on_its_list_through_the_sentinels(
    renders: dict[str, Render],
) -> None:
    r = renders["keda"]
    assert r.of_kind("HorizontalPodAutoscaler") == []
    for queue in QUEUE_NAMES:
        scaled = r.named("ScaledObject", f"platform-tasks-worker-{queue}")["spec"]
        assert scaled["scaleTargetRef"]["name"] == f"platform-tasks-worker-{queue}"
        [trigger] = scaled["triggers"]
        assert trigger["type"] == "redis-sentinel"
        assert trigger["metadata"]["listName"] == queue
        assert trigger["metadata"]["sentinelMaster"] == "platform-tasks"
        assert trigger["authenticationRef"] == {"name": "platform-tasks-redis"}
        assert scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    auth = r.named("TriggerAuthentication", "platform-tasks-redis")["spec"]["secretTargetRef"]
    assert {(a["parameter"], a["key"]) for a in auth} == {
        ("password", "redis-password"), ("sentinelPassword", "sentinel-password")}


def test_priorities_add_one_trigger_per_sub_list_summed_by_a_formula(
    renders: dict[str, Render],
) -> None:
    scaled = renders["keda-priorities"].named("ScaledObject", "platform-tasks-worker-payments")
    triggers = scaled["spec"]["triggers"]
    assert [t["name"] for t in triggers] == ["p0", "p3", "p6", "p9"]
    assert [t["metadata"]["listName"] for t in triggers] == [
        "payments", "payments\x06\x163", "payments\x06\x166", "payments\x06\x169"]
    modifiers = scaled["spec"]["advanced"]["scalingModifiers"]
    assert modifiers["formula"] == "p0 + p3 + p6 + p9"
    assert modifiers["metricType"] == "AverageValue"
    # The other queues keep one unnamed trigger.
    email = renders["keda-priorities"].named("ScaledObject", "platform-tasks-worker-email")
    assert len(email["spec"]["triggers"]) == 1


def test_scale_to_zero_lets_keda_remove_every_worker(renders: dict[str, Render]) -> None:
    for queue in QUEUE_NAMES:
        scaled = renders["scale-to-zero"].named("ScaledObject", f"platform-tasks-worker-{queue}")
        assert scaled["spec"]["minReplicaCount"] == 0
        assert scaled["spec"]["cooldownPeriod"] == 600


# -- monitoring ------------------------------------------------------------------------------


def test_monitoring_objects_need_both_the_value_and_the_crds(
    renders: dict[str, Render], cases: dict, helm: None
) -> None:
    with_crds = renders["monitoring"]
    names = {(o["kind"], o["metadata"]["name"]) for o in with_crds.objects}
    assert {("PodMonitor", "platform-tasks-workers"),
            ("ServiceMonitor", "platform-tasks-monitor"),
            ("ServiceMonitor", "platform-tasks-exporter")} <= names
    rules_files = sorted((CHART_DIR / "rules").glob("*.yaml"))
    if rules_files:
        rule = with_crds.named("PrometheusRule", "platform-tasks")
        expected = [g["name"] for f in rules_files for g in yaml.safe_load(f.read_text())["groups"]]
        assert [g["name"] for g in rule["spec"]["groups"]] == expected
    # Same values, no operator: nothing that would fail to apply, and a note saying so.
    without = render(cases["monitoring"].values, api_versions=(KEDA_API,))
    assert not [o for o in without.objects if o["apiVersion"] == MONITORING_API]
    assert "monitoring.coreos.com/v1" in without.notes


@pytest.mark.parametrize(
    ("disabled", "absent_groups"),
    [
        ("beat", {"platform-tasks.beat"}),
        ("monitor", {"platform-tasks.queues", "platform-tasks.beat", "platform-tasks.broker",
                     "platform-tasks.monitoring"}),
    ],
)
def test_rules_about_a_component_not_installed_are_left_out(
    cases: dict, disabled: str, absent_groups: set[str], helm: None
) -> None:
    values = {**cases["monitoring"].values, disabled: {"enabled": False}}
    rendered = render(values, api_versions=cases["monitoring"].api_versions)
    rule = rendered.named("PrometheusRule", "platform-tasks")
    groups = {group["name"] for group in rule["spec"]["groups"]}
    assert not groups & absent_groups
    assert {"platform-tasks.tasks", "platform-tasks.workers"} <= groups


def test_each_dashboard_becomes_a_configmap_for_the_grafana_sidecar(
    renders: dict[str, Render],
) -> None:
    dashboards = sorted(p.name for p in (CHART_DIR / "dashboards").glob("*.json"))
    maps = [c for c in renders["monitoring"].of_kind("ConfigMap")
            if c["metadata"]["labels"].get("grafana_dashboard") == "1"]
    assert sorted(k for c in maps for k in c["data"]) == dashboards
    assert all(c["metadata"]["annotations"] == {"grafana_folder": "platform-tasks"} for c in maps)
    assert not [c for c in renders["minimal"].of_kind("ConfigMap")
                if "grafana_dashboard" in c["metadata"]["labels"]]


def test_the_worker_podmonitor_selects_the_worker_pods(renders: dict[str, Render]) -> None:
    r = renders["monitoring"]
    selector = r.named("PodMonitor", "platform-tasks-workers")["spec"]["selector"]["matchLabels"]
    for queue in QUEUE_NAMES:
        labels = worker(r, queue)["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items()
    assert r.named("PodMonitor", "platform-tasks-workers")["metadata"]["labels"]["release"] == (
        "kube-prometheus-stack")


# -- helm test -------------------------------------------------------------------------------


def test_helm_test_pings_every_queue_and_waits(renders: dict[str, Render]) -> None:
    [hook] = renders["minimal"].hooks
    assert hook["kind"] == "Pod"
    assert hook["metadata"]["annotations"]["helm.sh/hook"] == "test"
    pings = {c["name"]: c for c in hook["spec"]["containers"]}
    assert set(pings) == {f"ping-{q}" for q in QUEUE_NAMES}
    for queue in QUEUE_NAMES:
        c = pings[f"ping-{queue}"]
        assert [c["command"][0], *c["args"]] == [
            "platform-tasks", "enqueue", "platform_tasks.default.add_numbers", "--queue", queue,
            "--args", "[1, 2]", "--wait", "180"]
    assert hook["spec"]["restartPolicy"] == "Never"


# -- selectors -------------------------------------------------------------------------------


def _selectors(r: Render) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for obj in r.installed:
        key = f"{obj['kind']}/{obj['metadata']['name']}"
        spec = obj.get("spec", {})
        if obj["kind"] in {"Deployment", "StatefulSet", "PodDisruptionBudget", "PodMonitor",
                           "ServiceMonitor"} or (obj["kind"] == "Service" and "selector" in spec):
            found[key] = spec["selector"]
    return found


def test_selectors_hold_no_version_or_chart_label(renders: dict[str, Render]) -> None:
    for case, r in renders.items():
        for key, selector in _selectors(r).items():
            labels = selector.get("matchLabels", selector)
            assert not {"app.kubernetes.io/version", "helm.sh/chart"} & set(labels), (case, key)


def test_selectors_do_not_change_when_the_chart_or_image_version_does(
    tmp_path: Path, helm: None
) -> None:
    before = render(MINIMAL)
    bumped = tmp_path / "platform-tasks"
    shutil.copytree(CHART_DIR, bumped)
    chart_yaml = bumped / "Chart.yaml"
    chart_yaml.write_text(chart_yaml.read_text().replace("version: 0.1.0", "version: 9.9.9")
                          .replace('appVersion: "0.1.0"', 'appVersion: "9.9.9"'))
    after = render(MINIMAL | {"image": {"tag": "9.9.9"}}, chart_dir=bumped)
    assert after.named("Deployment", "platform-tasks-beat")["metadata"]["labels"][
        "helm.sh/chart"] == "platform-tasks-9.9.9"
    assert _selectors(after) == _selectors(before)


# -- network policies ------------------------------------------------------------------------


def test_network_policies_deny_by_default_and_open_only_the_platforms_paths(
    renders: dict[str, Render],
) -> None:
    r = renders["minimal"]
    deny = r.named("NetworkPolicy", "platform-tasks-default-deny")["spec"]
    assert deny["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in deny
    assert "egress" not in deny
    clients = r.named("NetworkPolicy", "platform-tasks-redis-clients")["spec"]
    assert clients["podSelector"]["matchLabels"]["platform-tasks.io/redis-client"] == "true"
    ports = {p["port"] for rule in clients["egress"] for p in rule["ports"]}
    assert ports == {53, 6379, 26379}
    # Every pod that talks to Redis carries the label the policy opens the way for.
    for name, _spec in pod_specs(r.objects):
        if name.startswith(("Deployment/", "Pod/")):
            obj = next(o for o in r.objects if f"{o['kind']}/{o['metadata']['name']}" == name)
            labels = (obj["spec"]["template"]["metadata"]["labels"] if obj["kind"] != "Pod"
                      else obj["metadata"]["labels"])
            assert labels["platform-tasks.io/redis-client"] == "true", name
    redis = r.named("NetworkPolicy", "platform-tasks-redis")["spec"]
    assert {p["port"] for p in redis["ingress"][0]["ports"]} == {"redis", "sentinel"}
    metrics = r.named("NetworkPolicy", "platform-tasks-metrics")["spec"]
    assert metrics["ingress"][0]["ports"] == [{"port": "metrics", "protocol": "TCP"}]
