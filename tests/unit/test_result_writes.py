"""Results and ack removals sent without waiting, against real redis-servers: stored once
confirmed, whatever happened to the first attempt, reported as not stored while they cannot
be, and never an ack removed before the results sent ahead of it.

Each test stores through the platform's result backend on a thread of its own, the way the
solo pool's consumer loop does (the thread that turned sending on); the acks go through the
platform's broker QoS (``broker_transport.FailoverTolerantQoS``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis

from platform_tasks import result_writes
from platform_tasks.app import create_app
from platform_tasks.settings import load_settings


@pytest.fixture
def backend(redis_url: str) -> Iterator[Any]:
    redis.Redis.from_url(redis_url).flushall()
    app = create_app(load_settings({"PLATFORM_TASKS_REDIS_URL": redis_url}))
    # A failed store is not retried for the 20 s Celery's policy allows.
    app.backend.retry_policy = {"max_retries": 0, "interval_start": 0, "interval_step": 0,
                                "interval_max": 0}
    yield app.backend
    app.close()


def on_sending_thread(work: Callable[[], Any]) -> Any:
    """Run ``work`` on a fresh thread that sends results without waiting, as the loop does."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        result_writes.PENDING.forget()
        result_writes.enable()
        try:
            outcome["value"] = work()
        except BaseException as error:  # raised again on the test's own thread
            outcome["error"] = error
        finally:
            result_writes.PENDING.forget()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@contextmanager
def writes_paused(server: redis.Redis) -> Iterator[None]:
    """Writes to ``server`` are taken but run only when this ends: no reply meanwhile."""
    server.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
    try:
        yield
    finally:
        server.execute_command("CLIENT", "UNPAUSE")


def status(backend: Any, task_id: str) -> str:
    backend._cache.pop(task_id, None)
    return str(backend.get_task_meta(task_id)["status"])


def test_a_final_result_is_sent_then_confirmed_stored(backend: Any) -> None:
    def work() -> tuple[int, str, bool, str]:
        backend.store_result("t-1", 42, "SUCCESS")
        sent = result_writes.PENDING.unconfirmed
        # The first send on a fresh server answers NOSCRIPT: redone the usual way.
        confirmed = result_writes.confirm()
        backend.store_result("t-2", ValueError("no"), "FAILURE")
        return sent, status(backend, "t-1"), confirmed and result_writes.confirm(), status(
            backend, "t-2")

    sent, first, confirmed, second = on_sending_thread(work)

    assert (sent, first, confirmed, second) == (1, "SUCCESS", True, "FAILURE")


def test_a_state_a_running_task_reports_is_stored_at_once(backend: Any) -> None:
    def work() -> tuple[int, str]:
        backend.store_result("t-3", {"done": 1}, "PROGRESS")
        backend.store_result("t-4", None, "RETRY")
        return result_writes.PENDING.unconfirmed, status(backend, "t-3")

    assert on_sending_thread(work) == (0, "PROGRESS")


def test_another_thread_stores_at_once(backend: Any) -> None:
    result_writes.PENDING.forget()
    backend.store_result("t-5", 1, "SUCCESS")

    assert result_writes.PENDING.unconfirmed == 0
    assert status(backend, "t-5") == "SUCCESS"


def test_writes_whose_replies_were_lost_with_the_connection_are_redone(
    backend: Any, redis_url: str
) -> None:
    admin = redis.Redis.from_url(redis_url)

    def work() -> tuple[bool, list[str]]:
        backend.store_result("t-6", 1, "SUCCESS")
        assert result_writes.confirm()  # the script is loaded from here on
        # Writes wait unexecuted while paused; then every other client's connection goes,
        # the sending one with its two writes unrun and their replies unread.
        admin.execute_command("CLIENT", "PAUSE", 5000, "WRITE")
        for task_id in ("t-7", "t-8"):
            backend.store_result(task_id, 2, "SUCCESS")
        admin.client_kill_filter(_type="normal", skipme=True)
        admin.execute_command("CLIENT", "UNPAUSE")
        return result_writes.confirm(), [status(backend, t) for t in ("t-7", "t-8")]

    assert on_sending_thread(work) == (True, ["SUCCESS", "SUCCESS"])


