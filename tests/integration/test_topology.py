"""The local Sentinel topology behaves like the production one: replication and failover."""

from __future__ import annotations

import uuid

import pytest

from platform_tasks.devstack.topology import SentinelTopology

pytestmark = pytest.mark.integration


def test_every_sentinel_names_the_same_master(sentinel_topology: SentinelTopology) -> None:
    master = sentinel_topology.master_address()

    for _, port in sentinel_topology.sentinel_addresses:
        with sentinel_topology.sentinel_client(port) as sentinel:
            reply = sentinel.sentinel_get_master_addr_by_name(sentinel_topology.master_name)
        assert (reply[0], int(reply[1])) == master


def test_a_write_on_the_master_reaches_every_replica(
    sentinel_topology: SentinelTopology,
) -> None:
    _, master_port = sentinel_topology.master_address()
    key, value = f"test:{uuid.uuid4()}", "replicated"

    with sentinel_topology.client(master_port) as master:
        master.set(key, value)
        # WAIT returns once this many replicas acknowledged the write.
        acknowledged = master.execute_command("WAIT", 2, 5000)

    assert acknowledged == 2
    for port in sentinel_topology.node_ports:
        if port != master_port:
            with sentinel_topology.client(port) as replica:
                assert replica.get(key) == value


def test_after_the_master_dies_a_replica_takes_over_and_the_old_one_rejoins(
    sentinel_topology: SentinelTopology,
) -> None:
    old = sentinel_topology.kill_master()

    new = sentinel_topology.wait_for_failover(old, timeout=30.0)

    assert new != old
    with sentinel_topology.client(new[1]) as master:
        assert master.set("after-failover", "yes")
        assert master.execute_command("ROLE")[0] == "master"
        master.execute_command("WAIT", 1, 5000)

    sentinel_topology.restart_node(old[1])

    with sentinel_topology.client(old[1]) as rejoined:
        assert rejoined.execute_command("ROLE")[0] == "slave"
        assert rejoined.get("after-failover") == "yes"
