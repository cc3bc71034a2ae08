"""``create_app(settings)``: the Celery application every platform process runs."""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import quote, urlsplit

from celery import Celery
from kombu.entity import Exchange, Queue

from platform_tasks import broker_transport, keys, propagation, result_backend
from platform_tasks.queues import QUEUES
from platform_tasks.redis_client import sentinel_kwargs
from platform_tasks.schedule import beat_schedule
from platform_tasks.settings import Settings

TASK_MODULES = (
    "platform_tasks.tasks.default",
    "platform_tasks.tasks.email",
    "platform_tasks.tasks.media",
    "platform_tasks.tasks.payments",
)

#: Publishing retries for this long (about 36 s) before giving up, well past the few seconds
#: a Sentinel failover takes, so a producer does not drop a message during the switch.
PUBLISH_RETRY_POLICY: dict[str, float] = {
    "max_retries": 20,
    "interval_start": 0.2,
    "interval_step": 0.5,
    "interval_max": 2.0,
}


#: Celery's own canvas tasks return what their caller waits for, so they keep results too.
_BUILTIN_CANVAS_RESULTS = {
    name: {"ignore_result": False} for name in ("celery.starmap", "celery.map", "celery.chunks")
}


class PlatformCelery(Celery):  # type: ignore[misc]  # celery ships no type information
    """A Celery app that carries the platform's settings for the tasks that need them."""

    settings: Settings


def _credentials(settings: Settings, url_user: str | None, url_password: str | None) -> str:
    user = settings.redis_username or url_user or ""
    secret = settings.redis_password.get_secret_value() if settings.redis_password else None
    password = secret or url_password
    if not user and not password:
        return ""
    return f"{quote(user, safe='')}:{quote(password or '', safe='')}@"


def redis_urls(settings: Settings, db: int) -> str:
    """Kombu/Celery URL for database ``db``: ``sentinel://…;sentinel://…`` or ``redis://…``."""
    if settings.uses_sentinel:
        auth = _credentials(settings, None, None)
        return ";".join(
            f"sentinel://{auth}{address.host}:{address.port}/{db}"
            for address in settings.sentinels
        )
    assert settings.redis_url is not None
    parts = urlsplit(settings.redis_url)
    scheme = "rediss" if settings.redis_tls or parts.scheme == "rediss" else "redis"
    auth = _credentials(settings, parts.username, parts.password)
    return f"{scheme}://{auth}{parts.hostname}:{parts.port or 6379}/{db}"


def redbeat_url(settings: Settings) -> str:
    """celery-redbeat names Sentinel ``redis-sentinel://`` and reads the rest from its options."""
    if settings.uses_sentinel:
        first = settings.sentinels[0]
        return f"redis-sentinel://{first.host}:{first.port}/{settings.broker_db}"
    return redis_urls(settings, settings.broker_db)


def _ssl_options(settings: Settings) -> dict[str, Any] | None:
    if not settings.redis_tls:
        return None
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if settings.redis_tls_ca_file is not None:
        options["ssl_ca_certs"] = str(settings.redis_tls_ca_file)
    return options


