"""The scenarios of ``bench/compare.py``: each measures one system once and returns metrics.

A measurement is a flat ``{metric: value}``; ``None`` means "not applicable" (a system with no
bulk API). Drains are timed from the outside the same way for every system: the harness
polls the system's count of finished tasks every 10 ms and divides the tasks finished between
the first poll that saw one and the poll that saw the last by the time between the two, so
worker start-up is not counted.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
from compare_procs import HarnessError, Workers, wait_for
from compare_systems import MixItem, PlatformSystem, Probe, System

from platform_tasks.devstack.topology import SentinelTopology

Measurement = dict[str, float | None]

#: Enqueue loops warm up (connections, declarations) on this many calls before timing.
ENQUEUE_WARMUP = 50
#: Probes run before the latency is measured (several per worker process).
WARMUP_PROBES = 20
#: One image task in this many mix tasks; the rest are charges.
MIX_IMAGE_EVERY = 5


@dataclass(frozen=True)
class Sizes:
    """How much work each scenario does; ``--smoke`` shrinks all of it."""

    tasks: int
    mix_tasks: int
    enqueue_tasks: int
    probes: int
    probe_spacing: float
    heavy_backlog: int
    depths: tuple[int, ...]
    depth_sample: int
    scaling: tuple[int, ...]


def _timeout(count: int) -> float:
    # Generous: RQ's simple worker runs ~200 tasks/s, and the machine may be shared.
    return 60.0 + count / 20


def _drain(system: System, workers: Workers, total: int) -> float:
    """Start ``workers`` on ``total`` waiting tasks; tasks per second once they consume."""
    started_at = time.perf_counter()
    workers.start()
    first_at, first = wait_for(system.completed, 1, workers, timeout=_timeout(total))
    last_at, last = wait_for(system.completed, total, workers, timeout=_timeout(total))
    if last == first:
        # All done between two polls: only a smoke-sized drain; count from the start.
        return total / (last_at - started_at)
    return (last - first) / max(last_at - first_at, 1e-6)


def _check_no_failures(system: System) -> None:
    failed = system.failures()
    if failed:
        raise HarnessError(f"{system.name}: {failed} task(s) failed; see the worker logs")


@dataclass
class Trial:
    """One system in one round: what the scenarios run against, and that round's drains
    (the drain, memory and scaling scenarios share a drain at the same process count)."""

    system: System
    sizes: Sizes
    tag: str
    drains: dict[int, Measurement] = field(default_factory=dict)

    def drain(self, processes: int | None = None) -> Measurement:
        count = processes or self.system.default_processes
        if count not in self.drains:
            self.drains[count] = _measure_drain(self.system, self.sizes.tasks,
                                                f"{self.tag}-drain-p{count}", count)
        return self.drains[count]


def _measure_drain(system: System, tasks: int, tag: str, processes: int) -> Measurement:
    """Drain ``tasks`` pre-enqueued no-op tasks; also the workers' memory right after."""
    system.reset()
    system.fill(tasks)
    workers = system.workers(processes, tag)
    try:
        rate = _drain(system, workers, tasks)
        rss = workers.rss_bytes()
    finally:
        workers.stop()
    _check_no_failures(system)
    mib = [size / 2**20 for size in rss]
    return {
        "tasks_per_s": rate,
        "rss_total_mib": sum(mib),
        "rss_per_process_mib": sum(mib) / len(mib) if mib else None,
        "processes": float(len(mib)),
    }


def drain(trial: Trial) -> Measurement:
    """Drain throughput of no-op tasks with the system's standard worker set-up."""
    return {"tasks_per_s": trial.drain()["tasks_per_s"]}


def memory(trial: Trial) -> Measurement:
    """Resident memory of the workers (every process, from /proc) after that drain."""
    measured = trial.drain()
    return {key: measured[key]
            for key in ("rss_total_mib", "rss_per_process_mib", "processes")}


def mix_plan(count: int) -> list[MixItem]:
    return [MixItem("thumbnail" if index % MIX_IMAGE_EVERY == 0 else "charge", index)
            for index in range(count)]


