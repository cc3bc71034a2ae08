"""Fixtures shared by every test directory."""

from __future__ import annotations

import os
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
