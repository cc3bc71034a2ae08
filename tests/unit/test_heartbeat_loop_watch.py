"""The heartbeat stops beating when the worker's consumer loop stops turning (a wedged worker
must fail its liveness probe and drop out of the consumer count), against a real redis-server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from platform_tasks import consumer_loop, heartbeat, keys
from platform_tasks.settings import Settings, load_settings


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> Settings:
    return load_settings({"PLATFORM_TASKS_REDIS_URL": redis_url,
                          "PLATFORM_TASKS_HEARTBEAT_FILE": str(tmp_path / "alive")})


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url, decode_responses=True)
    connection.flushall()
    yield connection
    connection.close()


@pytest.fixture(autouse=True)
def fresh_loop_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consumer_loop, "_last_turn", None)


def beat(settings: Settings, client: redis.Redis, *, watch_loop: bool = True) -> bool:
    return heartbeat.Heartbeat(settings, "default", "default@host",
                               watch_loop=watch_loop).beat(client)


def test_a_turning_loop_beats(settings: Settings, client: redis.Redis) -> None:
    consumer_loop.turned()
    assert beat(settings, client)
    assert client.zscore(keys.worker_heartbeats("default"), "default@host") is not None
    assert heartbeat.last_alive(settings, "default") is not None


def test_before_the_first_turn_it_beats(settings: Settings, client: redis.Redis) -> None:
    assert consumer_loop.stalled_for() is None
    assert beat(settings, client)


def test_a_wedged_loop_gets_no_beat(settings: Settings, client: redis.Redis,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consumer_loop, "_last_turn",
                        time.monotonic() - consumer_loop.STALL_SECONDS - 1)
    assert not beat(settings, client)
    assert client.zscore(keys.worker_heartbeats("default"), "default@host") is None
    assert heartbeat.last_alive(settings, "default") is None


def test_the_solo_pool_is_not_watched(settings: Settings, client: redis.Redis,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consumer_loop, "_last_turn",
                        time.monotonic() - consumer_loop.STALL_SECONDS - 1)
    assert beat(settings, client, watch_loop=False)
