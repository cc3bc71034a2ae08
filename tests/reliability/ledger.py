"""The ledger: what was attempted, acknowledged, executed and applied, kept outside the faults.

It is a redis-server of its own on a free loopback port, never one of the broker's nodes, so
no fault the suite injects into the broker can touch the record of what happened. Producers
(the suite's load thread, and beat through :mod:`ledger_tasks`) write *attempted* before a
publish and *acknowledged* after it returned; the tasks write each *execution* and apply
their *side effect* once per idempotency key, atomically, the way a payment gateway honours an
``Idempotency-Key``.

Everything is keyed by that idempotency key, which the producer picks before it publishes and
the task receives as an argument: a publish that raised has no task id the producer could
record, yet its message may have landed and run.

Every key lives in :class:`Keys`; :meth:`Ledger.snapshot` reads them all back for the checker.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import redis

from platform_tasks.devstack.ports import LOOPBACK, free_port
from platform_tasks.devstack.processes import ManagedProcess

#: Environment variable that tells worker and beat processes where the ledger is.
LEDGER_URL_ENV = "RELIABILITY_LEDGER_URL"
#: The kind of a run beat sent is this prefix and the sending beat's pid.
BEAT_KIND_PREFIX = "beat:"


class Keys:
    """Every key of the ledger database, in one place."""

    ATTEMPTS = "attempts"  # hash: key -> JSON {queue, kind, at}
    ACKS = "acks"  # hash: key -> JSON {task_id, at}: the publish returned this task id
    PUBLISH_ERRORS = "publish-errors"  # hash: key -> "<time> <why the publish raised>"
    EXECUTIONS = "executions"  # list of JSON {task_id, key, pid, queue, at, ...}
    RUNNING = "running"  # hash: task id -> JSON {pid, at}; removed when the task ends
    EFFECT_OWNER = "effect-owner"  # hash: idempotency key -> task id that applied it
    EFFECT_TRIES = "effect-tries"  # hash: idempotency key -> attempts to apply
    EFFECT_LOG = "effect-log"  # list of idempotency keys, one entry per applied effect
    READY = "ready"  # hash: pid -> JSON {hostname, at}, from worker_ready / beat_init


#: Applies an effect at most once per key, atomically: count the try, claim the key, apply.
#: KEYS: tries, owner, log. ARGV: idempotency key, task id. Returns 1 when applied now.
_APPLY_ONCE = """
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 1 then
  redis.call('RPUSH', KEYS[3], ARGV[1])
  return 1
