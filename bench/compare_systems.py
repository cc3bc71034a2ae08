"""The systems ``bench/compare.py`` measures, behind one interface the scenarios drive.

- ``platform``: the platform as shipped: ``platform-tasks worker --queue default`` (and, for
  the mix, the ``media`` and ``payments`` workers) against a Sentinel topology, JSON logs at
  INFO and /metrics on, producing through :class:`TaskProducer`.
- ``platform-single-redis``: the same worker and producer against one plain ``redis-server``
  like the baselines' (no replicas, no Sentinels; the producer then waits for no replica):
  it tells what the Sentinel topology's extra processes cost when they share the cores.
- ``seed-celery``: Celery exactly as its "First steps" tutorial configures it, generated as
  ``tasks.py`` into the run directory and run as ``celery -A tasks worker --loglevel=INFO
  -c 2`` against a plain Redis.
- ``dramatiq``: Dramatiq's Redis broker, ``dramatiq compare_dramatiq_app -p 2 -t 8``.
- ``rq``: RQ's simple (non-forking) worker, ``rq worker -w rq.worker.SimpleWorker``.

Each system counts its own finished tasks the cheapest exact way its storage allows, so the
harness can time a drain from the outside the same way for all four (see ``completed``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import compare_workload
import redis
from compare_procs import HarnessError, PlainRedis, Workers, argv_python, clean_env, managed

from platform_tasks import inspection
from platform_tasks.devstack.ports import LOOPBACK, free_port
from platform_tasks.devstack.stack import worker_argv
from platform_tasks.devstack.topology import SentinelTopology
from platform_tasks.producer import TaskProducer
from platform_tasks.settings import Settings, load_settings

BENCH_DIR = Path(__file__).resolve().parent
#: Messages written per Redis round trip when a system's queue is pre-filled.
FILL_CHUNK = 2000


@dataclass(frozen=True)
class MixItem:
    """One task of the realistic mix: a thumbnail (CPU) or a charge (I/O)."""

    kind: str  # "thumbnail" or "charge"
    index: int


@dataclass(frozen=True)
class Workload:
    """What the mix's tasks work on, shared by every system: one image, one gateway."""

    media_root: Path
    image: str
    sizes: tuple[tuple[int, int], ...]
    gateway_url: str

    def charge_fields(self, tag: str, index: int) -> dict[str, Any]:
        key = f"{tag}-{index:06d}-{uuid.uuid4().hex[:8]}"
        return {"transaction_id": f"tx-{key}", "amount_minor": 1234, "currency": "USD",
                "idempotency_key": f"idem-{key}"}

    def size_lists(self) -> list[list[int]]:
        return [list(size) for size in self.sizes]


@dataclass(frozen=True)
class Probe:
    """A latency probe: the id its start is recorded under and when it was enqueued."""

    key: str
    enqueued: float


class System(ABC):
    """One system under test; every method works on that system's own Redis only."""

    name: str
    #: Worker processes in the system's standard set-up (the scaling scenario varies it).
    default_processes: int
    #: The bulk-enqueue API measured, or ``None`` where the system has none.
    bulk_api: str | None

    def __init__(self, run_dir: Path, workload: Workload) -> None:
        self.run_dir = run_dir
        self.workload = workload
        self.expected = 0

    @abstractmethod
    def reset(self) -> None:
        """Empty the queues, results and bookkeeping (workers are stopped at this point)."""

    @abstractmethod
    def fill(self, count: int) -> None:
        """Put ``count`` no-op ``add`` tasks on the queue, as fast as the system allows."""

    @abstractmethod
    def fill_mix(self, items: list[MixItem], tag: str) -> None:
        """Enqueue the mix's tasks, in order."""

    @abstractmethod
    def workers(self, processes: int, tag: str, *, mix: bool = False) -> Workers:
        """The system's worker processes (not started yet)."""

    @abstractmethod
    def completed(self) -> int:
        """Tasks finished since the last reset."""

    @abstractmethod
    def failures(self) -> int:
        """Tasks that failed since the last reset (checked after each drain)."""

    @abstractmethod
    def send_probe(self) -> Probe:
        """Enqueue one latency probe through the system's single-task API."""

    @abstractmethod
    def probe_starts(self, workers: Workers) -> dict[str, float]:
        """Start time (epoch seconds) of every probe that has started, by probe key."""

    @abstractmethod
    def enqueue_loop(self, count: int) -> None:
        """Enqueue ``count`` no-op tasks one call at a time (``.delay()``, ``send``...)."""

    def enqueue_bulk(self, count: int) -> None:
        """Enqueue ``count`` no-op tasks with the system's bulk API (see :attr:`bulk_api`)."""
        raise NotImplementedError(f"{self.name} has no bulk enqueue API")

    @abstractmethod
    def waiting(self) -> int:
        """Messages on the queue, not yet delivered to a worker."""

    @abstractmethod
    def close(self) -> None:
        """Release the harness's own connections."""


