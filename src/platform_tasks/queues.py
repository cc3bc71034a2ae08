"""The queue catalog: the platform's queues and the policy each one's workers run with.

This is the only place queue names are spelled in Python. The reasons behind each default are
in ``docs/queues.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Literal

Pool = Literal["prefork", "threads", "solo"]

#: The longest a worker may hold one message: waiting for its ETA, behind the prefetched
#: ones, then running. Countdowns and ETAs are capped so that every queue's holds fit in it.
#: (The broker's visibility timeout need not cover it: a worker keeps refreshing the
#: visibility of what it holds, see platform_tasks.visibility.)
MAX_HOLD_SECONDS = 3600
HOLD_MARGIN_SECONDS = 60


class QueueName(StrEnum):
    EMAIL = "email"
    MEDIA = "media"
    PAYMENTS = "payments"
    DEFAULT = "default"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a queue's tasks retry transient failures: exponential backoff with full jitter."""

    max_retries: int
    backoff_seconds: int
    backoff_max_seconds: int
    jitter: bool = True

    def countdown(self, retries: int, *, random_fraction: float = 1.0) -> float:
        """Seconds to wait before retry number ``retries + 1`` (``random_fraction`` in [0, 1])."""
        ceiling = min(self.backoff_max_seconds, self.backoff_seconds * (2**retries))
        if not self.jitter:
            return float(ceiling)
        # Full jitter, but never less than one base step so a retry storm still spreads out.
        return float(max(self.backoff_seconds, ceiling * random_fraction))


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """How one queue's workers run its tasks."""

    name: QueueName
    pool: Pool
    concurrency: int
    prefetch_multiplier: int
    acks_late: bool
    soft_time_limit: int
    time_limit: int
    retry: RetryPolicy
    rate_limit: str | None
    soft_shutdown_seconds: int
    description: str
    #: A publish onto this queue succeeds only once this many replicas have the message
    #: (``WAIT``): a failover right after it cannot lose it. 0: the master's word suffices.
    #: Applies to a Sentinel-managed broker (a single Redis has no replica to wait for).
    confirm_replicas: int = 1
    #: Record the STARTED state when a task begins: one more result write per task, worth it
    #: for tasks long enough that someone asks "is it running yet?".
    track_started: bool = True

    def __post_init__(self) -> None:
        if self.soft_time_limit >= self.time_limit:
            raise ValueError(f"{self.name}: the soft time limit must be below the hard one")
        if self.concurrency < 1 or self.prefetch_multiplier < 1:
            raise ValueError(f"{self.name}: concurrency and prefetch must be at least 1")

    @property
    def longest_hold_seconds(self) -> int:
        """Longest a delivered message can stay unacknowledged on this queue's worker.

        It may wait behind every prefetched message (one per pool slot) running to its hard
        limit, then run to the hard limit itself.
        """
        return (self.prefetch_multiplier + 1) * self.time_limit

    @property
    def max_delay_seconds(self) -> int:
        """Longest countdown/eta this queue accepts: a worker holds a delayed message
        unacknowledged while it waits, and must still finish it within :data:`MAX_HOLD_SECONDS`."""
        return MAX_HOLD_SECONDS - self.longest_hold_seconds - HOLD_MARGIN_SECONDS

    @property
    def enforces_time_limits(self) -> bool:
        """Celery enforces time limits in the prefork pool, the platform in the solo pool
        (:mod:`platform_tasks.solo_limits`); threads rely on I/O timeouts."""
        return self.pool != "threads"

    @property
    def worker_nodes(self) -> int:
        """Celery workers (node names) one pod of this queue runs: a solo pool with a
        concurrency of N is a group of N single-loop workers (platform_tasks.worker_group)."""
        return self.concurrency if self.pool == "solo" else 1


QUEUES: Mapping[QueueName, QueuePolicy] = MappingProxyType(
    {
        QueueName.EMAIL: QueuePolicy(
            name=QueueName.EMAIL,
            pool="threads",
            concurrency=16,
            prefetch_multiplier=4,
            acks_late=True,
            soft_time_limit=30,
            time_limit=60,
            retry=RetryPolicy(max_retries=6, backoff_seconds=5, backoff_max_seconds=600),
            rate_limit="50/s",
            soft_shutdown_seconds=20,
            description="Outgoing mail: I/O-bound, many concurrent SMTP sessions.",
        ),
        QueueName.MEDIA: QueuePolicy(
            name=QueueName.MEDIA,
            pool="prefork",
            concurrency=1,
            prefetch_multiplier=1,
            acks_late=True,
            soft_time_limit=120,
            time_limit=180,
            retry=RetryPolicy(max_retries=2, backoff_seconds=10, backoff_max_seconds=120),
            rate_limit=None,
            soft_shutdown_seconds=60,
            description="Image processing: CPU-bound, one task per process, scale by replicas.",
        ),
        QueueName.PAYMENTS: QueuePolicy(
            name=QueueName.PAYMENTS,
            pool="threads",
            concurrency=8,
            prefetch_multiplier=1,
            acks_late=True,
            soft_time_limit=30,
            time_limit=60,
            retry=RetryPolicy(max_retries=5, backoff_seconds=2, backoff_max_seconds=60),
            rate_limit=None,
            soft_shutdown_seconds=30,
            description="Charges against the payment gateway: idempotent, never prefetched far.",
        ),
        QueueName.DEFAULT: QueuePolicy(
            name=QueueName.DEFAULT,
            # Two single-loop processes, not a prefork parent handing every task to its
            # children: on short tasks that parent is the bottleneck (docs/benchmarks.md).
            pool="solo",
            concurrency=2,
            prefetch_multiplier=4,
            acks_late=True,
            soft_time_limit=300,
            time_limit=360,
            retry=RetryPolicy(max_retries=3, backoff_seconds=5, backoff_max_seconds=300),
            rate_limit=None,
            soft_shutdown_seconds=30,
            description="Everything else: short mixed work, reports, the seed's arithmetic.",
            track_started=False,
        ),
    }
)

QUEUE_NAMES: tuple[str, ...] = tuple(str(name) for name in QUEUES)

if any(policy.max_delay_seconds < 60 for policy in QUEUES.values()):
    raise ValueError("a queue holds messages longer than MAX_HOLD_SECONDS allows")


def policy_for(queue: str) -> QueuePolicy:
    """The policy of ``queue``; raises ``KeyError`` naming the known queues otherwise."""
    try:
        return QUEUES[QueueName(queue)]
    except ValueError:
        raise KeyError(
            f"unknown queue {queue!r}; known queues: {', '.join(QUEUE_NAMES)}"
        ) from None
