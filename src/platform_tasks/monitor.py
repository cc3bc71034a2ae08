"""``platform-tasks monitor``: the broker's view of the platform as Prometheus gauges.

One small process (a singleton in the chart) polls Redis and the Sentinels every
``monitor_interval_seconds`` and serves what it saw on ``/metrics``: ready messages per queue
and priority sub-list, unacknowledged messages, the age of the oldest waiting message,
consumers (from worker heartbeats), beat's last tick and overdue schedule entries, the
master's role and replicas, and the Sentinels' view. Each check fails on its own: a failed
Sentinel read does not hide the queues, and a broker that is down reads as
``platform_tasks_broker_up 0``, not as a missing series.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from platform_tasks import headers, keys
from platform_tasks.heartbeat import live_consumers
from platform_tasks.inspection import PRIORITIES, ready_lists, unacked_by_queue
from platform_tasks.observability import catalog
from platform_tasks.queues import QUEUE_NAMES
from platform_tasks.redis_client import connect, no_retry, sentinel_kwargs
from platform_tasks.settings import Settings

logger = logging.getLogger(__name__)

#: Checks that read the broker, skipped in a round whose broker check failed.
_NEEDS_BROKER = frozenset({"queues", "beat"})

#: redis-py's booleans derived from Sentinel flags that make a replica useless for a failover.
_UNHEALTHY = ("is_sdown", "is_odown", "is_disconnected")


@dataclass(frozen=True, slots=True)
class _Gauges:
    ready: Gauge
    unacked: Gauge
    oldest_age: Gauge
    consumers: Gauge
    beat_last_tick: Gauge
    beat_due: Gauge
    broker_up: Gauge
    connected_replicas: Gauge
    sentinel_master: Gauge
    sentinel_reachable: Gauge
    sentinel_known: Gauge
    sentinel_quorum: Gauge
    sentinel_replicas: Gauge
    poll_errors: Counter
    last_poll: Gauge


def _gauge(spec: catalog.MetricSpec, registry: CollectorRegistry) -> Gauge:
    return Gauge(spec.name, spec.description, spec.labels, registry=registry)


def _build(registry: CollectorRegistry) -> _Gauges:
    return _Gauges(
        ready=_gauge(catalog.QUEUE_READY, registry),
        unacked=_gauge(catalog.QUEUE_UNACKED, registry),
        oldest_age=_gauge(catalog.QUEUE_OLDEST_AGE, registry),
        consumers=_gauge(catalog.QUEUE_CONSUMERS, registry),
        beat_last_tick=_gauge(catalog.BEAT_LAST_TICK, registry),
        beat_due=_gauge(catalog.BEAT_DUE_ENTRIES, registry),
        broker_up=_gauge(catalog.BROKER_UP, registry),
        connected_replicas=_gauge(catalog.BROKER_CONNECTED_REPLICAS, registry),
        sentinel_master=_gauge(catalog.SENTINEL_MASTER, registry),
        sentinel_reachable=_gauge(catalog.SENTINEL_REACHABLE, registry),
        sentinel_known=_gauge(catalog.SENTINEL_KNOWN, registry),
        sentinel_quorum=_gauge(catalog.SENTINEL_QUORUM, registry),
        sentinel_replicas=_gauge(catalog.SENTINEL_REPLICAS, registry),
        poll_errors=Counter(
            catalog.MONITOR_POLL_ERRORS.name, catalog.MONITOR_POLL_ERRORS.description,
            catalog.MONITOR_POLL_ERRORS.labels, registry=registry,
        ),
        last_poll=_gauge(catalog.MONITOR_LAST_POLL, registry),
    )


def message_ready_since(raw: str) -> float | None:
    """When a waiting message became runnable: the producer's enqueued-at header."""
    try:
        message = json.loads(raw)
        value = (message.get("headers") or {}).get(headers.ENQUEUED_AT)
        return float(value) if value is not None else None
    except (ValueError, TypeError, AttributeError):
        return None