def _delete_all_but_bindings(client: redis.Redis) -> None:
    """Empty a kombu broker database but keep its exchange bindings: a long-lived producer
    declared its queue once and would otherwise publish into a binding that is gone."""
    doomed = [key for key in client.scan_iter(count=1000)
              if not _as_text(key).startswith("_kombu.binding.")]
    for start in range(0, len(doomed), 1000):
        client.delete(*doomed[start:start + 1000])


def _as_text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _chunks(count: int, size: int = FILL_CHUNK) -> Iterator[range]:
    for start in range(0, count, size):
        yield range(start, min(count, start + size))


def _result_failures(client: redis.Redis) -> int:
    """Celery results whose state is not SUCCESS (STARTED counts as not failed)."""
    failed = 0
    keys = list(client.scan_iter(match="celery-task-meta-*", count=1000))
    for start in range(0, len(keys), 1000):
        for raw in client.mget(keys[start:start + 1000]):
            if raw is not None and json.loads(raw).get("status") not in {"SUCCESS", "STARTED"}:
                failed += 1
    return failed


# -- platform ----------------------------------------------------------------------------

ADD_NUMBERS = "platform_tasks.default.add_numbers"
MAKE_THUMBNAIL = "platform_tasks.media.make_thumbnail"
PROCESS_PAYMENT = "platform_tasks.payments.process_payment"


class TaskStartLog:
    """The ``task_started`` lines of a platform worker's JSON log: task id -> start time.

    The shipped worker logs this line with a timestamp for every task, so the platform's
    latency is read without changing its code; each file is read on from where it was left.
    """

    def __init__(self) -> None:
        self._offsets: dict[Path, int] = {}
        self.starts: dict[str, float] = {}

    def read(self, paths: list[Path]) -> dict[str, float]:
        for path in paths:
            try:
                with path.open("rb") as log:
                    log.seek(self._offsets.get(path, 0))
                    chunk = log.read()
            except FileNotFoundError:
                continue
            complete = chunk.rfind(b"\n") + 1  # a line still being written waits its turn
            self._offsets[path] = self._offsets.get(path, 0) + complete
            for line in chunk[:complete].splitlines():
                if b'"task_started"' in line:
                    self._record(line)
        return self.starts

    def _record(self, line: bytes) -> None:
        try:
            entry = json.loads(line)
            stamp = datetime.fromisoformat(entry["timestamp"]).timestamp()
        except (ValueError, KeyError, TypeError):
            return
        if entry.get("event") == "task_started" and entry.get("task_id"):
            self.starts[str(entry["task_id"])] = stamp


class SingleRedisBroker:
    """A plain ``redis-server`` standing where the platform's Sentinel topology would: the
    settings and the master address :class:`PlatformSystem` asks a broker for."""

    password: str | None = None

    def __init__(self, plain: PlainRedis) -> None:
        self.plain = plain

    def settings_env(self) -> dict[str, str]:
        return {"PLATFORM_TASKS_REDIS_URL": self.plain.url(0)}

    def master_address(self) -> tuple[str, int]:
        return LOOPBACK, self.plain.port


