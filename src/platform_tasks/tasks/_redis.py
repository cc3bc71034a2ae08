"""One Redis client per process for the tasks' own keys (dedupe marks, payment records, stats).

The client is made on first use, not at import: prefork children fork after the tasks are
imported, and a connection opened in the parent must not be shared by its children.
"""

from __future__ import annotations

import os
import threading

import redis

from platform_tasks.redis_client import connect
from platform_tasks.settings import Settings

_lock = threading.Lock()
# id(settings) -> (pid, settings, client). The settings object is kept so its id cannot be
# reused by another object while the entry exists.
_clients: dict[int, tuple[int, Settings, redis.Redis]] = {}


def client_for(settings: Settings) -> redis.Redis:
    """The process's client for ``settings`` (the broker database), created on first use."""
    pid = os.getpid()
    with _lock:  # the email and payments pools run tasks in threads
        cached = _clients.get(id(settings))
        if cached is not None and cached[0] == pid and cached[1] is settings:
            return cached[2]
        client = connect(settings)
        _clients[id(settings)] = (pid, settings, client)
        return client


def reset() -> None:
    """Forget every cached client (tests that stop their Redis call this)."""
    with _lock:
        clients = [entry[2] for entry in _clients.values() if entry[0] == os.getpid()]
        _clients.clear()
    for client in clients:
        client.close()
