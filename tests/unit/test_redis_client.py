"""Connections for the platform's own keys follow the TLS setting whatever the URL scheme."""

from __future__ import annotations

import redis

from platform_tasks.app import redis_urls
from platform_tasks.redis_client import connect
from platform_tasks.redis_errors import is_transient_reply
from platform_tasks.settings import load_settings


def test_tls_on_with_a_redis_url_connects_with_tls() -> None:
    settings = load_settings({"PLATFORM_TASKS_REDIS_URL": "redis://127.0.0.1:6390",
                              "PLATFORM_TASKS_REDIS_TLS": "true"})
    client = connect(settings)
    assert client.connection_pool.connection_class is redis.SSLConnection
    assert redis_urls(settings, 0).startswith("rediss://")


def test_tls_off_stays_plain() -> None:
    settings = load_settings({"PLATFORM_TASKS_REDIS_URL": "redis://127.0.0.1:6390"})
    assert connect(settings).connection_pool.connection_class is redis.Connection


def test_failover_replies_are_transient_and_others_are_not() -> None:
    assert is_transient_reply(redis.ResponseError("NOREPLICAS Not enough good replicas"))
    assert is_transient_reply(redis.ReadOnlyError("READONLY You can't write"))
    assert not is_transient_reply(redis.ResponseError("WRONGTYPE Operation against a key"))


def test_a_failover_reply_inside_a_pipeline_is_transient_too() -> None:
    assert is_transient_reply(redis.ResponseError(
        "Command # 1 (HSET k f v) of pipeline caused error: NOREPLICAS Not enough good replicas"
    ))
    assert not is_transient_reply(redis.ResponseError(
        "Command # 2 (HSET NOREPLICAS f v) of pipeline caused error: WRONGTYPE Operation"
    ))


def test_the_database_is_the_one_asked_for_whatever_the_url_names() -> None:
    # redis-py lets a database in the URL's path override db=: the results client of a
    # platform whose URL ends in /0 would have read the broker's database.
    settings = load_settings({"PLATFORM_TASKS_REDIS_URL": "redis://:pw@127.0.0.1:6390/0"})
    assert connect(settings).connection_pool.connection_kwargs["db"] == settings.broker_db
    results = connect(settings, db=settings.result_db).connection_pool.connection_kwargs
    assert results["db"] == settings.result_db == 1
    assert results["password"] == "pw"
