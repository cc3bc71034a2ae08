"""Scenario 13: two beats (a rolling update), and the leader SIGKILLed. Every scheduled run
must happen once per tick: none twice, none lost, and the other beat takes over.

Beat records its own publishes in the ledger (``ledger_tasks`` hooks its publish signals),
so a scheduled run is *attempted* and *acknowledged* like any producer's task. The schedule is
an entry written into RedBeat's keys at run time, ticking every two seconds: the platform's
own schedule runs once a minute, too slowly for a suite.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from celery.schedules import schedule
from cluster import Cluster
from ledger import BEAT_KIND_PREFIX, Snapshot
from ledger_tasks import BEAT_TICK
from load import Kind
from redbeat import RedBeatSchedulerEntry
from scenario import ScenarioFactory, assert_kept_promise

from platform_tasks.app import create_app

pytestmark = pytest.mark.integration

TICK_SECONDS = 2.0
ENTRY = "reliability-tick"
#: The longest a tick may be late after the leader dies: its lock expires (the suite's
#: PLATFORM_TASKS_BEAT_LOCK_TIMEOUT, 5 s), the other beat's next try to take it (beat's loop
#: interval, at most 5 s), one tick, and slack for a loaded machine.
TAKEOVER_LIMIT_SECONDS = 5 + 5 + TICK_SECONDS + 4


@contextlib.contextmanager
def scheduled_ticks(cluster: Cluster) -> Iterator[None]:
    """The two-second schedule exists in RedBeat's keys inside the block (beats pick it up
    from there on their next tick)."""
    app = create_app(cluster.settings(), include_tasks=False)
    entry = RedBeatSchedulerEntry(ENTRY, BEAT_TICK, schedule(timedelta(seconds=TICK_SECONDS)),
                                  options={"queue": "default"}, app=app)
    entry.save()
    try:
        yield
    finally:
        entry.delete()
        app.close()


def beat_pids(snapshot: Snapshot) -> list[int]:
    """The beats that sent scheduled runs, in the order of their runs."""
    sent = sorted((attempt.at, attempt.kind) for attempt in snapshot.attempts.values()
                  if attempt.kind.startswith(BEAT_KIND_PREFIX))
    pids: list[int] = []
    for _, kind in sent:
        pid = int(kind.removeprefix(BEAT_KIND_PREFIX))
        if not pids or pids[-1] != pid:
            pids.append(pid)
    return pids


def longest_gap(snapshot: Snapshot) -> float:
    sent = sorted(attempt.at for attempt in snapshot.attempts.values()
                  if attempt.kind.startswith(BEAT_KIND_PREFIX))
    return max((later - earlier for earlier, later in itertools.pairwise(sent)),
               default=0.0)


def test_13_two_beats_and_the_leader_sigkilled(
    cluster: Cluster, scenario: ScenarioFactory
) -> None:
    run = scenario("13 two beats, leader SIGKILLed", cluster)
    cluster.start_workers("default")
    beats = [cluster.start_beat("beat-1"), cluster.start_beat("beat-2")]

    mix = (Kind("default-short", "default", 0.05, 4), Kind("default-long", "default", 0.5, 1))
    with run.load(rate=10, mix=mix), scheduled_ticks(cluster):
        time.sleep(8.0)
        leaders = beat_pids(cluster.ledger.snapshot())
        assert len(leaders) == 1, f"more than one beat sent scheduled runs: {leaders}"
        victim = next(beat for beat in beats if beat.pid == leaders[0])
        run.note(f"SIGKILL leader {victim.name} (pid {victim.pid})")
        cluster.kill(victim)
        time.sleep(2.0)
        cluster.restart(victim, wait=False)  # as Kubernetes would; it now waits for the lock
        time.sleep(TAKEOVER_LIMIT_SECONDS + 2 * TICK_SECONDS)
        run.note("schedule removed")
    for beat in beats:
        cluster.stop(beat)

    counts = run.finish(tick_period=TICK_SECONDS, drain_timeout=30)
    assert_kept_promise(counts, run)
    snapshot = cluster.ledger.snapshot()
    assert counts.duplicates == 0, "a tick ran twice"
    assert len(beat_pids(snapshot)) == 2, "the surviving beat never took over"
    assert longest_gap(snapshot) <= TAKEOVER_LIMIT_SECONDS
