"""Module-scoped real servers for integration tests: a Sentinel topology, or the whole stack.

A test module changes what starts by overriding the ``*_options`` fixture, e.g.::

    @pytest.fixture(scope="module")
    def dev_stack_options() -> dict[str, object]:
        return {"beat": True, "queues": ["default"]}
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from platform_tasks.devstack.topology import SentinelTopology

if TYPE_CHECKING:
    from platform_tasks.devstack.stack import DevStack


@pytest.fixture(scope="module")
def sentinel_topology_options() -> dict[str, Any]:
    """Keyword arguments for :class:`SentinelTopology`; override per module."""
    return {}


@pytest.fixture(scope="module")
def sentinel_topology(
    redis_server_binary: Path,
    tmp_path_factory: pytest.TempPathFactory,
    sentinel_topology_options: dict[str, Any],
) -> Iterator[SentinelTopology]:
    """A running master, 2 replicas and 3 Sentinels on free loopback ports."""
    options: dict[str, Any] = {
        "password": secrets.token_urlsafe(12),
        "sentinel_password": secrets.token_urlsafe(12),
        "binary": redis_server_binary,
        **sentinel_topology_options,
    }
    with SentinelTopology(tmp_path_factory.mktemp("topology"), **options) as topology:
        yield topology


@pytest.fixture(scope="module")
def dev_stack_options() -> dict[str, Any]:
    """Keyword arguments for :class:`DevStack`; override per module. Beat is off unless asked."""
    return {}


@pytest.fixture(scope="module")
def dev_stack(
    redis_server_binary: Path,
    tmp_path_factory: pytest.TempPathFactory,
    dev_stack_options: dict[str, Any],
) -> Iterator[DevStack]:
    """The whole platform (all queues' workers, SMTP sink, gateway stub) with workers ready."""
    # Imported here so topology-only modules do not load the Celery app and task code.
    from platform_tasks.devstack.stack import DevStack

    options: dict[str, Any] = {"beat": False, **dev_stack_options}
    with DevStack(tmp_path_factory.mktemp("stack"), **options) as stack:
        stack.wait_for_workers(timeout=60.0)
        yield stack
