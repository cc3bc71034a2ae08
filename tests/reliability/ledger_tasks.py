"""The fault suite's tasks, and the hooks that let worker and beat processes write the ledger.

Workers and beat import this module through ``platform-tasks worker|beat --include
ledger_tasks`` (with ``tests/reliability`` on ``PYTHONPATH`` and the ledger's URL in
:data:`ledger.LEDGER_URL_ENV`). The tasks are plain Celery tasks under the platform's app
configuration (late acks, requeue on a lost worker), sent by name onto the platform's queues,
so they travel exactly the path the platform's own tasks do.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from typing import Any

from celery import shared_task
from celery.signals import after_task_publish, beat_init, before_task_publish, worker_ready
from ledger import BEAT_KIND_PREFIX, LEDGER_URL_ENV, Execution, Ledger

from platform_tasks import headers

APPLY_EFFECT = "reliability.apply_effect"
POISON = "reliability.poison"
BEAT_TICK = "reliability.beat_tick"
TASK_PREFIX = "reliability."

_ledgers: dict[int, Ledger] = {}
_ledgers_lock = threading.Lock()


def ledger() -> Ledger:
    """This process's ledger client: prefork children must not share their parent's socket."""
    pid = os.getpid()
    with _ledgers_lock:
        client = _ledgers.get(pid)
        if client is None:
            client = _ledgers[pid] = Ledger(os.environ[LEDGER_URL_ENV])
        return client


def _begin(task: Any, key: str) -> str:
    request = task.request
    enqueued_at = headers.read(request, headers.ENQUEUED_AT)
    delivery = request.delivery_info or {}
    ledger().started(Execution(
        task_id=str(request.id),
        key=key,
        pid=os.getpid(),
        queue=str(delivery.get("routing_key") or ""),
        at=time.time(),
        enqueued_at=float(enqueued_at) if enqueued_at is not None else None,
        redelivered=bool(delivery.get("redelivered", False)),
    ))
    return str(request.id)


@shared_task(name=APPLY_EFFECT, bind=True)  # type: ignore[untyped-decorator]  # celery has no types
def apply_effect(self: Any, key: str, seconds: float) -> None:
    """Work for ``seconds``, then apply the side effect of ``key`` once however often it runs."""
    task_id = _begin(self, key)
    time.sleep(seconds)
    ledger().apply_effect(key, task_id)
    ledger().finished(task_id)


@shared_task(name=POISON, bind=True)  # type: ignore[untyped-decorator]  # celery has no types
def poison(self: Any, key: str) -> None:
    """Kill the process that runs it, every time: what a segfaulting C extension does."""
    _begin(self, key)
    os.kill(os.getpid(), signal.SIGKILL)


@shared_task(name=BEAT_TICK, bind=True)  # type: ignore[untyped-decorator]  # celery has no types
def beat_tick(self: Any) -> None:
    """What beat schedules in the suite: its effect is keyed by the run's own task id."""
    task_id = str(self.request.id)
    _begin(self, task_id)
    ledger().apply_effect(task_id, task_id)
    ledger().finished(task_id)


# -- process hooks ------------------------------------------------------------------------------


@worker_ready.connect(weak=False)  # type: ignore[untyped-decorator]  # celery has no types
def _worker_ready(sender: Any = None, **_: Any) -> None:
    # The suite waits for this instead of pinging: it names the worker's main process.
    ledger().ready(os.getpid(), str(getattr(sender, "hostname", socket.gethostname())))


def _beat_attempted(sender: Any = None, headers: dict[str, Any] | None = None,
                    routing_key: str | None = None, **_: Any) -> None:
    if headers is None or not str(sender or "").startswith(TASK_PREFIX):
        return
    # A scheduled run's idempotency key is its task id: beat makes a new one per run.
    task_id = str(headers["id"])
    kind = f"{BEAT_KIND_PREFIX}{os.getpid()}"
    ledger().attempted(task_id, queue=str(routing_key or ""), kind=kind)


def _beat_acknowledged(sender: Any = None, headers: dict[str, Any] | None = None,
                       **_: Any) -> None:
    # Celery sends after_task_publish once the broker took the message (publish returned).
    if headers is None or not str(headers.get("task", "")).startswith(TASK_PREFIX):
        return
    task_id = str(headers["id"])
    ledger().acknowledged(task_id, task_id)


@beat_init.connect(weak=False)  # type: ignore[untyped-decorator]  # celery has no types
def _beat_started(sender: Any = None, **_: Any) -> None:
    # Only beat records its publishes through signals: the suite's own producer writes the
    # ledger around each publish itself, and workers publish nothing.
    before_task_publish.connect(_beat_attempted, weak=False, dispatch_uid="ledger-attempted")
    after_task_publish.connect(_beat_acknowledged, weak=False, dispatch_uid="ledger-acked")
    ledger().ready(os.getpid(), "beat")
