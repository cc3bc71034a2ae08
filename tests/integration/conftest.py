"""Module-scoped real servers for integration tests: a Sentinel topology, or the whole stack.

A module that starts workers itself defines a ``worker_env`` fixture (see ``worker_env.py``);
``settings`` and ``broker`` here follow from it.

A test module changes what starts by overriding the ``*_options`` fixture, e.g.::

    @pytest.fixture(scope="module")
    def dev_stack_options() -> dict[str, object]:
        return {"beat": True, "queues": ["default"]}
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis

from platform_tasks.devstack.topology import SentinelTopology
from platform_tasks.redis_client import connect
from platform_tasks.settings import Settings, load_settings

if TYPE_CHECKING:
    from platform_tasks.devstack.stack import DevStack
    from platform_tasks.producer import TaskProducer


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


@pytest.fixture(scope="module")
def producer(sentinel_topology: SentinelTopology) -> Iterator[TaskProducer]:
    """A producer for the module's topology, its payload limit low enough to test."""
    from platform_tasks.producer import TaskProducer
    from platform_tasks.settings import load_settings

    env = {**sentinel_topology.settings_env(), "PLATFORM_TASKS_MAX_PAYLOAD_BYTES": "1024"}
    client = TaskProducer(load_settings(env))
    yield client
    client.close()


@pytest.fixture
def master(sentinel_topology: SentinelTopology) -> Iterator[redis.Redis]:
    """A client of the current master, after emptying every database."""
    client = sentinel_topology.client(sentinel_topology.master_address()[1])
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def broker_keys(master: redis.Redis) -> Callable[[], dict[int, list[str]]]:
    """Every key in the broker and result databases right now, per database."""

    def read() -> dict[int, list[str]]:
        found = {}
        for db in (0, 1):
            master.execute_command("SELECT", db)
            found[db] = sorted(str(key) for key in master.keys("*"))
        master.execute_command("SELECT", 0)
        return found

    return read


@pytest.fixture(scope="module")
def settings(worker_env: dict[str, str]) -> Settings:
    """The settings of the module's workers (its ``worker_env`` fixture)."""
    return load_settings(worker_env)


@pytest.fixture
def broker(settings: Settings, master: redis.Redis) -> Iterator[redis.Redis]:
    """A client of the module's broker database, after emptying every database."""
    client = connect(settings)
    yield client
    client.close()