class PlatformSystem(System):
    name = "platform"
    default_processes = 2  # the default queue's policy: solo, a group of 2
    bulk_api = "TaskProducer.enqueue_many"

    def __init__(self, run_dir: Path, workload: Workload,
                 topology: SentinelTopology | SingleRedisBroker) -> None:
        super().__init__(run_dir, workload)
        self.topology = topology
        self.settings: Settings = load_settings(
            {**topology.settings_env(), "PLATFORM_TASKS_LOG_LEVEL": "WARNING"}
        )
        self.producer = TaskProducer(self.settings)
        self._queues: tuple[str, ...] = ("default",)
        self._starts = TaskStartLog()
        self._broker = self._master(self.settings.broker_db)

    def _master(self, db: int) -> redis.Redis:
        host, port = self.topology.master_address()
        return redis.Redis(host=host, port=port, db=db, password=self.topology.password,
                           socket_timeout=5)

    def reset(self) -> None:
        with self._master(self.settings.broker_db) as broker:
            _delete_all_but_bindings(broker)
        with self._master(self.settings.result_db) as results:
            results.flushdb()
        self.expected = 0
        self._queues = ("default",)
        self._starts = TaskStartLog()
        self._broker.close()
        self._broker = self._master(self.settings.broker_db)

    def fill(self, count: int) -> None:
        for chunk in _chunks(count, 10_000):
            self.producer.enqueue_many(ADD_NUMBERS, [([n, n], None) for n in chunk],
                                       queue="default")
        self.expected += count

    def fill_mix(self, items: list[MixItem], tag: str) -> None:
        thumbnails = [((), {"source": self.workload.image, "sizes": self.workload.size_lists()})
                      for item in items if item.kind == "thumbnail"]
        charges = [((), self._payment(tag, item.index)) for item in items
                   if item.kind == "charge"]
        # Each task goes to its home queue, served by that queue's worker as shipped.
        self.producer.enqueue_many(MAKE_THUMBNAIL, thumbnails, queue="media")
        self.producer.enqueue_many(PROCESS_PAYMENT, charges, queue="payments")
        self.expected += len(items)
        self._queues = ("media", "payments")

    def _payment(self, tag: str, index: int) -> dict[str, Any]:
        fields = self.workload.charge_fields(tag, index)
        return {"transaction_id": fields["transaction_id"], "amount": "12.34",
                "currency": fields["currency"], "idempotency_key": fields["idempotency_key"]}

    def _env(self, tag: str) -> dict[str, str]:
        return clean_env({
            **self.topology.settings_env(),
            "PLATFORM_TASKS_METRICS_HOST": LOOPBACK,
            "PLATFORM_TASKS_METRICS_PORT": str(free_port()),
            "PLATFORM_TASKS_METRICS_DIR": str(self.run_dir / "metrics" / tag),
            "PLATFORM_TASKS_MEDIA_ROOT": str(self.workload.media_root),
            "PLATFORM_TASKS_PAYMENT_GATEWAY_URL": self.workload.gateway_url,
        })

    def workers(self, processes: int, tag: str, *, mix: bool = False) -> Workers:
        group = Workers(f"platform-{tag}")
        if mix:
            for queue in ("media", "payments"):
                group.processes.append(managed(f"platform-{tag}-{queue}", worker_argv(queue),
                                               self._env(f"{tag}-{queue}"), self.run_dir))
            return group
        argv = worker_argv("default")
        if processes != self.default_processes:
            argv += ["--concurrency", str(processes)]
        group.processes.append(managed(f"platform-{tag}", argv, self._env(tag), self.run_dir))
        return group

    def completed(self) -> int:
        # acks_late: a message leaves the queue's lists and the unacked hash only when its
        # task has finished, so what is neither waiting nor in flight is done.
        depths = inspection.queue_depths(self._broker, self._queues)
        return self.expected - sum(depth.total for depth in depths)

    def failures(self) -> int:
        with self._master(self.settings.result_db) as results:
            return _result_failures(results)

    def send_probe(self) -> Probe:
        enqueued = time.time()
        task_id = self.producer.enqueue(ADD_NUMBERS, queue="default", args=[1, 1])
        self.expected += 1
        return Probe(task_id, enqueued)

    def probe_starts(self, workers: Workers) -> dict[str, float]:
        return self._starts.read(workers.log_paths)

    def enqueue_loop(self, count: int) -> None:
        for n in range(count):
            self.producer.enqueue(ADD_NUMBERS, queue="default", args=[n, n])
        self.expected += count

    def enqueue_bulk(self, count: int) -> None:
        self.fill(count)

    def waiting(self) -> int:
        return sum(depth.ready for depth in inspection.queue_depths(self._broker, ("default",)))

    def reconnect(self) -> None:
        """A new producer and broker client, after a failover moved the master."""
        self.producer.close()
        self.producer = TaskProducer(self.settings)
        self._broker = self._master(self.settings.broker_db)

    def close(self) -> None:
        self.producer.close()


class PlatformSingleRedisSystem(PlatformSystem):
    """The platform on one plain Redis (see the module's docstring)."""

    name = "platform-single-redis"


