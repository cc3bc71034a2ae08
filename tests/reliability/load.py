"""A steady mixed load from a producer thread, each publish bracketed by the ledger.

Before a publish the ledger records the task's idempotency key as *attempted*; when the
publish returns, as *acknowledged* (with the task id it returned); when it raises, the error.
The publish is the platform's own: ``TaskProducer.enqueue``, with its checks, its retry through
a failover and, on ``payments``, its replica-confirmed write. The producer only accepts task
names from the platform's catalog, so this process adds the suite's tasks to the catalog the
producer reads (the workers never consult it for them).

The mix spreads work over the prefork queue (``default``) and the thread-pool queues
(``email``, ``payments``), with short and longer tasks so that a fault finds tasks waiting,
prefetched and running at once.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Self

from ledger import Ledger
from ledger_tasks import APPLY_EFFECT, POISON
from pydantic import Field

from platform_tasks import contracts
from platform_tasks import producer as producer_module
from platform_tasks.app import PUBLISH_RETRY_POLICY, PlatformCelery
from platform_tasks.producer import PUBLISH_BUDGET_SECONDS, TaskProducer
from platform_tasks.queues import QueueName
from platform_tasks.redis_errors import retry_through_failover
from platform_tasks.settings import Settings


class ApplyEffectArgs(contracts.TaskArguments):
    key: str
    seconds: float = Field(ge=0)


class PoisonArgs(contracts.TaskArguments):
    key: str


#: The suite's tasks as the producer sees platform tasks (the queue named is only a default:
#: every publish names its queue).
LEDGER_CONTRACTS = {
    APPLY_EFFECT: contracts.TaskContract(APPLY_EFFECT, QueueName.DEFAULT, ApplyEffectArgs),
    POISON: contracts.TaskContract(POISON, QueueName.DEFAULT, PoisonArgs),
}


def register_ledger_contracts() -> None:
    """Let this process's ``TaskProducer`` enqueue the suite's tasks (idempotent).

    The producer looks task names up in the catalog it imported, ``producer.TASKS``; that
    name is replaced, in this process only, by the catalog plus the suite's tasks.
    """
    namespace = vars(producer_module)
    if APPLY_EFFECT not in namespace["TASKS"]:
        namespace["TASKS"] = MappingProxyType({**contracts.TASKS, **LEDGER_CONTRACTS})


@dataclass(frozen=True)
class Kind:
    """One kind of task in the mix: where it goes, how long it works, how often it comes."""

    name: str
    queue: str
    seconds: float
    weight: int


#: The default mix: mostly short tasks, a few that run long enough to be caught mid-run.
#: At 20 tasks a second it keeps the default queue's two prefork processes about 60% busy:
#: a fault finds work running and waiting, and the backlog drains within seconds after it.
MIXED: tuple[Kind, ...] = (
    Kind("default-short", "default", 0.05, 4),
    Kind("default-long", "default", 0.5, 1),
    Kind("email-short", "email", 0.05, 3),
    Kind("payments-long", "payments", 0.8, 2),
)


def publish_raw(app: PlatformCelery, task: str, *, queue: str, task_id: str,
                args: Sequence[Any] = ()) -> None:
    """Publish any task name with Celery's ``send_task`` and the platform's retry policy:
    for what the producer would refuse (an unknown task, in scenario 11)."""
    retry_through_failover(
        lambda: app.send_task(task, args=list(args), queue=queue, task_id=task_id,
                              retry=True, retry_policy=PUBLISH_RETRY_POLICY),
        budget_seconds=PUBLISH_BUDGET_SECONDS,
    )


class LedgerProducer:
    """Enqueues the suite's tasks one by one, recording each in the ledger around it."""

    def __init__(self, settings: Settings, ledger: Ledger, prefix: str) -> None:
        register_ledger_contracts()
        self.producer = TaskProducer(settings)
        self.app = self.producer.app
        self.ledger = ledger
        self.prefix = prefix
        # next() on a count is atomic under the GIL: the load's threads share it safely.
        self._numbers = itertools.count()
        self.acknowledged = 0
        self.failed = 0

    def send(self, queue: str, seconds: float = 0.0, *, kind: str = "work",
             task: str = APPLY_EFFECT) -> str:
        """Enqueue one task with a fresh idempotency key; the key. Raises what enqueue raised."""
        key = f"{self.prefix}-{next(self._numbers)}"
        self.ledger.attempted(key, queue=queue, kind=kind)
        args: list[Any] = [key, seconds] if task == APPLY_EFFECT else [key]
        try:
            task_id = self.producer.enqueue(task, queue=queue, args=args)
        except Exception as error:
            self.ledger.publish_failed(key, error)
            self.failed += 1
            raise
        self.ledger.acknowledged(key, task_id)
        self.acknowledged += 1
        return key

    def close(self) -> None:
        self.producer.close()


class SteadyLoad:
    """``rate`` tasks a second from ``mix``, until stopped: one thread per queue, as a service
    publishing from several request threads would, so a publish riding out a fault on one
    queue (a replica-confirmed payment, say) does not hold back the others."""

    def __init__(
        self,
        producer: LedgerProducer,
        *,
        rate: float = 20.0,
        mix: Sequence[Kind] = MIXED,
    ) -> None:
        self.producer = producer
        total = sum(kind.weight for kind in mix)
        queues = sorted({kind.queue for kind in mix})
        self._lanes = [
            _Lane(self, [kind for kind in mix if kind.queue == queue],
                  rate * sum(kind.weight for kind in mix if kind.queue == queue) / total)
            for queue in queues
        ]
        self.queues = tuple(queues)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=lane.run, name=f"load-{queue}", daemon=True)
                         for queue, lane in zip(queues, self._lanes, strict=True)]

    @property
    def sent(self) -> int:
        return sum(lane.sent for lane in self._lanes)

    @property
    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def start(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float = PUBLISH_BUDGET_SECONDS + 30) -> None:
        """Stop sending and wait for publishes in progress (they may be riding out a fault)."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self.running:
            raise RuntimeError(f"a load thread is still publishing after {timeout:g}s")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _Lane:
    """One queue's share of the load, sent from its own thread."""

    def __init__(self, load: SteadyLoad, kinds: list[Kind], rate: float) -> None:
        self.load = load
        # Deterministic round robin over the weighted kinds: every run sends the same mix.
        self._cycle = itertools.cycle([kind for kind in kinds for _ in range(kind.weight)])
        self.rate = rate
        self.sent = 0

    def run(self) -> None:
        interval = 1.0 / self.rate
        due = time.monotonic()
        stop = self.load._stop
        while not stop.is_set():
            kind = next(self._cycle)
            try:
                self.load.producer.send(kind.queue, kind.seconds, kind=kind.name)
            except Exception as error:  # recorded in the ledger; the load goes on
                self.load.errors.append(f"{type(error).__name__}: {error}")
            self.sent += 1
            # Keep the rate, but after a publish blocked by a fault do not burst to catch up.
            due = max(due + interval, time.monotonic() - interval)
            stop.wait(max(0.0, due - time.monotonic()))
