"""Redis connections for the platform's own keys, following the Sentinel master like Celery does."""

from __future__ import annotations

import os
import ssl
import threading
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from platform_tasks.settings import Settings


def _secret(value: Any) -> str | None:
    return None if value is None else str(value.get_secret_value())


def tls_options(settings: Settings) -> dict[str, Any]:
    """redis-py keyword arguments for TLS, empty when TLS is off."""
    if not settings.redis_tls:
        return {}
    options: dict[str, Any] = {"ssl": True, "ssl_cert_reqs": ssl.CERT_REQUIRED}
    if settings.redis_tls_ca_file is not None:
        options["ssl_ca_certs"] = str(settings.redis_tls_ca_file)
    return options


def no_retry() -> Retry:
    """For callers that poll on their own schedule: redis-py's default (10 retries, each
    waiting out the socket timeout) would turn one hung node into minutes of blocking."""
    return Retry(NoBackoff(), 0)


def sentinel_kwargs(settings: Settings, *, retry: Retry | None = None) -> dict[str, Any]:
    """How to authenticate to (and encrypt traffic with) the Sentinels themselves."""
    options: dict[str, Any] = {"socket_timeout": settings.redis_socket_timeout}
    if retry is not None:
        options["retry"] = retry
    password = _secret(settings.sentinel_password)
    if password is not None:
        options["password"] = password
    options.update(tls_options(settings))
    return options


def connect(
    settings: Settings, *, db: int | None = None, retry: Retry | None = None
) -> redis.Redis:
    """A client for the current master (database ``db``, the broker's by default).

    ``retry`` replaces redis-py's default retry policy (see :func:`no_retry`).
    """
    database = settings.broker_db if db is None else db
    common: dict[str, Any] = {
        "db": database,
        "username": settings.redis_username,
        "password": _secret(settings.redis_password),
        "socket_timeout": settings.redis_socket_timeout,
        "socket_connect_timeout": settings.redis_socket_timeout,
        "health_check_interval": 10,
        "decode_responses": True,
    }
    if retry is not None:
        common["retry"] = retry
    if settings.uses_sentinel:
        sentinel = Sentinel(
            list(settings.sentinels),
            sentinel_kwargs=sentinel_kwargs(settings, retry=retry),
            **tls_options(settings),
        )
        master: redis.Redis = sentinel.master_for(settings.sentinel_master, **common)
        return master
    assert settings.redis_url is not None
    # The database is ``db``: redis-py would let a number in the URL's path override it.
    url = urlunsplit(urlsplit(settings.redis_url)._replace(path=""))
    if settings.redis_tls and url.startswith("redis://"):
        url = "rediss://" + url.removeprefix("redis://")
    if url.startswith("rediss://"):
        common.update(tls_options(settings))
        common.pop("ssl", None)  # the rediss:// scheme already says so; from_url rejects ssl=
    return redis.Redis.from_url(url, **common)


_process_clients: dict[int, redis.Redis] = {}
_process_clients_lock = threading.Lock()


def process_client(settings: Settings) -> redis.Redis:
    """One broker-database client per process, made on first use.

    For code inside a worker's pool processes (dead letters, the redelivery count): a process
    forked from the worker must not use its parent's sockets.
    """
    pid = os.getpid()
    with _process_clients_lock:
        client = _process_clients.get(pid)
        if client is None:
            client = _process_clients[pid] = connect(settings)
        return client