# -- Celery as the seed tutorial configures it ---------------------------------------------

SEED_TASKS = '''\
from celery import Celery

app = Celery('tasks', broker='{broker}', backend='{backend}')


@app.task
def add(x, y):
    return x + y


# Not in the tutorial: the benchmark's latency probe and mix tasks, on the same app.
import compare_workload


@app.task
def stamp(probe_id):
    compare_workload.stamp(probe_id)


@app.task
def thumbnail(source, sizes):
    return compare_workload.thumbnail(source, sizes)


@app.task
def charge(transaction_id, amount_minor, currency, idempotency_key):
    return compare_workload.charge(transaction_id, amount_minor, currency, idempotency_key)
'''

SEED_BROKER_DB, SEED_RESULT_DB, DRAMATIQ_DB, RQ_DB = 0, 1, 2, 3
#: Each baseline's probes stamp into a database of its own, so systems can run side by side.
STAMP_DBS = {"seed-celery": 4, "dramatiq": 5, "rq": 6}
#: Celery's default queue, which the tutorial keeps.
SEED_QUEUE = "celery"


def _baseline_env(plain: PlainRedis, workload: Workload, system: str,
                  extra: dict[str, str]) -> dict[str, str]:
    # The task bodies live beside this file; whatever PYTHONPATH the harness runs with (a
    # snapshot of the platform's src, say) stays behind it, as for the platform's workers.
    inherited = os.environ.get("PYTHONPATH")
    return clean_env({
        "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH_DIR), inherited])),
        compare_workload.STAMP_URL_ENV: plain.url(STAMP_DBS[system]),
        compare_workload.MEDIA_ROOT_ENV: str(workload.media_root),
        compare_workload.GATEWAY_URL_ENV: workload.gateway_url,
        **extra,
    })


class _StampedProbes:
    """Probe starts that the baselines' ``stamp`` task writes into one hash."""

    def __init__(self, plain: PlainRedis, system: str) -> None:
        self._client = plain.client(STAMP_DBS[system])

    def reset(self) -> None:
        self._client.delete(compare_workload.STARTED_HASH)

    def starts(self) -> dict[str, float]:
        raw = self._client.hgetall(compare_workload.STARTED_HASH)
        return {_as_text(key): float(value) for key, value in raw.items()}

    def close(self) -> None:
        self._client.close()