class BrokerMonitor:
    """Polls the broker into a registry of its own; :meth:`poll_once` is one full round."""

    def __init__(self, settings: Settings, queues: tuple[str, ...] = QUEUE_NAMES) -> None:
        self.settings = settings
        self.queues = queues
        self.registry = CollectorRegistry()
        self.gauges = _build(self.registry)
        self._client: redis.Redis | None = None
        # Messages without our enqueued-at header (foreign producers) are aged from when
        # the monitor first saw them at the head of the line.
        self._first_seen: dict[tuple[str, str], float] = {}
        self._master_address: str | None = None
        for name, _check in self._checks():
            # Zero from the start, so rate() and increase() see the first error.
            self.gauges.poll_errors.labels(name)

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = connect(self.settings, retry=no_retry())
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _checks(self) -> tuple[tuple[str, Callable[[float], None]], ...]:
        return (
            ("broker", self._check_broker),
            ("queues", self._check_queues),
            ("beat", self._check_beat),
            ("sentinel", self._check_sentinels),
        )

    def poll_once(self) -> None:
        """One round of every check. A failed broker check skips the checks that read the
        broker (they would only wait out the same timeout again); the Sentinels are asked
        regardless, since they are what tells why the broker is gone."""
        now = time.time()
        broker_ok = True
        for name, check in self._checks():
            if not broker_ok and name in _NEEDS_BROKER:
                self.gauges.poll_errors.labels(name).inc()
                continue
            try:
                check(now)
            except Exception as error:
                self.gauges.poll_errors.labels(name).inc()
                logger.warning("monitor check %s failed: %s: %s", name,
                               type(error).__name__, error)
                if name in _NEEDS_BROKER or name == "broker":
                    broker_ok = False
                if name == "broker":
                    self.gauges.broker_up.set(0)
                    self.close()  # reconnect through the Sentinels on the next round
        if broker_ok:
            self.gauges.last_poll.set(time.time())

    # -- checks -------------------------------------------------------------------------

    def _check_broker(self, now: float) -> None:
        info = self.client.info("replication")
        if info.get("role") != "master":
            # Connected to a demoted node: ask the Sentinels for the master next round.
            self.close()
            raise ConnectionError(f"the broker node answers as {info.get('role')!r}")
        self.gauges.broker_up.set(1)
        self.gauges.connected_replicas.set(int(info.get("connected_slaves", 0)))

    def _check_queues(self, now: float) -> None:
        client = self.client
        with client.pipeline(transaction=False) as pipe:
            for queue in self.queues:
                for priority in PRIORITIES:
                    for name in ready_lists(queue, priority):
                        pipe.llen(name)
                        # kombu pushes on the left and pops on the right: the right end is
                        # oldest.
                        pipe.lindex(name, -1)
            replies = iter(pipe.execute())
        unacked = unacked_by_queue(client)
        seen: set[tuple[str, str]] = set()
        for queue in self.queues:
            oldest: float | None = None
            for priority in PRIORITIES:
                ready = 0
                for name in ready_lists(queue, priority):
                    length, tail = next(replies), next(replies)
                    ready += int(length)
                    if not tail:
                        continue
                    since = message_ready_since(tail)
                    if since is None:
                        marker = (name, str(hash(tail)))
                        since = self._first_seen.setdefault(marker, now)
                        seen.add(marker)
                    oldest = since if oldest is None else min(oldest, since)
                self.gauges.ready.labels(queue, str(priority)).set(ready)
            self.gauges.oldest_age.labels(queue).set(
                max(0.0, now - oldest) if oldest is not None else 0.0
            )
            self.gauges.unacked.labels(queue).set(unacked.get(queue, 0))
            self.gauges.consumers.labels(queue).set(
                live_consumers(client, queue, self.settings, now)
            )
        self._first_seen = {marker: t for marker, t in self._first_seen.items() if marker in seen}

    def _check_beat(self, now: float) -> None:
        client = self.client
        last_tick = client.get(keys.BEAT_LAST_TICK)
        self.gauges.beat_last_tick.set(float(last_tick) if last_tick else 0.0)
        self.gauges.beat_due.set(int(client.zcount(keys.BEAT_SCHEDULE, 0, now)))

    def _check_sentinels(self, now: float) -> None:
        if not self.settings.uses_sentinel:
            return
        name = self.settings.sentinel_master
        reachable = 0
        view: dict[str, Any] | None = None
        replicas: list[dict[str, Any]] = []
        options = sentinel_kwargs(self.settings, retry=no_retry())
        for host, port in self.settings.sentinels:
            sentinel = redis.Redis(host=host, port=port, decode_responses=True,
                                   socket_connect_timeout=options["socket_timeout"], **options)
            try:
                master = cast(dict[str, Any], sentinel.sentinel_master(name))
                reachable += 1
                if view is None:
                    # Master and replicas from the same Sentinel, or not at all: a half
                    # answer would read as "no healthy replica".
                    replicas = sentinel.sentinel_slaves(name)
                    view = master
            except (redis.RedisError, OSError):
                continue
            finally:
                sentinel.close()
        self.gauges.sentinel_reachable.set(reachable)
        if view is None:
            # No Sentinel to say where the master is: no address is better than a stale one.
            if self._master_address is not None:
                self.gauges.sentinel_master.remove(self._master_address)
                self._master_address = None
            raise ConnectionError("no Sentinel answered")
        address = f"{view['ip']}:{view['port']}"
        if self._master_address not in (None, address):
            # One series per address, so the old master's series must go at a switch.
            self.gauges.sentinel_master.remove(self._master_address)
        self._master_address = address
        self.gauges.sentinel_master.labels(address).set(1)
        self.gauges.sentinel_known.set(int(view.get("num-other-sentinels", 0)) + 1)
        self.gauges.sentinel_quorum.set(int(view.get("quorum", 0)))
        healthy = [
            replica for replica in replicas
            if not any(replica.get(flag) for flag in _UNHEALTHY)
        ]
        self.gauges.sentinel_replicas.set(len(healthy))


def serve(settings: Settings, stop: threading.Event | None = None) -> None:
    """Serve /metrics and poll until ``stop`` is set (forever in the container)."""
    monitor = BrokerMonitor(settings)
    try:
        server, _thread = start_http_server(
            settings.monitor_port, addr=settings.metrics_host, registry=monitor.registry
        )
    except OSError as error:
        raise OSError(
            f"cannot serve monitor metrics on {settings.metrics_host}:{settings.monitor_port} "
            f"(PLATFORM_TASKS_MONITOR_PORT): {error.strerror or error}"
        ) from None
    logger.info("monitor serving metrics on %s:%d every %gs", settings.metrics_host,
                server.server_port, settings.monitor_interval_seconds)
    stopped = stop or threading.Event()
    try:
        while not stopped.is_set():
            started = time.monotonic()
            monitor.poll_once()
            stopped.wait(max(0.0, settings.monitor_interval_seconds
                             - (time.monotonic() - started)))
    finally:
        server.shutdown()
        server.server_close()
        monitor.close()
