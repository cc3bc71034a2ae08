"""The bundled Redis Sentinel: configs from a ConfigMap, ACL users on every node, AOF on a PVC,
and a start-up script that writes each pod's config from its environment.

The script is run here for real (POSIX sh, as in the official redis image) with the pod's
rendered environment, its paths moved to a temporary directory.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from chart_tools import Render, env_of


def statefulset(r: Render) -> dict[str, Any]:
    return r.named("StatefulSet", "platform-tasks-redis")


def test_each_pod_runs_redis_and_a_sentinel_from_the_official_image(
    renders: dict[str, Render],
) -> None:
    sts = statefulset(renders["minimal"])
    spec = sts["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["containers"]] == ["redis", "sentinel"]
    assert {c["image"] for c in spec["containers"] + spec["initContainers"]} == {"redis:7.4.2"}
    assert spec["containers"][0]["command"] == ["redis-server", "/run/redis/redis.conf"]
    assert spec["containers"][1]["command"] == ["redis-server", "/run/redis/sentinel.conf",
                                                "--sentinel"]
    assert sts["spec"]["serviceName"] == "platform-tasks-redis-headless"
    claim = sts["spec"]["volumeClaimTemplates"][0]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "8Gi"
    headless = renders["minimal"].named("Service", "platform-tasks-redis-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    anti = spec["affinity"]["podAntiAffinity"]
    assert "preferredDuringSchedulingIgnoredDuringExecution" in anti
    assert renders["minimal"].named("PodDisruptionBudget", "platform-tasks-redis")


def test_hard_anti_affinity_and_no_persistence_are_options(renders: dict[str, Render]) -> None:
    sts = statefulset(renders["existing-secret"])
    spec = sts["spec"]["template"]["spec"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" in spec["affinity"]["podAntiAffinity"]
    assert "volumeClaimTemplates" not in sts["spec"]
    assert {"name": "data", "emptyDir": {}} in spec["volumes"]


def test_the_base_config_keeps_messages_safe(renders: dict[str, Render]) -> None:
    config = renders["minimal"].named("ConfigMap", "platform-tasks-redis")["data"]["redis.conf"]
    lines = {line.strip() for line in config.splitlines()}
    assert {"appendonly yes", "appendfsync everysec", "maxmemory-policy noeviction",
            "min-replicas-to-write 1", "min-replicas-max-lag 10", "dir /data"} <= lines


@pytest.fixture
def init_run(
    renders: dict[str, Render], tmp_path: Path, require_tools: Callable[..., None]
) -> Any:
    """Run init.sh as pod ``ordinal`` would, with nothing else reachable."""
    require_tools("sh", "sha256sum", why="init.sh needs them")
    r = renders["minimal"]
    data = r.named("ConfigMap", "platform-tasks-redis")["data"]
    base = tmp_path / "redis-base"
    scripts = tmp_path / "scripts"
    secrets = tmp_path / "secrets"
    for directory in (base, scripts, secrets):
        directory.mkdir()
    (base / "redis.conf").write_text(data["redis.conf"])
    (scripts / "init.sh").write_text(data["init.sh"])
    (secrets / "redis-password").write_text("app-pass")
    (secrets / "sentinel-password").write_text("sentinel-pass")
    (secrets / "redis-admin-password").write_text('admin "quoted" pass')
    container = statefulset(r)["spec"]["template"]["spec"]["initContainers"][0]

    def run(ordinal: int) -> Path:
        env = {name: entry["value"] for name, entry in env_of(container).items()
               if "value" in entry}
        config_dir = tmp_path / f"run-{ordinal}"
        env |= {"POD_NAME": f"platform-tasks-redis-{ordinal}", "POD_NAMESPACE": "platform-tasks",
                "SECRETS_DIR": str(secrets), "BASE_CONFIG": str(base / "redis.conf"),
                "CONFIG_DIR": str(config_dir), "PATH": os.environ["PATH"]}
        # The peers' names do not resolve here: no Sentinel answers, as on a fresh install.
        result = subprocess.run(["sh", str(scripts / "init.sh")], env=env, capture_output=True,
                                text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stderr
        return config_dir

    return run


def test_pod_zero_of_a_fresh_install_starts_as_master(init_run: Any) -> None:
    config = (init_run(0) / "redis.conf").read_text()
    domain = "platform-tasks-redis-headless.platform-tasks.svc.cluster.local"
    assert "replicaof" not in config
    assert f"replica-announce-ip platform-tasks-redis-0.{domain}" in config
    assert 'masterauth "admin \\"quoted\\" pass"' in config
    sentinel = (init_run(0) / "sentinel.conf").read_text()
    assert f"sentinel monitor platform-tasks platform-tasks-redis-0.{domain} 6379 2" in sentinel
    assert "sentinel announce-hostnames yes" in sentinel
    assert 'requirepass "sentinel-pass"' in sentinel


def test_a_later_pod_with_no_sentinel_to_ask_replicates_pod_zero(init_run: Any) -> None:
    config = (init_run(2) / "redis.conf").read_text()
    assert ("replicaof platform-tasks-redis-0.platform-tasks-redis-headless.platform-tasks"
            ".svc.cluster.local 6379") in config


def test_every_node_gets_the_same_acl_users_with_hashed_passwords(init_run: Any) -> None:
    acl = [(init_run(i) / "users.acl").read_text() for i in range(3)]
    assert acl[0] == acl[1] == acl[2]
    app = hashlib.sha256(b"app-pass").hexdigest()
    admin = hashlib.sha256(b'admin "quoted" pass').hexdigest()
    assert acl[0].splitlines() == [
        f"user default on #{admin} ~* &* +@all",
        f"user platform-tasks on #{app} ~* &* +@all -@admin -flushall -flushdb",
    ]
    assert "app-pass" not in acl[0]


def test_a_replica_is_ready_only_once_in_sync_with_its_master(
    renders: dict[str, Render], redis_server_binary: Path, tmp_path: Path,
    require_tools: Callable[..., None],
) -> None:
    """Until it has synced, the master does not count a replica for min-replicas-to-write: a
    rolling update that moved on while it is still syncing would stop every write."""
    require_tools("redis-cli", "timeout", why="probe.sh needs them")
    from platform_tasks.devstack.ports import free_ports
    from platform_tasks.devstack.processes import ManagedProcess

    data = renders["minimal"].named("ConfigMap", "platform-tasks-redis")["data"]
    (tmp_path / "probe.sh").write_text(data["probe.sh"])
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "redis-admin-password").write_text("admin-pass")
    port, unreachable_master = free_ports(2)
    (tmp_path / "redis.conf").write_text(
        f'port {port}\nbind 127.0.0.1\nrequirepass "admin-pass"\nsave ""\ndir {tmp_path}\n'
        f"replicaof 127.0.0.1 {unreachable_master}\n")
    server = ManagedProcess("replica", [str(redis_server_binary.absolute()),
                                        str(tmp_path / "redis.conf")],
                            None, tmp_path / "redis.log")
    env = {"SECRETS_DIR": str(secrets), "REDIS_PORT": str(port), "SENTINEL_PORT": "1",
           "PATH": os.environ["PATH"]}

    def probe(*mode: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", str(tmp_path / "probe.sh"), "redis", *mode], env=env,
                              capture_output=True, text=True, timeout=10, check=False)

    server.start()
    try:
        for _ in range(100):
            if probe("alive").returncode == 0:
                break
            time.sleep(0.05)
        assert probe("alive").returncode == 0  # alive: it answers PING
        not_ready = probe()
        assert not_ready.returncode == 1
        assert "not in sync" in not_ready.stdout
        subprocess.run(["redis-cli", "-p", str(port), "--no-auth-warning", "-a", "admin-pass",
                        "replicaof", "no", "one"], check=True, capture_output=True, timeout=10)
        assert probe().returncode == 0  # a master is ready when it answers
    finally:
        server.stop()