def test_a_result_refused_in_a_failover_is_kept_and_reported_until_it_lands(
    backend: Any,
) -> None:
    admin = backend.client  # the results' database, on a connection of its own

    def work() -> tuple[bool, int, bool, str]:
        backend.store_result("t-0", 0, "SUCCESS")
        assert result_writes.confirm()
        # What a master without an in-sync replica answers every write: NOREPLICAS.
        admin.config_set("min-replicas-to-write", 1)
        try:
            backend.store_result("t-9", 9, "SUCCESS")
            first = result_writes.confirm()
            kept = result_writes.PENDING.unconfirmed
        finally:
            admin.config_set("min-replicas-to-write", 0)
        return first, kept, result_writes.confirm(), status(backend, "t-9")

    assert on_sending_thread(work) == (False, 1, True, "SUCCESS")


def test_a_result_refused_for_good_is_dropped_not_holding_later_acks_back(
    backend: Any, caplog: pytest.LogCaptureFixture
) -> None:
    admin = backend.client
    key = backend.get_key_for_task("t-11")

    def work() -> tuple[bool, int, str]:
        backend.store_result("t-0", 0, "SUCCESS")
        assert result_writes.confirm()
        admin.rpush(key, "not a result")  # the store script's GET fails: WRONGTYPE
        backend.store_result("t-11", 11, "SUCCESS")
        backend.store_result("t-12", 12, "SUCCESS")
        return (result_writes.confirm(), result_writes.PENDING.unconfirmed,
                status(backend, "t-12"))

    with caplog.at_level("ERROR", logger="platform_tasks.result_writes"):
        assert on_sending_thread(work) == (True, 0, "SUCCESS")
    assert any("WRONGTYPE" in record.getMessage() for record in caplog.records)


def test_a_success_is_never_replaced_by_a_late_duplicate(backend: Any) -> None:
    def work() -> str:
        backend.store_result("t-10", 1, "SUCCESS")
        backend.store_result("t-10", ValueError("late"), "FAILURE")
        assert result_writes.confirm()
        return str(backend.get_task_meta("t-10")["result"])

    assert on_sending_thread(work) == "1"


def test_acks_wait_for_the_results_sent_before_them(redis_url: str,
                                                     another_redis_url: str) -> None:
    """The broker's QoS removes an acknowledged message's record only once the results sent
    before it are stored: here the results' server refuses writes (NOREPLICAS) for a while."""
    broker = redis.Redis.from_url(redis_url)
    broker.flushall()
    second_redis = redis.Redis.from_url(another_redis_url)
    app = create_app(load_settings({"PLATFORM_TASKS_REDIS_URL": redis_url}))
    app.conf.result_backend = another_redis_url.rsplit("/", 1)[0] + "/1"
    backend = app.backend

    def work() -> tuple[bool, bool, bool, str]:
        with app.connection_for_read() as connection:
            qos = connection.default_channel.qos
            broker.hset(qos.unacked_key, "tag-1", '[{}, "", "default"]')
            broker.zadd(qos.unacked_index_key, {"tag-1": 1.0})
            backend.store_result("t-20", 20, "SUCCESS")
            assert result_writes.confirm()  # the script is loaded on the results' server
            second_redis.config_set("min-replicas-to-write", 1)
            try:
                backend.store_result("t-21", 21, "SUCCESS")
                qos.defer_ack("tag-1")
                qos.flush_acks()
                held = bool(broker.hexists(qos.unacked_key, "tag-1"))
            finally:
                second_redis.config_set("min-replicas-to-write", 0)
            qos.flush_acks()
            gone = not broker.hexists(qos.unacked_key, "tag-1") and not broker.zscore(
                qos.unacked_index_key, "tag-1")
            return held, gone, result_writes.PENDING.unconfirmed == 0, status(backend, "t-21")

    try:
        assert on_sending_thread(work) == (True, True, True, "SUCCESS")
    finally:
        app.close()
        second_redis.close()


