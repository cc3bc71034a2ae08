"""A broker that accepts connections and never answers must not stall the monitor."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from platform_tasks.monitor import BrokerMonitor
from platform_tasks.observability import catalog
from platform_tasks.settings import load_settings


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A loopback port that accepts connections and never says a word."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    listener.close()


def test_one_poll_of_a_hung_broker_ends_within_a_few_timeouts(silent_server: int) -> None:
    settings = load_settings({
        "PLATFORM_TASKS_REDIS_URL": f"redis://127.0.0.1:{silent_server}",
        "PLATFORM_TASKS_REDIS_SOCKET_TIMEOUT": "0.5",
    })
    monitor = BrokerMonitor(settings)
    try:
        started = time.monotonic()
        monitor.poll_once()
        elapsed = time.monotonic() - started
    finally:
        monitor.close()

    # One timeout for the broker check; the queue and beat checks are skipped, not retried.
    assert elapsed < 3.0
    assert monitor.registry.get_sample_value(catalog.BROKER_UP.name) == 0
    for check in ("broker", "queues", "beat"):
        errors = monitor.registry.get_sample_value(
            catalog.MONITOR_POLL_ERRORS.name, {"check": check}
        )
        assert errors == 1
    assert monitor.registry.get_sample_value(catalog.MONITOR_LAST_POLL.name) == 0