def mix(trial: Trial) -> Measurement:
    """Drain a realistic mix: Pillow thumbnails (CPU) among gateway charges (I/O)."""
    system, sizes, tag = trial.system, trial.sizes, f"{trial.tag}-mix"
    system.reset()
    system.fill_mix(mix_plan(sizes.mix_tasks), tag)
    workers = system.workers(system.default_processes, tag, mix=True)
    try:
        rate = _drain(system, workers, sizes.mix_tasks)
    finally:
        workers.stop()
    _check_no_failures(system)
    return {"tasks_per_s": rate}


def _timed_enqueue(system: System, enqueue: Callable[[int], None], count: int) -> float:
    system.reset()
    enqueue(ENQUEUE_WARMUP)
    system.reset()
    started = time.perf_counter()
    enqueue(count)
    elapsed = time.perf_counter() - started
    landed = system.waiting()
    if landed != count:
        raise HarnessError(f"{system.name}: {landed} of {count} messages landed on the queue")
    system.reset()
    return count / elapsed


def enqueue(trial: Trial) -> Measurement:
    """One producer, no worker: a loop of single enqueues, then the bulk API if any."""
    system, sizes = trial.system, trial.sizes
    single = _timed_enqueue(system, system.enqueue_loop, sizes.enqueue_tasks)
    bulk = (None if system.bulk_api is None
            else _timed_enqueue(system, system.enqueue_bulk, sizes.enqueue_tasks))
    return {"single_per_s": single, "bulk_per_s": bulk,
            "bulk_over_single": None if bulk is None else bulk / single}


def _wait_started(system: System, workers: Workers, probes: list[Probe],
                  timeout: float) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        starts = system.probe_starts(workers)
        if all(probe.key in starts for probe in probes):
            return starts
        workers.check_alive()
        if time.monotonic() > deadline:
            missing = sum(probe.key not in starts for probe in probes)
            raise HarnessError(f"{system.name}: {missing} probe(s) never started")
        time.sleep(0.01)


def percentiles_ms(latencies: list[float]) -> tuple[float, float, float]:
    """p50, p95 and p99 in milliseconds (inclusive method: exact at the sample's ends)."""
    if len(latencies) == 1:
        only = latencies[0] * 1000
        return only, only, only
    cuts = statistics.quantiles([value * 1000 for value in latencies], n=100,
                                method="inclusive")
    return cuts[49], cuts[94], cuts[98]


def _probe_latencies(system: System, workers: Workers, count: int, spacing: float,
                     timeout: float) -> list[float]:
    probes: list[Probe] = []
    for _ in range(count):
        probes.append(system.send_probe())
        time.sleep(spacing)
    starts = _wait_started(system, workers, probes, timeout)
    return [starts[probe.key] - probe.enqueued for probe in probes]


def _warm_up(system: System, workers: Workers) -> None:
    """Wait until the workers run tasks, and let every process run a few: a pool process's
    first task pays its imports and connections (25-50 ms on the platform), which is start-up,
    not latency."""
    _wait_started(system, workers, [system.send_probe()], timeout=120)
    _wait_started(system, workers, [system.send_probe() for _ in range(WARMUP_PROBES)],
                  timeout=60)


def latency(trial: Trial) -> Measurement:
    """Enqueue -> start of one task, at light load (probes spaced out on an idle worker) and
    at heavy load (probes enqueued right behind a backlog of ``heavy_backlog`` no-op tasks)."""
    system, sizes, tag = trial.system, trial.sizes, f"{trial.tag}-latency"
    system.reset()
    workers = system.workers(system.default_processes, tag)
    try:
        workers.start()
        _warm_up(system, workers)
        light = _probe_latencies(system, workers, sizes.probes, sizes.probe_spacing, 60)
        system.fill(sizes.heavy_backlog)
        heavy = _probe_latencies(system, workers, sizes.probes, 0.001,
                                 _timeout(sizes.heavy_backlog))
    finally:
        workers.stop()
    light_p = percentiles_ms(light)
    heavy_p = percentiles_ms(heavy)
    return {"light_p50_ms": light_p[0], "light_p95_ms": light_p[1], "light_p99_ms": light_p[2],
            "heavy_p50_ms": heavy_p[0], "heavy_p95_ms": heavy_p[1], "heavy_p99_ms": heavy_p[2]}