@pytest.fixture
def broker_app(redis_url: str, another_redis_url: str) -> Iterator[Any]:
    """An app whose broker is on one server and whose results are on another."""
    redis.Redis.from_url(redis_url).flushall()
    app = create_app(load_settings({"PLATFORM_TASKS_REDIS_URL": redis_url}))
    app.conf.result_backend = another_redis_url.rsplit("/", 1)[0] + "/1"
    app.backend.retry_policy = {"max_retries": 0, "interval_start": 0, "interval_step": 0,
                                "interval_max": 0}
    yield app
    app.close()


def _unacked(broker: redis.Redis, qos: Any, tag: str) -> None:
    broker.hset(qos.unacked_key, tag, '[{}, "", "default"]')
    broker.zadd(qos.unacked_index_key, {tag: 1.0})


@contextmanager
def recording_qos(app: Any, broker: redis.Redis, *tags: str) -> Iterator[Any]:
    """The broker QoS of ``app``, with ``tags`` recorded as taken and the store script
    already loaded on the results' server."""
    with app.connection_for_read() as connection:
        qos = connection.default_channel.qos
        for tag in tags:
            _unacked(broker, qos, tag)
        app.backend.store_result("t-load", 0, "SUCCESS")
        assert result_writes.confirm()
        yield qos


def _recorded(broker: redis.Redis, qos: Any, tag: str) -> bool:
    return bool(broker.hexists(qos.unacked_key, tag) or broker.zscore(qos.unacked_index_key,
                                                                        tag))


def test_a_flush_that_does_not_wait_holds_the_acks_of_unanswered_results(
    broker_app: Any, redis_url: str, another_redis_url: str
) -> None:
    broker = redis.Redis.from_url(redis_url)
    results_admin = redis.Redis.from_url(another_redis_url)
    backend = broker_app.backend

    def work() -> tuple[bool, bool, bool, str]:
        with recording_qos(broker_app, broker, "tag-30") as qos:
            # The results' server takes the write but runs it only once unpaused: no reply.
            with writes_paused(results_admin):
                backend.store_result("t-30", 30, "SUCCESS")
                qos.defer_ack("tag-30")
                qos.flush_acks(wait=False)  # returns with the result's reply not there
                held = _recorded(broker, qos, "tag-30")
            qos.flush_acks(wait=True)
            return (held, _recorded(broker, qos, "tag-30"),
                    result_writes.PENDING.unconfirmed == 0, status(backend, "t-30"))

    assert on_sending_thread(work) == (True, False, True, "SUCCESS")


