"""A worker group's member that dies: what it held runs again at once, not after the
visibility timeout.

Real members (Celery workers, solo pool) on a Sentinel topology, with the visibility timeout
at its default of 300 s: a member SIGKILLed while it runs one task and holds others leaves
their unacked records; the member started in its place puts them back from the dead one's
ledger (``platform_tasks.held_ledger``) before it consumes, and every task finishes within
seconds.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import solo_limit_tasks as tasks
from test_worker_group import GROUP_SIZE, events, member_names, members, send, wait_until
from worker_env import worker_env

from platform_tasks import held_ledger
from platform_tasks.app import create_app
from platform_tasks.devstack.processes import ManagedProcess
from platform_tasks.devstack.stack import worker_argv
from platform_tasks.devstack.topology import SentinelTopology
from platform_tasks.held_ledger import HeldEntry
from platform_tasks.settings import Settings

pytestmark = pytest.mark.integration

VISIBILITY_TIMEOUT = 300
HELD_TASKS = 4


@pytest.fixture(scope="module", name="worker_env")
def worker_env_fixture(sentinel_topology: SentinelTopology,
                       tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return worker_env(
        sentinel_topology, visibility_timeout_seconds=str(VISIBILITY_TIMEOUT),
        metrics_port="0", heartbeat_file=str(tmp_path_factory.mktemp("alive") / "default.alive"))


@pytest.fixture
def start_group(worker_env: dict[str, str], tmp_path: Path) -> Iterator[ManagedProcess]:
    """The default queue's worker as shipped (a group), not started yet."""
    process = ManagedProcess(
        "group", [*worker_argv("default"), "--include", "solo_limit_tasks"], worker_env,
        tmp_path / "group.log", cwd=tmp_path,
    )
    yield process
    process.stop(30)


def ledgers(settings: Settings) -> dict[str, float]:
    """Every member's ledger entries: delivery tag -> score."""
    return {
        entry.delivery_tag: entry.score
        for index in range(1, GROUP_SIZE + 1)
        for entry in held_ledger.read_ledger(held_ledger.ledger_file(settings, "default", index))
    }


def test_what_a_killed_member_held_runs_again_within_seconds(
    settings: Settings, broker: redis.Redis, start_group: ManagedProcess
) -> None:
    marker = uuid.uuid4().hex
    # Waiting before the group starts: the first member to fetch takes them all (its
    # prefetch), runs one and holds the others.
    for index in range(HELD_TASKS):
        send(settings, tasks.HOLDS, marker, index)
    group = start_group
    group.start()
    host = socket.gethostname()
    expected = {f"default-{index}@{host}" for index in range(1, GROUP_SIZE + 1)}
    wait_until(lambda: member_names(broker) >= expected, 60, "every member's heartbeat")
    wait_until(lambda: events(broker, marker), 30, "a task running")
    assert broker.hlen("unacked") == HELD_TASKS
    assert broker.llen("default") == 0
    # The ledgers hold what Redis records as held, each scored no earlier than its record.
    recorded = {str(tag): score for tag, score in broker.zrange(
        "unacked_index", 0, -1, withscores=True)}
    held = wait_until(lambda: (found := ledgers(settings)).keys() == recorded.keys() and found,
                      10, "the ledgers to list every held message")
    assert all(held[tag] >= score - held_ledger.SCORE_SLACK_SECONDS
               for tag, score in recorded.items())

    first_event, victim = events(broker, marker)[0]
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_until(lambda: victim not in members(group), 30, "the victim gone")
    broker.set(tasks.release_key(marker), "1")

    wait_until(lambda: {event for event, _ in events(broker, marker)}
               >= {f"finished-{index}" for index in range(HELD_TASKS)},
               60, "every task finished")
    # Seconds, not the visibility timeout: a restart delay, a start-up and four short runs.
    assert time.monotonic() - killed_at < 30
    wait_until(lambda: broker.hlen("unacked") == 0, 30, "every record acknowledged")
    time.sleep(2)  # a second run of anything would have started by now
    seen = events(broker, marker)
    assert len([event for event, _ in seen if event.startswith("started-")]) == HELD_TASKS + 1
    killed_task = first_event.removeprefix("started-")
    # The task the victim ran started again elsewhere; nothing ran twice otherwise.
    assert [pid != victim for event, pid in seen if event == first_event] == [False, True]
    finished = [event for event, _ in seen if event.startswith("finished-")]
    assert sorted(finished) == [f"finished-{index}" for index in range(HELD_TASKS)]
    assert f"finished-{killed_task}" in finished
    assert "messages the previous member held when it stopped" in group.log_path.read_text()
    # Nothing is left in the ledgers: acknowledged and put-back messages are forgotten.
    assert ledgers(settings) == {}


