"""Redis replies that mean "not now" rather than "never", and retrying through them.

Around a Sentinel failover a client can be told ``NOREPLICAS`` (the new master has no
replica in sync yet, and ``min-replicas-to-write`` protects against lost writes),
``READONLY`` (it still talks to the demoted master), ``LOADING`` or ``MASTERDOWN``. redis-py
and kombu treat these as plain errors, not connection errors, so their retries skip them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TypeVar

import redis

ResultT = TypeVar("ResultT")

TRANSIENT_REPLY_PREFIXES = ("NOREPLICAS", "READONLY", "LOADING", "MASTERDOWN", "TRYAGAIN")
# redis-py reports a reply inside a pipeline as "Command # 1 (…) of pipeline caused error: …".
_TRANSIENT_REPLY = re.compile(
    r"(?:^|of pipeline caused error: )(?:" + "|".join(TRANSIENT_REPLY_PREFIXES) + r")\b"
)


def is_transient_reply(error: BaseException) -> bool:
    """Whether ``error`` is a Redis reply that a retry a little later can get past."""
    if isinstance(error, redis.ReadOnlyError | redis.BusyLoadingError):
        return True
    return isinstance(error, redis.ResponseError) and bool(
        _TRANSIENT_REPLY.search(str(error))
    )


def retry_through_failover(call: Callable[[], ResultT], *, budget_seconds: float) -> ResultT:
    """``call()``, retried with backoff through lost connections and transient replies."""
    deadline = time.monotonic() + budget_seconds
    delay = 0.1
    while True:
        try:
            return call()
        except redis.RedisError as error:
            retriable = isinstance(error, redis.ConnectionError | redis.TimeoutError)
            if not (retriable or is_transient_reply(error)) or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
