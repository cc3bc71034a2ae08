"""Scenarios 6 and 10: the network between the platform and Redis misbehaves, through a fault
proxy of our own (``fault_proxy.py``) in front of the master.

A process talks through the proxy when its ``PLATFORM_TASKS_REDIS_URL`` names the proxy
instead of the Sentinels (one node by URL, which the settings allow); everything else keeps
talking to the master directly. Neither scenario touches the Redis processes themselves, so
the module shares one topology.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from cluster import Cluster
from fault_proxy import FaultProxy
from load import Kind
from scenario import ScenarioFactory, assert_kept_promise

pytestmark = pytest.mark.integration


@pytest.fixture
def master_proxy(cluster: Cluster) -> Iterator[FaultProxy]:
    """A fault proxy in front of the current master (forwarding until told otherwise)."""
    with FaultProxy(cluster.topology.master_address()) as proxy:
        yield proxy


def through(proxy: FaultProxy, cluster: Cluster, **extra: str) -> dict[str, str]:
    """Settings overrides that send a process's Redis traffic through ``proxy``."""
    host, port = proxy.address
    return {
        "PLATFORM_TASKS_SENTINELS": "",
        "PLATFORM_TASKS_REDIS_URL": f"redis://{host}:{port}",
        **extra,
    }


# Found here: a worker whose connections were reset could block for good in kombu's pidbox
# pub/sub read (redis-py's blocking parse_response reconnected, then read with no timeout),
# while its heartbeat thread kept both probes healthy. Fixed in broker_transport (a3ebfc6).
def test_6_the_worker_connection_cut_mid_task(
    cluster: Cluster, master_proxy: FaultProxy, scenario: ScenarioFactory
) -> None:
    run = scenario("6 worker↔Redis connection cut mid-task", cluster)
    # One prefork and one thread-pool worker behind the proxy; email talks to Redis directly.
    behind = through(master_proxy, cluster)
    workers = [cluster.start_worker(queue, env=behind, wait=False)
               for queue in ("default", "payments")]
    workers.append(cluster.start_worker("email", wait=False))
    for process in workers:
        cluster.wait_ready(process)

    with run.load(rate=20):
        time.sleep(3.0)
        run.note(f"cut {master_proxy.cut()} connections")
        time.sleep(3.0)
        # A partition: nothing moves until the workers' own timeouts notice.
        run.note("stall")
        master_proxy.stall()
        time.sleep(5.0)
        run.note("forward")
        master_proxy.forward()
        time.sleep(2.0)
        run.note(f"cut {master_proxy.cut()} connections")
        time.sleep(3.0)

    counts = run.finish(drain_timeout=30)
    assert_kept_promise(counts, run)
    assert all(process.alive for process in workers)


def test_10_the_reply_to_a_publish_lost(
    cluster: Cluster, master_proxy: FaultProxy, scenario: ScenarioFactory
) -> None:
    run = scenario("10 reply to a publish lost", cluster)
    cluster.start_workers("default", "email", "payments")
    # This producer's publishes go through the proxy, and give up on a reply after 1 s.
    producer = run.producer(cluster.settings(
        through(master_proxy, cluster, PLATFORM_TASKS_REDIS_SOCKET_TIMEOUT="1")))
    mix = (Kind("default-short", "default", 0.05, 1), Kind("email-short", "email", 0.05, 1),
           Kind("payments-short", "payments", 0.05, 1))

    with run.load(producer=producer, rate=15, mix=mix):
        time.sleep(3.0)
        # The requests reach Redis, which runs them; the replies never come back.
        run.note("drop replies")
        master_proxy.drop_replies()
        time.sleep(4.0)
        run.note("forward")
        master_proxy.forward()
        time.sleep(4.0)

    counts = run.finish(drain_timeout=30)
    assert_kept_promise(counts, run)