def scaling(trial: Trial) -> Measurement:
    """Drain throughput with 1, 2, 4 worker processes (threads per process unchanged)."""
    return {f"tasks_per_s@{processes}": trial.drain(processes)["tasks_per_s"]
            for processes in trial.sizes.scaling}


def depth(trial: Trial) -> Measurement:
    """Milliseconds per task for ``depth_sample`` tasks drained with N tasks waiting."""
    system, sizes, tag = trial.system, trial.sizes, f"{trial.tag}-depth"
    found: Measurement = {}
    for waiting in sizes.depths:
        system.reset()
        system.fill(waiting)
        workers = system.workers(system.default_processes, f"{tag}-d{waiting}")
        try:
            workers.start()
            timeout = _timeout(sizes.depth_sample)
            first_at, first = wait_for(system.completed, 1, workers, timeout=timeout)
            if first >= waiting:
                # All drained before the first reading (a fast system, a tiny queue and a
                # busy machine): nothing left to sample.
                found[f"ms_per_task@{waiting}"] = None
                continue
            last_at, last = wait_for(system.completed,
                                     min(first + sizes.depth_sample, waiting), workers,
                                     timeout=timeout)
        finally:
            workers.stop()
        found[f"ms_per_task@{waiting}"] = (last_at - first_at) / max(last - first, 1) * 1000
    system.reset()
    return found


def failover(trial: Trial) -> Measurement:
    """Platform only: SIGKILL the master, then time Sentinel's switch-master and the first
    task a worker starts after it."""
    system, tag = trial.system, f"{trial.tag}-failover"
    if not isinstance(system, PlatformSystem):
        raise HarnessError("failover is measured for the platform only")
    topology = system.topology
    if not isinstance(topology, SentinelTopology):
        raise HarnessError("failover needs Sentinels: run it for the platform system only")
    system.reset()
    workers = system.workers(system.default_processes, tag)
    sentinel = topology.sentinel_client(topology.sentinel_addresses[0][1], timeout=5)
    pubsub = sentinel.pubsub()
    try:
        workers.start()
        _wait_started(system, workers, [system.send_probe()], timeout=120)
        pubsub.subscribe("+switch-master")
        killed_at = time.time()
        old = topology.kill_master()
        switched_at = _wait_switch(pubsub, timeout=60)
        topology.wait_for_failover(old, timeout=60)
        writable_at = time.time()
        system.reconnect()
        started_at = _first_start_after(system, workers, switched_at, timeout=60)
    finally:
        pubsub.close()
        sentinel.close()
        workers.stop()
    topology.restart_node(old[1])
    system.reconnect()
    return {"kill_to_switch_s": switched_at - killed_at,
            "switch_to_writable_s": writable_at - switched_at,
            "switch_to_consume_s": started_at - switched_at}


def _wait_switch(pubsub: redis.client.PubSub, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)
        if message is not None:
            return time.time()
    raise HarnessError(f"no +switch-master within {timeout:g}s")


def _first_start_after(system: System, workers: Workers, since: float, timeout: float) -> float:
    """Enqueue a probe every 20 ms until one starts; the earliest start after ``since``."""
    deadline = time.monotonic() + timeout
    probes: list[Probe] = []
    while time.monotonic() < deadline:
        probes.append(system.send_probe())
        starts = system.probe_starts(workers)
        after = [starts[probe.key] for probe in probes if starts.get(probe.key, 0) > since]
        if after:
            return min(after)
        workers.check_alive()
        time.sleep(0.02)
    raise HarnessError(f"{system.name}: no task started within {timeout:g}s of the switch")


SCENARIOS: dict[str, Callable[[Trial], Measurement]] = {
    "drain": drain,
    "mix": mix,
    "enqueue": enqueue,
    "latency": latency,
    "scaling": scaling,
    "depth": depth,
    "memory": memory,
    "failover": failover,
}

#: Scenarios measured only for some systems.
PLATFORM_ONLY = frozenset({"failover"})