def _load_module(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise HarnessError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class SeedCelerySystem(System):
    name = "seed-celery"
    default_processes = 2  # the tutorial's -c 2 here (its default is one per core: 2)
    bulk_api = None

    def __init__(self, run_dir: Path, workload: Workload, plain: PlainRedis) -> None:
        super().__init__(run_dir, workload)
        self.plain = plain
        self.app_dir = run_dir / "seed"
        self.app_dir.mkdir(parents=True, exist_ok=True)
        (self.app_dir / "tasks.py").write_text(SEED_TASKS.format(
            broker=plain.url(SEED_BROKER_DB), backend=plain.url(SEED_RESULT_DB)))
        self.tasks = _load_module("tasks", self.app_dir / "tasks.py")
        self._broker = plain.client(SEED_BROKER_DB)
        self._results = plain.client(SEED_RESULT_DB)
        self._probes = _StampedProbes(plain, self.name)
        self._template: str | None = None

    def reset(self) -> None:
        _delete_all_but_bindings(self._broker)
        self._results.flushdb()
        self._probes.reset()
        self.expected = 0
        # Taken now, while no worker runs: one started later would run the template task
        # before it could be read back (the latency scenario fills behind a running worker).
        self._message_template()

    def _message_template(self) -> str:
        """One real ``add.delay(0, 0)`` message, taken back off the queue."""
        if self._template is None:
            result = self.tasks.add.delay(0, 0)
            raw = self._broker.lpop(SEED_QUEUE)
            if not isinstance(raw, bytes) or result.id not in raw.decode():
                raise HarnessError("seed: the template message did not land on the queue")
            self._template = raw.decode()
        return self._template

    def fill(self, count: int) -> None:
        # The tutorial's Celery has no bulk API and a .delay() loop is ~1,000/s: copies of
        # one real message with fresh task ids and delivery tags fill 100k in seconds.
        template = self._message_template()
        envelope = json.loads(template)
        task_id = envelope["headers"]["id"]
        tag = envelope["properties"]["delivery_tag"]
        for chunk in _chunks(count):
            copies = [template.replace(task_id, str(uuid.uuid4())).replace(tag, str(uuid.uuid4()))
                      for _ in chunk]
            self._broker.lpush(SEED_QUEUE, *copies)
        self.expected += count

    def fill_mix(self, items: list[MixItem], tag: str) -> None:
        for item in items:
            if item.kind == "thumbnail":
                self.tasks.thumbnail.delay(self.workload.image, self.workload.size_lists())
            else:
                self.tasks.charge.delay(**self.workload.charge_fields(tag, item.index))
        self.expected += len(items)

    def workers(self, processes: int, tag: str, *, mix: bool = False) -> Workers:
        argv = argv_python("-m", "celery", "-A", "tasks", "worker", "--loglevel=INFO",
                           "-c", str(processes))
        env = _baseline_env(self.plain, self.workload, self.name, {})
        return Workers(f"seed-{tag}", [managed(f"seed-{tag}", argv, env, self.run_dir,
                                               cwd=self.app_dir)])

    def completed(self) -> int:
        # The tutorial stores every result, once, when its task has finished.
        return int(self._results.dbsize())

    def failures(self) -> int:
        return _result_failures(self._results)

    def send_probe(self) -> Probe:
        key = uuid.uuid4().hex
        enqueued = time.time()
        self.tasks.stamp.delay(key)
        self.expected += 1
        return Probe(key, enqueued)

    def probe_starts(self, workers: Workers) -> dict[str, float]:
        return self._probes.starts()

    def enqueue_loop(self, count: int) -> None:
        for n in range(count):
            self.tasks.add.delay(n, n)
        self.expected += count

    def waiting(self) -> int:
        return int(self._broker.llen(SEED_QUEUE))

    def close(self) -> None:
        self.tasks.app.close()
        self._broker.close()
        self._results.close()
        self._probes.close()


# -- Dramatiq ----------------------------------------------------------------------------


class DramatiqSystem(System):
    name = "dramatiq"
    default_processes = 2  # with 8 threads each, Dramatiq's own defaults
    bulk_api = "group(...).run()"
    threads = 8

    def __init__(self, run_dir: Path, workload: Workload, plain: PlainRedis) -> None:
        super().__init__(run_dir, workload)
        self.plain = plain
        url = plain.url(DRAMATIQ_DB)
        self.env = _baseline_env(plain, workload, self.name, {"COMPARE_DRAMATIQ_URL": url})
        # The actors module reads its broker URL at import, in the harness as in the workers.
        os.environ["COMPARE_DRAMATIQ_URL"] = url
        import compare_dramatiq_app

        self.app = compare_dramatiq_app
        self._client = plain.client(DRAMATIQ_DB)
        self._probes = _StampedProbes(plain, self.name)
        prefix = f"{compare_dramatiq_app.NAMESPACE}:{compare_dramatiq_app.QUEUE}"
        self._queue_key = prefix
        self._messages_key = f"{prefix}.msgs"
        self._dead_key = f"{prefix}.XQ"
        self._retrying_key = f"{prefix}.DQ.msgs"

    def reset(self) -> None:
        self._client.flushdb()
        self._probes.reset()
        self.expected = 0

    def fill(self, count: int) -> None:
        # Dramatiq's broker enqueues one message per Lua call; this writes what that call
        # writes (dispatch.lua "enqueue": the body into the queue's hash, its id onto the
        # list), pipelined, so deep queues fill in seconds.
        for chunk in _chunks(count):
            with self._client.pipeline(transaction=False) as pipe:
                for n in chunk:
                    redis_id = str(uuid.uuid4())
                    message = self.app.add.message(n, n).copy(
                        options={"redis_message_id": redis_id})
                    pipe.hset(self._messages_key, redis_id, message.encode())
                    pipe.rpush(self._queue_key, redis_id)
                pipe.execute()
        self.expected += count

    def fill_mix(self, items: list[MixItem], tag: str) -> None:
        for item in items:
            if item.kind == "thumbnail":
                self.app.thumbnail.send(self.workload.image, self.workload.size_lists())
            else:
                self.app.charge.send(**self.workload.charge_fields(tag, item.index))
        self.expected += len(items)

    def workers(self, processes: int, tag: str, *, mix: bool = False) -> Workers:
        argv = argv_python("-m", "dramatiq", "compare_dramatiq_app", "--processes",
                           str(processes), "--threads", str(self.threads))
        return Workers(f"dramatiq-{tag}", [managed(f"dramatiq-{tag}", argv, self.env,
                                                   self.run_dir, cwd=BENCH_DIR)])

    def completed(self) -> int:
        # A message's body stays in the queue's hash until its ack, after the actor ran.
        return self.expected - int(self._client.hlen(self._messages_key))

    def failures(self) -> int:
        return int(self._client.zcard(self._dead_key)) + int(self._client.hlen(self._retrying_key))

    def send_probe(self) -> Probe:
        key = uuid.uuid4().hex
        enqueued = time.time()
        self.app.stamp.send(key)
        self.expected += 1
        return Probe(key, enqueued)

    def probe_starts(self, workers: Workers) -> dict[str, float]:
        return self._probes.starts()

    def enqueue_loop(self, count: int) -> None:
        for n in range(count):
            self.app.add.send(n, n)
        self.expected += count

    def enqueue_bulk(self, count: int) -> None:
        from dramatiq import group

        group(self.app.add.message(n, n) for n in range(count)).run()  # type: ignore[no-untyped-call]
        self.expected += count

    def waiting(self) -> int:
        return int(self._client.llen(self._queue_key))

    def close(self) -> None:
        self._client.close()
        self._probes.close()


# -- RQ ----------------------------------------------------------------------------------


class RqSystem(System):
    name = "rq"
    default_processes = 1  # one `rq worker`
    bulk_api = "Queue.enqueue_many"
    worker_class = "rq.worker.SimpleWorker"

    def __init__(self, run_dir: Path, workload: Workload, plain: PlainRedis) -> None:
        super().__init__(run_dir, workload)
        from rq import Queue

        self.plain = plain
        self._client = plain.client(RQ_DB)
        self.queue = Queue("default", connection=self._client)
        self._probes = _StampedProbes(plain, self.name)
        self.env = _baseline_env(plain, workload, self.name, {})

    def reset(self) -> None:
        self._client.flushdb()
        self._probes.reset()
        self.expected = 0

    def _enqueue_many(self, calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> None:
        from rq import Queue

        for chunk in _chunks(len(calls)):
            self.queue.enqueue_many([Queue.prepare_data(func, args=args, kwargs=kwargs)
                                     for func, args, kwargs in calls[chunk.start:chunk.stop]])
        self.expected += len(calls)

    def fill(self, count: int) -> None:
        self._enqueue_many([("compare_workload.add", (n, n), {}) for n in range(count)])

    def fill_mix(self, items: list[MixItem], tag: str) -> None:
        calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        for item in items:
            if item.kind == "thumbnail":
                calls.append(("compare_workload.thumbnail",
                              (self.workload.image, self.workload.size_lists()), {}))
            else:
                calls.append(("compare_workload.charge", (),
                              self.workload.charge_fields(tag, item.index)))
        self._enqueue_many(calls)

    def workers(self, processes: int, tag: str, *, mix: bool = False) -> Workers:
        # One `rq worker` per process: that is how RQ scales on one machine.
        group = Workers(f"rq-{tag}")
        for index in range(processes):
            argv = argv_python("-m", "rq.cli", "worker", "-w", self.worker_class,
                               "--url", self.plain.url(RQ_DB), "default")
            group.processes.append(managed(f"rq-{tag}-{index}", argv, self.env, self.run_dir,
                                           cwd=BENCH_DIR))
        return group

    def completed(self) -> int:
        # RQ adds each job to the queue's finished registry when it has run.
        return int(self._client.zcard("rq:finished:default"))

    def failures(self) -> int:
        return int(self._client.zcard("rq:failed:default"))

    def send_probe(self) -> Probe:
        key = uuid.uuid4().hex
        enqueued = time.time()
        self.queue.enqueue("compare_workload.stamp", key)
        self.expected += 1
        return Probe(key, enqueued)

    def probe_starts(self, workers: Workers) -> dict[str, float]:
        return self._probes.starts()

    def enqueue_loop(self, count: int) -> None:
        for n in range(count):
            self.queue.enqueue("compare_workload.add", n, n)
        self.expected += count

    def enqueue_bulk(self, count: int) -> None:
        self.fill(count)

    def waiting(self) -> int:
        return int(self.queue.count)

    def close(self) -> None:
        self._client.close()
        self._probes.close()

