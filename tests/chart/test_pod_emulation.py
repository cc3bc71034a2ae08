"""Pod emulation: the rendered chart's pods, run as local processes, serve every queue.

Given the chart rendered from ci/minimal-values.yaml (its ports moved to free ones), every
pod runs as the manifests say (see pod_emulation.py): the Redis StatefulSet's pods one at a
time, each through its init container, with the configs it writes; then every worker, beat
and the monitor with their rendered commands and env (Secrets resolved). When their probes
pass and the `helm test` pod runs, every queue's ping comes back, and the monitor and the
workers serve their metrics. So the env names, commands, configs, ACL rules and probes in the
chart are ones the platform really works with.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from chart_tools import REPO_ROOT, Render, ci_cases, env_of, render
from pod_emulation import (
    Cluster,
    Image,
    Network,
    PodPlan,
    RunningPod,
    dockerfile_stage,
    loopback_subnet,
    plan_pods,
    ports_free_on,
)
from prometheus_client.parser import text_string_to_metric_families

from platform_tasks.queues import QUEUE_NAMES, policy_for

RELEASE = "platform-tasks"
PLATFORM_IMAGE = "registry.example.com/platform-tasks"
STARTUP_SECONDS = 60.0


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@dataclass
class Emulated:
    render: Render
    cluster: Cluster
    redis_pods: list[RunningPod]
    platform_pods: list[RunningPod]
    hooks: list[PodPlan]
    ports: dict[str, int]
    values: dict[str, Any]

    def pod(self, name: str) -> RunningPod:
        return self.cluster.pod(name)

    @property
    def master_name(self) -> str:
        """What the Sentinels call the master (the Redis pods' MASTER_NAME)."""
        return str(env_of(self.redis_pods[0].plan.container("sentinel"))["MASTER_NAME"]["value"])

    def worker(self, queue: str) -> RunningPod:
        return self.pod(f"{RELEASE}-worker-{queue}-emulated")

    @property
    def monitor(self) -> RunningPod:
        return self.pod(f"{RELEASE}-monitor-emulated")

    def admin_client(self, pod: RunningPod, *, sentinel: bool = False) -> redis.Redis:
        auth = self.values["auth"]
        return redis.Redis(
            host=pod.ip,
            port=self.ports["sentinel" if sentinel else "redis"],
            password=auth["sentinelPassword"] if sentinel else auth["adminPassword"],
            decode_responses=True, socket_timeout=3,
        )


def _missing(config: pytest.Config, reason: str) -> None:
    """tests/conftest.py's missing_dependency(): skips on a laptop, fails when CI=true."""
    root: Any = config.pluginmanager.get_plugin(str(REPO_ROOT / "tests" / "conftest.py"))
    root.missing_dependency(reason)


def _redis_cli(server: Path, config: pytest.Config) -> Path:
    for name in ("redis-cli", "valkey-cli"):
        found = shutil.which(name, path=str(server.parent)) or shutil.which(name)
        if found:
            return Path(found)
    _missing(config, f"no redis-cli beside {server} nor on PATH: the Redis pods' scripts "
             "run it (apt-get install redis-tools)")
    raise AssertionError("unreachable")


def _images(redis_server: Path, config: pytest.Config) -> dict[str, Image]:
    env, workdir = dockerfile_stage(REPO_ROOT / "Dockerfile", "runtime",
                                    "/usr/local/bin:/usr/bin:/bin")
    platform = Image(
        env=env,
        workdir=workdir,
        # The image's venv is this checkout's (the image installs the same project).
        paths={"/opt/venv": Path(sys.prefix)},
        listen_env=("PLATFORM_TASKS_METRICS_HOST",),
    )
    redis_image = Image(
        programs={"redis-server": redis_server.absolute()},
        redis_cli=_redis_cli(redis_server, config),
        workdir="/data",  # the official image's WORKDIR
    )
    return {PLATFORM_IMAGE: platform, "redis": redis_image}


@pytest.fixture(scope="module")
def emulated(helm: None, redis_server_binary: Path, pytestconfig: pytest.Config,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulated]:
    for tool in ("sh", "sha256sum", "timeout"):
        if shutil.which(tool) is None:
            _missing(pytestconfig, f"no {tool} on PATH: the Redis pods' scripts need it")
    images = _images(redis_server_binary, pytestconfig)
    minimal = next(case for case in ci_cases() if case.name == "minimal")
    network = Network(loopback_subnet())
    # The chart's ports, moved to ones free on every pod address this run uses: another run,
    # or a server on this host listening on every address, could hold the default ones.
    addresses = [f"{network.subnet}.{n}" for n in range(10, 30)]
    redis_port, sentinel_port, worker_port, monitor_port = ports_free_on(addresses, 4)
    values = _merge(minimal.values, {
        "redis": {"port": redis_port, "sentinelPort": sentinel_port},
        "metrics": {"workerPort": worker_port},
        "monitor": {"port": monitor_port},
        "settings": {"monitorIntervalSeconds": 1},
        "helmTest": {"waitSeconds": 60},
    })
    rendered = render(values, api_versions=minimal.api_versions)
    root = tmp_path_factory.mktemp("pods")
    cluster = Cluster(rendered, root, images, network)
    plans = cluster.plan(plan_pods(rendered))
    hooks = cluster.plan(plan_pods(rendered, hooks=True))
    ports = {"redis": redis_port, "sentinel": sentinel_port, "worker": worker_port,
             "monitor": monitor_port}
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        # OrderedReady: each Redis pod starts when the one before it is ready.
        redis_pods = []
        for plan in plans:
            if plan.owner == f"StatefulSet/{RELEASE}-redis":
                pod = cluster.start(plan)
                pod.wait_ready(deadline)
                redis_pods.append(pod)
        platform_pods = [cluster.start(plan) for plan in plans
                         if plan.owner.startswith("Deployment/")]
        for pod in platform_pods:
            pod.wait_ready(deadline)
        yield Emulated(rendered, cluster, redis_pods, platform_pods, hooks, ports, values)
    finally:
        cluster.stop()


def _metrics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback http
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_the_deployments_are_the_ones_emulated(emulated: Emulated) -> None:
    names = {pod.plan.owner for pod in emulated.platform_pods}
    assert names == {f"Deployment/{d['metadata']['name']}"
                     for d in emulated.render.of_kind("Deployment")}
    assert names >= {f"Deployment/{RELEASE}-worker-{q}" for q in QUEUE_NAMES} | {
        f"Deployment/{RELEASE}-beat", f"Deployment/{RELEASE}-monitor"}


def test_the_redis_pods_form_one_sentinel_topology_with_pod_zero_as_master(
    emulated: Emulated,
) -> None:
    master, *replicas = emulated.redis_pods
    deadline = time.monotonic() + 20
    while True:
        views = []
        for pod in emulated.redis_pods:
            with emulated.admin_client(pod, sentinel=True) as sentinel:
                views.append(sentinel.sentinel_master(emulated.master_name))
        settled = all(
            v["ip"] == master.ip and int(v["port"]) == emulated.ports["redis"]
            and int(v["num-slaves"]) == len(replicas) and int(v["num-other-sentinels"]) == 2
            for v in views
        )
        if settled or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert settled, views
    with emulated.admin_client(master) as client:
        info = client.info("replication")
    assert info["role"] == "master"
    assert info["connected_slaves"] == len(replicas)
    for pod in replicas:
        with emulated.admin_client(pod) as client:
            assert client.info("replication")["master_link_status"] == "up"


def test_every_probe_of_every_running_container_passes(emulated: Emulated) -> None:
    failures = []
    checked: dict[str, int] = {}
    for pod in [*emulated.redis_pods, *emulated.platform_pods]:
        for container, process in pod.processes.items():
            if not process.alive:
                failures.append(f"{pod.name}/{container} exited {process.returncode}:\n"
                                f"{pod.log_tail(container)}")
        for container, kind in pod.probes():
            result = pod.probe(container, kind)
            checked[pod.name] = checked.get(pod.name, 0) + 1
            if not result.ok:
                failures.append(f"{pod.name}/{container} {kind}: {result.output}")
    assert not failures, "\n".join(failures)
    # Redis: startup, liveness, readiness + the Sentinel's two; workers and monitor: three.
    assert all(checked[pod.name] == 5 for pod in emulated.redis_pods), checked
    assert all(checked[emulated.worker(q).name] == 3 for q in QUEUE_NAMES), checked
    assert checked[emulated.monitor.name] == 3


def test_the_helm_test_pod_gets_every_queue_s_ping_back(emulated: Emulated) -> None:
    (hook,) = emulated.hooks
    assert hook.annotations["helm.sh/hook"] == "test"
    pod = emulated.cluster.start(hook)
    statuses = pod.wait_exit(time.monotonic() + 90)
    logs = {name: pod.log_tail(name, 200) for name in statuses}
    assert statuses == {f"ping-{q}": 0 for q in QUEUE_NAMES}, logs
    for name, log in logs.items():
        # `enqueue --wait` prints the task id, then the outcome as one JSON line.
        outcomes = [json.loads(line) for line in log.splitlines() if line.startswith('{"')
                    and '"state"' in line]
        assert [(o["state"], o["result"]) for o in outcomes] == [("SUCCESS", 3)], (name, log)


def test_the_monitor_sees_each_queues_consumers_and_a_healthy_broker(
    emulated: Emulated,
) -> None:
    url = f"http://{emulated.monitor.ip}:{emulated.ports['monitor']}/metrics"
    # One per worker pod, and one per member of a worker group (default's two).
    expected = {queue: float(policy_for(queue).worker_nodes) for queue in QUEUE_NAMES}
    deadline = time.monotonic() + 15
    while True:
        samples = _metrics(url)
        consumers = {q: samples.get(("platform_tasks_queue_consumers", (("queue", q),)))
                     for q in QUEUE_NAMES}
        if consumers == expected or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert consumers == expected
    assert samples[("platform_tasks_broker_up", ())] == 1
    assert samples[("platform_tasks_broker_connected_replicas", ())] == 2
    assert samples[("platform_tasks_sentinel_reachable_sentinels", ())] == 3
    assert samples[("platform_tasks_sentinel_known_sentinels", ())] == 3
    master = f"{emulated.redis_pods[0].ip}:{emulated.ports['redis']}"
    assert samples[("platform_tasks_sentinel_master_info", (("address", master),))] == 1
    # Every check the monitor makes works with the platform user's ACL.
    errors = {labels: value for (name, labels), value in samples.items()
              if name == "platform_tasks_monitor_poll_errors_total"}
    assert len(errors) == 4, errors
    assert not any(errors.values()), errors
    # Beat runs with the chart's env and ticks (RedBeat, through the Sentinels).
    assert samples[("platform_tasks_beat_last_tick_timestamp_seconds", ())] > time.time() - 60


@pytest.mark.parametrize("queue", QUEUE_NAMES)
def test_each_worker_serves_its_metrics_on_the_charts_port(
    emulated: Emulated, queue: str
) -> None:
    pod = emulated.worker(queue)
    container = pod.plan.container("worker")
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == "metrics"]
    assert port == emulated.ports["worker"]
    samples = _metrics(f"http://{pod.ip}:{port}/metrics")
    assert ("platform_tasks_worker_start_time_seconds", (("queue", queue),)) in samples


def test_the_operator_commands_work_in_a_worker_container(emulated: Emulated) -> None:
    """What `kubectl exec deploy/…-worker-default -- platform-tasks …` runs, with the
    platform user's ACL: queue depths, a task's status, a revoke."""
    pod = emulated.worker("default")
    queues = pod.exec("worker", ["platform-tasks", "queues", "--json"])
    assert queues.returncode == 0, queues.stderr
    assert {row["queue"] for row in json.loads(queues.stdout)} >= set(QUEUE_NAMES)
    task_id = "00000000-0000-4000-8000-000000000000"
    status = pod.exec("worker", ["platform-tasks", "status", task_id])
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["state"] == "PENDING"
    revoke = pod.exec("worker", ["platform-tasks", "revoke", task_id])
    assert revoke.returncode == 0, revoke.stderr
