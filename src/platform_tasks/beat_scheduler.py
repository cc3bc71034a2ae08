"""celery-redbeat's scheduler, plus a last-tick timestamp the monitor turns into beat health."""

from __future__ import annotations

import logging
import time
from typing import Any

from redbeat import RedBeatScheduler
from redbeat.schedulers import get_redis

from platform_tasks import keys
from platform_tasks.redis_errors import retry_through_failover

logger = logging.getLogger(__name__)

#: Long enough to outlive any tick interval; a stale value must read as "not ticking".
LAST_TICK_TTL_SECONDS = 24 * 3600
#: How long start-up waits out a master that refuses writes (NOREPLICAS while its replicas
#: sync on a fresh install, READONLY during a failover) before giving up and exiting.
SETUP_RETRY_SECONDS = 60.0


class PlatformBeatScheduler(RedBeatScheduler):  # type: ignore[misc]
    """Only the lock holder ticks, so the timestamp is the leader's."""

    def setup_schedule(self) -> None:
        # redbeat writes every static entry at start-up; a master that cannot accept writes
        # yet would otherwise end the process, and a fresh install's beat would crash-loop
        # until the replicas have synced.
        retry_through_failover(super().setup_schedule, budget_seconds=SETUP_RETRY_SECONDS)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        interval: float = super().tick(*args, **kwargs)
        try:
            get_redis(self.app).set(keys.BEAT_LAST_TICK, f"{time.time():.3f}",
                                    ex=LAST_TICK_TTL_SECONDS)
        except Exception:
            # Health reporting must never stop the schedule; the monitor sees a stale tick.
            logger.warning("could not record beat's last tick", exc_info=True)
        return interval