def restore_sweep_seconds(visibility_timeout: int) -> int:
    """How often a worker looks for messages whose holder stopped refreshing them."""
    return max(1, min(10, visibility_timeout // 6))


def restore_mutex_seconds(visibility_timeout: int) -> int:
    """How long a sweep's lock outlives a sweeper that died holding it."""
    return max(5, 3 * restore_sweep_seconds(visibility_timeout))


def _transport_options(settings: Settings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "visibility_timeout": settings.visibility_timeout_seconds,
        # Every sweep looks for abandoned messages (kombu scans only every 10th by default),
        # often enough that a dead worker's messages return soon after the timeout.
        "unacked_restore_interval": restore_sweep_seconds(settings.visibility_timeout_seconds),
        "unacked_restore_throttle": 1,
        # A sweep holds a lock while it runs; a worker killed or cut off mid-sweep leaves it
        # held until it expires (kombu: 300 s), and no worker sweeps meanwhile. A sweep takes
        # milliseconds, and two at once are safe (each message is restored in a transaction
        # watching the unacked hash), so the lock lasts only a few sweep intervals.
        "unacked_mutex_expire": restore_mutex_seconds(settings.visibility_timeout_seconds),
        "platform_max_redeliveries": settings.max_redeliveries,
        "socket_timeout": settings.redis_socket_timeout,
        "socket_connect_timeout": settings.redis_socket_timeout,
        "socket_keepalive": True,
        "retry_on_timeout": True,
        "health_check_interval": 10,
    }
    if settings.uses_sentinel:
        options["master_name"] = settings.sentinel_master
        options["sentinel_kwargs"] = sentinel_kwargs(settings)
    return options


def _redbeat_options(settings: Settings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "socket_timeout": settings.redis_socket_timeout,
        "retry_period": settings.beat_lock_timeout,
    }
    if settings.uses_sentinel:
        options.update(
            sentinels=list(settings.sentinels),
            service_name=settings.sentinel_master,
            sentinel_kwargs=sentinel_kwargs(settings),
            db=settings.broker_db,
        )
        if settings.redis_password is not None:
            options["password"] = settings.redis_password.get_secret_value()
        if settings.redis_username is not None:
            options["username"] = settings.redis_username
    return options


def _task_queues() -> list[Queue]:
    return [Queue(str(name), Exchange(str(name), type="direct"), routing_key=str(name))
            for name in QUEUES]


def create_app(settings: Settings, *, include_tasks: bool = True) -> PlatformCelery:
    """Build the Celery app for ``settings``.

    Producers pass ``include_tasks=False``: they send tasks by name and never import task code.
    """
    app = PlatformCelery(
        "platform_tasks",
        include=list(TASK_MODULES) if include_tasks else [],
        set_as_current=include_tasks,
    )
    app.settings = settings
    propagation.install()
    broker_transport.register()
    ssl_options = _ssl_options(settings)
    config = dict(
        broker_url=redis_urls(settings, settings.broker_db),
        broker_transport=(
            broker_transport.SENTINEL if settings.uses_sentinel else broker_transport.REDIS
        ),
        result_backend=redis_urls(settings, settings.result_db),
        override_backends=result_backend.BY_SCHEME,
        broker_transport_options=_transport_options(settings),
        result_backend_transport_options=_transport_options(settings),
        broker_use_ssl=ssl_options,
        redis_backend_use_ssl=ssl_options,
        # JSON only, both ways: a pickle on the wire would be remote code execution.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        event_serializer="json",
        # Routing comes from the catalog; a task's home queue is the second part of its name.
        task_queues=_task_queues(),
        task_default_queue="default",
        task_default_exchange="default",
        task_default_routing_key="default",
        task_routes=(_route_by_name,),
        task_create_missing_queues=False,
        # Delivery: at least once. Tasks ack after running and are requeued if their process
        # dies; they are written to be idempotent.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_channel_error_retry=True,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_enable_soft_shutdown_on_idle=True,
        task_publish_retry=True,
        task_publish_retry_policy=PUBLISH_RETRY_POLICY,
        # Results: only tasks that return something useful opt in (ignore_result=False).
        task_ignore_result=True,
        task_annotations=_BUILTIN_CANVAS_RESULTS,
        task_store_errors_even_if_ignored=False,
        # Per queue (QueuePolicy.track_started); Celery's canvas helpers do not record it.
        task_track_started=False,
        result_extended=True,
        result_expires=settings.result_expires_seconds,
        result_backend_always_retry=True,
        result_backend_max_retries=20,
        # The result backend reads its socket settings from these, not from its transport
        # options: without them a reply that never comes holds a worker for Celery's 120 s.
        redis_socket_timeout=settings.redis_socket_timeout,
        redis_socket_connect_timeout=settings.redis_socket_timeout,
        redis_socket_keepalive=True,
        # No task events nobody consumes: on only where Flower or celery-exporter reads them.
        worker_send_task_events=settings.task_events,
        task_send_sent_event=settings.task_events,
        worker_hijack_root_logger=False,
        timezone=settings.timezone,
        enable_utc=True,
        beat_scheduler="platform_tasks.beat_scheduler:PlatformBeatScheduler",
        beat_schedule=beat_schedule(settings),
        beat_max_loop_interval=5,
        redbeat_redis_url=redbeat_url(settings),
        redbeat_redis_options=_redbeat_options(settings),
        redbeat_key_prefix=keys.BEAT_KEY_PREFIX,
        redbeat_lock_key=keys.BEAT_LOCK,
        redbeat_lock_timeout=settings.beat_lock_timeout,
    )
    # The config source, not conf.update(): Celery's loader reads override_backends only there.
    app.config_from_object(config)
    return app


def _route_by_name(
    name: str, args: Any, kwargs: Any, options: Any, **_: Any
) -> dict[str, str] | None:
    """Send ``platform_tasks.<queue>.<task>`` to ``<queue>`` unless the caller named a queue."""
    parts = name.split(".")
    if len(parts) == 3 and parts[0] == "platform_tasks" and parts[1] in {str(q) for q in QUEUES}:
        return {"queue": parts[1]}
    return None
