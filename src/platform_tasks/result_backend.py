"""Celery's Redis result backends: no pub/sub subscription per sent task, one script call per
stored result (on the solo pool, sent without waiting: :mod:`platform_tasks.result_writes`),
failover-tolerant.

Celery's Redis backend subscribes to every task it sends, so that ``AsyncResult.get()`` can
wake up on a notification. Producers enqueue far more tasks than they wait on: each
subscription costs a round trip and a Redis channel, and when Redis goes away the pending
subscriptions make an idle producer reconnect in a loop. Here nothing is subscribed at send
time; ``get()`` still subscribes when it is called and reads the stored state first, so it
never misses a result that arrived earlier.
"""

from __future__ import annotations

from typing import Any

from celery import states
from celery.backends.redis import RedisBackend as CeleryRedisBackend
from celery.backends.redis import SentinelBackend as CelerySentinelBackend
from celery.exceptions import BackendStoreError
from kombu.utils.encoding import bytes_to_str

from platform_tasks import result_writes
from platform_tasks.redis_errors import is_transient_reply

#: Celery's rule in one step: never overwrite a SUCCESS (a lost worker's late duplicate must
#: not replace the result), else store with expiry and notify waiters. Celery does a GET and
#: then a MULTI: two round trips per task, in the pool process, for every result.
_STORE_UNLESS_SUCCEEDED = """
local current = redis.call('GET', KEYS[1])
if current then
  local decoded, meta = pcall(cjson.decode, current)
  if decoded and type(meta) == 'table' and meta['status'] == 'SUCCESS' then
    return 0
  end
end
local expires = tonumber(ARGV[2])
if expires and expires > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', expires)
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""


class _PlatformBackend:
    def on_task_call(self, producer: Any, task_id: str) -> None:
        """Subscribe lazily, in ``get()``, not for every task sent."""

    def _store_result(self, task_id: str, result: Any, state: str, traceback: Any = None,
                      request: Any = None, **kwargs: Any) -> Any:
        backend: Any = self
        if backend.serializer != "json":  # the script reads the stored status as JSON
            return super()._store_result(  # type: ignore[misc]
                task_id, result, state, traceback=traceback, request=request, **kwargs)
        meta = backend._get_result_meta(result=result, state=state, traceback=traceback,
                                        request=request)
        meta["task_id"] = bytes_to_str(task_id)
        value = backend.encode(meta)
        if isinstance(value, str) and len(value) > backend._MAX_STR_VALUE_SIZE:
            raise BackendStoreError("value too large for Redis backend", state=state,
                                    task_id=task_id)
        expires = backend.failure_expires if state == states.FAILURE else backend.expires
        key = backend.get_key_for_task(task_id)
        if state in states.READY_STATES and result_writes.PENDING.send(
            backend, self._store_script().sha, key, value, _seconds(expires)
        ):
            return result
        backend.ensure(self._store_unless_succeeded, (key, value, expires))
        return result

    def _store_script(self) -> Any:
        backend: Any = self
        script = backend.__dict__.get("_store_script_object")
        if script is None:
            # redis-py's Script runs EVALSHA and loads the script again after a NOSCRIPT
            # (a new master after a failover has an empty script cache).
            script = backend.__dict__["_store_script_object"] = backend.client.register_script(
                _STORE_UNLESS_SUCCEEDED)
        return script

    def _store_unless_succeeded(self, key: str, value: Any, expires: Any) -> None:
        backend: Any = self
        self._store_script()(keys=[key], args=[value, _seconds(expires)],
                             client=backend.client)

    def exception_safe_to_retry(self, exc: BaseException) -> bool:
        """Also retry storing a result through a failover's NOREPLICAS/READONLY replies."""
        return bool(super().exception_safe_to_retry(exc)) or is_transient_reply(exc)  # type: ignore[misc]


def _seconds(expires: Any) -> int:
    return int(expires.total_seconds() if hasattr(expires, "total_seconds") else expires or 0)


class RedisBackend(_PlatformBackend, CeleryRedisBackend):  # type: ignore[misc]
    """Celery's ``redis://`` result backend, with the behaviour above."""


class SentinelBackend(_PlatformBackend, CelerySentinelBackend):  # type: ignore[misc]
    """Celery's ``sentinel://`` result backend, with the behaviour above."""


#: Celery's ``override_backends`` setting: URL schemes mapped to these classes.
BY_SCHEME = {
    "redis": f"{__name__}:RedisBackend",
    "rediss": f"{__name__}:RedisBackend",
    "sentinel": f"{__name__}:SentinelBackend",
}