def test_an_ack_removal_the_broker_refused_is_sent_again(
    broker_app: Any, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    broker = redis.Redis.from_url(redis_url)

    def work() -> tuple[int, bool, bool]:
        with recording_qos(broker_app, broker, "tag-40") as qos:
            broker.config_set("min-replicas-to-write", 1)  # every write: NOREPLICAS
            try:
                qos.defer_ack("tag-40")
                qos.flush_acks(wait=False)  # the removal goes; its refusal is not read
                in_flight = qos._ack_writes.in_flight
                refused_then = _recorded(broker, qos, "tag-40")
            finally:
                broker.config_set("min-replicas-to-write", 0)
            qos.flush_acks(wait=True)  # reads the refusal, sends the removal again
            return in_flight, refused_then, _recorded(broker, qos, "tag-40")

    with caplog.at_level("WARNING", logger="platform_tasks.broker_transport"):
        assert on_sending_thread(work) == (1, True, False)
    assert any("could not remove 1 acknowledged" in record.getMessage()
               for record in caplog.records)


def test_ack_removals_lost_with_their_connection_are_sent_again(
    broker_app: Any, redis_url: str
) -> None:
    broker = redis.Redis.from_url(redis_url)
    admin = redis.Redis.from_url(redis_url)

    def work() -> tuple[bool, bool]:
        with recording_qos(broker_app, broker, "tag-50") as qos:
            # The removal waits unrun while paused; then every other connection goes, the
            # removal's with it, unrun and unanswered.
            with writes_paused(admin):
                qos.defer_ack("tag-50")
                qos.flush_acks(wait=False)
                admin.client_kill_filter(_type="normal", skipme=True)
            recorded_then = _recorded(broker, qos, "tag-50")
            qos.flush_acks(wait=True)
            return recorded_then, _recorded(broker, qos, "tag-50")

    assert on_sending_thread(work) == (True, False)


def test_an_ack_held_behind_an_unanswered_result_stays_held_when_a_retried_removal_goes(
    broker_app: Any, redis_url: str, another_redis_url: str
) -> None:
    """A removal sent again queues behind the held acks: it must not carry them with it."""
    broker = redis.Redis.from_url(redis_url)
    results_admin = redis.Redis.from_url(another_redis_url)
    backend = broker_app.backend

    def work() -> tuple[bool, bool, bool, bool]:
        with recording_qos(broker_app, broker, "tag-held", "tag-retried") as qos:
            broker.config_set("min-replicas-to-write", 1)
            try:
                qos.defer_ack("tag-retried")
                qos.flush_acks(wait=False)  # its removal goes and is refused, unread
            finally:
                broker.config_set("min-replicas-to-write", 0)
            with writes_paused(results_admin):
                backend.store_result("t-61", 61, "SUCCESS")  # no reply while paused
                qos.defer_ack("tag-held")
                time.sleep(0.05)  # the refusal's reply arrives
                qos.flush_acks(wait=False)  # the refused removal goes again, alone
                held = _recorded(broker, qos, "tag-held")
            qos.flush_acks(wait=True)
            return (held, _recorded(broker, qos, "tag-held"),
                    _recorded(broker, qos, "tag-retried"), status(backend, "t-61") == "SUCCESS")

    assert on_sending_thread(work) == (True, False, False, True)


def test_ack_removals_stay_in_step_with_no_health_check_between_them(redis_url: str) -> None:
    """redis-py PINGs a connection idle past its health-check interval before a command;
    a PING sent behind unanswered removals would take their reply as its own."""
    from platform_tasks.ack_writes import AckWrites

    admin = redis.Redis.from_url(redis_url)
    admin.flushall()
    client = redis.Redis.from_url(redis_url, health_check_interval=1, socket_timeout=3)
    for tag in ("a", "b"):
        admin.hset("unacked", tag, "{}")
        admin.zadd("unacked_index", {tag: 1.0})
    writes = AckWrites()
    with writes_paused(admin):
        writes.send(client, "unacked_index", "unacked", ["a"])  # run only once unpaused
        time.sleep(1.2)  # past the health-check interval, with no reply read
        writes.send(client, "unacked_index", "unacked", ["b"])
    failed = writes.read(wait=True)
    writes.close()

    assert failed == []
    assert writes.in_flight == 0
    assert admin.hlen("unacked") == 0
    assert admin.zcard("unacked_index") == 0
    client.close()


def test_a_result_server_that_does_not_answer_holds_the_loop_only_for_the_socket_timeout(
    redis_url: str,
) -> None:
    """The results' connections time out after PLATFORM_TASKS_REDIS_SOCKET_TIMEOUT, not
    Celery's 120 s: the writes are kept for the next turn, then land."""
    admin = redis.Redis.from_url(redis_url)
    admin.flushall()
    app = create_app(load_settings({"PLATFORM_TASKS_REDIS_URL": redis_url,
                                    "PLATFORM_TASKS_REDIS_SOCKET_TIMEOUT": "1"}))
    backend = app.backend
    backend.retry_policy = {"max_retries": 0, "interval_start": 0, "interval_step": 0,
                            "interval_max": 0}

    def work() -> tuple[bool, bool, str]:
        backend.store_result("t-70", 0, "SUCCESS")
        assert result_writes.confirm()
        # Paused for longer than the test could wait: a confirmation that returns at all
        # while paused returned because the socket timed out.
        with writes_paused(admin):
            backend.store_result("t-71", 71, "SUCCESS")
            while_paused = result_writes.confirm()
        return while_paused, result_writes.confirm(), status(backend, "t-71")

    try:
        assert on_sending_thread(work) == (False, True, "SUCCESS")
    finally:
        app.close()
