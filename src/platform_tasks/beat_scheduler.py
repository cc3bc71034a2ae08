"""celery-redbeat's scheduler, plus a last-tick timestamp the monitor turns into beat health."""

from __future__ import annotations

import logging
import time
from typing import Any

from redbeat import RedBeatScheduler
from redbeat.schedulers import get_redis

from platform_tasks import keys

logger = logging.getLogger(__name__)

#: Long enough to outlive any tick interval; a stale value must read as "not ticking".
LAST_TICK_TTL_SECONDS = 24 * 3600


class PlatformBeatScheduler(RedBeatScheduler):  # type: ignore[misc]
    """Only the lock holder ticks, so the timestamp is the leader's."""

    def tick(self, *args: Any, **kwargs: Any) -> float:
        interval: float = super().tick(*args, **kwargs)
        try:
            get_redis(self.app).set(keys.BEAT_LAST_TICK, f"{time.time():.3f}",
                                    ex=LAST_TICK_TTL_SECONDS)
        except Exception:
            # Health reporting must never stop the schedule; the monitor sees a stale tick.
            logger.warning("could not record beat's last tick", exc_info=True)
        return interval