end
return 0
"""


@dataclass(frozen=True)
class Attempt:
    key: str
    queue: str
    kind: str
    at: float


@dataclass(frozen=True)
class Execution:
    task_id: str
    key: str
    pid: int
    queue: str
    at: float
    enqueued_at: float | None = None
    redelivered: bool = False


@dataclass(frozen=True)
class Snapshot:
    """Everything the ledger holds, read at one moment after the drain."""

    #: Key -> what was attempted; key -> the task id its acknowledged publish returned.
    attempts: dict[str, Attempt]
    acks: dict[str, str]
    publish_errors: dict[str, str]
    executions: list[Execution]
    #: Applied effects per idempotency key (from the log, so a broken guard would show > 1).
    effects_applied: Counter[str]
    effect_tries: Counter[str]
    running: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Key -> when its publish returned (the evidence file shows how long each one took).
    ack_times: dict[str, float] = field(default_factory=dict)


class Ledger:
    """A client of the ledger server; used by the suite, the workers' tasks and beat."""

    def __init__(self, url: str) -> None:
        self.url = url
        # Short timeouts: the ledger is on loopback and never under fault; a hang is a bug.
        self._client = redis.Redis.from_url(
            url, socket_timeout=5.0, socket_connect_timeout=5.0, decode_responses=True
        )
        self._apply_once = self._client.register_script(_APPLY_ONCE)

    def close(self) -> None:
        self._client.close()

    def clear(self) -> None:
        """Forget everything: each scenario starts from an empty ledger."""
        self._client.flushdb()

    # -- producers ----------------------------------------------------------------------------

    def attempted(self, key: str, *, queue: str, kind: str) -> None:
        record = {"queue": queue, "kind": kind, "at": time.time()}
        self._client.hset(Keys.ATTEMPTS, key, json.dumps(record))

    def acknowledged(self, key: str, task_id: str) -> None:
        self._client.hset(Keys.ACKS, key, json.dumps({"task_id": task_id, "at": time.time()}))

    def publish_failed(self, key: str, error: BaseException) -> None:
        self._client.hset(Keys.PUBLISH_ERRORS, key,
                          f"{time.time():.3f} {type(error).__name__}: {error}")

    # -- tasks --------------------------------------------------------------------------------

    def started(self, execution: Execution) -> None:
        """Record one execution as it begins (a run killed halfway still counts)."""
        with self._client.pipeline(transaction=True) as pipe:
            pipe.rpush(Keys.EXECUTIONS, json.dumps(execution.__dict__))
            pipe.hset(Keys.RUNNING, execution.task_id,
                      json.dumps({"pid": execution.pid, "at": execution.at}))
            pipe.execute()

    def finished(self, task_id: str) -> None:
        self._client.hdel(Keys.RUNNING, task_id)

    def apply_effect(self, key: str, task_id: str) -> bool:
        """Apply ``key``'s side effect unless some run already did; whether this one did."""
        return bool(self._apply_once(keys=[Keys.EFFECT_TRIES, Keys.EFFECT_OWNER,
                                           Keys.EFFECT_LOG], args=[key, task_id]))

    def ready(self, pid: int, hostname: str) -> None:
        self._client.hset(Keys.READY, str(pid), json.dumps({"hostname": hostname,
                                                            "at": time.time()}))

    # -- the suite ----------------------------------------------------------------------------

    def is_ready(self, pid: int) -> bool:
        return bool(self._client.hexists(Keys.READY, str(pid)))

    def execution_count(self) -> int:
        return int(self._client.llen(Keys.EXECUTIONS))

    def running(self) -> dict[str, dict[str, Any]]:
        """Tasks started and not finished: running now, or killed while running."""
        raw = cast(dict[str, str], self._client.hgetall(Keys.RUNNING))
        return {task_id: json.loads(value) for task_id, value in raw.items()}

    def snapshot(self) -> Snapshot:
        with self._client.pipeline(transaction=True) as pipe:
            pipe.hgetall(Keys.ATTEMPTS)
            pipe.hgetall(Keys.ACKS)
            pipe.hgetall(Keys.PUBLISH_ERRORS)
            pipe.lrange(Keys.EXECUTIONS, 0, -1)
            pipe.lrange(Keys.EFFECT_LOG, 0, -1)
            pipe.hgetall(Keys.EFFECT_TRIES)
            pipe.hgetall(Keys.RUNNING)
            attempts, acks, errors, executions, log, tries, running = pipe.execute()
        return Snapshot(
            attempts={key: Attempt(key=key, **json.loads(value))
                      for key, value in attempts.items()},
            acks={key: str(json.loads(value)["task_id"]) for key, value in acks.items()},
            ack_times={key: float(json.loads(value)["at"]) for key, value in acks.items()},
            publish_errors=dict(errors),
            executions=[Execution(**json.loads(item)) for item in executions],
            effects_applied=Counter(log),
            effect_tries=Counter({key: int(count) for key, count in tries.items()}),
            running={task_id: json.loads(value) for task_id, value in running.items()},
        )


class LedgerServer:
    """A throw-away redis-server for the ledger: loopback, no persistence, its own port."""

    def __init__(self, binary: Path, run_dir: Path) -> None:
        self.port = free_port()
        run_dir.mkdir(parents=True, exist_ok=True)
        self.process = ManagedProcess(
            "ledger",
            [str(binary), "--port", str(self.port), "--bind", LOOPBACK, "--save", "",
             "--appendonly", "no", "--dir", str(run_dir)],
            None,
            run_dir / "ledger.log",
            cwd=run_dir,
        )

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        self.process.start()
        deadline = time.monotonic() + timeout
        probe = redis.Redis(host=LOOPBACK, port=self.port, socket_timeout=1.0,
                            socket_connect_timeout=1.0)
        try:
            while True:
                try:
                    if probe.ping():
                        return
                except redis.ConnectionError:
                    pass
                if not self.process.alive or time.monotonic() > deadline:
                    raise RuntimeError(f"the ledger's redis-server did not start; see "
                                       f"{self.process.log_path}")
                time.sleep(0.05)
        finally:
            probe.close()

    def stop(self) -> None:
        self.process.stop(5.0)
