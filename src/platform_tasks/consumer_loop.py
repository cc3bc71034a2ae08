"""When the worker's consumer loop last went round, so the heartbeat can tell a wedged worker.

The heartbeat is a thread of its own: it keeps beating while the thread that consumes is
blocked for good (the ledger suite caught one such hang, inside a pub/sub read). Each turn of
the consumer's event loop records the time here (a tick callback the platform's transport
registers); the heartbeat stops beating when the loop has not turned for
:data:`STALL_SECONDS`, so the liveness probe restarts the worker and the monitor stops counting
it as a consumer. Until the first turn nothing is claimed either way.
"""

from __future__ import annotations

import time

#: The loop turns at least once a second (its poll timeout) plus the longest synchronous
#: Redis call it makes (socket timeouts with redis-py's retries): a minute is a wedge.
STALL_SECONDS = 60.0

_last_turn: float | None = None


def turned() -> None:
    """Called on every turn of the consumer's event loop."""
    global _last_turn
    _last_turn = time.monotonic()


def stalled_for(now: float | None = None) -> float | None:
    """Seconds since the loop last turned when that is longer than :data:`STALL_SECONDS`;
    None while it turns (or never has)."""
    last = _last_turn
    if last is None:
        return None
    since = (time.monotonic() if now is None else now) - last
    return since if since > STALL_SECONDS else None