def test_only_a_record_scored_as_the_dead_member_left_it_is_put_back(
    settings: Settings, broker: redis.Redis
) -> None:
    app = create_app(settings)
    try:
        for marker in ("kept", "put-back"):
            send(settings, tasks.RECORD_PID, marker)
        with app.connection_for_read() as connection:
            channel = connection.default_channel
            # Taken and recorded as unacked, as a worker takes them.
            retaken, left = (channel.basic_get("default", no_ack=False) for _ in range(2))
            retaken_score = broker.zscore("unacked_index", retaken.delivery_tag)
            left_score = broker.zscore("unacked_index", left.delivery_tag)
            assert retaken_score is not None
            assert left_score is not None
            with channel.conn_or_acquire() as client:
                # The dead member last scored this one earlier than its record says: a
                # sweep put it back since and another worker holds it now.
                assert not held_ledger.put_back_entry(
                    channel, client, HeldEntry(retaken.delivery_tag, retaken_score - 10))
                assert held_ledger.put_back_entry(
                    channel, client, HeldEntry(left.delivery_tag, left_score))
                # Already put back: nothing to do the second time.
                assert not held_ledger.put_back_entry(
                    channel, client, HeldEntry(left.delivery_tag, left_score))
            assert broker.hexists("unacked", retaken.delivery_tag)
            assert not broker.hexists("unacked", left.delivery_tag)
            assert broker.zscore("unacked_index", left.delivery_tag) is None
            waiting = [json.loads(item) for item in broker.lrange("default", 0, -1)]
            assert [item["properties"]["delivery_tag"] for item in waiting] == [
                left.delivery_tag]
            assert waiting[0]["headers"]["redelivered"] is True
            # This channel stands for the dead member: it must not put back, on closing,
            # what it no longer holds.
            channel.qos._delivered.pop(left.delivery_tag)
            channel.basic_ack(retaken.delivery_tag)
    finally:
        app.close()


def test_what_a_failed_delivery_leaves_of_a_batch_goes_back_at_once(
    settings: Settings, broker: redis.Redis
) -> None:
    app = create_app(settings)
    try:
        for marker in ("first", "second", "third"):
            send(settings, tasks.RECORD_PID, marker)
        with app.connection_for_read() as connection:
            channel = connection.default_channel
            taken: list[str] = []

            def fails(message: object) -> None:
                taken.append(getattr(message, "delivery_tag", ""))
                raise RuntimeError("the consumer failed on its first message")

            channel.basic_consume("default", no_ack=False, callback=fails,
                                  consumer_tag="failing-consumer")
            # One turn of the event loop, by hand (its poller gives the channel's client a
            # connection first): the fetch takes all three at once.
            channel.client.connection = channel.client.connection_pool.get_connection()
            channel._brpop_start(timeout=1)
            with pytest.raises(RuntimeError, match="first message"):
                channel._brpop_read()
            # kombu took the first (its QoS holds it); the two behind it are back on the
            # queue already, not left for the visibility timeout, and no longer held here.
            assert len(taken) == 1
            assert broker.hkeys("unacked") == taken
            assert broker.llen("default") == 2
            assert channel.taken_not_delivered() == []
            channel.basic_ack(taken[0])
    finally:
        app.close()
