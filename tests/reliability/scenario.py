"""One scenario's run: its producer and load, then the drain, the check and the report.

A test drives the faults itself; this holds what every scenario does the same way around
them, so each test reads as given (the cluster), when (the fault under load), then (the
ledger's counts).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import redis
from checker import Counts, check
from cluster import Cluster
from drain import DrainResult, dead_letter_texts, drain
from ledger import Ledger, Snapshot
from load import MIXED, Kind, LedgerProducer, SteadyLoad

from platform_tasks.settings import Settings


@dataclass
class Report:
    """What the session's scenarios measured, keyed by test id, for the table."""

    counts: dict[str, Counts] = field(default_factory=dict)


class Scenario:
    """A named run on a cluster: producers and loads made here are stopped and closed at
    the end; :meth:`finish` turns the ledger into the scenario's row of the table."""

    def __init__(self, name: str, cluster: Cluster, ledger: Ledger, report: Report,
                 test_id: str) -> None:
        self.name = name
        self.cluster = cluster
        self.ledger = ledger
        self.report = report
        self.test_id = test_id
        self.started = time.monotonic()
        #: (wall time, what happened): the faults, for the evidence file.
        self.events: list[tuple[float, str]] = []
        self._producers: list[LedgerProducer] = []
        self._loads: list[SteadyLoad] = []
        self.drained: DrainResult | None = None
        #: Queues a producer could not publish onto any more once the faults had healed.
        self.unrecovered: list[str] = []

    def note(self, event: str) -> None:
        """Record a fault as it is injected, for the evidence file written at the end."""
        self.events.append((time.time(), event))

    def producer(self, settings: Settings | None = None) -> LedgerProducer:
        """A producer (on the cluster's settings unless given others), closed at the end."""
        prefix = f"s{len(self._producers)}"
        made = LedgerProducer(settings or self.cluster.settings(), self.ledger, prefix)
        self._producers.append(made)
        return made

    def load(self, *, producer: LedgerProducer | None = None, rate: float = 20.0,
             mix: Sequence[Kind] = MIXED) -> SteadyLoad:
        """A steady load (not started yet); stopped at the end if the test did not."""
        made = SteadyLoad(producer or self.producer(), rate=rate, mix=mix)
        self._loads.append(made)
        return made

    def finish(
        self,
        *,
        dead_letter_kinds: Collection[str] = (),
        drain_timeout: float = 30.0,
        tick_period: float | None = None,
    ) -> Counts:
        """Stop the load, check that it could publish again, drain, check the ledger; print
        and record the counts."""
        for load in self._loads:
            if load.running:
                load.stop()
        self._probe_publishing()
        self.drained = drain(self.cluster.broker, self.ledger, timeout=drain_timeout)
        if not self.drained.drained:
            self._dump_stacks()
        letters = self._dead_letters()
        snapshot = self.ledger.snapshot()
        counts = check(
            self.name,
            snapshot,
            dead_letters=letters,
            dead_letter_kinds=dead_letter_kinds,
            stranded_ids=self.drained.stranded,
            tick_period=tick_period,
        )
        self.report.counts[self.test_id] = counts
        evidence = self._write_evidence(snapshot, letters)
        elapsed = time.monotonic() - self.started
        print(f"\n[ledger] {counts.summary()}\n[ledger] {self.drained.describe()}; "
              f"scenario took {elapsed:.1f}s; evidence in {evidence}; "
              f"logs in {self.cluster.run_dir / 'logs'}")
        return counts

    def _write_evidence(self, snapshot: Snapshot, letters: list[str]) -> Path:
        """The whole ledger, the faults and the dead letters, to read a failure after the
        ledger was cleared for the next scenario."""
        path = self.cluster.run_dir / "ledger.json"
        path.write_text(json.dumps({
            "scenario": self.name,
            "events": self.events,
            "attempts": {k: asdict(v) for k, v in snapshot.attempts.items()},
            "acks": {key: {"task_id": task_id, "at": snapshot.ack_times.get(key)}
                     for key, task_id in snapshot.acks.items()},
            "publish_errors": snapshot.publish_errors,
            "executions": [asdict(e) for e in snapshot.executions],
            "effects_applied": snapshot.effects_applied,
            "effect_tries": snapshot.effect_tries,
            "running": snapshot.running,
            "dead_letters": letters,
            "drain": asdict(self.drained) if self.drained else None,
        }, indent=1, default=sorted))
        return path

    def close(self) -> None:
        for load in self._loads:
            if load.running:
                load.stop()
        for producer in self._producers:
            producer.close()

    def _probe_publishing(self) -> None:
        """One more task per queue from each load's own producer, now that the faults have
        healed: a producer that rode out the fault must publish again, not only the ones a
        restart would give a fresh connection. The probes count like any other task."""
        for load in self._loads:
            for queue in load.queues:
                try:
                    load.producer.send(queue, 0.0, kind="probe")
                except Exception as error:
                    self.unrecovered.append(f"{queue}: {type(error).__name__}: {error}")

    def _dump_stacks(self) -> None:
        """A drain that did not finish usually means a hung worker: keep where each live
        process of the scenario stands (py-spy, when installed) with the evidence."""
        beside_python = str(Path(sys.executable).parent)
        spy = shutil.which("py-spy") or shutil.which("py-spy", path=beside_python)
        if spy is None:
            return
        for name, process in self.cluster.processes.items():
            if process.pid is None or not process.alive:
                continue
            done = subprocess.run([spy, "dump", "--pid", str(process.pid)], capture_output=True,
                                  text=True, timeout=30, check=False)
            (self.cluster.run_dir / f"{name}.stack.txt").write_text(done.stdout + done.stderr)

    def _dead_letters(self) -> list[str]:
        for _ in range(20):
            try:
                with self.cluster.broker() as client:
                    return dead_letter_texts(client)
            except (redis.RedisError, OSError):
                time.sleep(0.5)
        raise AssertionError("could not read the dead-letter list from the broker")


#: The ``scenario`` fixture: ``scenario(name, cluster)`` starts a recorded scenario run.
ScenarioFactory = Callable[[str, Cluster], Scenario]


def assert_kept_promise(counts: Counts, scenario: Scenario) -> None:
    """lost = 0, unexpected = 0, every acknowledged task's effect exactly once; and once the
    faults healed, the producer could publish onto every queue again."""
    where = (f"{scenario.drained.describe() if scenario.drained else ''}; evidence and logs "
             f"in {scenario.cluster.run_dir}")
    assert counts.ok, f"{counts.summary()}; {where}"
    assert not scenario.unrecovered, (
        f"publishing did not recover after the fault: {scenario.unrecovered}; {where}")


def children_of(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (a worker's pool processes), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields start after the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found

