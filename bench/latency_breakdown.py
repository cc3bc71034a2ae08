"""Where a light-load probe's time goes, from ``enqueue`` to its ``task_started`` line.

Usage: ``.venv/bin/python bench/latency_breakdown.py [--probes 300] [--spacing-ms 20]
[--smoke] [--keep-run-dir]``

``bench/compare.py``'s ``latency`` scenario gives one number per probe: enqueue -> start. This
splits it. It starts the platform's ``default`` worker as shipped (a group of two
single-loop members, JSON logs at INFO, against a Sentinel topology as the chart configures
it), with ``bench/latency_trace`` on the members' ``PYTHONPATH``: that directory's
``sitecustomize`` marks the time at each step of a member's path (see its docstring). Then
one producer sends ``--probes`` single ``enqueue`` calls, ``--spacing-ms`` apart, and each
probe's time is cut into:

- ``producer``: ``enqueue`` called -> its message written to the socket;
- ``broker and wake-up``: -> the member's event loop reads the reply of its waiting fetch
  (Redis takes the push, hands the message to the blocked fetch, the member is woken);
- ``reply read``: -> the fetch's replies parsed;
- ``to kombu``: -> the message handed to kombu (screening, redelivery check);
- ``to task_received``: kombu and Celery make the request;
- ``to task_prerun``: the ``task_received`` receivers, Celery's strategy, the solo pool;
- ``to task_started``: the ``task_prerun`` receivers up to the line's timestamp.

Prints each part's p50/p90/p99 in microseconds, then the slowest probes part by part, and
how many probes had a garbage collection inside them. The marks cost a few microseconds
each; compare parts with each other, and totals with ``compare.py``, not with this script.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from bisect import bisect_left
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis.connection
from compare_procs import clean_env, managed
from compare_systems import ADD_NUMBERS, TaskStartLog

from platform_tasks.devstack.processes import ManagedProcess
from platform_tasks.devstack.stack import worker_argv
from platform_tasks.devstack.topology import SentinelTopology
from platform_tasks.producer import TaskProducer
from platform_tasks.settings import load_settings

TRACE_DIRECTORY = Path(__file__).resolve().parent / "latency_trace"
WARMUP_PROBES = 40
#: The member-side marks, in the order a message passes them, and the part each one ends.
MEMBER_MARKS = (
    ("reply-readable", "broker and wake-up"),
    ("reply-read", "reply read"),
    ("delivered-to-kombu", "to kombu"),
    ("task_received", "to task_received"),
    ("task_prerun", "to task_prerun"),
)
PARTS = ("producer", *(part for _, part in MEMBER_MARKS), "to task_started")


@dataclass(frozen=True)
class Probe:
    task_id: str
    called_ns: int
    sent_ns: int


@contextmanager
def first_send_recorded() -> Iterator[list[int]]:
    """While open, the time of every command this process writes to Redis."""
    sends: list[int] = []
    original = redis.connection.AbstractConnection.send_packed_command

    def send_packed_command(self: redis.connection.AbstractConnection, *args: object,
                            **kwargs: object) -> None:
        sends.append(time.time_ns())
        original(self, *args, **kwargs)  # type: ignore[no-untyped-call]

    redis.connection.AbstractConnection.send_packed_command = send_packed_command  # type: ignore[method-assign]
    try:
        yield sends
    finally:
        redis.connection.AbstractConnection.send_packed_command = original  # type: ignore[method-assign]


def send_probes(producer: TaskProducer, count: int, spacing: float) -> list[Probe]:
    probes = []
    with first_send_recorded() as sends:
        for _ in range(count):
            sends.clear()
            called = time.time_ns()
            task_id = producer.enqueue(ADD_NUMBERS, queue="default", args=[1, 1])
            probes.append(Probe(task_id, called, sends[0]))
            time.sleep(spacing)
    return probes


def wait_started(starts: TaskStartLog, worker: ManagedProcess, probes: list[Probe],
                 timeout: float, what: str) -> None:
    """Until the worker's log has a ``task_started`` line for every probe."""
    deadline = time.monotonic() + timeout
    while not all(probe.task_id in starts.read([worker.log_path]) for probe in probes):
        if time.monotonic() > deadline or not worker.alive:
            raise RuntimeError(f"the worker did not start {what}; see {worker.log_path}")
        time.sleep(0.1)


def read_marks(directory: Path) -> dict[str, list[tuple[int, str]]]:
    """Each member's marks, by the file (one per process) they were written to, in order."""
    marks: dict[str, list[tuple[int, str]]] = {}
    for path in directory.glob("marks-*.txt"):
        member = marks.setdefault(path.name, [])
        for line in path.read_text().splitlines():
            name, stamp = line.split()
            member.append((int(stamp), name))
        member.sort()
    return marks


