"""One platform for the whole e2e session: Sentinel topology, a worker per queue, SMTP, gateway.

Tests here must leave the stack as they found it (release what they hold, no kills); tests
that break things start their own stack under ``tests/integration``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from platform_tasks.devstack.stack import DevStack
from platform_tasks.producer import TaskProducer


@pytest.fixture(scope="session")
def stack(
    redis_server_binary: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DevStack]:
    # The gateway fails only when a test asks it to, so each test controls its own retries.
    with DevStack(tmp_path_factory.mktemp("e2e"), beat=False, gateway_fail_every=0) as running:
        running.wait_for_workers(timeout=90.0)
        yield running


@pytest.fixture(scope="session")
def producer(stack: DevStack) -> Iterator[TaskProducer]:
    client = TaskProducer(stack.settings())
    yield client
    client.close()