def split(probe: Probe, started_ns: int,
          marks: dict[str, list[tuple[int, str]]]) -> dict[str, int] | None:
    """The probe's parts in ns; None when a mark is missing.

    Only the marks of the member that started the task count: the other one's waits end
    every second (their replies are read too), and one could fall inside the probe.
    """
    first_after: dict[str, int] = {}
    for member in marks.values():
        after_send = member[bisect_left(member, (probe.sent_ns, "")):]
        window = [(stamp, name) for stamp, name in after_send if stamp <= started_ns]
        if any(name == "task_prerun" for _, name in window):
            for stamp, name in window:
                first_after.setdefault(name, stamp)
            break
    parts = {"producer": probe.sent_ns - probe.called_ns}
    previous = probe.sent_ns
    for name, part in MEMBER_MARKS:
        mark = first_after.get(name)
        if mark is None:
            return None
        parts[part] = mark - previous
        previous = mark
    parts["to task_started"] = started_ns - previous
    parts["total"] = started_ns - probe.called_ns
    return parts


def collections_within(probe: Probe, started_ns: int,
                       marks: dict[str, list[tuple[int, str]]]) -> int:
    """Garbage collections that started in any member while the probe was on its way."""
    return sum(1 for member in marks.values()
               for stamp, name in member[bisect_left(member, (probe.called_ns, "")):]
               if stamp <= started_ns and name.startswith("gc") and name.endswith("-start"))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def report(rows: list[dict[str, int]], collected: int, spacing_ms: float) -> None:
    print(f"{len(rows)} probes {spacing_ms:g} ms apart, microseconds:")
    print(f"{'part':20s} {'p50':>8s} {'p90':>8s} {'p99':>8s} {'mean':>8s}")
    for part in (*PARTS, "total"):
        values = [row[part] / 1000 for row in rows]
        print(f"{part:20s} {percentile(values, 0.5):8.0f} {percentile(values, 0.9):8.0f} "
              f"{percentile(values, 0.99):8.0f} {statistics.fmean(values):8.0f}")
    print("slowest probes, part by part:")
    for row in sorted(rows, key=lambda row: row["total"])[-5:]:
        print("  " + ", ".join(f"{part} {row[part] / 1000:.0f}" for part in (*PARTS, "total")))
    print(f"probes with a garbage collection inside them: {collected} of {len(rows)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=300)
    parser.add_argument("--spacing-ms", type=float, default=20.0)
    parser.add_argument("--smoke", action="store_true",
                        help="10 probes: checks the script runs, not the timings")
    parser.add_argument("--keep-run-dir", action="store_true")
    options = parser.parse_args(argv)
    probes_wanted, warmup = (10, 5) if options.smoke else (options.probes, WARMUP_PROBES)
    if probes_wanted < 1 or options.spacing_ms < 0:
        parser.error("--probes must be at least 1 and --spacing-ms not negative")
    run_dir = Path(tempfile.mkdtemp(prefix="platform-tasks-latency-breakdown-"))
    marks_dir = run_dir / "marks"
    marks_dir.mkdir()
    try:
        with SentinelTopology(run_dir / "topology", password=secrets.token_urlsafe(12),
                              sentinel_password=secrets.token_urlsafe(12)) as topology:
            python_path = os.pathsep.join(
                filter(None, [str(TRACE_DIRECTORY), os.environ.get("PYTHONPATH")]))
            env = clean_env({
                **topology.settings_env(),
                "PLATFORM_TASKS_METRICS_HOST": "127.0.0.1",
                "PLATFORM_TASKS_METRICS_PORT": "0",
                "PLATFORM_TASKS_HEARTBEAT_FILE": str(run_dir / "worker.alive"),
                "LATENCY_TRACE_DIR": str(marks_dir),
                "PYTHONPATH": python_path,
            })
            worker = managed("worker-default", worker_argv("default"), env, run_dir)
            worker.start()
            try:
                with TaskProducer(load_settings(env)) as producer:
                    starts = TaskStartLog()
                    warm = send_probes(producer, warmup, 0.05)
                    wait_started(starts, worker, warm, 120, "the warm-up probes")
                    probes = send_probes(producer, probes_wanted, options.spacing_ms / 1000)
                    wait_started(starts, worker, probes, 60, "the probes")
                    time.sleep(0.5)  # the last task's marks are written after it ran
            finally:
                worker.stop(30)
        marks = read_marks(marks_dir)
        rows, collected = [], 0
        for probe in probes:
            started_ns = round(starts.starts[probe.task_id] * 1e9)
            parts = split(probe, started_ns, marks)
            if parts is not None:
                rows.append(parts)
                collected += collections_within(probe, started_ns, marks) > 0
        if not rows:
            raise RuntimeError(f"no probe could be split: no marks in {marks_dir}?")
        report(rows, collected, options.spacing_ms)
    finally:
        if options.keep_run_dir:
            print(f"run directory kept: {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
